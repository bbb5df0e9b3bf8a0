package server

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/oauth"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/secrets"
	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/oauthtest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// oauthFixture is an OAuth2-only upstream, the provider that issues its
// tokens, and a config mapping local user bob to it.
type oauthFixture struct {
	provider  *oauthtest.Provider
	mem       *imapmem.Server
	keyText   string
	key       *secrets.Key
	tokenFile string
	config    string
	secrets   []string // everything that must never reach a log
}

const bobUpstream = "bob@example.com"

func newOAuthFixture(t *testing.T, mech string) *oauthFixture {
	t.Helper()
	p := oauthtest.NewProvider(t)
	p.RotateRefreshTokens = true
	mem, err := imapmem.Start("127.0.0.1:0", &imapmem.Options{Bearer: p.ValidFor})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	mem.AddUser(bobUpstream, "unused-upstream-password")
	mem.Append(bobUpstream, "INBOX", []byte("Subject: via oauth\r\n\r\nhello\r\n"))

	key, keyText, err := secrets.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The token's directory does not exist yet: `gateway oauth2 login`
	// makes it.
	f := &oauthFixture{provider: p, mem: mem, key: key, keyText: keyText, tokenFile: filepath.Join(dir, "tokens", "bob.token")}
	keyFile := filepath.Join(dir, "secrets.key")
	secretFile := filepath.Join(dir, "client-secret")
	os.WriteFile(keyFile, []byte(keyText+"\n"), 0o600)
	os.WriteFile(secretFile, []byte(p.ClientSecret+"\n"), 0o600)
	hash, err := passwd.Hash("bob-local")
	if err != nil {
		t.Fatal(err)
	}
	f.config = filepath.Join(dir, "gateway.yaml")
	cfg := fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
upstreams:
  mem:
    address: %q
    tls: none
    auth: %s
    keep_connection: 0s
    oauth2:
      client_id: %q
      client_secret_file: %s
      auth_url: %s
      token_url: %s
      device_auth_url: %s
      scopes: [mail]
users:
  bob:
    password_hash: %q
    upstream: mem
    upstream_user: %s
    oauth2_token_file: %s
secrets:
  key_file: %s
`, mem.Addr(), mech, p.ClientID, secretFile, p.AuthURL(), p.TokenURL(), p.DeviceAuthURL(), hash, bobUpstream, f.tokenFile, keyFile)
	if err := os.WriteFile(f.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	f.secrets = []string{"bob-local", keyText, p.ClientSecret}
	return f
}

// seed stores a refresh token as if bob had authorised the gateway.
func (f *oauthFixture) seed(t *testing.T) string {
	t.Helper()
	os.MkdirAll(filepath.Dir(f.tokenFile), 0o700)
	rt := f.provider.IssueRefreshToken(bobUpstream)
	if err := f.store().Save(&oauth2.Token{RefreshToken: rt}); err != nil {
		t.Fatal(err)
	}
	f.secrets = append(f.secrets, rt)
	return rt
}

func (f *oauthFixture) store() *oauth.Store {
	return &oauth.Store{Path: f.tokenFile, Key: f.key, Context: config.TokenContext("bob")}
}

// stored returns the token on disk, remembering its parts as secrets.
func (f *oauthFixture) stored(t *testing.T) *oauth2.Token {
	t.Helper()
	tok, err := f.store().Load()
	if err != nil {
		t.Fatal(err)
	}
	f.secrets = append(f.secrets, tok.RefreshToken, tok.AccessToken,
		base64.StdEncoding.EncodeToString([]byte("user="+bobUpstream+"\x01auth=Bearer "+tok.AccessToken+"\x01\x01")))
	return tok
}

func startServe(t *testing.T, config string) (addrs map[string]string, logs *testenv.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs = &testenv.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ready := make(chan map[string]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: config, Logger: log, Ready: func(a map[string]string) { ready <- a }}, nil)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	return addrs, logs
}

// fetchAll logs in as bob and retrieves every message.
func fetchAll(addr string) (int, error) {
	c, err := pop3client.Dial(addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.Login("bob", "bob-local"); err != nil {
		return 0, err
	}
	sizes, err := c.List()
	if err != nil {
		return 0, err
	}
	for i := range sizes {
		if _, err := c.Retr(i); err != nil {
			return 0, err
		}
	}
	return len(sizes), c.Quit()
}

func TestOAuth2UpstreamLogin(t *testing.T) {
	for _, mech := range []string{config.AuthXOAuth2, config.AuthOAuthBearer} {
		t.Run(mech, func(t *testing.T) { testOAuth2UpstreamLogin(t, mech) })
	}
}

func testOAuth2UpstreamLogin(t *testing.T, mech string) {
	f := newOAuthFixture(t, mech)
	p := f.provider
	first := f.seed(t)
	addrs, logs := startServe(t, f.config)

	// The stored token has no access token yet: the first login refreshes,
	// and the rotated refresh token is on disk before the login goes on.
	if n, err := fetchAll(addrs["pop3"]); err != nil || n != 1 {
		t.Fatalf("first session: %d messages, %v", n, err)
	}
	if got := p.Requests(oauthtest.RefreshTokenGrant); got != 1 {
		t.Fatalf("%d refresh requests, want 1", got)
	}
	tok := f.stored(t)
	if tok.RefreshToken == first || tok.AccessToken == "" || !p.Valid(tok.AccessToken) {
		t.Fatalf("the rotated token was not saved: %+v", tok)
	}

	// A valid access token is used as it is.
	if _, err := fetchAll(addrs["pop3"]); err != nil {
		t.Fatal(err)
	}
	if got := p.Requests(oauthtest.RefreshTokenGrant); got != 1 {
		t.Fatalf("%d refresh requests after a login with a valid token, want 1", got)
	}

	// The provider drops the access token before its expiry: the upstream
	// refuses it, and the gateway refreshes once and logs in.
	p.ExpireAccessTokens()
	if _, err := fetchAll(addrs["pop3"]); err != nil {
		t.Fatalf("login after the access token was revoked: %v", err)
	}
	if got := p.Requests(oauthtest.RefreshTokenGrant); got != 2 {
		t.Fatalf("%d refresh requests, want 2", got)
	}
	if ok, failed := f.mem.BearerLogins(); ok != 3 || failed != 1 {
		t.Fatalf("upstream bearer logins: %d ok, %d failed; want 3, 1", ok, failed)
	}
	f.stored(t)

	// Refused local logins, by USER/PASS and by AUTH PLAIN, log nothing
	// of what was sent.
	c, err := pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("bob", "bob-wrong-local"); err == nil {
		t.Fatal("a wrong local password was accepted")
	}
	plain := base64.StdEncoding.EncodeToString([]byte("\x00bob\x00bob-other-wrong"))
	if reply, _ := c.Cmd("AUTH PLAIN " + plain); !strings.HasPrefix(reply, "-ERR [AUTH]") {
		t.Fatalf("AUTH PLAIN with a wrong password: %q", reply)
	}
	c.Close()
	f.secrets = append(f.secrets, "bob-wrong-local", "bob-other-wrong", plain)

	// The grant is revoked: the client gets [AUTH], the operator a line
	// saying what to run.
	p.RevokeAll()
	_, err = fetchAll(addrs["pop3"])
	if err == nil || !strings.Contains(err.Error(), "[AUTH]") {
		t.Fatalf("login with a revoked grant: %v, want -ERR [AUTH]", err)
	}
	want := fmt.Sprintf("run `gateway oauth2 login -config %s -user bob`", f.config)
	if !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), "invalid_grant") {
		t.Fatalf("no log line telling the operator to authorise again (%q):\n%s", want, logs)
	}
	assertNoSecrets(t, logs.String(), f.secrets)
}

func assertNoSecrets(t *testing.T, logs string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("a secret (%d bytes, starting %.4q) appears in the logs", len(s), s)
		}
	}
}

func TestOAuth2NoTokenYet(t *testing.T) {
	f := newOAuthFixture(t, config.AuthXOAuth2)
	addrs, logs := startServe(t, f.config)
	if !strings.Contains(logs.String(), "no OAuth2 token yet") {
		t.Errorf("no start-up warning about the missing token:\n%s", logs)
	}
	if _, err := fetchAll(addrs["pop3"]); err == nil || !strings.Contains(err.Error(), "[AUTH]") {
		t.Fatalf("login without a token: %v, want -ERR [AUTH]", err)
	}
	if !strings.Contains(logs.String(), "-user bob`") {
		t.Fatalf("no log line telling the operator to authorise:\n%s", logs)
	}
}

