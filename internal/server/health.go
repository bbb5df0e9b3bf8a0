package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pop3gw/gateway/upstream"
)

// Readiness: an upstream counts as reachable when the last connection to it
// succeeded, within reachableFor. Upstreams nobody used for probeAfter are
// probed with a connection and greeting (no login), so an idle gateway
// still knows.
const (
	probeEvery   = 15 * time.Second
	probeAfter   = 30 * time.Second
	reachableFor = 2 * time.Minute
	probeTimeout = 10 * time.Second
)

// httpTimeouts bound each exchange with the HTTP listener, so a client
// that sends its request slowly, never reads the reply, or keeps idle
// connections open cannot pile up connections (slowloris). The answers
// are small and local; a probe or scrape needs far less.
var httpTimeouts = struct{ readHeader, read, write, idle time.Duration }{
	readHeader: 10 * time.Second,
	read:       30 * time.Second,
	write:      30 * time.Second,
	idle:       2 * time.Minute,
}

func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: httpTimeouts.readHeader,
		ReadTimeout:       httpTimeouts.read,
		WriteTimeout:      httpTimeouts.write,
		IdleTimeout:       httpTimeouts.idle,
	}
}

// health answers /readyz: the listeners are up, the service is not
// draining, and every configured upstream was reachable recently.
type health struct {
	listening atomic.Bool
	draining  atomic.Bool

	mu     sync.Mutex
	state  map[string]*reach // by upstream name
	checks []namedCheck      // asked at each /readyz
}

type namedCheck struct {
	name  string
	check func(context.Context) error
}

// check adds a dependency asked at each /readyz, such as the shared Redis.
func (h *health) check(name string, fn func(context.Context) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks = append(h.checks, namedCheck{name, fn})
}

type reach struct {
	ok  bool
	at  time.Time
	err string
}

func newHealth() *health { return &health{state: make(map[string]*reach)} }

// observe wraps an upstream's Observe function to record the outcome of
// each connection attempt to it.
func (h *health) observe(name string, next func(string, time.Duration, error)) func(string, time.Duration, error) {
	return func(op string, d time.Duration, err error) {
		if op == "connect" {
			h.record(name, err)
		}
		if next != nil {
			next(op, d, err)
		}
	}
}

func (h *health) record(name string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := &reach{ok: err == nil, at: time.Now()}
	if err != nil {
		r.err = err.Error()
	}
	h.state[name] = r
}

// probe connects to each upstream not contacted for probeAfter.
func (h *health) probe(ctx context.Context, servers map[string]upstream.Server) {
	for name, srv := range servers {
		h.mu.Lock()
		r := h.state[name]
		h.mu.Unlock()
		if r != nil && time.Since(r.at) < probeAfter {
			continue
		}
		srv.Timeout = min(srv.Timeout, probeTimeout)
		if srv.Timeout <= 0 {
			srv.Timeout = probeTimeout
		}
		if strings.HasPrefix(srv.Address, "https://") || strings.HasPrefix(srv.Address, "http://") {
			h.record(name, probeHTTP(ctx, srv))
			continue
		}
		obs := srv.Observe
		srv.Observe = h.observe(name, obs)
		if sess, err := upstream.Dial(ctx, &srv); err == nil {
			sess.Close()
		}
	}
}

// probeHTTP asks an API store (Graph) for its base URL without a token:
// any HTTP answer, a 401 included, shows the service reachable.
func probeHTTP(ctx context.Context, srv upstream.Server) error {
	ctx, cancel := context.WithTimeout(ctx, srv.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.Address, nil)
	if err != nil {
		return err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = srv.TLSConfig
	tr.DisableKeepAlives = true
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	return resp.Body.Close()
}

// run probes until ctx is done; servers returns the current upstreams.
func (h *health) run(ctx context.Context, servers func() map[string]upstream.Server) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		h.probe(ctx, servers())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ready reports whether the service should get new connections, and why
// not.
func (h *health) ready(ctx context.Context, upstreams []string) (bool, []string) {
	var problems []string
	if !h.listening.Load() {
		problems = append(problems, "listeners are not up")
	}
	if h.draining.Load() {
		problems = append(problems, "draining for shutdown")
	}
	sort.Strings(upstreams)
	h.mu.Lock()
	for _, name := range upstreams {
		switch r := h.state[name]; {
		case r == nil:
			problems = append(problems, fmt.Sprintf("upstream %s: not contacted yet", name))
		case !r.ok:
			problems = append(problems, fmt.Sprintf("upstream %s: unreachable: %s", name, r.err))
		case time.Since(r.at) > reachableFor:
			problems = append(problems, fmt.Sprintf("upstream %s: not contacted for %v", name, time.Since(r.at).Round(time.Second)))
		}
	}
	checks := h.checks
	h.mu.Unlock()
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := c.check(cctx); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", c.name, err))
		}
		cancel()
	}
	return len(problems) == 0, problems
}

func (h *health) readyHandler(upstreams func() []string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ok, problems := h.ready(r.Context(), upstreams())
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, strings.Join(problems, "\n")+"\n")
			return
		}
		io.WriteString(w, "ok\n")
	}
}
