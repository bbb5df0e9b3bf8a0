package server

import (
	"bytes"
	"context"
	"fmt"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/demo"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/secrets"
	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

func TestDemoServesSampleMail(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc, httpc := make(chan string, 1), make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Demo(ctx, DemoOptions{Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Version: "test", Logger: slog.New(slog.DiscardHandler),
			Ready: func(addr, http string) { addrc <- addr; httpc <- http }})
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("demo stopped: %v", err)
	}
	// The demo answers a container's health check when asked to.
	if err := Healthcheck("http://"+<-httpc+"/healthz", 5*time.Second, io.Discard); err != nil {
		t.Errorf("demo health check: %v", err)
	}
	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("demo", "demo"); err != nil {
		t.Fatal(err)
	}
	want := demo.Messages()
	sizes, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != len(want) {
		t.Fatalf("demo lists %d messages, want %d", len(sizes), len(want))
	}
	for i, w := range want {
		got, err := c.Retr(i + 1)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, w) || int64(len(got)) != sizes[i+1] {
			t.Errorf("message %d: got %d octets (listed %d), want %d", i+1, len(got), sizes[i+1], len(w))
		}
	}
	c.Quit()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("demo: %v", err)
	}
}

func writeFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// fixture is an in-memory upstream with one account and a config file
// mapping local user alice to it.
type fixture struct {
	mem    *imapmem.Server
	secret string // upstream password file
	config string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	mem, err := imapmem.Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	mem.AddUser("alice@example.com", "upstream-secret")
	mem.Append("alice@example.com", "INBOX", []byte("Subject: hi\r\n\r\nhello\r\n"))
	f := &fixture{mem: mem}
	f.secret = writeFile(t, "secret", "upstream-secret\n", 0o600)
	f.config = filepath.Join(t.TempDir(), "gateway.yaml")
	f.write(t, "local-pass")
	return f
}

