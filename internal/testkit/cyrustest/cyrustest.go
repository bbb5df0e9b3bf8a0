// Package cyrustest starts a private Cyrus IMAP instance (IMAP with
// OBJECTID and JMAP over HTTP, on 127.0.0.1, plaintext) for tests. It
// wraps package cyrus, whose documentation says how it is set up.
package cyrustest

import (
	"errors"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/cyrus"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// Server is a running Cyrus instance.
type Server struct {
	inst *cyrus.Instance
}

// Start starts Cyrus with the given users (name -> password), each with
// an empty INBOX. It skips the test when Cyrus cannot be run (fails it
// when CI is set). The server is stopped by t.Cleanup.
func Start(t testing.TB, users map[string]string) *Server {
	t.Helper()
	inst, err := cyrus.Start(cyrus.Options{Users: users})
	if errors.Is(err, cyrus.ErrNotInstalled) {
		testenv.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatalf("cyrustest: %v", err)
	}
	t.Cleanup(func() {
		if err := inst.Stop(); err != nil {
			t.Errorf("cyrustest: stopping cyrus: %v", err)
		}
	})
	return &Server{inst: inst}
}

// Instance returns the underlying instance.
func (s *Server) Instance() *cyrus.Instance { return s.inst }

// IMAPAddr returns the IMAP listener address (127.0.0.1:port).
func (s *Server) IMAPAddr() string { return s.inst.IMAPAddr() }

// JMAPURL returns the JMAP session URL (http://127.0.0.1:port/.well-known/jmap).
func (s *Server) JMAPURL() string { return s.inst.JMAPURL() }

// Append stores each message in user's INBOX, in order. Messages must be
// CRLF-only: Cyrus stores neither bare LF nor NUL.
func (s *Server) Append(t testing.TB, user string, msgs ...[]byte) {
	t.Helper()
	if err := s.inst.Append(user, msgs...); err != nil {
		t.Fatalf("cyrustest: %v", err)
	}
}

// AppendDated is Append with date as every message's INTERNALDATE.
func (s *Server) AppendDated(t testing.TB, user string, date time.Time, msgs ...[]byte) {
	t.Helper()
	if err := s.inst.AppendDated(user, date, msgs...); err != nil {
		t.Fatalf("cyrustest: %v", err)
	}
}

// Recreate empties user's INBOX by deleting and creating it: the mailbox
// gets a new UIDVALIDITY.
func (s *Server) Recreate(t testing.TB, user string) {
	t.Helper()
	if err := s.inst.Recreate(user); err != nil {
		t.Fatalf("cyrustest: %v", err)
	}
}
