package integration

import (
	"context"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// startGateway serves POP3 on loopback in front of the IMAP server at
// imapAddr, passing logins through unchanged. It returns the POP3 address.
func startGateway(t *testing.T, imapAddr string, onDelete upstream.DeleteMode) string {
	t.Helper()
	up := &proxy.Upstream{
		Name:     "dovecot",
		Server:   upstream.Server{Address: imapAddr, Security: upstream.SecurityNone, Timeout: 30 * time.Second},
		Mailbox:  "INBOX",
		OnDelete: onDelete,
	}
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	gw := proxy.New(&proxy.Config{
		Upstreams:   map[string]*proxy.Upstream{"dovecot": up},
		Passthrough: &proxy.Passthrough{Upstream: "dovecot"},
	}, cache.New(64<<20, 4<<20), log)
	srv := &pop3.Server{Backend: gw, Logger: log}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}