func (f *fixture) write(t *testing.T, localPassword string) {
	t.Helper()
	hash, err := passwd.Hash(localPassword)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
  http: "127.0.0.1:0"
upstreams:
  mem:
    address: %q
    tls: none
users:
  alice:
    password_hash: %q
    upstream: mem
    upstream_user: alice@example.com
    upstream_password_file: %s
`, f.mem.Addr(), hash, f.secret)
	if err := os.WriteFile(f.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestServeReloadAndDrain(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hup := make(chan os.Signal, 1)
	ready := make(chan map[string]string, 1)
	done := make(chan error, 1)
	logs := &testenv.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	go func() {
		done <- Run(ctx, Options{Config: f.config, Logger: log, Ready: func(a map[string]string) { ready <- a }}, hup)
	}()
	var addrs map[string]string
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}

	// login tells whether the password is accepted; while the session
	// below holds the maildrop, an accepted one gets [IN-USE].
	login := func(pass string) error {
		c, err := pop3client.Dial(addrs["pop3"])
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Login("alice", pass); err != nil {
			if strings.Contains(err.Error(), "[IN-USE]") {
				return nil
			}
			return err
		}
		return c.Quit()
	}
	if err := login("local-pass"); err != nil {
		t.Fatalf("login: %v", err)
	}

	// A session open across the reload keeps working.
	open, err := pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := open.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}

	f.write(t, "new-pass")
	hup <- syscall.SIGHUP
	waitFor(t, func() bool { return login("new-pass") == nil })
	if err := login("local-pass"); err == nil {
		t.Fatal("the old password still works after reload")
	}

	// A broken file is refused and the running config kept.
	os.WriteFile(f.config, []byte("listen: [\n"), 0o600)
	hup <- syscall.SIGHUP
	waitFor(t, func() bool { return strings.Contains(logs.String(), "reload failed") })
	if err := login("new-pass"); err != nil {
		t.Fatalf("login after a failed reload: %v", err)
	}

	if _, err := open.Retr(1); err != nil {
		t.Fatalf("session across reloads: %v", err)
	}
	open.Dele(1)
	// Drain: the open session may finish, and its QUIT still applies.
	cancel()
	time.Sleep(100 * time.Millisecond)
	if err := open.Quit(); err != nil {
		t.Fatalf("QUIT during drain: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if n, _ := f.mem.Count("alice@example.com", "INBOX"); n != 0 {
		t.Fatalf("%d messages left after QUIT during drain", n)
	}
	if strings.Contains(logs.String(), "local-pass") || strings.Contains(logs.String(), "upstream-secret") {
		t.Fatal("a password reached the log")
	}
}

func TestServeRefusesBadConfig(t *testing.T) {
	path := writeFile(t, "bad.yaml", "listen:\n  pop3: \"127.0.0.1:0\"\n  bogus: 1\n", 0o600)
	var stderr bytes.Buffer
	if code := serveExit(path, &stderr); code == 0 {
		t.Fatal("serve accepted a bad config")
	}
	if !strings.Contains(stderr.String(), "line 3") {
		t.Fatalf("error does not name the line: %s", stderr.String())
	}
}

func TestCheck(t *testing.T) {
	f := newFixture(t)
	var out bytes.Buffer
	if code := checkExit(f.config, &out, io.Discard); code != 0 {
		t.Fatalf("check: exit %d\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "user alice (upstream mem): ok, 1 messages") {
		t.Fatalf("check output:\n%s", out.String())
	}
	os.WriteFile(f.secret, []byte("wrong\n"), 0o600)
	out.Reset()
	if code := checkExit(f.config, &out, io.Discard); code != 1 {
		t.Fatalf("check with a wrong secret: exit %d", code)
	}
	if !strings.Contains(out.String(), "FAILED") {
		t.Fatalf("check output:\n%s", out.String())
	}
}

func waitFor(t *testing.T, cond func() bool) { t.Helper(); testenv.WaitFor(t, cond) }

var _ = pop3.ErrServerClosed

func TestProviderPresets(t *testing.T) {
	path := writeFile(t, "p.yaml", `listen:
  pop3: "127.0.0.1:0"
upstreams:
  f:
    provider: fastmail
  g:
    provider: gmail
    oauth2: {client_id: id}
passthrough:
  upstream: f
`, 0o600)
	_, pc, err := newSetup(path, nil).load()
	if err != nil {
		t.Fatal(err)
	}
	f, g := pc.Upstreams["f"], pc.Upstreams["g"]
	if f.Server.Address != "imap.fastmail.com:993" || f.Server.Security != upstream.SecurityImplicit || f.OAuth2 != "" || f.OnDelete != upstream.DeleteTrash {
		t.Errorf("fastmail = %+v", f)
	}
	if g.Server.Address != "imap.gmail.com:993" || g.OAuth2 != upstream.XOAuth2 || g.OnDelete != upstream.DeleteTrash || g.Trash != "[Gmail]/Trash" {
		t.Errorf("gmail = %+v", g)
	}

	// Passthrough cannot reach an OAuth2 upstream: it has no token to use.
	bad := writeFile(t, "b.yaml", `listen:
  pop3: "127.0.0.1:0"
upstreams:
  g:
    provider: gmail
    oauth2: {client_id: id}
passthrough:
  upstream: g
`, 0o600)
	var stderr bytes.Buffer
	if code := serveExit(bad, &stderr); code == 0 {
		t.Fatal("serve started with passthrough to an OAuth2 upstream")
	}
	if !strings.Contains(stderr.String(), "passthrough forwards passwords") {
		t.Fatalf("unclear error: %s", stderr.String())
	}
}

func TestUpstreamTuningKeys(t *testing.T) {
	path := writeFile(t, "t.yaml", `listen:
  pop3: "127.0.0.1:0"
upstreams:
  metered:
    address: "127.0.0.1:993"
    fetch_ahead: false
    keep_connection: 0s
  tuned:
    address: "127.0.0.1:993"
    keep_connection: 5m
  plain:
    address: "127.0.0.1:993"
passthrough:
  upstream: plain
`, 0o600)
	_, pc, err := newSetup(path, nil).load()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]struct {
		noFetchAhead bool
		keep         time.Duration
	}{
		"metered": {true, -1},
		"tuned":   {false, 5 * time.Minute},
		"plain":   {false, 60 * time.Second},
	} {
		u := pc.Upstreams[name]
		if u.NoFetchAhead != want.noFetchAhead || u.KeepConnection != want.keep {
			t.Errorf("%s: NoFetchAhead %v, KeepConnection %v; want %v, %v", name, u.NoFetchAhead, u.KeepConnection, want.noFetchAhead, want.keep)
		}
	}
}

func TestServeAppliesLimits(t *testing.T) {
	f := newFixture(t)
	cfg, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f.config, append(cfg, []byte("limits:\n  connections_per_ip: 1\n  login_delay: 300ms\n  login_delay_max: 300ms\n")...), 0o600)
	addrs, logs := startServe(t, f.config)

	first, err := pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// A second connection from the same address is refused in place of
	// the greeting.
	_, err = pop3client.Dial(addrs["pop3"])
	if err == nil || !strings.Contains(err.Error(), "[SYS/TEMP] Too many connections") {
		t.Fatalf("second connection: %v", err)
	}

	// A failed login delays the next attempt by 300ms from the failure;
	// the first attempt is not delayed.
	start := time.Now()
	if err := first.Login("alice", "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	if strings.Contains(logs.String(), "delaying login") {
		t.Fatalf("the first attempt was delayed:\n%s", logs)
	}
	if err := first.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond || !strings.Contains(logs.String(), "msg=\"delaying login\"") {
		t.Fatalf("the attempt after a failure took %v:\n%s", took, logs)
	}
	first.Quit()
}

func TestSecretsCommands(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "secrets.key")
	var out, stderr bytes.Buffer
	if code := newKeyExit(keyFile, &out, &stderr); code != 0 {
		t.Fatalf("new-key: exit %d: %s", code, stderr.String())
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	keyText, _ := os.ReadFile(keyFile)
	if code := newKeyExit(keyFile, io.Discard, io.Discard); code == 0 {
		t.Fatal("new-key replaced an existing key")
	}
	if after, _ := os.ReadFile(keyFile); !bytes.Equal(after, keyText) {
		t.Fatal("new-key changed an existing key file")
	}

	// set-password seals the upstream password, and the gateway opens it.
	f := newFixture(t)
	cfg, _ := os.ReadFile(f.config)
	os.WriteFile(f.config, append(cfg, []byte("secrets:\n  key_file: "+keyFile+"\n")...), 0o600)
	in := writeFile(t, "pw", "upstream-secret\n", 0o600)
	stdin, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out.Reset()
	if code := setPasswordExit(f.config, "alice", stdin, &out, &stderr); code != 0 {
		t.Fatalf("set-password: exit %d: %s", code, stderr.String())
	}
	sealed, _ := os.ReadFile(f.secret)
	if !secrets.IsSealed(sealed) || bytes.Contains(sealed, []byte("upstream-secret")) {
		t.Fatalf("the password file is not sealed: %q", sealed)
	}
	out.Reset()
	if code := checkExit(f.config, &out, io.Discard); code != 0 {
		t.Fatalf("check with a sealed password: exit %d\n%s", code, out.String())
	}

	// A sealed file without the key is a clear error at start.
	os.WriteFile(f.config, cfg, 0o600)
	stderr.Reset()
	if code := serveExit(f.config, &stderr); code == 0 ||
		!strings.Contains(stderr.String(), "is sealed, but secrets: no key_file or key_env is set") {
		t.Fatalf("serve with a sealed password and no key: exit %d: %s", code, stderr.String())
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestMetricsReadinessHealthcheck(t *testing.T) {
	f := newFixture(t)
	addrs, _ := startServe(t, f.config)
	base := "http://" + addrs["http"]

	// The upstream is probed at start, so the gateway is soon ready.
	waitFor(t, func() bool { code, _ := httpGet(t, base+"/readyz"); return code == 200 })

	c, err := pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("alice", "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	if err := c.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}
	msg, err := c.Retr(1)
	if err != nil {
		t.Fatal(err)
	}
	c.Dele(1)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	c.Close()

	want := []string{
		`pop3gw_logins_total{method="user",result="ok"} 1`,
		`pop3gw_logins_total{method="user",result="auth-failed"} 1`,
		`pop3gw_commands_total{verb="RETR"} 1`,
		`pop3gw_commands_total{verb="DELE"} 1`,
		`pop3gw_error_replies_total{code="AUTH"} 1`,
		fmt.Sprintf(`pop3gw_message_bytes_sent_total %d`, len(msg)),
		`pop3gw_deletes_applied_total{outcome="removed"} 1`,
		`pop3gw_sessions_total{result="ok"} 1`,
		`pop3gw_sessions_active 0`,
		`pop3gw_upstream_duration_seconds_count{operation="login"}`,
		`pop3gw_upstream_duration_seconds_count{operation="delete"} 1`,
		`pop3gw_cache_misses_total`,
		`go_goroutines`,
	}
	// The session's end is counted just after QUIT's reply.
	waitFor(t, func() bool {
		_, body := httpGet(t, base+"/metrics")
		return strings.Contains(body, `pop3gw_sessions_total{result="ok"} 1`)
	})
	_, body := httpGet(t, base+"/metrics")
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("metrics lack %s", w)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}

	var out bytes.Buffer
	if code := healthcheckExit(base+"/healthz", &out, io.Discard); code != 0 || out.String() != "ok\n" {
		t.Fatalf("healthcheck: exit %d, %q", code, out.String())
	}

	// The upstream goes away: the next login fails to connect, and the
	// gateway is no longer ready.
	f.mem.Close()
	if c, err := pop3client.Dial(addrs["pop3"]); err == nil {
		c.Login("alice", "local-pass")
		c.Close()
	}
	code, body := httpGet(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "upstream mem: unreachable") {
		t.Fatalf("readyz with the upstream down: %d %s", code, body)
	}
	if code := healthcheckExit(base+"/readyz", io.Discard, io.Discard); code != 1 {
		t.Fatalf("healthcheck of an unready gateway: exit %d", code)
	}
}

func TestServeProxyProtocol(t *testing.T) {
	f := newFixture(t)
	cfg, _ := os.ReadFile(f.config)
	os.WriteFile(f.config, append(cfg, []byte("proxy_protocol:\n  listeners: [pop3]\n  trusted: [127.0.0.1]\n")...), 0o600)
	addrs, logs := startServe(t, f.config)

	// A trusted balancer's header names the client.
	nc, err := net.Dial("tcp", addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(nc, "PROXY TCP4 192.0.2.7 127.0.0.1 5555 110\r\n")
	c, err := pop3client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The client's address is not loopback, so without TLS it may not
	// send a password: the limits and rules see the real client.
	if err := c.Login("alice", "local-pass"); err == nil || !strings.Contains(err.Error(), "Plaintext authentication disallowed") {
		t.Fatalf("plaintext login from a remote client: %v", err)
	}
	c.Quit()
	c.Close()
	waitFor(t, func() bool { return strings.Contains(logs.String(), "remote=192.0.2.7:5555") })

	// Anyone else's header is an unknown command.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	nc, err = d.Dial("tcp", addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c, err = pop3client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if reply, _ := c.Cmd("PROXY TCP4 192.0.2.8 127.0.0.1 5555 110"); !strings.HasPrefix(reply, "-ERR") {
		t.Fatalf("forged header: %q", reply)
	}
}

// A test starts the whole gateway with Start and stops it with Shutdown,
// which waits for the session in progress and then closes the listeners.
func TestStartAndShutdown(t *testing.T) {
	f := newFixture(t)
	s, err := Start(context.Background(), Options{Config: f.config, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	addrs := s.Addrs()
	c, err := pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}
	if code, _ := httpGet(t, "http://"+addrs["http"]+"/healthz"); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	if _, err := c.Retr(1); err != nil {
		t.Fatalf("RETR during shutdown: %v", err)
	}
	c.Quit()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, name := range []string{"pop3", "http"} {
		if nc, err := net.DialTimeout("tcp", addrs[name], time.Second); err == nil {
			nc.Close()
			t.Errorf("%s still accepts connections after Shutdown", name)
		}
	}
}
