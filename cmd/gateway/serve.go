package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/boltstate"
	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/guard"
	"github.com/pop3gw/gateway/internal/listener"
	"github.com/pop3gw/gateway/internal/logging"
	"github.com/pop3gw/gateway/internal/metrics"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// drainTimeout bounds how long SIGTERM waits for sessions to finish; the
// serve command's -drain flag sets it.
var drainTimeout = 30 * time.Second

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	lvl, err := logging.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: logging.ReplaceAttr}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format: %q is not json or text", format)
}

func serveCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (YAML)")
	logFormat := fs.String("log-format", "text", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: trace (every command and status line, passwords redacted), debug, info, warn or error")
	fs.DurationVar(&drainTimeout, "drain", drainTimeout, "on SIGTERM, how long sessions may go on before they are closed (deleting nothing)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "gateway serve: -config FILE is required")
		return 2
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "gateway serve:", err)
		return 2
	}
	slog.SetDefault(log)
	procCgroup, _ := os.ReadFile("/proc/self/cgroup")
	memLimitSource = limitMemory(os.Getenv, procCgroup, "/sys/fs/cgroup")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := serve(ctx, *configPath, log, hup, nil); err != nil {
		log.Error("gateway stopped", "err", err)
		return 1
	}
	return 0
}

// service is a running gateway.
type service struct {
	log     *slog.Logger
	setup   *setup
	gateway *proxy.Gateway
	pop3    *pop3.Server
	cert    certificate
	http    *http.Server
	addrs   map[string]string // listener name -> bound address
	metrics *metrics.Metrics
	health  *health
	// upstreams are the configured upstreams, for readiness; replaced on
	// reload.
	upstreams atomic.Pointer[map[string]upstream.Server]
}

// serve runs the gateway until ctx is done, then drains. ready, if not nil,
// receives the bound addresses once the listeners are up.
func serve(ctx context.Context, path string, log *slog.Logger, hup <-chan os.Signal, ready chan<- map[string]string) error {
	st := newSetup(path, log)
	s := &service{log: log, setup: st, addrs: make(map[string]string), health: newHealth(), metrics: metrics.New()}
	st.observe = func(name string) func(string, time.Duration, error) {
		return s.health.observe(name, s.metrics.ObserveUpstream)
	}
	cfg, pc, err := st.load()
	if err != nil {
		return err
	}
	st.warn(cfg)
	s.setUpstreams(pc)
	var tlsConfig = serverTLS(cfg, &s.cert)
	if tlsConfig != nil {
		if err := s.cert.load(cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			return err
		}
	}
	msgCache := cache.New(int64(cfg.Cache.Memory), int64(cfg.Cache.MaxMessage))
	s.metrics.WatchCache(msgCache)
	s.gateway = proxy.New(pc, msgCache, log)
	budget := cache.NewBudget(memoryBounds(cfg.Cache, log))
	s.metrics.WatchBudget(budget)
	s.gateway.SetBudget(budget)
	delays := guard.Options{
		Base: time.Duration(cfg.Limits.LoginDelay),
		Max:  time.Duration(cfg.Limits.LoginDelayMax),
	}
	var loginGuard pop3.LoginGuard
	if cfg.Redis == nil {
		loginGuard = guard.NewMemory(delays)
	} else {
		shared, err := sharedState(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer shared.Close()
		s.gateway.SetLocker(shared)
		s.gateway.SetState(shared)
		shared.CheckPersistence(ctx)
		loginGuard = shared.Guard(delays)
		s.health.check("redis", shared.Ping)
		log.Info("sharing maildrop locks, login counters and UIDLs through Redis", "addr", cfg.Redis.Address)
	}
	closeState, err := s.localState(cfg)
	if err != nil {
		return err
	}
	defer closeState()
	s.pop3 = &pop3.Server{
		Observer:           s.metrics,
		Backend:            s.gateway,
		TLSConfig:          tlsConfig,
		AllowInsecureAuth:  cfg.Auth.AllowInsecure,
		Implementation:     "gateway " + version,
		Logger:             log,
		Guard:              loginGuard,
		MaxConnsPerIP:      max(cfg.Limits.ConnectionsPerIP, 0), // -1: no limit
		MaxSessionsPerUser: max(cfg.Limits.SessionsPerUser, 0),
		MaxConnections:     max(cfg.Limits.MaxConnections, 0),
		LoginTimeout:       time.Duration(cfg.Limits.LoginTimeout),
	}
	s.pop3.RequireTLSOnLoopback = cfg.Auth.RequireTLSOnLoopback
	if d := cfg.Auth.MinRefusalTime; d != nil {
		s.pop3.MinRefusalTime = time.Duration(*d)
	}

	var trusted []netip.Prefix
	if pp := cfg.ProxyProtocol; pp != nil {
		if trusted, err = listener.ParsePrefixes(pp.Trusted); err != nil {
			return fmt.Errorf("proxy_protocol.trusted: %w", err)
		}
	}
	errc := make(chan error, 3)
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
			ln = listener.ProxyProtocol(ln, trusted, time.Duration(cfg.ProxyProtocol.HeaderTimeout))
			log.Info("listening", "listener", name, "addr", ln.Addr().String(), "proxy_protocol", true, "trusted", cfg.ProxyProtocol.Trusted)
		} else {
			log.Info("listening", "listener", name, "addr", ln.Addr().String())
		}
		go func() {
			if err := serveFn(ln); err != nil && !errors.Is(err, pop3.ErrServerClosed) && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
		return nil
	}
	if err := listen("pop3", cfg.Listen.POP3, s.pop3.Serve); err != nil {
		return err
	}
	if err := listen("pop3s", cfg.Listen.POP3S, s.pop3.ServeTLS); err != nil {
		s.pop3.Shutdown(context.Background())
		return err
	}
	if cfg.Listen.HTTP != "" {
		s.http = newHTTPServer(s.httpHandler())
		if err := listen("http", cfg.Listen.HTTP, s.http.Serve); err != nil {
			s.pop3.Shutdown(context.Background())
			return err
		}
	}
	s.health.listening.Store(true)
	go s.health.run(ctx, func() map[string]upstream.Server { return *s.upstreams.Load() })
	if ready != nil {
		ready <- s.addrs
	}

	for {
		select {
		case <-hup:
			s.reload()
		case err := <-errc:
			s.shutdown()
			return err
		case <-ctx.Done():
			s.shutdown()
			return nil
		}
	}
}

