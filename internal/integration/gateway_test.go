package integration

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// startGateway serves POP3 on loopback in front of the IMAP server at
// imapAddr, passing logins through unchanged. It returns the POP3 address.
func startGateway(t *testing.T, imapAddr string, onDelete upstream.DeleteMode) string {
	t.Helper()
	return startGatewayFor(t, &proxy.Upstream{
		Name:     "dovecot",
		Server:   upstream.Server{Address: imapAddr, Security: upstream.SecurityNone, Timeout: 30 * time.Second},
		Mailbox:  "INBOX",
		OnDelete: onDelete,
	})
}

// startGatewayFor serves POP3 on loopback in front of up, passing logins
// through unchanged, and returns the POP3 address.
func startGatewayFor(t *testing.T, up *proxy.Upstream) string {
	t.Helper()
	log := testLogger()
	gw := passthroughGateway(up, cache.New(64<<20, 4<<20), log)
	addr, _ := serve(t, &pop3.Server{Backend: gw, Logger: log}, gw, "127.0.0.1:0")
	return addr
}

// testLogger logs warnings to stderr, and everything with -v.
func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// faultLogger is the log of a gateway that meets faults on purpose: its
// warnings are expected, so they are shown only when the test fails (or
// with -v).
func faultLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return testLogger()
	}
	var buf testenv.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("gateway log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// passthroughGateway is a gateway that passes every login through,
// unchanged, to up.
func passthroughGateway(up *proxy.Upstream, c *cache.Cache, log *slog.Logger) *proxy.Gateway {
	return proxy.New(&proxy.Config{
		Upstreams:   map[string]*proxy.Upstream{up.Name: up},
		Passthrough: &proxy.Passthrough{Upstream: up.Name},
	}, c, log)
}

// serve runs srv, whose backend is gw, on a listener at listen (a port of
// 0 for any) until stop, which the end of the test calls too: the server
// shuts down, then the gateway closes, as in gateway serve.
func serve(t *testing.T, srv *pop3.Server, gw *proxy.Gateway, listen string) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	// A gateway restarted at the address it had: an outgoing connection
	// may have been given that port as its own meanwhile, until it closes.
	for deadline := time.Now().Add(15 * time.Second); errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		ln, err = net.Listen("tcp", listen)
	}
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		gw.Close()
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}
