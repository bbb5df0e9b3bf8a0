package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/metrics"
	"github.com/pop3gw/gateway/internal/proxyproto"
	"github.com/pop3gw/gateway/internal/state/boltstate"
	"github.com/pop3gw/gateway/internal/state/guard"
	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/submission"
	"github.com/pop3gw/gateway/upstream"
)

// Options are what a gateway needs besides its config file.
type Options struct {
	// Config is the path of the YAML config file; it is read again on
	// Reload.
	Config string
	// Logger receives the service's logs; nil: slog.Default().
	Logger *slog.Logger
	// Drain bounds how long Shutdown from Run waits for sessions to
	// finish before it closes them (deleting nothing); 0: 30 seconds.
	Drain time.Duration
	// Version is announced in the POP3 IMPLEMENTATION capability.
	Version string
	// MemoryLimitSource says where GOMEMLIMIT came from (see LimitMemory),
	// for the log line of the memory bounds.
	MemoryLimitSource string
	// Ready, if not nil, is called by Run with the bound addresses once
	// the listeners are up.
	Ready func(addrs map[string]string)
}

// DefaultDrain is Options.Drain when it is 0.
const DefaultDrain = 30 * time.Second

// Server is a running gateway: POP3 listeners, the HTTP listener for
// health, readiness and metrics, and the state stores behind them.
type Server struct {
	opts    Options
	log     *slog.Logger
	setup   *setup
	gateway *proxy.Gateway
	pop3    *pop3.Server
	smtp    *submission.Server // nil: no submission listener
	relay   *relay
	cert    certificate
	// listenerCerts are the certificates of the listeners list, by
	// listener name.
	listenerCerts map[string]*listenerTLS
	http          *http.Server
	addrs         map[string]string // listener name -> bound address
	metrics       *metrics.Metrics
	health        *health
	// upstreams are the configured upstreams, for readiness; replaced on
	// reload.
	upstreams atomic.Pointer[map[string]upstream.Server]
	errc      chan error         // a listener that stopped serving
	stop      context.CancelFunc // stops the health probes
	closers   []func()           // state stores, closed last by Shutdown
}

// Run starts the gateway, reloads it at each value from hup, and shuts it
// down, draining sessions for at most opts.Drain, when ctx is done. It
// returns an error if the gateway cannot start or a listener fails.
func Run(ctx context.Context, opts Options, hup <-chan os.Signal) error {
	s, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	if opts.Ready != nil {
		opts.Ready(s.Addrs())
	}
	for {
		select {
		case <-hup:
			s.Reload()
		case err := <-s.errc:
			s.drain()
			return err
		case <-ctx.Done():
			s.drain()
			return nil
		}
	}
}

