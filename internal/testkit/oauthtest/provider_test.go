package oauthtest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

const (
	mailScope   = "https://mail.google.com/"
	redirectURL = "http://127.0.0.1:1/callback"
)

func config(p *Provider, style oauth2.AuthStyle) *oauth2.Config {
	e := p.Endpoint()
	e.AuthStyle = style
	return &oauth2.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		Endpoint:     e,
		RedirectURL:  redirectURL,
		Scopes:       []string{mailScope},
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func wantRetrieveError(t *testing.T, err error, code string) {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != code {
		t.Fatalf("got %v, want a RetrieveError %q", err, code)
	}
}

// authorize follows cfg's authorization URL as a browser would, to the
// redirect, and returns the redirect's query.
func authorize(t *testing.T, authURL string) url.Values {
	t.Helper()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := client.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: status %s", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != redirectURL {
		t.Fatalf("redirected to %s, want %s", got, redirectURL)
	}
	return loc.Query()
}

func TestAuthorizationCode(t *testing.T) {
	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleAutoDetect, oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		t.Run(map[oauth2.AuthStyle]string{0: "auto", 1: "params", 2: "header"}[style], func(t *testing.T) {
			t.Parallel()
			p := NewProvider(t)
			p.AuthorizeAs = "alice@example.com"
			cfg := config(p, style)
			verifier := oauth2.GenerateVerifier()
			q := authorize(t, cfg.AuthCodeURL("st4te", oauth2.S256ChallengeOption(verifier)))
			if q.Get("state") != "st4te" || q.Get("code") == "" {
				t.Fatalf("redirect query %v", q)
			}
			if p.LastScope() != mailScope {
				t.Errorf("LastScope() = %q", p.LastScope())
			}
			tok, err := cfg.Exchange(ctx(t), q.Get("code"), oauth2.VerifierOption(verifier))
			if err != nil {
				t.Fatalf("Exchange: %v", err)
			}
			if tok.TokenType != "Bearer" || tok.RefreshToken == "" || tok.Extra("scope") != mailScope {
				t.Errorf("token %+v, scope %v", tok, tok.Extra("scope"))
			}
			if d := time.Until(tok.Expiry); d < 59*time.Minute || d > time.Hour {
				t.Errorf("expires in %v, want 1h", d)
			}
			if !p.Valid(tok.AccessToken) || !p.ValidFor("alice@example.com", tok.AccessToken) || p.ValidFor("bob", tok.AccessToken) {
				t.Error("access token not valid for alice alone")
			}
			if n := p.Requests(AuthorizationCodeGrant); n != 1 {
				t.Errorf("Requests(%q) = %d, want 1", AuthorizationCodeGrant, n)
			}
			// A code is good once.
			_, err = config(p, oauth2.AuthStyleInParams).Exchange(ctx(t), q.Get("code"), oauth2.VerifierOption(verifier))
			wantRetrieveError(t, err, "invalid_grant")
		})
	}
}

func TestAuthorizationCodeRefused(t *testing.T) {
	p := NewProvider(t)
	cfg := config(p, oauth2.AuthStyleAutoDetect)
	verifier := oauth2.GenerateVerifier()
	code := func() string {
		return authorize(t, cfg.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier))).Get("code")
	}

	_, err := cfg.Exchange(ctx(t), code(), oauth2.VerifierOption(oauth2.GenerateVerifier()))
	wantRetrieveError(t, err, "invalid_grant")

	_, err = cfg.Exchange(ctx(t), code())
	wantRetrieveError(t, err, "invalid_grant")

	other := *cfg
	other.RedirectURL = "http://127.0.0.1:2/callback"
	_, err = other.Exchange(ctx(t), code(), oauth2.VerifierOption(verifier))
	wantRetrieveError(t, err, "invalid_grant")

	wrong := *cfg
	wrong.ClientSecret = "wrong"
	_, err = wrong.Exchange(ctx(t), code(), oauth2.VerifierOption(verifier))
	wantRetrieveError(t, err, "invalid_client")

	// Without PKCE, or with the plain method, the user is sent back with
	// an error; with an unknown client, not at all.
	for _, u := range []string{
		cfg.AuthCodeURL("s"),
		cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("code_challenge", verifier), oauth2.SetAuthURLParam("code_challenge_method", "plain")),
	} {
		if q := authorize(t, u); q.Get("error") != "invalid_request" || q.Get("state") != "s" || q.Has("code") {
			t.Errorf("%s: redirect query %v", u, q)
		}
	}
	unknown := *cfg
	unknown.ClientID = "someone"
	resp, err := http.Get(unknown.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown client: %s, want 400", resp.Status)
	}
}