func TestOAuth2TokenFileMode(t *testing.T) {
	f := newOAuthFixture(t, config.AuthXOAuth2)
	f.seed(t)
	os.Chmod(f.tokenFile, 0o644)
	var stderr strings.Builder
	if code := serveExit(f.config, &stderr); code == 0 {
		t.Fatal("serve started with a token file others can read")
	}
	if want := "chmod 600 " + f.tokenFile; !strings.Contains(stderr.String(), want) {
		t.Fatalf("error does not say %q: %s", want, stderr.String())
	}
}

// cliRun runs the gateway command line in the background, its output
// readable line by line as it comes.
type cliRun struct {
	lines chan string
	code  chan int
	in    *io.PipeWriter
}

func startCLI(args ...string) *cliRun {
	outR, outW := io.Pipe()
	inR, inW := io.Pipe()
	r := &cliRun{lines: make(chan string, 100), code: make(chan int, 1), in: inW}
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		close(r.lines)
	}()
	go func() {
		code := oauth2LoginExit(oauth2LoginArgs(args), inR, outW, outW)
		outW.Close()
		r.code <- code
	}()
	return r
}

// waitLine returns the first line for which match is true.
func (r *cliRun) waitLine(t *testing.T, match func(string) bool) string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-r.lines:
			if !ok {
				t.Fatal("the command ended without the expected line")
			}
			if match(l) {
				return l
			}
		case <-timeout:
			t.Fatal("timed out waiting for the command's output")
		}
	}
}

