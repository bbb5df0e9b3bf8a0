package oauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/internal/testkit/oauthtest"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type loginResult struct {
	tok *oauth2.Token
	err error
}

func wait(t *testing.T, done <-chan loginResult) loginResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("the login did not return")
		return loginResult{}
	}
}

// startDeviceLogin runs DeviceLogin and returns the user code the provider
// issued to it.
func startDeviceLogin(t *testing.T, c *Client, p *oauthtest.Provider, out io.Writer) (string, <-chan loginResult) {
	t.Helper()
	ctx := testContext(t)
	done := make(chan loginResult, 1)
	go func() {
		tok, err := c.DeviceLogin(ctx, out)
		done <- loginResult{tok, err}
	}()
	var codes []string
	waitFor(t, "a device code", func() bool {
		codes = p.PendingDeviceCodes()
		return len(codes) > 0
	})
	if len(codes) != 1 {
		t.Fatalf("pending device codes %q, want one", codes)
	}
	return codes[0], done
}

func TestDeviceLogin(t *testing.T) {
	t.Parallel()
	p := oauthtest.NewProvider(t)
	p.DeviceInterval = 10 * time.Millisecond
	var out testenv.Buffer
	code, done := startDeviceLogin(t, newClient(p, "mail"), p, &out)
	p.ApproveDevice(code, alice)
	r := wait(t, done)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.tok.RefreshToken == "" || !p.ValidFor(alice, r.tok.AccessToken) {
		t.Errorf("got %+v, want a valid access token and a refresh token", r.tok)
	}
	if got := p.LastScope(); got != "mail" {
		t.Errorf("requested scope %q, want mail", got)
	}
	text := out.String()
	if !strings.Contains(text, code) || !strings.Contains(text, p.URL()+"/activate") {
		t.Errorf("output %q does not show the user code %s and the verification URI", text, code)
	}
}

func TestDeviceLoginDenied(t *testing.T) {
	t.Parallel()
	p := oauthtest.NewProvider(t)
	p.DeviceInterval = 10 * time.Millisecond
	code, done := startDeviceLogin(t, newClient(p), p, io.Discard)
	p.DenyDevice(code)
	r := wait(t, done)
	if r.err == nil {
		t.Fatalf("denied device login returned %+v", r.tok)
	}
	if !strings.Contains(r.err.Error(), "access_denied") {
		t.Errorf("error %q does not say access_denied", r.err)
	}
	noSecrets(t, r.err, p.ClientSecret)
}

func TestDeviceLoginWrongClient(t *testing.T) {
	t.Parallel()
	p := oauthtest.NewProvider(t)
	c := newClient(p)
	c.Config.ClientSecret = rand.Text()
	_, err := c.DeviceLogin(testContext(t), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("DeviceLogin with a wrong secret: %v, want invalid_client", err)
	}
	noSecrets(t, err, c.Config.ClientSecret, p.ClientSecret)
}

// codeLogin runs CodeLogin with a terminal that never answers unless the
// test writes to the returned pipe, and returns the authorization URL it
// printed.
func codeLogin(t *testing.T, c *Client, p *oauthtest.Provider) (*url.URL, *io.PipeWriter, <-chan loginResult) {
	t.Helper()
	ctx := testContext(t)
	in, pasted := io.Pipe()
	t.Cleanup(func() { pasted.Close() })
	var out testenv.Buffer
	done := make(chan loginResult, 1)
	go func() {
		tok, err := c.CodeLogin(ctx, in, &out)
		done <- loginResult{tok, err}
	}()
	var line string
	waitFor(t, "the authorization URL", func() bool {
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), p.AuthURL()) {
				line = sc.Text()
				return true
			}
		}
		return false
	})
	u, err := url.Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	for k, want := range map[string]string{
		"code_challenge_method": "S256",
		"access_type":           "offline",
		"response_type":         "code",
		"client_id":             p.ClientID,
	} {
		if got := q.Get(k); got != want {
			t.Errorf("authorization URL has %s=%q, want %q", k, got, want)
		}
	}
	for _, k := range []string{"state", "code_challenge", "redirect_uri"} {
		if q.Get(k) == "" {
			t.Errorf("authorization URL has no %s", k)
		}
	}
	if q.Has("client_secret") || strings.Contains(line, p.ClientSecret) {
		t.Error("authorization URL shows the client secret")
	}
	return u, pasted, done
}

