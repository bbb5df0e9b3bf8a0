package pop3

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
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

// syncBuffer collects log output written from the sessions' goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestWireTrace checks that at LevelTrace every command line received and
// every status line sent is logged, in order, per connection, and that no
// password or SASL payload is: USER/PASS, AUTH PLAIN with an initial
// response and with a continuation, and AUTH LOGIN.
func TestWireTrace(t *testing.T) {
	var logs syncBuffer
	h := newHarness(t, func(s *Server) {
		s.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: LevelTrace}))
		s.MaxAuthFailures = 10
	})
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	secrets := []string{
		"secret pass", "wrong pass", "other secret",
		b64("\x00alice\x00secret pass"), b64("alice\x00alice\x00other secret"), b64("secret pass"), b64("alice"),
	}

	// Each conversation is what the client sends and what the trace must
	// show for it: recv then send, one pair per command.
	type step struct{ send, recv, reply string }
	conversations := [][]step{
		{
			{"USER alice", "USER alice", "+OK"},
			{"PASS wrong pass", "PASS <redacted>", "-ERR [AUTH] Authentication failed."},
			{"USER alice", "USER alice", "+OK"},
			{"pass secret pass", "pass <redacted>", "+OK Logged in."},
			{"STAT", "STAT", "+OK 3 73"},
			{"RETR 1", "RETR 1", "+OK 34 octets"},
			{"QUIT", "QUIT", "+OK Logging out."},
		},
		{
			{"AUTH PLAIN " + b64("alice\x00alice\x00other secret"), "AUTH PLAIN <redacted>", "-ERR [AUTH] Authentication failed."},
			{"AUTH PLAIN " + b64("\x00alice\x00secret pass"), "AUTH PLAIN <redacted>", "+OK Logged in."},
			{"QUIT", "QUIT", "+OK Logging out."},
		},
		{
			{"AUTH PLAIN", "AUTH PLAIN", "+ "},
			{"*", "*", "-ERR Authentication cancelled."},
			{"AUTH PLAIN", "AUTH PLAIN", "+ "},
			{b64("\x00alice\x00secret pass"), "<redacted>", "+OK Logged in."},
			{"QUIT", "QUIT", "+OK Logging out."},
		},
		{
			{"CAPA", "CAPA", "+OK Capability list follows"},
			{"AUTH LOGIN", "AUTH LOGIN", "+ " + b64("Username:")},
			{b64("alice"), "<redacted>", "+ " + b64("Password:")},
			{b64("secret pass"), "<redacted>", "+OK Logged in."},
			{"QUIT", "QUIT", "+OK Logging out."},
		},
	}
	for _, conv := range conversations {
		c := h.dial()
		for _, s := range conv {
			c.cmd(s.send, s.reply)
			if strings.HasPrefix(s.reply, "+OK") && (s.send == "CAPA" || strings.HasPrefix(s.send, "RETR")) {
				c.multi()
			}
		}
		c.closed()
	}

	// The trace, per connection, in order.
	traces := map[float64][]string{}
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec struct {
			Level, Msg, Line string
			Conn             float64
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if rec.Level != "DEBUG-4" {
			continue
		}
		traces[rec.Conn] = append(traces[rec.Conn], rec.Msg+" "+rec.Line)
	}
	if len(traces) != len(conversations) {
		t.Fatalf("traces of %d connections, want %d", len(traces), len(conversations))
	}
	for i, conv := range conversations {
		want := []string{"send +OK POP3 gateway ready."}
		for _, s := range conv {
			want = append(want, "recv "+s.recv, "send "+s.reply)
		}
		if got := traces[float64(i+1)]; !slices.Equal(got, want) {
			t.Errorf("trace of connection %d:\n%s\nwant:\n%s", i+1, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	all := logs.String()
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("the log holds the secret %q", s)
		}
	}
	// Neither message bodies nor the lines of multi-line responses.
	for _, s := range []string{"Hello", "SASL PLAIN LOGIN", "Subject"} {
		if strings.Contains(all, s) {
			t.Errorf("the trace holds %q", s)
		}
	}
}

// TestNoTraceAboveTraceLevel checks that a logger at Debug gets no wire
// trace.
func TestNoTraceAboveTraceLevel(t *testing.T) {
	var logs syncBuffer
	h := newHarness(t, func(s *Server) {
		s.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	c := h.dial()
	c.login()
	c.cmd("QUIT", "+OK Logging out.")
	c.closed()
	if out := logs.String(); strings.Contains(out, "msg=recv") || strings.Contains(out, "msg=send") {
		t.Errorf("trace at Debug:\n%s", out)
	}
}

func TestRedactCommand(t *testing.T) {
	for line, want := range map[string]string{
		"PASS secret":               "PASS <redacted>",
		"pass secret with spaces":   "pass <redacted>",
		"PASS\tsecret":              "PASS <redacted>",
		"PASSsecret":                "PASS <redacted>",
		"PASS":                      "PASS",
		"AUTH":                      "AUTH",
		"AUTH PLAIN":                "AUTH PLAIN",
		"auth plain AGFsaWNl":       "auth plain <redacted>",
		"AUTH  LOGIN\tYWxpY2U= x":   "AUTH LOGIN <redacted>",
		"USER alice":                "USER alice",
		"RETR 1":                    "RETR 1",
		"PAS":                       "PAS",
		"TOP 1 10":                  "TOP 1 10",
		"APOP alice c4c9334bac560e": "APOP alice c4c9334bac560e",
	} {
		if got := redactCommand(line); got != want {
			t.Errorf("redactCommand(%q) = %q, want %q", line, got, want)
		}
	}
}

// FuzzRedactCommand checks that the wire trace never shows what the
// server takes as a password: the argument of PASS, or the initial
// response of AUTH, whatever the case of the verb and the spacing. What
// it keeps of a redacted line is the verb and at most the mechanism.
func FuzzRedactCommand(f *testing.F) {
	for _, s := range []string{
		"PASS secret", "pass  two words ", "PASS", "PASS ", "PASS\tsecret", "PASSsecret", "PAſS secret",
		"AUTH", "AUTH PLAIN", "AUTH PLAIN AGFsaWNl", "auth  login \tYWxpY2U= ", "AUTH PL\tAIN x", "AUTH PLAIN \u0085",
		"USER alice", "RETR 1", "TOP 1 10", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		out := redactCommand(line)
		// The command as the command table and the AUTH handler see it.
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "PASS":
			if arg != "" && out != verb+" "+redacted {
				t.Fatalf("redactCommand(%q) = %q", line, out)
			}
		case "AUTH":
			mech, _, hasIR := strings.Cut(strings.TrimSpace(arg), " ")
			if !hasIR {
				break
			}
			kept, ok := strings.CutSuffix(out, " "+redacted)
			shown, ok2 := strings.CutPrefix(kept, verb+" ")
			if !ok || !ok2 || shown == "" || !strings.Contains(mech, shown) {
				t.Fatalf("redactCommand(%q) = %q", line, out)
			}
		}
		if out != line && !strings.HasSuffix(out, " "+redacted) {
			t.Fatalf("redactCommand(%q) = %q, changed without redacting", line, out)
		}
	})
}
