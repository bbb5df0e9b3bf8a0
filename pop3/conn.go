package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// Line limits. RFC 2449 §4 allows commands of 255 octets; a little more is
// accepted for clients that pad. SASL responses carry base64 credentials and
// may be longer (RFC 5034 §4).
const (
	maxCommandLine = 512
	maxSASLLine    = 8192
)

type state int

const (
	stateAuthorization state = 1 << iota
	stateTransaction
)

type command struct {
	states state
	run    func(c *conn, arg string) error
}

// commands is the command table of RFC 1939 §4-§7 with the extensions; each
// verb lists the states it is valid in.
var commands map[string]command

func init() {
	commands = map[string]command{
		"CAPA": {stateAuthorization | stateTransaction, (*conn).capa},
		"QUIT": {stateAuthorization | stateTransaction, (*conn).quit},
		"USER": {stateAuthorization, (*conn).user},
		"PASS": {stateAuthorization, (*conn).pass},
		"AUTH": {stateAuthorization, (*conn).auth},
		"STLS": {stateAuthorization, (*conn).stls},
		"STAT": {stateTransaction, (*conn).stat},
		"LIST": {stateTransaction, (*conn).list},
		"UIDL": {stateTransaction, (*conn).uidl},
		"RETR": {stateTransaction, (*conn).retr},
		"TOP":  {stateTransaction, (*conn).top},
		"DELE": {stateTransaction, (*conn).dele},
		"NOOP": {stateTransaction, (*conn).noop},
		"RSET": {stateTransaction, (*conn).rset},
	}
}

// errClose ends a session after its last reply.
var errClose = errors.New("pop3: closing connection")

// errLineTooLong reports a line over the limit; the line was discarded.
var errLineTooLong = errors.New("pop3: line too long")

type conn struct {
	srv   *Server
	id    uint64
	log   *slog.Logger
	start time.Time
	// checking is the time spent checking logins (the Guard's delay, the
	// backend, the refusal floor): the server's time, which the login
	// timeout does not count, up to a second LoginTimeout.
	checking time.Duration

	mu      sync.Mutex // guards nc and state against Shutdown
	nc      net.Conn
	state   state
	aborted bool

	br  *bufio.Reader
	bw  *bufio.Writer
	out *deadlineWriter

	tls       bool
	tlsConfig *tls.Config // the listener's: for implicit TLS and STLS
	proxied   bool        // the remote address came from a PROXY header
	tracing   bool        // the logger takes LevelTrace: the wire trace is on
	ctx       context.Context
	cancel    context.CancelFunc
	pending   string // name given by USER, waiting for PASS

	small       *bufio.Writer // bw between messages and listings
	maildrop    Maildrop
	msgs        []Message // the listing, fixed at login; sizes corrected by resize
	ownMsgs     bool      // msgs is the session's copy, not the maildrop's listing
	deleted     []bool
	badCommands int
	authFails   int

	// what the server counted for this connection, to give back at the end
	admitted    bool // within MaxConnections
	ip          string
	ipCounted   bool
	sessionUser string
	userCounted bool

	// session totals for the log line at the end
	retrieved int
	bytesSent int64
	deletes   int
	result    string
	loginUser string
}

func newConn(s *Server, nc net.Conn, tlsConfig *tls.Config, implicitTLS bool, id uint64) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		srv:       s,
		id:        id,
		nc:        nc,
		start:     time.Now(),
		state:     stateAuthorization,
		tls:       implicitTLS,
		tlsConfig: tlsConfig,
		ctx:       ctx,
		cancel:    cancel,
		result:    "disconnected",
	}
	c.proxied = isProxied(nc)
	// The remote address is added when the session starts: behind the
	// PROXY protocol, reading it waits for the header, which must not hold
	// up the accept loop.
	c.log = s.logger().With("conn", id)
	if implicitTLS {
		c.nc = tls.Server(nc, tlsConfig)
	}
	c.out = &deadlineWriter{c: c}
	c.br = bufio.NewReaderSize(c.nc, 4096)
	// Most replies are a few short lines; the larger buffer that messages
	// and listings stream through is taken for them (growWriter) and
	// given back before the session waits for the client (shrinkWriter),
	// so connections that never log in, slow-loris ones among them, and
	// sessions that idle cost little memory.
	c.small = bufio.NewWriterSize(c.out, smallWriteBuffer)
	c.bw = c.small
	return c
}