// localState opens the UIDL store in data_dir when no Redis holds it.
// Without either, the gateway's default in-memory store stays, with a
// warning: it is lost at every restart.
func (s *service) localState(cfg *config.Config) (closeState func(), err error) {
	switch {
	case cfg.Redis != nil:
		if cfg.DataDir != "" {
			s.log.Warn("data_dir is not used: redis holds the UIDL store", "data_dir", cfg.DataDir)
		}
		return func() {}, nil
	case cfg.DataDir == "":
		s.log.Warn("neither data_dir nor redis is set: UIDLs and deletes kept on the server are remembered in memory only; " +
			"after a restart, mail of a mailbox whose UIDVALIDITY changed is downloaded again, and mail deleted with on_delete seen or keep is listed again")
		return func() {}, nil
	}
	st, err := boltstate.Open(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	s.gateway.SetState(st)
	s.log.Info("UIDL store opened", "path", st.Path())
	return func() {
		if err := st.Close(); err != nil {
			s.log.Error("closing the UIDL store", "err", err)
		}
	}, nil
}

// reload re-reads the config file and swaps in users, secrets and the
// certificate. A bad file is reported and the running config kept.
func (s *service) reload() {
	cfg, pc, err := s.setup.load()
	if err == nil && cfg.TLS.CertFile != "" && s.pop3.TLSConfig != nil {
		err = s.cert.load(cfg.TLS.CertFile, cfg.TLS.KeyFile)
	}
	if err != nil {
		s.log.Error("reload failed; keeping the running configuration", "err", err)
		return
	}
	s.setup.warn(cfg)
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

func (s *service) setUpstreams(pc *proxy.Config) {
	servers := make(map[string]upstream.Server, len(pc.Upstreams))
	for name, u := range pc.Upstreams {
		servers[name] = u.Server
	}
	s.upstreams.Store(&servers)
}

func (s *service) shutdown() {
	s.health.draining.Store(true)
	s.log.Info("shutting down; waiting for sessions", "sessions", s.pop3.Sessions(), "timeout", drainTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := s.pop3.Shutdown(ctx); err != nil {
		s.log.Warn("sessions closed at the drain deadline", "err", err)
	}
	s.gateway.Close()
	if s.http != nil {
		s.http.Shutdown(ctx)
	}
}

func (s *service) httpHandler() http.Handler {
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
