package upstream

import (
	"fmt"

	"github.com/emersion/go-imap/v2"
)

// Waiting between sessions. A kept connection (proxy's pool) sits unused
// until the poller's next login, which then asks for the mailbox's state.
// On a maildir server such as Dovecot, a message that arrived in between
// is found only when a command looks: the first SELECT after it syncs the
// whole directory, which costs time linear in the mailbox, and the login
// waits for it. In IDLE (RFC 2177) the server watches the selected mailbox
// and syncs a change when it happens, so the next login finds the work
// done. Nothing the server says while idling is trusted: the login's
// Refresh asks for the state as always, and the listing is merged and
// checked from that answer.

// Idle puts the connection in IDLE on the selected mailbox until the next
// command (Refresh or Close) ends it. A server without IDLE is left as it
// is. An error means the connection is not fit to keep. changed, if not
// nil, is called when the server reports a new message count or an
// expunge while the connection idles (RFC 2177 §3, RFC 9051 §7.4.1,
// §7.5.1): a hint that the mailbox changed, never what changed. It is
// called from the connection's reader, so it must not block, and it may
// be called after the wait ended.
func (s *Session) Idle(changed func()) error {
	if s.idle != nil || s.mailbox == "" || !s.client.Caps().Has(imap.CapIdle) {
		return nil
	}
	if changed != nil {
		s.onChange.Store(&changed)
	}
	// The server answers IDLE with a continuation at once (RFC 2177 §3);
	// the watchdog bounds the wait for it, as for any command.
	s.conn.begin()
	defer s.conn.end()
	cmd, err := s.client.Idle()
	if err != nil {
		s.onChange.Store(nil)
		return fmt.Errorf("upstream: idle: %w", err)
	}
	s.idle = cmd
	return nil
}

// stopIdle sends DONE if the connection is idling, without waiting for the
// server's reply: the next command can follow at once, and waitIdle then
// reads the reply. A server that ended IDLE on its own answers DONE as an
// unknown command, which fails the next one: the caller then logs in
// afresh.
func (s *Session) stopIdle() (wait func() error) {
	cmd := s.idle
	if cmd == nil {
		return func() error { return nil }
	}
	s.idle = nil
	s.onChange.Store(nil)
	if err := cmd.Close(); err != nil {
		return func() error { return fmt.Errorf("upstream: ending idle: %w", err) }
	}
	return func() error {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("upstream: ending idle: %w", err)
		}
		return nil
	}
}

// changed tells Idle's caller that the server reported a change.
func (s *Session) changed() {
	if f := s.onChange.Load(); f != nil {
		(*f)()
	}
}