// Write buffer sizes: for short replies, and for messages and listings.
const (
	smallWriteBuffer = 1024
	largeWriteBuffer = 16 * 1024
)

// largeWriters are the large write buffers of the sessions sending a
// message or a listing.
var largeWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, largeWriteBuffer) }}

// growWriter gives the session the large write buffer, for a message or a
// listing. What the small one holds is sent first, in order.
func (c *conn) growWriter() {
	if c.bw != c.small {
		return
	}
	// A write error shows again at the next write or flush.
	c.bw.Flush()
	c.bw = largeWriters.Get().(*bufio.Writer)
	c.bw.Reset(c.out)
}

// shrinkWriter gives the large write buffer back once all it held is
// sent.
func (c *conn) shrinkWriter() {
	if c.bw == c.small || c.bw.Buffered() > 0 {
		return
	}
	c.bw.Reset(nil)
	largeWriters.Put(c.bw)
	c.bw = c.small
}

// deadlineWriter writes to the connection with a fresh write deadline for
// each write, so a client that stops reading cannot hold a session forever.
type deadlineWriter struct{ c *conn }

func (w *deadlineWriter) Write(p []byte) (int, error) {
	nc := w.c.netConn()
	nc.SetWriteDeadline(time.Now().Add(w.c.srv.idleTimeout()))
	return nc.Write(p)
}

func (c *conn) netConn() net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nc
}

// shutdownIfIdle closes the connection if it has not logged in, and
// cancels its context to cut short a login delay or a login in progress.
func (c *conn) shutdownIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateAuthorization {
		c.aborted = true
		c.cancel()
		c.nc.Close()
	}
}

// abort closes the connection at once, whatever it is doing.
func (c *conn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.aborted = true
	c.nc.Close()
}

func (c *conn) serve() {
	defer c.srv.connDone(c)
	defer c.close()
	defer func() {
		if v := recover(); v != nil {
			c.result = "panic"
			c.log.Error("panic in session", "panic", v, "stack", string(debug.Stack()))
		}
	}()

	c.log = c.log.With("remote", c.netConn().RemoteAddr().String())
	c.tracing = c.log.Enabled(c.ctx, LevelTrace)
	c.srv.observer().SessionStart()
	if refusal := c.admit(); refusal != "" {
		// The refusal takes the place of the greeting; SYS/TEMP (RFC 3206)
		// tells the client to try again later. A TLS client is refused
		// before the handshake, which would cost more than the refusal.
		c.result = "too-many-connections"
		if c.tls {
			return
		}
		c.errorf(CodeSysTemp, refusal)
		c.bw.Flush()
		return
	}
	if c.tls {
		tc := c.nc.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(c.srv.authTimeout()))
		if err := tc.HandshakeContext(c.ctx); err != nil {
			c.log.Debug("TLS handshake failed", "err", err)
			c.result = "tls-failed"
			return
		}
		tc.SetDeadline(time.Time{})
	}
	c.ok("POP3 gateway ready.")
	for {
		if err := c.next(); err != nil {
			if !errors.Is(err, errClose) && !isClosedConn(err) {
				c.log.Debug("session ended", "err", err)
			}
			break
		}
	}
	c.bw.Flush()
	c.shrinkWriter()
}

// admit checks the connection limits, and returns the refusal for one
// over them.
func (c *conn) admit() string {
	if !c.admitted {
		c.log.Warn("connection refused: too many connections", "limit", c.srv.MaxConnections)
		return "Too many connections, try again later."
	}
	if !c.srv.admitIP(c) {
		c.log.Warn("connection refused: too many from this address", "limit", c.srv.MaxConnsPerIP)
		return "Too many connections from your address."
	}
	return ""
}

// loginEnd is when the AUTHORIZATION state ends for a client that has not
// logged in. The login timeout bounds the client's time: a prompt client
// whose login the server took long to check (a slow upstream, [IN-USE]
// after it) is not cut off for the server's slowness. The server's time
// counts up to one more LoginTimeout, so a connection cannot stay in the
// AUTHORIZATION state unbounded, however long its logins take to refuse.
func (c *conn) loginEnd() time.Time {
	t := c.srv.loginTimeout()
	return c.start.Add(t + min(c.checking, t))
}

