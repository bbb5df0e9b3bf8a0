// Package metrics exports what the gateway does in the Prometheus text
// format: sessions, logins, commands, errors by response code, octets
// sent, deletes, upstream latency by operation and the message cache.
package metrics

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/pop3"
)

const namespace = "pop3gw"

// Metrics holds the gateway's collectors. It implements pop3.Observer, and
// ObserveUpstream fits upstream.Server.Observe.
type Metrics struct {
	registry *prometheus.Registry

	sessionsActive prometheus.Gauge
	sessions       *prometheus.CounterVec
	logins         *prometheus.CounterVec
	commands       *prometheus.CounterVec
	errors         *prometheus.CounterVec
	sent           prometheus.Counter
	deleted        *prometheus.CounterVec
	upstream       *prometheus.HistogramVec
	upstreamErrors *prometheus.CounterVec
	smtp           submissionCollectors
}

var _ pop3.Observer = (*Metrics)(nil)

// New registers the collectors with a registry of their own, with the Go
// runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sessions_active",
			Help: "POP3 connections open now.",
		}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "sessions_total",
			Help: "POP3 sessions ended, by result (ok, disconnected, timeout, auth-failed, ...).",
		}, []string{"result"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "logins_total",
			Help: "POP3 login attempts, by method and result.",
		}, []string{"method", "result"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "commands_total",
			Help: "POP3 commands received, by verb.",
		}, []string{"verb"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "error_replies_total",
			Help: "-ERR replies sent, by response code (none when the reply has no code).",
		}, []string{"code"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "message_bytes_sent_total",
			Help: "Octets of messages sent by RETR and TOP, before dot-stuffing.",
		}),
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "deletes_applied_total",
			Help: "Messages deleted by clients and applied at QUIT, by outcome: removed from the mailbox, or kept on the server (on_delete seen or keep) and hidden from later listings.",
		}, []string{"outcome"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "upstream_duration_seconds",
			Help:    "Time taken by IMAP operations, by operation (connect, login, select, list, list-changes, fetch, fetch-batch, delete).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"operation"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_errors_total",
			Help: "IMAP operations that failed, by operation.",
		}, []string{"operation"}),
	}
	m.registry.MustRegister(m.sessionsActive, m.sessions, m.logins, m.commands, m.errors,
		m.sent, m.deleted, m.upstream, m.upstreamErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// WatchCache exports the message cache's counters, read at each scrape.
func (m *Metrics) WatchCache(c *cache.Cache) {
	m.registry.MustRegister(cacheCollector{c})
}

// WatchBudget exports the memory budget's counters, read at each scrape.
func (m *Metrics) WatchBudget(b *cache.Budget) {
	m.registry.MustRegister(budgetCollector{b})
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// Registry is where further collectors can be registered.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

func (m *Metrics) SessionStart() { m.sessionsActive.Inc() }

func (m *Metrics) SessionEnd(result string) {
	m.sessionsActive.Dec()
	m.sessions.WithLabelValues(result).Inc()
}

func (m *Metrics) Login(method, result string) {
	m.logins.WithLabelValues(strings.ToLower(method), result).Inc()
}

func (m *Metrics) Command(verb string) { m.commands.WithLabelValues(verb).Inc() }

// ErrorReply counts an -ERR reply by the code the server gave it, "none"
// for CodeNone; the reply's text is never read.
func (m *Metrics) ErrorReply(code pop3.Code) {
	label := string(code)
	if code == pop3.CodeNone {
		label = "none"
	}
	m.errors.WithLabelValues(label).Inc()
}

func (m *Metrics) Sent(octets int64) { m.sent.Add(float64(octets)) }

func (m *Metrics) Deleted(r pop3.CommitResult) {
	if r.Removed > 0 {
		m.deleted.WithLabelValues("removed").Add(float64(r.Removed))
	}
	if r.Kept > 0 {
		m.deleted.WithLabelValues("kept").Add(float64(r.Kept))
	}
}

// ObserveUpstream records one IMAP operation; it fits
// upstream.Server.Observe.
func (m *Metrics) ObserveUpstream(op string, d time.Duration, err error) {
	m.upstream.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.upstreamErrors.WithLabelValues(op).Inc()
	}
}

// cacheCollector reads the cache's counters at each scrape.
type cacheCollector struct{ c *cache.Cache }

var (
	cacheHits = prometheus.NewDesc(namespace+"_cache_hits_total",
		"Message reads served from the cache.", nil, nil)
	cacheMisses = prometheus.NewDesc(namespace+"_cache_misses_total",
		"Message reads the cache could not serve.", nil, nil)
	cacheEvictions = prometheus.NewDesc(namespace+"_cache_evictions_total",
		"Messages dropped from the cache to make room.", nil, nil)
	cacheBytes = prometheus.NewDesc(namespace+"_cache_bytes",
		"Octets of message bodies held in the cache.", nil, nil)
	cacheEntries = prometheus.NewDesc(namespace+"_cache_entries",
		"Messages held in the cache.", nil, nil)
)

func (cc cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cacheHits
	ch <- cacheMisses
	ch <- cacheEvictions
	ch <- cacheBytes
	ch <- cacheEntries
}

func (cc cacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := cc.c.Stats()
	ch <- prometheus.MustNewConstMetric(cacheHits, prometheus.CounterValue, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(cacheMisses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(cacheEvictions, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(cacheBytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(cacheEntries, prometheus.GaugeValue, float64(s.Entries))
}

// budgetCollector reads the memory budget's counters at each scrape.
type budgetCollector struct{ b *cache.Budget }

var (
	budgetLimit = prometheus.NewDesc(namespace+"_memory_budget_bytes",
		"Octets of message bodies in flight and remembered listings the gateway may hold beside the cache (cache.in_flight).", nil, nil)
	budgetInUse = prometheus.NewDesc(namespace+"_memory_budget_used_bytes",
		"Octets of the memory budget held now.", nil, nil)
	budgetHigh = prometheus.NewDesc(namespace+"_memory_budget_high_water_bytes",
		"The most octets of the memory budget held at once since start.", nil, nil)
	budgetRefused = prometheus.NewDesc(namespace+"_memory_budget_refused_total",
		"Reservations refused for want of room: a message streamed instead of being held, or a fetch ahead did not start.", nil, nil)
)

func (bc budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- budgetLimit
	ch <- budgetInUse
	ch <- budgetHigh
	ch <- budgetRefused
}

func (bc budgetCollector) Collect(ch chan<- prometheus.Metric) {
	s := bc.b.Stats()
	ch <- prometheus.MustNewConstMetric(budgetLimit, prometheus.GaugeValue, float64(s.Limit))
	ch <- prometheus.MustNewConstMetric(budgetInUse, prometheus.GaugeValue, float64(s.InUse))
	ch <- prometheus.MustNewConstMetric(budgetHigh, prometheus.GaugeValue, float64(s.HighWater))
	ch <- prometheus.MustNewConstMetric(budgetRefused, prometheus.CounterValue, float64(s.Refused))
}
