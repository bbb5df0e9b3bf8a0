package pop3

import (
	"sync"
	"testing"
)

func TestResponseCode(t *testing.T) {
	for line, want := range map[string]string{
		"-ERR [SYS/TEMP] Try later.":         "SYS/TEMP",
		"-ERR [AUTH] Authentication failed.": "AUTH",
		"-ERR [IN-USE] Mailbox locked.":      "IN-USE",
		"-ERR Unknown command.":              "",
		"-ERR [unterminated":                 "",
		"+OK [AUTH] not an error":            "",
	} {
		if got := responseCode(line); got != want {
			t.Errorf("responseCode(%q) = %q, want %q", line, got, want)
		}
	}
}

// recorder is an Observer that counts what it is told.
type recorder struct {
	nopObserver
	mu     sync.Mutex
	logins []string
	errors []string
}

func (r *recorder) Login(method, outcome string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logins = append(r.logins, method+" "+outcome)
}

func (r *recorder) ErrorReply(code Code) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, string(code))
}

func TestObserverSeesLoginsAndErrors(t *testing.T) {
	rec := &recorder{}
	h := newHarness(t, func(s *Server) { s.Observer = rec })
	c := h.dial()
	c.cmd("USER alice", "+OK")
	c.cmd("PASS wrong", "-ERR [AUTH] Authentication failed.")
	c.cmd("BOGUS", "-ERR Unknown command.")
	c.login()
	c.cmd("QUIT", "+OK Logging out.")
	c.closed()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.logins) != 2 || rec.logins[0] != "USER auth-failed" || rec.logins[1] != "USER ok" {
		t.Errorf("logins %q", rec.logins)
	}
	if len(rec.errors) != 2 || rec.errors[0] != "AUTH" || rec.errors[1] != "" {
		t.Errorf("error replies %q", rec.errors)
	}
}
