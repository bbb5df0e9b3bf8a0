package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/demo"
	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// DemoOptions are the demo's settings (`gateway demo`).
type DemoOptions struct {
	Listen string // POP3 address; default DefaultDemoListen
	// HTTP, when set, serves GET /healthz and /readyz there, for a
	// container's health check.
	HTTP string
	// AllowInsecure accepts the demo's password in cleartext from any
	// address, not only from loopback: for a container, whose published
	// port is reached from the bridge network. The demo's mail and its
	// credentials are public samples.
	AllowInsecure bool
	Version       string // announced in the IMPLEMENTATION capability
	Logger        *slog.Logger
	// Ready, if set, is called with the bound POP3 and HTTP addresses
	// (http "" when HTTP is unset) once the demo serves.
	Ready func(pop3, http string)
}

// DefaultDemoListen is the demo's POP3 address unless told otherwise.
const DefaultDemoListen = "127.0.0.1:1110"

// Demo serves the gateway in front of an in-memory upstream seeded with
// sample mail (package demo), until ctx is done. The mail lives in memory,
// so every run starts from the same sample messages.
func Demo(ctx context.Context, opts DemoOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.Listen == "" {
		opts.Listen = DefaultDemoListen
	}
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
	srv := &pop3.Server{
		Backend:           gw,
		Logger:            log,
		Implementation:    "gateway " + opts.Version,
		Expire:            "NEVER",
		CanonicalName:     username.Canonical,
		AllowInsecureAuth: opts.AllowInsecure,
	}
	if opts.AllowInsecure {
		log.Warn("the demo accepts its public password in cleartext from any address that reaches it", "listen", opts.Listen)
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	var httpSrv *http.Server
	httpAddr := ""
	if opts.HTTP != "" {
		hl, err := net.Listen("tcp", opts.HTTP)
		if err != nil {
			srv.Shutdown(context.Background())
			return err
		}
		httpAddr = hl.Addr().String()
		mux := http.NewServeMux()
		ok := func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }
		mux.HandleFunc("GET /healthz", ok)
		mux.HandleFunc("GET /readyz", ok)
		httpSrv = newHTTPServer(mux)
		go func() {
			if err := httpSrv.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	if opts.Ready != nil {
		opts.Ready(ln.Addr().String(), httpAddr)
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	if httpSrv != nil {
		httpSrv.Shutdown(shutdownCtx)
	}
	return serveErr
}