func TestRefresh(t *testing.T) {
	p := NewProvider(t)
	p.AccessTTL = 90 * time.Second
	rt := p.IssueRefreshToken("alice")
	cfg := config(p, oauth2.AuthStyleAutoDetect)
	tok, err := cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if !p.ValidFor("alice", tok.AccessToken) || tok.RefreshToken != rt {
		t.Errorf("token %+v", tok)
	}
	if d := time.Until(tok.Expiry); d < 85*time.Second || d > 90*time.Second {
		t.Errorf("expires in %v, want 90s", d)
	}
	if n := p.Requests(RefreshTokenGrant); n != 1 {
		t.Errorf("Requests(%q) = %d, want 1", RefreshTokenGrant, n)
	}

	p.ExpireAccessTokens()
	if p.Valid(tok.AccessToken) {
		t.Error("access token valid after ExpireAccessTokens")
	}
	tok2, err := cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil || !p.Valid(tok2.AccessToken) || tok2.AccessToken == tok.AccessToken {
		t.Fatalf("refresh after expiry: %+v, %v", tok2, err)
	}

	// No scope beyond the granted one.
	resp := postForm(t, p.TokenURL(), url.Values{
		"grant_type": {RefreshTokenGrant}, "refresh_token": {rt}, "scope": {"more"},
		"client_id": {p.ClientID}, "client_secret": {p.ClientSecret},
	})
	if resp.status != http.StatusBadRequest || resp.body["error"] != "invalid_scope" {
		t.Errorf("wider scope: %d %v", resp.status, resp.body)
	}
}

func TestRefreshRotation(t *testing.T) {
	p := NewProvider(t)
	p.RotateRefreshTokens = true
	old := p.IssueRefreshToken("alice")
	cfg := config(p, oauth2.AuthStyleInHeader)
	tok, err := cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: old}).Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" || tok.RefreshToken == old {
		t.Fatalf("refresh token not rotated: %q", tok.RefreshToken)
	}
	_, err = cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: old}).Token()
	wantRetrieveError(t, err, "invalid_grant")
	tok2, err := cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	if err != nil || !p.ValidFor("alice", tok2.AccessToken) {
		t.Fatalf("new refresh token: %+v, %v", tok2, err)
	}
	// The access token of the old refresh token lives on.
	if !p.Valid(tok.AccessToken) {
		t.Error("rotation invalidated an access token")
	}
}

func TestRevoke(t *testing.T) {
	p := NewProvider(t)
	cfg := config(p, oauth2.AuthStyleAutoDetect)
	rt := p.IssueRefreshToken("alice")
	tok, err := cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil {
		t.Fatal(err)
	}
	keep := p.IssueRefreshToken("bob")
	p.Revoke(rt)
	if p.Valid(tok.AccessToken) {
		t.Error("access token valid after Revoke")
	}
	_, err = cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: rt}).Token()
	wantRetrieveError(t, err, "invalid_grant")
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d, want 400", re.Response.StatusCode)
	}

	bobTok, err := cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: keep}).Token()
	if err != nil {
		t.Fatalf("other user's refresh token: %v", err)
	}
	p.RevokeAll()
	if p.Valid(bobTok.AccessToken) {
		t.Error("access token valid after RevokeAll")
	}
	_, err = cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: keep}).Token()
	wantRetrieveError(t, err, "invalid_grant")
}

func TestPublicClient(t *testing.T) {
	p := NewProvider(t)
	p.ClientSecret = ""
	rt := p.IssueRefreshToken("alice")
	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		cfg := config(p, style)
		tok, err := cfg.TokenSource(ctx(t), &oauth2.Token{RefreshToken: rt}).Token()
		if err != nil || !p.Valid(tok.AccessToken) {
			t.Fatalf("style %d: %+v, %v", style, tok, err)
		}
	}
}

