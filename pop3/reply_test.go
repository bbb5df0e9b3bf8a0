package pop3

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// errPlaintext is the refusal of credentials without TLS, as sent.
const errPlaintext = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS."

// responseCode returns the code of an -ERR line as a client reads it, such
// as "SYS/TEMP" in "-ERR [SYS/TEMP] ...", or "". The server never reads
// its replies back: tests use this to check the wire against what was
// counted.
func responseCode(line string) string {
	rest, ok := strings.CutPrefix(line, "-ERR [")
	if !ok {
		return ""
	}
	code, _, ok := strings.Cut(rest, "]")
	if !ok {
		return ""
	}
	return code
}

// codedBackend refuses some names with errors of chosen codes, and leaves
// the rest to memBackend.
type codedBackend struct {
	*memBackend
	refusals map[string]error
}

func (b codedBackend) Login(ctx context.Context, li *LoginInfo) (Maildrop, error) {
	if err, ok := b.refusals[li.Username]; ok {
		return nil, err
	}
	return b.memBackend.Login(ctx, li)
}

// TestErrorRepliesCountedByTheirCode checks that every -ERR reply is
// counted by the code it was given where it was made, never by its text:
// a backend's text that looks like a code is counted as no code.
func TestErrorRepliesCountedByTheirCode(t *testing.T) {
	rec := &recorder{}
	h := newHarness(t, func(s *Server) {
		s.Observer = rec
		s.Backend = codedBackend{memBackend: s.Backend.(*memBackend), refusals: map[string]error{
			"perm":      &Error{Code: CodeSysPerm, Text: "Account closed."},
			"lookalike": &Error{Text: "[IN-USE] only in the text."},
		}}
	})
	c := h.dial()
	var wire []string
	cmd := func(line, want string) {
		t.Helper()
		c.cmd(line, want)
		if strings.HasPrefix(want, "-ERR") {
			wire = append(wire, want)
		}
	}
	cmd("BOGUS", "-ERR Unknown command.")
	cmd("STAT", "-ERR Command not valid in this state.")
	cmd("USER perm", "+OK")
	cmd("PASS x", "-ERR [SYS/PERM] Account closed.")
	cmd("USER lookalike", "+OK")
	cmd("PASS x", "-ERR [IN-USE] only in the text.")
	cmd("USER busy", "+OK")
	cmd("PASS x", "-ERR [IN-USE] Mailbox is locked by another POP3 session.")
	cmd("USER alice", "+OK")
	cmd("PASS wrong", "-ERR [AUTH] Authentication failed.")
	c.login()
	cmd("RETR 9", "-ERR There's no message 9.")
	cmd("QUIT", "+OK Logging out.")
	c.closed()

	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := []string{"", "", "SYS/PERM", "", "IN-USE", "AUTH", ""}
	if !slices.Equal(rec.errors, want) {
		t.Fatalf("counted codes %q, want %q", rec.errors, want)
	}
	for i, line := range wire {
		if line == "-ERR [IN-USE] only in the text." {
			continue
		}
		if got := responseCode(line); got != rec.errors[i] {
			t.Errorf("%q counted as %q", line, rec.errors[i])
		}
	}
}
