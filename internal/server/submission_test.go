package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/redistest"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/submission"
)

// TestRelayLogin: the relay resolves logins exactly as POP3 does (a
// mapped user by its local password, in any case; any other name passed
// through with its own password) and allows the senders of the account.
func TestRelayLogin(t *testing.T) {
	hash, err := passwd.Hash("local-pass")
	if err != nil {
		t.Fatal(err)
	}
	gw := proxy.New(&proxy.Config{
		Upstreams: map[string]*proxy.Upstream{"corp": {Name: "corp"}, "other": {Name: "other"}},
		Users: map[string]*proxy.User{"alice": {
			Name: "alice", PasswordHash: hash, Upstream: "corp", UpstreamUser: "alice@example.com",
			UpstreamPassword: func() (string, error) { return "upstream-secret", nil },
		}},
		Passthrough: &proxy.Passthrough{Upstream: "corp", Domains: map[string]string{"elsewhere.example": "other"}},
	}, cache.New(0, 0), nil)
	defer gw.Close()
	corp := &submission.Upstream{Name: "corp", Address: "127.0.0.1:9"}
	r := &relay{gateway: gw}
	r.routes.Store(&relayRoutes{
		upstreams:  map[string]*submission.Upstream{"corp": corp},
		mechanisms: map[string]string{},
		addresses:  map[string][]string{"alice": {"scanner@example.com"}},
	})
	ctx := context.Background()
	for _, name := range []string{"alice", "ALICE"} {
		acct, err := r.Login(ctx, &submission.LoginInfo{Username: name, Password: "local-pass"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if acct.Upstream != corp || acct.Username != "alice@example.com" || acct.Password != "upstream-secret" ||
			!slices.Equal(acct.Senders, []string{"alice@example.com", "scanner@example.com"}) || acct.Key != "corp/alice@example.com" {
			t.Errorf("%s: %+v", name, acct)
		}
	}
	if _, err := r.Login(ctx, &submission.LoginInfo{Username: "alice", Password: "upstream-secret"}); !errors.Is(err, submission.ErrAuthFailed) {
		t.Errorf("the upstream password as the local one: %v", err)
	}
	acct, err := r.Login(ctx, &submission.LoginInfo{Username: "Bob@Example.org", Password: "bobs-own"})
	if err != nil {
		t.Fatal(err)
	}
	if acct.Username != "Bob@Example.org" || acct.Password != "bobs-own" || !slices.Equal(acct.Senders, []string{"Bob@Example.org"}) {
		t.Errorf("passthrough: %+v", acct)
	}
	if _, err := r.Login(ctx, &submission.LoginInfo{Username: "carol@elsewhere.example", Password: "x"}); err == nil || errors.Is(err, submission.ErrAuthFailed) {
		t.Errorf("an upstream without a submission endpoint: %v, want a temporary failure", err)
	}
}

// TestRelayHourlyLimitShared: two gateways with one Redis share the
// relay's hourly message count (limits.messages_per_hour): an account's
// devices get one allowance whichever replica they reach.
func TestRelayHourlyLimitShared(t *testing.T) {
	redisAddr := redistest.Start(t)
	up := acceptAllSMTP(t)
	dir := t.TempDir()
	hash, err := passwd.Hash("local-pass")
	if err != nil {
		t.Fatal(err)
	}
	passFile := filepath.Join(dir, "upstream.pass")
	if err := os.WriteFile(passFile, []byte("upstream-pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
  submission: "127.0.0.1:0"
redis:
  address: %q
limits:
  messages_per_hour: 3
upstreams:
  corp:
    address: "127.0.0.1:9"
    tls: none
    submission: {address: %q, tls: none}
users:
  scanner:
    password_hash: %q
    upstream: corp
    upstream_user: scanner@example.com
    upstream_password_file: %s
`, redisAddr, up, hash, passFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	var relays []*smtp.Client
	for range 2 {
		s, err := Start(context.Background(), Options{Config: path, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s.Shutdown(ctx)
		})
		c, err := smtp.Dial(s.Addrs()["submission"])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Auth(sasl.NewPlainClient("", "scanner", "local-pass")); err != nil {
			t.Fatal(err)
		}
		relays = append(relays, c)
	}
	send := func(c *smtp.Client) error {
		return c.SendMail("scanner@example.com", []string{"bob@example.org"}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	}
	// Two through the first replica, one through the second: three of
	// three.
	for i, c := range []*smtp.Client{relays[0], relays[0], relays[1]} {
		if err := send(c); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	for i, c := range relays {
		var se *smtp.SMTPError
		if err := send(c); !errors.As(err, &se) || se.Code != 450 || !strings.Contains(se.Message, "limits.messages_per_hour") {
			t.Errorf("a fourth message through replica %d: %v, want 450 naming limits.messages_per_hour", i+1, err)
		}
		c.Reset()
	}
}

// acceptAllSMTP is a submission server on loopback that takes any login
// and any message, and returns its address.
func acceptAllSMTP(t *testing.T) string {
	t.Helper()
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return acceptSession{}, nil }))
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type acceptSession struct{}

func (acceptSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (acceptSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(string, string, string) error { return nil }), nil
}
func (acceptSession) Mail(string, *smtp.MailOptions) error { return nil }
func (acceptSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (acceptSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}
func (acceptSession) Reset()        {}
func (acceptSession) Logout() error { return nil }