func TestDeviceFlow(t *testing.T) {
	t.Parallel()
	p := NewProvider(t)
	cfg := config(p, oauth2.AuthStyleAutoDetect)
	da, err := cfg.DeviceAuth(ctx(t))
	if err != nil {
		t.Fatalf("DeviceAuth: %v", err)
	}
	if da.Interval != 1 || da.UserCode == "" || !strings.HasPrefix(da.VerificationURI, p.URL()) ||
		!strings.Contains(da.VerificationURIComplete, url.QueryEscape(da.UserCode)) {
		t.Errorf("device response %+v", da)
	}
	if d := time.Until(da.Expiry); d < 9*time.Minute {
		t.Errorf("device code expires in %v", d)
	}
	if got := p.PendingDeviceCodes(); !slices.Equal(got, []string{da.UserCode}) {
		t.Fatalf("PendingDeviceCodes() = %v", got)
	}
	if p.LastScope() != mailScope {
		t.Errorf("LastScope() = %q", p.LastScope())
	}
	c := ctx(t)
	go func() {
		// Approve once the client has been told to wait.
		for p.Requests(DeviceCodeGrant) == 0 {
			if c.Err() != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		p.ApproveDevice(strings.ToLower(da.UserCode), "alice")
	}()
	start := time.Now()
	tok, err := cfg.DeviceAccessToken(c, da)
	if err != nil {
		t.Fatalf("DeviceAccessToken: %v", err)
	}
	t.Logf("token after %v and %d polls", time.Since(start), p.Requests(DeviceCodeGrant))
	if !p.ValidFor("alice", tok.AccessToken) || tok.RefreshToken == "" || tok.Extra("scope") != mailScope {
		t.Errorf("token %+v", tok)
	}
	p.mu.Lock()
	slowDowns := p.slowDowns
	p.mu.Unlock()
	if slowDowns != 0 {
		t.Errorf("x/oauth2 was told to slow down %d times", slowDowns)
	}
	if got := p.PendingDeviceCodes(); len(got) != 0 {
		t.Errorf("PendingDeviceCodes() = %v after approval", got)
	}
}

func TestDeviceDenied(t *testing.T) {
	t.Parallel()
	p := NewProvider(t)
	cfg := config(p, oauth2.AuthStyleInParams)
	da, err := cfg.DeviceAuth(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	p.DenyDevice(da.UserCode)
	_, err = cfg.DeviceAccessToken(ctx(t), da)
	wantRetrieveError(t, err, "access_denied")
	if got := p.PendingDeviceCodes(); len(got) != 0 {
		t.Errorf("PendingDeviceCodes() = %v after denial", got)
	}
}

type formResponse struct {
	status int
	body   map[string]any
}

func postForm(t *testing.T, u string, form url.Values) formResponse {
	t.Helper()
	resp, err := http.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := formResponse{status: resp.StatusCode}
	if err := json.NewDecoder(resp.Body).Decode(&r.body); err != nil {
		t.Fatalf("%s: %v", u, err)
	}
	return r
}

// TestDevicePolling polls by hand, faster than x/oauth2 would.
func TestDevicePolling(t *testing.T) {
	p := NewProvider(t)
	p.DeviceInterval = 200 * time.Millisecond
	device := func() (deviceCode, userCode string) {
		r := postForm(t, p.DeviceAuthURL(), url.Values{"client_id": {p.ClientID}, "scope": {"a b"}})
		if r.status != http.StatusOK || r.body["interval"] != 1.0 {
			t.Fatalf("device: %d %v", r.status, r.body)
		}
		return r.body["device_code"].(string), r.body["user_code"].(string)
	}
	poll := func(deviceCode, want string) map[string]any {
		t.Helper()
		r := postForm(t, p.TokenURL(), url.Values{
			"grant_type": {DeviceCodeGrant}, "device_code": {deviceCode},
			"client_id": {p.ClientID}, "client_secret": {p.ClientSecret},
		})
		if got, _ := r.body["error"].(string); got != want {
			t.Fatalf("poll: %d %v, want error %q", r.status, r.body, want)
		}
		return r.body
	}

	dc, uc := device()
	poll(dc, "authorization_pending")
	poll(dc, "slow_down")
	time.Sleep(250 * time.Millisecond)
	poll(dc, "authorization_pending")
	time.Sleep(250 * time.Millisecond)
	p.ApproveDevice(uc, "alice")
	body := poll(dc, "")
	if body["token_type"] != "Bearer" || body["scope"] != "a b" || !p.ValidFor("alice", body["access_token"].(string)) {
		t.Errorf("token response %v", body)
	}
	time.Sleep(250 * time.Millisecond)
	poll(dc, "invalid_grant") // used

	p.DeviceCodeTTL = time.Millisecond
	dc, _ = device()
	time.Sleep(10 * time.Millisecond)
	poll(dc, "expired_token")
	if got := p.PendingDeviceCodes(); len(got) != 0 {
		t.Errorf("PendingDeviceCodes() = %v, want none", got)
	}
	if n := p.Requests(DeviceCodeGrant); n != 6 {
		t.Errorf("Requests(%q) = %d, want 6", DeviceCodeGrant, n)
	}

	r := postForm(t, p.TokenURL(), url.Values{"grant_type": {"password"}, "client_id": {p.ClientID}, "client_secret": {p.ClientSecret}})
	if r.status != http.StatusBadRequest || r.body["error"] != "unsupported_grant_type" {
		t.Errorf("password grant: %d %v", r.status, r.body)
	}
}
