package integration

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/dovecot"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// TestDovecotSeesTheClientAddress: with send_client_ip, a Dovecot that
// trusts the gateway logs (and would penalise) the POP3 client's address
// for a passthrough login, wrong or right, not the gateway's.
func TestDovecotSeesTheClientAddress(t *testing.T) {
	inst, err := dovecot.Start(dovecot.Options{Users: map[string]string{"bob": "bob-pass"}, Dir: t.TempDir(), TrustedNetworks: "127.0.0.1/32"})
	if errors.Is(err, dovecot.ErrNotInstalled) {
		testenv.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop() })

	gw := passthroughGateway(&proxy.Upstream{
		Name:     "dovecot",
		Server:   upstream.Server{Address: inst.IMAPAddr(), Security: upstream.SecurityNone, Timeout: 30 * time.Second, SendClientIP: true},
		Mailbox:  "INBOX",
		OnDelete: upstream.DeleteKeep,
	}, cache.New(1<<20, 1<<20), slog.New(slog.DiscardHandler))
	addr, _ := serve(t, &pop3.Server{Backend: gw, Logger: slog.New(slog.DiscardHandler), AllowInsecureAuth: true}, gw, "127.0.0.1:0")

	// The client connects from 127.0.0.2; the gateway reaches Dovecot
	// from 127.0.0.1.
	c, err := pop3client.New(haDialFrom(t, haClientIP, addr))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("bob", "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	if err := c.Login("bob", "bob-pass"); err != nil {
		t.Fatalf("login: %v\n%s", err, inst.LogTail())
	}
	c.Quit()
	var failed, ok bool
	testenv.WaitFor(t, func() bool {
		for line := range strings.SplitSeq(inst.LogTail(), "\n") {
			if !strings.Contains(line, "imap-login:") || !strings.Contains(line, "user=<bob>") {
				continue
			}
			if !strings.Contains(line, "rip=127.0.0.2,") {
				t.Fatalf("Dovecot logged another address than the client's: %s", line)
			}
			failed = failed || strings.Contains(line, "auth failed")
			ok = ok || strings.Contains(line, "Login: ")
		}
		return failed && ok
	})
}
