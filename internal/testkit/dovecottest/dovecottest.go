// Package dovecottest starts a private Dovecot instance (IMAP and POP3 on
// 127.0.0.1, plaintext) for tests. It wraps package dovecot, whose
// documentation lists the settings that differ from Dovecot's defaults.
package dovecottest

import (
	"errors"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/dovecot"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// Server is a running Dovecot instance.
type Server struct {
	inst *dovecot.Instance
}

// Start starts Dovecot with the given users (name -> password), each with
// an empty Maildir INBOX. It skips the test when dovecot is not installed
// (fails it when CI is set). The server is stopped by t.Cleanup.
//
// dovecot.conf and the logs are in t.TempDir(); sockets, maildirs and the
// passwd file are in a world-traversable directory under os.TempDir(),
// removed at cleanup. User names and passwords must not contain ':' or
// line breaks.
func Start(t testing.TB, users map[string]string) *Server {
	t.Helper()
	return StartWith(t, dovecot.Options{Users: users})
}

// StartWith is Start with more options; Dir is set to t.TempDir().
func StartWith(t testing.TB, opts dovecot.Options) *Server {
	t.Helper()
	opts.Dir = t.TempDir()
	inst, err := dovecot.Start(opts)
	if errors.Is(err, dovecot.ErrNotInstalled) {
		testenv.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
	t.Cleanup(func() {
		if err := inst.Stop(); err != nil {
			t.Errorf("dovecottest: stopping dovecot: %v", err)
		}
	})
	return &Server{inst: inst}
}

// Instance returns the underlying instance.
func (s *Server) Instance() *dovecot.Instance { return s.inst }

// LogTail returns the last lines of Dovecot's log files, for test
// failure messages.
func (s *Server) LogTail() string { return s.inst.LogTail() }

// IMAPAddr returns the IMAP listener address (127.0.0.1:port).
func (s *Server) IMAPAddr() string { return s.inst.IMAPAddr() }

// POP3Addr returns the POP3 listener address (127.0.0.1:port).
func (s *Server) POP3Addr() string { return s.inst.POP3Addr() }

// Maildir returns the path of user's Maildir (the INBOX).
func (s *Server) Maildir(user string) string { return s.inst.Maildir(user) }

// Deliver stores each message unchanged in user's Maildir/new. Messages
// get increasing file names, so the delivery order is the IMAP UID order
// and the POP3 message order.
func (s *Server) Deliver(t testing.TB, user string, msgs ...[]byte) {
	t.Helper()
	if err := s.inst.Deliver(user, msgs...); err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
}

// Count returns the number of messages in user's Maildir (cur and new).
func (s *Server) Count(t testing.TB, user string) int {
	t.Helper()
	n, err := s.inst.Count(user)
	if err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
	return n
}

// Messages returns the raw contents of user's messages in Maildir order
// (UID order for messages delivered with Deliver).
func (s *Server) Messages(t testing.TB, user string) [][]byte {
	t.Helper()
	msgs, err := s.inst.Messages(user)
	if err != nil {
		t.Fatalf("dovecottest: %v", err)
	}
	return msgs
}