// redirectFor asks the provider to authorise and returns where it sends
// the browser back, without going there.
func redirectFor(t *testing.T, authURL *url.URL) *url.URL {
	t.Helper()
	client := &http.Client{
		Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	resp, err := client.Get(authURL.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorization endpoint: %s, want a redirect", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// browse follows the authorization URL and its redirect as a browser on
// the gateway's machine would, and returns the last page.
func browse(t *testing.T, u string) (*http.Response, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestCodeLoginBrowser(t *testing.T) {
	p := oauthtest.NewProvider(t)
	p.AuthorizeAs = alice
	authURL, _, done := codeLogin(t, newClient(p, "mail"), p)
	redirect, err := url.Parse(authURL.Query().Get("redirect_uri"))
	if err != nil {
		t.Fatal(err)
	}
	if redirect.Scheme != "http" || redirect.Hostname() != "127.0.0.1" || redirect.Port() == "" {
		t.Errorf("redirect_uri %s, want http on 127.0.0.1 and a port", redirect)
	}

	resp, body := browse(t, authURL.String())
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "You can close this window") {
		t.Errorf("the redirect page: %s %q", resp.Status, body)
	}
	if resp.Request.URL.Host != redirect.Host {
		t.Errorf("the browser ended at %s, want %s", resp.Request.URL, redirect)
	}
	r := wait(t, done)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.tok.RefreshToken == "" || !p.ValidFor(alice, r.tok.AccessToken) {
		t.Errorf("got %+v, want a valid access token and a refresh token", r.tok)
	}
	if got := p.LastScope(); got != "mail" {
		t.Errorf("requested scope %q, want mail", got)
	}
}

func TestCodeLoginPasted(t *testing.T) {
	p := oauthtest.NewProvider(t)
	p.AuthorizeAs = alice
	authURL, pasted, done := codeLogin(t, newClient(p), p)
	loc := redirectFor(t, authURL)
	// Lines that are not the redirect address are skipped.
	fmt.Fprint(pasted, "\n  \nI opened it\nhttp://example.com/no-state\n")
	fmt.Fprintf(pasted, "  %s  \n", loc)
	r := wait(t, done)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.tok.RefreshToken == "" || !p.ValidFor(alice, r.tok.AccessToken) {
		t.Errorf("got %+v, want a valid access token and a refresh token", r.tok)
	}
	if n := p.Requests(oauthtest.AuthorizationCodeGrant); n != 1 {
		t.Errorf("%d code exchanges, want 1", n)
	}
}

// A forged state, pasted or in the redirect, ends the login without a
// code exchange.
func TestCodeLoginWrongState(t *testing.T) {
	for _, via := range []string{"pasted", "redirect"} {
		t.Run(via, func(t *testing.T) {
			p := oauthtest.NewProvider(t)
			authURL, pasted, done := codeLogin(t, newClient(p), p)
			loc := redirectFor(t, authURL)
			q := loc.Query()
			q.Set("state", "forged")
			loc.RawQuery = q.Encode()
			if via == "pasted" {
				fmt.Fprintf(pasted, "%s\n", loc)
			} else if resp, body := browse(t, loc.String()); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "state") {
				t.Errorf("the redirect page for a forged state: %s %q", resp.Status, body)
			}
			r := wait(t, done)
			if r.err == nil || !strings.Contains(r.err.Error(), "state") {
				t.Fatalf("CodeLogin with a forged state: %v, want a state error", r.err)
			}
			if n := p.Requests(oauthtest.AuthorizationCodeGrant); n != 0 {
				t.Errorf("%d code exchanges, want none", n)
			}
		})
	}
}

func TestCodeLoginFixedRedirectURL(t *testing.T) {
	p := oauthtest.NewProvider(t)
	p.AuthorizeAs = alice
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	c := newClient(p)
	c.Config.RedirectURL = "http://127.0.0.1:" + strconv.Itoa(port) + "/cb"
	authURL, _, done := codeLogin(t, c, p)
	if got := authURL.Query().Get("redirect_uri"); got != c.Config.RedirectURL {
		t.Errorf("redirect_uri %q, want %q", got, c.Config.RedirectURL)
	}

	// Only the redirect's path is answered.
	resp, _ := browse(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/?state=x&code=y")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET / on the redirect listener: %s, want 404", resp.Status)
	}

	resp, body := browse(t, authURL.String())
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "You can close this window") {
		t.Errorf("the redirect page: %s %q", resp.Status, body)
	}
	if got := resp.Request.URL.Path; got != "/cb" {
		t.Errorf("the browser ended at path %q, want /cb", got)
	}
	r := wait(t, done)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.tok.RefreshToken == "" || !p.ValidFor(alice, r.tok.AccessToken) {
		t.Errorf("got %+v, want a valid access token and a refresh token", r.tok)
	}
}