func (r *cliRun) wait(t *testing.T) (int, string) {
	t.Helper()
	var rest strings.Builder
	for l := range r.lines {
		rest.WriteString(l + "\n")
	}
	return <-r.code, rest.String()
}

func TestOAuth2LoginDeviceFlow(t *testing.T) {
	f := newOAuthFixture(t, config.AuthXOAuth2)
	p := f.provider
	r := startCLI("oauth2", "login", "-config", f.config, "-user", "bob")
	line := r.waitLine(t, func(l string) bool { return strings.Contains(l, "enter the code") })
	codes := p.PendingDeviceCodes()
	if len(codes) != 1 || !strings.Contains(line, codes[0]) || !strings.Contains(line, p.URL()) {
		t.Fatalf("printed %q; pending codes %q", line, codes)
	}
	p.ApproveDevice(codes[0], bobUpstream)
	code, out := r.wait(t)
	if code != 0 || !strings.Contains(out, "Stored the refresh token for users.bob in "+f.tokenFile) ||
		!strings.Contains(out, "Checked: logged in to upstream mem as bob@example.com, 1 messages") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if fi, err := os.Stat(f.tokenFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v", fi, err)
	}
	data, _ := os.ReadFile(f.tokenFile)
	tok := f.stored(t)
	if !secrets.IsSealed(data) || strings.Contains(string(data), tok.RefreshToken) {
		t.Fatal("the token file is not sealed")
	}

	// The gateway serves bob with the stored grant.
	addrs, logs := startServe(t, f.config)
	if n, err := fetchAll(addrs["pop3"]); err != nil || n != 1 {
		t.Fatalf("session after oauth2 login: %d, %v", n, err)
	}
	assertNoSecrets(t, logs.String(), f.secrets)
}

func TestOAuth2LoginCodeFlow(t *testing.T) {
	f := newOAuthFixture(t, config.AuthOAuthBearer)
	p := f.provider
	p.AuthorizeAs = bobUpstream
	r := startCLI("oauth2", "login", "-config", f.config, "-user", "bob", "-flow", "code")
	authURL := r.waitLine(t, func(l string) bool { return strings.HasPrefix(l, p.AuthURL()) })
	// The browser: the provider approves at once and redirects to the
	// gateway's loopback listener.
	resp, err := http.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "close this window") {
		t.Fatalf("redirect page: %d %s", resp.StatusCode, body)
	}
	code, out := r.wait(t)
	if code != 0 || !strings.Contains(out, "Checked: logged in") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if !strings.Contains(authURL, "code_challenge_method=S256") {
		t.Errorf("no PKCE in %s", authURL)
	}
}

func TestOAuth2LoginRefusesPasswordUpstream(t *testing.T) {
	f := newFixture(t)
	var stderr strings.Builder
	if code := oauth2LoginExit(OAuth2Login{Config: f.config, User: "alice", Flow: "auto"}, nil, io.Discard, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "OAuth2 needs auth xoauth2 or oauthbearer") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

// A public client (no secret, as Microsoft's desktop applications) sends
// its client_id in the form.
func TestOAuth2PublicClient(t *testing.T) {
	f := newOAuthFixture(t, config.AuthXOAuth2)
	p := f.provider
	p.ClientSecret = ""
	cfg, _ := os.ReadFile(f.config)
	var kept []string
	for _, line := range strings.Split(string(cfg), "\n") {
		if !strings.Contains(line, "client_secret_file") {
			kept = append(kept, line)
		}
	}
	os.WriteFile(f.config, []byte(strings.Join(kept, "\n")), 0o600)

	r := startCLI("oauth2", "login", "-config", f.config, "-user", "bob")
	r.waitLine(t, func(l string) bool { return strings.Contains(l, "enter the code") })
	p.ApproveDevice(p.PendingDeviceCodes()[0], bobUpstream)
	if code, out := r.wait(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	addrs, _ := startServe(t, f.config)
	p.ExpireAccessTokens()
	if _, err := fetchAll(addrs["pop3"]); err != nil {
		t.Fatalf("session with a refreshed token of a public client: %v", err)
	}
	if p.Requests(oauthtest.RefreshTokenGrant) == 0 {
		t.Fatal("no refresh happened")
	}
}