// Start reads the config file, opens the state stores and starts serving
// on the configured listeners. The caller stops it with Shutdown.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.Drain <= 0 {
		opts.Drain = DefaultDrain
	}
	st := newSetup(opts.Config, log)
	s := &Server{opts: opts, log: log, setup: st, addrs: make(map[string]string), health: newHealth(), metrics: metrics.New(), errc: make(chan error, 3)}
	defer func() {
		if err != nil {
			s.closeState()
		}
	}()
	st.observe = func(name string) func(string, time.Duration, error) {
		return s.health.observe(name, s.metrics.ObserveUpstream)
	}
	cfg, pc, err := st.load()
	if err != nil {
		return nil, err
	}
	st.warn(cfg)
	s.setUpstreams(pc)
	var tlsConfig = serverTLS(cfg.ListenTLS(), &s.cert)
	if tlsConfig != nil {
		if err := s.cert.load(cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			return nil, err
		}
	}
	listeners, err := s.listenerTLS(cfg)
	if err != nil {
		return nil, err
	}
	msgCache := cache.New(int64(cfg.Cache.Memory), int64(cfg.Cache.MaxMessage))
	s.metrics.WatchCache(msgCache)
	s.gateway = proxy.New(pc, msgCache, log)
	budget := cache.NewBudget(memoryBounds(cfg.Cache, opts.MemoryLimitSource, log))
	s.metrics.WatchBudget(budget)
	s.gateway.SetBudget(budget)
	delays := guard.Options{
		Base: time.Duration(cfg.Limits.LoginDelay),
		Max:  time.Duration(cfg.Limits.LoginDelayMax),
	}
	var loginGuard pop3.LoginGuard
	// The relay's hourly message count: this process's own, unless
	// replicas share one.
	var sentCounter submission.SentCounter
	if cfg.Redis == nil {
		loginGuard = guard.NewMemory(delays)
	} else {
		shared, err := sharedState(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, func() { shared.Close() })
		s.gateway.SetLocker(shared)
		s.gateway.SetState(shared)
		shared.CheckPersistence(ctx)
		loginGuard = shared.Guard(delays)
		sentCounter = shared
		s.gateway.SetRefusalCounter(shared)
		s.health.check("redis", shared.Ping)
		log.Info("sharing maildrop locks, login counters, UIDLs, relayed message counts and refused passthrough logins through Redis", "addr", cfg.Redis.Address)
	}
	if err := s.localState(cfg); err != nil {
		return nil, err
	}
	s.pop3 = &pop3.Server{
		Observer:          s.metrics,
		Backend:           s.gateway,
		TLSConfig:         tlsConfig,
		AllowInsecureAuth: cfg.Auth.AllowInsecure,
		Implementation:    "gateway " + opts.Version,
		// The gateway deletes only what a client deleted, at its QUIT
		// (RFC 2449 §6.7): mail left on the server stays, whatever
		// on_delete does with deleted mail.
		Expire:             "NEVER",
		LoginDelay:         time.Duration(cfg.Limits.PollInterval),
		Logger:             log,
		Guard:              loginGuard,
		MaxConnsPerIP:      max(cfg.Limits.ConnectionsPerIP, 0), // -1: no limit
		MaxSessionsPerUser: max(cfg.Limits.SessionsPerUser, 0),
		MaxConnections:     max(cfg.Limits.MaxConnections, 0),
		LoginTimeout:       time.Duration(cfg.Limits.LoginTimeout),
		CanonicalName:      username.Canonical,
	}
	s.pop3.RequireTLSOnLoopback = cfg.Auth.RequireTLSOnLoopback
	if d := cfg.Auth.MinRefusalTime; d != nil {
		s.pop3.MinRefusalTime = time.Duration(*d)
	}

	var trusted []netip.Prefix
	if pp := cfg.ProxyProtocol; pp != nil {
		if trusted, err = proxyproto.ParsePrefixes(pp.Trusted); err != nil {
			return nil, fmt.Errorf("proxy_protocol.trusted: %w", err)
		}
	}
	listen := func(name, addr string, serveFn func(net.Listener) error) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s %s: %w", name, addr, err)
		}
		s.addrs[name] = ln.Addr().String()
		if cfg.ProxyProtocol.Enabled(name) {
			ln = proxyproto.Wrap(ln, trusted, time.Duration(cfg.ProxyProtocol.HeaderTimeout))
			log.Info("listening", "listener", name, "addr", ln.Addr().String(), "proxy_protocol", true, "trusted", cfg.ProxyProtocol.Trusted)
		} else {
			log.Info("listening", "listener", name, "addr", ln.Addr().String())
		}
		go func() {
			if err := serveFn(ln); err != nil && !errors.Is(err, pop3.ErrServerClosed) && !errors.Is(err, http.ErrServerClosed) {
				select {
				case s.errc <- fmt.Errorf("%s: %w", name, err):
				default: // Run reports the first failure only
				}
			}
		}()
		return nil
	}
	if err := listen("pop3", cfg.Listen.POP3, s.pop3.Serve); err != nil {
		return nil, err
	}
	if err := listen("pop3s", cfg.Listen.POP3S, s.pop3.ServeTLS); err != nil {
		s.pop3.Shutdown(context.Background())
		return nil, err
	}
	// Each listener of the list with its own TLS configuration (nil:
	// none); a door of another protocol takes the same.
	for _, l := range cfg.Listeners {
		tc := listeners[l.Name].config
		var serveFn func(net.Listener) error
		switch l.Protocol {
		case config.ProtocolPOP3:
			serveFn = func(ln net.Listener) error { return s.pop3.ServeListener(ln, tc, false) }
		case config.ProtocolPOP3S:
			serveFn = func(ln net.Listener) error { return s.pop3.ServeListener(ln, tc, true) }
		default:
			s.pop3.Shutdown(context.Background())
			return nil, fmt.Errorf("listeners %s: protocol %s is not served", l.Name, l.Protocol)
		}
		if err := listen(l.Name, l.Address, serveFn); err != nil {
			s.pop3.Shutdown(context.Background())
			return nil, err
		}
	}
	if cfg.Listen.SubmissionEnabled() {
		routes, err := newRelayRoutes(cfg)
		if err != nil {
			s.pop3.Shutdown(context.Background())
			return nil, err
		}
		s.relay = &relay{gateway: s.gateway}
		s.relay.routes.Store(routes)
		s.smtp = &submission.Server{
			Backend:              s.relay,
			TLSConfig:            tlsConfig,
			AllowInsecureAuth:    cfg.Auth.AllowInsecure,
			RequireTLSOnLoopback: cfg.Auth.RequireTLSOnLoopback,
			Logger:               log,
			Observer:             s.metrics,
			Guard:                loginGuard, // one count of failures for both doors
			CanonicalName:        username.Canonical,
			MinRefusalTime:       s.pop3.MinRefusalTime,
			MaxConnections:       max(cfg.Limits.MaxConnections, 0),
			MaxConnsPerIP:        max(cfg.Limits.ConnectionsPerIP, 0),
			MaxSessionsPerUser:   max(cfg.Limits.SessionsPerUser, 0),
			LoginTimeout:         time.Duration(cfg.Limits.LoginTimeout),
			MaxRecipients:        cfg.Limits.MaxRecipients,
			MessagesPerHour:      cfg.Limits.MessagesPerHour,
			Sent:                 sentCounter,
			Capabilities:         submissionCapabilities(ctx, routes, log),
		}
		for _, l := range []struct {
			name, addr string
			serve      func(net.Listener) error
		}{{"submission", cfg.Listen.Submission, s.smtp.Serve}, {"submissions", cfg.Listen.Submissions, s.smtp.ServeTLS}} {
			if err := listen(l.name, l.addr, l.serve); err != nil {
				s.pop3.Shutdown(context.Background())
				s.smtp.Shutdown(context.Background())
				return nil, err
			}
		}
	}
	if cfg.Listen.HTTP != "" {
		s.http = newHTTPServer(s.httpHandler())
		if err := listen("http", cfg.Listen.HTTP, s.http.Serve); err != nil {
			s.pop3.Shutdown(context.Background())
			if s.smtp != nil {
				s.smtp.Shutdown(context.Background())
			}
			return nil, err
		}
	}
	s.health.listening.Store(true)
	probeCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	go s.health.run(probeCtx, func() map[string]upstream.Server { return *s.upstreams.Load() })
	return s, nil
}

