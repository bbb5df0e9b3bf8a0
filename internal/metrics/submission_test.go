package metrics

import (
	"strings"
	"testing"
)

// TestSubmissionCounters: the relay's counters appear once used, by
// method and result, and by outcome.
func TestSubmissionCounters(t *testing.T) {
	m := New()
	if strings.Contains(scrape(t, m), "submission_") {
		t.Error("submission counters exported before the relay counted anything")
	}
	m.SubmissionLogin("AUTH PLAIN", "ok")
	m.SubmissionMessage("relayed")
	m.SubmissionMessage("relayed")
	m.SubmissionMessage("sender-refused")
	out := scrape(t, m)
	for _, want := range []string{
		`pop3gw_submission_logins_total{method="auth plain",result="ok"} 1`,
		`pop3gw_submission_messages_total{outcome="relayed"} 2`,
		`pop3gw_submission_messages_total{outcome="sender-refused"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}
