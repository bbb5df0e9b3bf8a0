package metrics

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// submissionCollectors are registered at the first use, so a gateway
// without the relay exports none of them.
type submissionCollectors struct {
	once     sync.Once
	logins   *prometheus.CounterVec
	messages *prometheus.CounterVec
}

func (m *Metrics) submission() *submissionCollectors {
	s := &m.smtp
	s.once.Do(func() {
		s.logins = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "submission_logins_total",
			Help: "SMTP submission login attempts, by method and result (ok, auth-failed, upstream-unavailable, error).",
		}, []string{"method", "result"})
		s.messages = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "submission_messages_total",
			Help: "SMTP submission transactions, by outcome: relayed, or why not (sender-refused, too-many-recipients, rate-limited, too-big, upstream-4xx, upstream-5xx, upstream-lost, client-aborted, refused).",
		}, []string{"outcome"})
		m.registry.MustRegister(s.logins, s.messages)
	})
	return s
}

// SubmissionLogin counts an SMTP AUTH; it implements submission.Observer.
func (m *Metrics) SubmissionLogin(method, result string) {
	m.submission().logins.WithLabelValues(strings.ToLower(method), result).Inc()
}

// SubmissionMessage counts a transaction's outcome.
func (m *Metrics) SubmissionMessage(outcome string) {
	m.submission().messages.WithLabelValues(outcome).Inc()
}
