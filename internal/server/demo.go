package server

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/demo"
	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// Demo serves the gateway on listen in front of an in-memory upstream
// seeded with sample mail (package demo), until ctx is done. The mail lives
// in memory, so every run starts from the same sample messages. version is
// announced in the IMPLEMENTATION capability.
func Demo(ctx context.Context, listen, version string, log *slog.Logger, ready func(addr string)) error {
	mem, err := demo.Start()
	if err != nil {
		return err
	}
	defer mem.Close()
	up := &proxy.Upstream{
		Name:     "demo",
		Server:   upstream.Server{Address: mem.Addr(), Security: upstream.SecurityNone, Timeout: 30 * time.Second},
		Mailbox:  "INBOX",
		OnDelete: upstream.DeleteExpunge,
	}
	gw := proxy.New(&proxy.Config{
		Upstreams:   map[string]*proxy.Upstream{"demo": up},
		Passthrough: &proxy.Passthrough{Upstream: "demo"},
	}, cache.New(64<<20, 8<<20), log)
	// The demo's mail lives in memory; so does what it records of it.
	gw.SetState(proxy.NewMemoryState())
	srv := &pop3.Server{Backend: gw, Logger: log, Implementation: "gateway " + version, CanonicalName: username.Canonical}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	ready(ln.Addr().String())
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	return nil
}
