package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/signal"
	"syscall"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/demo"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

func demoCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:1110", "POP3 address to listen on (loopback)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := runDemo(ctx, *listen, log, func(addr string) {
		fmt.Fprintf(stdout, "POP3 gateway demo on %s (user demo, password demo), in front of an in-memory IMAP server with %d sample messages.\n", addr, len(demo.Messages()))
		fmt.Fprintf(stdout, "Try:\n  curl -s pop3://demo:demo@%s/1\n", addr)
		fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
	}); err != nil {
		fmt.Fprintln(stderr, "gateway demo:", err)
		return 1
	}
	return 0
}

// runDemo serves the gateway on listen in front of an in-memory upstream
// seeded with sample mail, until ctx is done. The mail lives in memory, so
// every run starts from the same sample messages.
func runDemo(ctx context.Context, listen string, log *slog.Logger, ready func(addr string)) error {
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
	srv := &pop3.Server{Backend: gw, Logger: log, Implementation: "gateway " + version}
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