func TestCodeLoginCancelled(t *testing.T) {
	p := oauthtest.NewProvider(t)
	ctx, cancel := context.WithCancel(testContext(t))
	in, pasted := io.Pipe()
	defer pasted.Close()
	done := make(chan loginResult, 1)
	go func() {
		tok, err := newClient(p).CodeLogin(ctx, in, io.Discard)
		done <- loginResult{tok, err}
	}()
	cancel()
	if r := wait(t, done); r.err == nil {
		t.Fatal("cancelled CodeLogin succeeded")
	}
}

// withoutRefreshToken is p's token endpoint with refresh_token removed
// from the responses, as from a provider whose scopes lack offline access.
func withoutRefreshToken(t *testing.T, p *oauthtest.Provider) string {
	target, err := url.Parse(p.URL())
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		var m map[string]any
		if json.Unmarshal(body, &m) == nil {
			delete(m, "refresh_token")
			body, _ = json.Marshal(m)
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		return nil
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	return srv.URL + "/token"
}

func TestCodeLoginNoRefreshToken(t *testing.T) {
	p := oauthtest.NewProvider(t)
	c := newClient(p)
	c.Config.Endpoint.TokenURL = withoutRefreshToken(t, p)
	authURL, pasted, done := codeLogin(t, c, p)
	fmt.Fprintf(pasted, "%s\n", redirectFor(t, authURL))
	r := wait(t, done)
	if r.err == nil || !strings.Contains(r.err.Error(), "offline access") {
		t.Fatalf("CodeLogin without a refresh token: %v, want the offline access hint", r.err)
	}
	if n := p.Requests(oauthtest.AuthorizationCodeGrant); n != 1 {
		t.Errorf("%d code exchanges, want 1", n)
	}
}

func TestDeviceLoginNoRefreshToken(t *testing.T) {
	t.Parallel()
	p := oauthtest.NewProvider(t)
	p.DeviceInterval = 10 * time.Millisecond
	c := newClient(p)
	c.Config.Endpoint.TokenURL = withoutRefreshToken(t, p)
	code, done := startDeviceLogin(t, c, p, io.Discard)
	p.ApproveDevice(code, alice)
	r := wait(t, done)
	if r.err == nil || !strings.Contains(r.err.Error(), "offline access") {
		t.Fatalf("DeviceLogin without a refresh token: %v, want the offline access hint", r.err)
	}
}

func TestCheckGrant(t *testing.T) {
	if err := checkGrant(&oauth2.Token{AccessToken: "at", RefreshToken: "rt"}); err != nil {
		t.Errorf("checkGrant with a refresh token: %v", err)
	}
	err := checkGrant(&oauth2.Token{AccessToken: "at-secret"})
	if err == nil || !strings.Contains(err.Error(), "offline_access") {
		t.Fatalf("checkGrant without a refresh token: %v, want the offline_access hint", err)
	}
	noSecrets(t, err, "at-secret")
}

func TestParseCallback(t *testing.T) {
	const state = "s1"
	for _, tc := range []struct {
		name, query, code, err string
	}{
		{"code", "state=s1&code=c1", "c1", ""},
		{"wrong state", "state=s2&code=c1", "", "state"},
		{"no state", "code=c1", "", "state"},
		{"refused", "state=s1&error=access_denied&error_description=no%0Athanks", "", "authorisation refused (access_denied: nothanks)"},
		{"no code", "state=s1", "", "no code"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			cb := parseCallback(q, state)
			if cb.code != tc.code {
				t.Errorf("code %q, want %q", cb.code, tc.code)
			}
			if tc.err == "" && cb.err != nil || tc.err != "" && (cb.err == nil || !strings.Contains(cb.err.Error(), tc.err)) {
				t.Errorf("error %v, want one containing %q", cb.err, tc.err)
			}
		})
	}
}