// Addrs returns the bound address of each listener, by name (pop3, pop3s,
// http).
func (s *Server) Addrs() map[string]string { return maps.Clone(s.addrs) }

// Err receives the error of a listener that stopped serving.
func (s *Server) Err() <-chan error { return s.errc }

// localState opens the UIDL store in data_dir when no Redis holds it.
// Without either, the gateway's default in-memory store stays, with a
// warning: it is lost at every restart.
func (s *Server) localState(cfg *config.Config) error {
	switch {
	case cfg.Redis != nil:
		if cfg.DataDir != "" {
			s.log.Warn("data_dir is not used: redis holds the UIDL store", "data_dir", cfg.DataDir)
		}
		return nil
	case cfg.DataDir == "":
		s.log.Warn("neither data_dir nor redis is set: UIDLs and deletes kept on the server are remembered in memory only; " +
			"after a restart, mail of a mailbox whose UIDVALIDITY changed is downloaded again, and mail deleted with on_delete seen or keep is listed again")
		return nil
	}
	st, err := boltstate.Open(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	s.gateway.SetState(st)
	s.log.Info("UIDL store opened", "path", st.Path())
	s.closers = append(s.closers, func() {
		if err := st.Close(); err != nil {
			s.log.Error("closing the UIDL store", "err", err)
		}
	})
	return nil
}

// Reload re-reads the config file and swaps in users, secrets and the
// certificate. A bad file is reported and the running config kept.
func (s *Server) Reload() {
	cfg, pc, err := s.setup.load()
	if err == nil && cfg.TLS.CertFile != "" && s.pop3.TLSConfig != nil {
		err = s.cert.load(cfg.TLS.CertFile, cfg.TLS.KeyFile)
	}
	if err == nil {
		err = s.reloadListenerCerts(cfg)
	}
	if err != nil {
		s.log.Error("reload failed; keeping the running configuration", "err", err)
		return
	}
	s.setup.warn(cfg)
	if s.relay != nil {
		routes, err := newRelayRoutes(cfg)
		if err != nil {
			s.log.Error("reload failed; keeping the running configuration", "err", err)
			return
		}
		s.relay.routes.Store(routes)
	}
	s.setUpstreams(pc)
	s.gateway.Reload(pc)
	s.log.Info("configuration reloaded", "users", len(pc.Users), "upstreams", len(pc.Upstreams))
}

// load reads and validates the file, checks that every secret it names can
// be read, and builds the gateway's configuration.
func (st *setup) load() (*config.Config, *proxy.Config, error) {
	cfg, err := config.Load(st.path)
	if err != nil {
		return nil, nil, err
	}
	if err := cfg.CheckSecrets(); err != nil {
		return nil, nil, err
	}
	pc, err := st.gatewayConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return cfg, pc, nil
}

// warn logs the configuration's warnings, and each user who cannot log in
// until authorised.
func (st *setup) warn(cfg *config.Config) {
	for _, w := range cfg.Warnings() {
		st.log.Warn(w)
	}
	for _, name := range cfg.MissingTokens() {
		st.log.Warn("no OAuth2 token yet: this user cannot log in until authorised",
			"user", name, "run", fmt.Sprintf("gateway oauth2 login -config %s -user %s", st.path, name))
	}
}

func (s *Server) setUpstreams(pc *proxy.Config) {
	servers := make(map[string]upstream.Server, len(pc.Upstreams))
	for name, u := range pc.Upstreams {
		servers[name] = u.Server
	}
	s.upstreams.Store(&servers)
}

// drain shuts the server down, giving sessions Options.Drain to finish.
func (s *Server) drain() {
	s.health.draining.Store(true)
	s.log.Info("shutting down; waiting for sessions", "sessions", s.pop3.Sessions(), "timeout", s.opts.Drain)
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Drain)
	defer cancel()
	s.Shutdown(ctx)
}

// Shutdown turns /readyz to 503, stops accepting connections and waits for
// the sessions to end until ctx is done; sessions still open then are
// closed and delete nothing. Then it closes the upstream connections, the
// HTTP listener and the state stores.
func (s *Server) Shutdown(ctx context.Context) error {
	s.health.draining.Store(true)
	smtpDone := make(chan struct{})
	go func() {
		defer close(smtpDone)
		if s.smtp != nil {
			if err := s.smtp.Shutdown(ctx); err != nil {
				s.log.Warn("submission sessions closed at the drain deadline", "err", err)
			}
		}
	}()
	err := s.pop3.Shutdown(ctx)
	<-smtpDone
	if err != nil {
		s.log.Warn("sessions closed at the drain deadline", "err", err)
	}
	s.gateway.Close()
	if s.http != nil {
		s.http.Shutdown(ctx)
	}
	s.stop()
	s.closeState()
	return err
}

// closeState closes the state stores, last opened first.
func (s *Server) closeState() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /readyz", s.health.readyHandler(func() []string {
		var names []string
		for name := range *s.upstreams.Load() {
			names = append(names, name)
		}
		return names
	}))
	mux.Handle("GET /metrics", s.metrics.Handler())
	return mux
}
