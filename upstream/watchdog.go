package upstream

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// watchdogConn enforces the upstream timeout. While an operation is under
// way every read and write must make progress within timeout; between
// operations the connection may idle, since a POP3 client can pause for
// minutes between commands. It takes over deadline handling from the IMAP
// client library, whose fixed per-response timeouts do not fit that use.
type watchdogConn struct {
	net.Conn
	timeout time.Duration

	mu   sync.Mutex
	busy int
	err  error // set once a read timed out
}

func newWatchdogConn(c net.Conn, timeout time.Duration) *watchdogConn {
	return &watchdogConn{Conn: c, timeout: timeout}
}

func (w *watchdogConn) Read(p []byte) (int, error) {
	w.mu.Lock()
	if w.err != nil {
		w.mu.Unlock()
		return 0, w.err
	}
	if w.busy > 0 {
		w.Conn.SetReadDeadline(time.Now().Add(w.timeout))
	}
	w.mu.Unlock()
	n, err := w.Conn.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The IMAP decoder reads again after a failed read while it parses
		// one response; without this each retry would wait another timeout.
		w.mu.Lock()
		w.err = err
		w.mu.Unlock()
	}
	return n, err
}

func (w *watchdogConn) Write(p []byte) (int, error) {
	w.Conn.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.Conn.Write(p)
}

// begin starts an operation: from now on a read that waits longer than the
// timeout fails.
func (w *watchdogConn) begin() {
	w.mu.Lock()
	w.busy++
	w.Conn.SetReadDeadline(time.Now().Add(w.timeout))
	w.mu.Unlock()
}

// end finishes an operation; with none left the connection may idle.
func (w *watchdogConn) end() {
	w.mu.Lock()
	w.busy--
	if w.busy == 0 {
		w.Conn.SetReadDeadline(time.Time{})
	}
	w.mu.Unlock()
}

// The IMAP client's own deadlines are ignored; see watchdogConn.
func (w *watchdogConn) SetDeadline(time.Time) error      { return nil }
func (w *watchdogConn) SetReadDeadline(time.Time) error  { return nil }
func (w *watchdogConn) SetWriteDeadline(time.Time) error { return nil }