// next reads and runs one command.
func (c *conn) next() error {
	line, err := c.readLine(maxCommandLine)
	switch {
	case errors.Is(err, errLineTooLong):
		if c.tracing {
			c.traceLine("recv", "<line too long, discarded>")
		}
		c.errorf(CodeNone, "Line too long.")
		return c.badCommand()
	case isTimeout(err):
		if c.isAborted() {
			return err
		}
		if c.state == stateAuthorization && !time.Now().Before(c.loginEnd()) {
			c.result = "login-timeout"
			c.errorf(CodeNone, "Too long without logging in.")
			return errClose
		}
		c.result = "timeout"
		c.errorf(CodeNone, "Disconnected for inactivity.")
		return errClose
	case err != nil:
		return err
	}
	c.traceCommand(line)
	if strings.ContainsAny(line, "\x00\r\n") {
		c.errorf(CodeNone, "Invalid characters in command.")
		return c.badCommand()
	}
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	cmd, ok := commands[verb]
	if !ok {
		c.srv.observer().Command("unknown")
		c.errorf(CodeNone, "Unknown command.")
		return c.badCommand()
	}
	c.srv.observer().Command(verb)
	if cmd.states&c.state == 0 {
		c.errorf(CodeNone, "Command not valid in this state.")
		return c.badCommand()
	}
	return cmd.run(c, arg)
}

func (c *conn) badCommand() error {
	c.badCommands++
	if c.badCommands >= c.srv.maxBadCommands() {
		c.result = "bad-commands"
		c.errorf(CodeNone, "Too many bad commands.")
		return errClose
	}
	return nil
}

func (c *conn) isAborted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.aborted
}

// readLine reads one line of at most limit octets, without its line ending.
// Replies are flushed first unless more pipelined input is already
// buffered (RFC 2449 §6.6), so a pipelining client gets its answers in
// batches and a waiting one at once. A longer line is read to its end and
// discarded.
func (c *conn) readLine(limit int) (string, error) {
	if c.br.Buffered() == 0 {
		if err := c.bw.Flush(); err != nil {
			return "", err
		}
		c.shrinkWriter()
	}
	deadline := time.Now().Add(c.srv.idleTimeout())
	if c.state == stateAuthorization {
		deadline = time.Now().Add(c.srv.authTimeout())
		if end := c.loginEnd(); end.Before(deadline) {
			deadline = end
		}
	}
	c.netConn().SetReadDeadline(deadline)

	var line []byte
	tooLong := false
	for {
		chunk, err := c.br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > limit+2 {
				tooLong = true
				line = nil
			} else {
				line = append(line, chunk...)
			}
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return "", err
	}
	if tooLong {
		return "", errLineTooLong
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return string(line), nil
}

// fail reports err to the client as -ERR and tells whether the session must
// end. Errors that are not an *Error are logged and shown generically.
func (c *conn) fail(op string, err error) error {
	e, known := asError(err)
	if !known {
		c.log.Error(op+" failed", "err", err)
	}
	c.replyError(e)
	if e.Fatal {
		c.result = "error"
		return errClose
	}
	return nil
}

// close ends the session: it releases the maildrop without deleting
// anything unless QUIT already committed, and logs the session's totals.
func (c *conn) close() {
	c.cancel()
	c.netConn().Close()
	c.releaseMaildrop()
	attrs := []any{
		"duration", time.Since(c.start).Round(time.Millisecond),
		"result", c.result,
	}
	if c.loginUser != "" {
		attrs = append(attrs, "retrieved", c.retrieved, "bytes", c.bytesSent, "deleted", c.deletes)
	}
	c.log.Info("session end", attrs...)
	c.srv.observer().SessionEnd(c.result)
}

// releaseMaildrop ends the maildrop's session, once.
func (c *conn) releaseMaildrop() {
	if c.maildrop == nil {
		return
	}
	if err := c.maildrop.Close(); err != nil {
		c.log.Warn("closing maildrop", "err", err)
	}
	c.maildrop = nil
}

// remoteIP is the client's address without the port, the key of the
// per-address limits. It is read from the connection each time it is
// needed, so it follows the connection's current remote address.
func (c *conn) remoteIP() string {
	addr := c.netConn().RemoteAddr()
	if addr == nil {
		return ""
	}
	if tcp, ok := addr.(*net.TCPAddr); ok && tcp.IP != nil {
		return tcp.AddrPort().Addr().Unmap().String()
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return host
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isClosedConn(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF)
}
