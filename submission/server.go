package submission

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// Defaults for the zero values of Server's limits.
const (
	DefaultLoginTimeout    = 3 * time.Minute
	DefaultIdleTimeout     = 5 * time.Minute // RFC 5321 §4.5.3.2.7: the server timeout
	DefaultMaxAuthFailures = 3
	DefaultMaxRecipients   = 100
	DefaultMessagesPerHour = 200
)

// maxLineLength bounds a line, commands and message lines alike: RFC 5321
// §4.5.3.1.6's 1000 octets, doubled as go-smtp does. go-smtp holds a
// command line whole.
const maxLineLength = 2000

// Backend turns a login into the account its mail goes to.
type Backend interface {
	// Login checks the credentials. A refusal is ErrAuthFailed (or an
	// error wrapping it); any other error is a temporary failure. The
	// upstream login that follows is the relay's.
	Login(ctx context.Context, login *LoginInfo) (*Account, error)
}

// LoginInfo describes one login attempt.
type LoginInfo struct {
	Username string // as the client typed it
	Key      string // Username folded by Server.CanonicalName
	Password string
	Remote   net.Addr
	TLS      bool
	Method   string // "AUTH PLAIN" or "AUTH LOGIN"
}

// LoginGuard slows down repeated failed logins; the POP3 door's guard is
// one, so both doors share the counts.
type LoginGuard interface {
	Reserve(ctx context.Context, ip, user string) time.Duration
	Failed(ctx context.Context, ip, user string)
	Succeeded(ctx context.Context, ip, user string)
}

// Observer is told of logins and of the outcome of each message, for
// metrics.
type Observer interface {
	SubmissionLogin(method, result string)
	// SubmissionMessage is called once per transaction that reached
	// MAIL: relayed, or the reason it was not.
	SubmissionMessage(result string)
}

// ErrAuthFailed refuses credentials (RFC 4954 §6), whatever the reason.
var ErrAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}

var errTempAuth = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure, please try again later"}

// Server serves SMTP submission on the listeners given to Serve (STARTTLS
// offered when TLSConfig is set) and ServeTLS (implicit TLS, RFC 8314).
// Set its fields before the first call to Serve.
type Server struct {
	Backend   Backend
	TLSConfig *tls.Config
	// AllowInsecureAuth permits AUTH without TLS from addresses other
	// than loopback; loopback is permitted unless RequireTLSOnLoopback.
	// An address from a PROXY header is never loopback.
	AllowInsecureAuth    bool
	RequireTLSOnLoopback bool
	Domain               string // in the greeting
	Logger               *slog.Logger
	Observer             Observer
	Guard                LoginGuard
	// CanonicalName folds a login name into the key of the Guard and the
	// Backend.
	CanonicalName  func(string) string
	MinRefusalTime time.Duration
	// MaxConnections bounds the open connections on all listeners;
	// MaxConnsPerIP those from one address. Zero: no limit.
	MaxConnections int
	MaxConnsPerIP  int
	// MaxSessionsPerUser bounds the sessions logging in or logged in
	// under one name (by its CanonicalName key); zero: no limit.
	MaxSessionsPerUser int
	// LoginTimeout bounds the time from connect to a successful AUTH.
	LoginTimeout time.Duration
	// IdleTimeout bounds the wait for each command.
	IdleTimeout     time.Duration
	MaxAuthFailures int
	// MaxRecipients bounds RCPT per message; MessagesPerHour the messages
	// relayed per account in any hour. Negative: no limit; zero: default.
	MaxRecipients   int
	MessagesPerHour int
	// Sent counts the messages per account for MessagesPerHour; nil:
	// this Server's own count.
	Sent SentCounter
	// Capabilities are the upstreams' extensions EHLO passes on (see
	// Probe): SIZE with their least limit, which DATA also enforces, and
	// SMTPUTF8 only when all have it.
	Capabilities Capabilities

	once     sync.Once
	smtp     *smtp.Server
	rate     *rateLimit
	mu       sync.Mutex
	admitted int
	ipConns  map[string]int
	users    map[string]int // sessions per login key
	nextID   atomic.Uint64
}

func (s *Server) init() {
	s.once.Do(func() {
		s.smtp = smtp.NewServer(backend{s})
		s.smtp.Domain = cmp.Or(s.Domain, "localhost")
		s.smtp.TLSConfig = s.TLSConfig
		// The door decides who may AUTH without TLS (authAllowed): go-smtp
		// would refuse loopback too.
		s.smtp.AllowInsecureAuth = true
		s.smtp.ReadTimeout = s.idleTimeout()
		s.smtp.WriteTimeout = s.idleTimeout()
		s.smtp.MaxLineLength = maxLineLength
		s.smtp.EnableSMTPUTF8 = s.Capabilities.SMTPUTF8
		s.smtp.MaxMessageBytes = s.Capabilities.Size
		s.smtp.ErrorLog = errorLog{s.logger()}
		s.rate = newRateLimit(s.MessagesPerHour, s.Sent, s.logger())
		s.ipConns = make(map[string]int)
		s.users = make(map[string]int)
	})
}

// Serve accepts cleartext connections on l, offering STARTTLS when
// TLSConfig is set. It returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	return s.smtp.Serve(&listener{Listener: l, srv: s})
}

// ServeTLS accepts connections on l that start with a TLS handshake.
func (s *Server) ServeTLS(l net.Listener) error {
	if s.TLSConfig == nil {
		return errors.New("submission: ServeTLS needs a TLSConfig")
	}
	s.init()
	return s.smtp.Serve(tls.NewListener(&listener{Listener: l, srv: s, implicit: true}, s.TLSConfig))
}

// Shutdown closes the listeners and waits for the sessions to end until
// ctx is done; then it closes those still open. A transaction cut off
// there was not finished upstream, so nothing is sent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	err := s.smtp.Shutdown(ctx)
	if err != nil && !errors.Is(err, smtp.ErrServerClosed) {
		s.smtp.Close()
		return err
	}
	return nil
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return DefaultIdleTimeout
}

func (s *Server) loginTimeout() time.Duration {
	if s.LoginTimeout > 0 {
		return s.LoginTimeout
	}
	return DefaultLoginTimeout
}

func (s *Server) maxAuthFailures() int {
	if s.MaxAuthFailures > 0 {
		return s.MaxAuthFailures
	}
	return DefaultMaxAuthFailures
}

func (s *Server) maxRecipients() int {
	if s.MaxRecipients == 0 {
		return DefaultMaxRecipients
	}
	return s.MaxRecipients
}

func (s *Server) canonicalName(name string) string {
	if s.CanonicalName == nil {
		return name
	}
	return s.CanonicalName(name)
}

func (s *Server) observeLogin(method, result string) {
	if s.Observer != nil {
		s.Observer.SubmissionLogin(method, result)
	}
}

func (s *Server) observeMessage(result string) {
	if s.Observer != nil {
		s.Observer.SubmissionMessage(result)
	}
}

// admit counts a new connection against the limits.
func (s *Server) admit(ip string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.MaxConnections > 0 && s.admitted >= s.MaxConnections {
		return false
	}
	if s.MaxConnsPerIP > 0 && s.ipConns[ip] >= s.MaxConnsPerIP {
		return false
	}
	s.admitted++
	s.ipConns[ip]++
	return true
}

// admitUser counts a session for the login key against
// MaxSessionsPerUser; the session releases it with releaseUser.
func (s *Server) admitUser(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.MaxSessionsPerUser > 0 && s.users[key] >= s.MaxSessionsPerUser {
		return false
	}
	s.users[key]++
	return true
}

func (s *Server) releaseUser(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.users[key]--; s.users[key] <= 0 {
		delete(s.users, key)
	}
}

func (s *Server) release(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.admitted--
	if s.ipConns[ip]--; s.ipConns[ip] <= 0 {
		delete(s.ipConns, ip)
	}
}

// listener wraps each accepted connection in a clientConn.
type listener struct {
	net.Listener
	srv      *Server
	implicit bool
}

func (l *listener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &clientConn{Conn: nc, srv: l.srv, implicit: l.implicit, id: l.srv.nextID.Add(1)}, nil
}

// clientConn is one client connection. It is admitted against the
// connection limits at its first read or write, not in Accept, because a
// PROXY header must be read to know the client's address and Accept must
// not wait for it.
type clientConn struct {
	net.Conn
	srv      *Server
	implicit bool
	id       uint64

	admitOnce sync.Once
	admitErr  error
	ip        string
	timer     *time.Timer
	closeOnce sync.Once
	loggedIn  atomic.Bool
	// inData: a message is being read. go-smtp sets one read deadline at
	// the DATA command for the whole message, which would cut off a slow
	// but live device; the idle timeout bounds each read instead, the
	// silence between blocks (RFC 5321 §4.5.3.2.6, §4.5.3.2.7).
	inData atomic.Bool
	// pauses: a read during DATA returns errPause after pauseAfter of
	// silence, and lastRead (Unix nanoseconds) is when an octet last
	// came; cut: the next read returns errPause (see dataRepair).
	pauses   atomic.Bool
	lastRead atomic.Int64
	cut      atomic.Bool
}

var errRefused = errors.New("submission: connection refused by the connection limits")

func (c *clientConn) admit() error {
	c.admitOnce.Do(func() {
		c.ip = remoteIP(c.Conn.RemoteAddr())
		if !c.srv.admit(c.ip) {
			c.admitErr = errRefused
			if !c.implicit {
				// RFC 5321 §3.1: a server that cannot serve now says 421 in
				// place of the greeting.
				c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c.Conn, "421 4.7.0 Too many connections, please try again later\r\n")
			}
			c.Conn.Close()
			return
		}
		c.timer = time.AfterFunc(c.srv.loginTimeout(), func() {
			if !c.loggedIn.Load() {
				c.srv.logger().Info("login timeout: closing", "conn", c.id, "remote", c.ip)
				c.Close()
			}
		})
	})
	return c.admitErr
}

func (c *clientConn) Read(b []byte) (int, error) {
	if err := c.admit(); err != nil {
		return 0, err
	}
	if c.cut.Swap(false) {
		return 0, errPause
	}
	if !c.inData.Load() {
		return c.Conn.Read(b)
	}
	if !c.pauses.Load() {
		c.Conn.SetReadDeadline(time.Now().Add(c.srv.idleTimeout()))
		return c.Conn.Read(b)
	}
	deadline := time.Unix(0, c.lastRead.Load()).Add(c.srv.idleTimeout())
	c.Conn.SetReadDeadline(earliest(deadline, time.Now().Add(pauseAfter)))
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
	}
	var ne net.Error
	if n == 0 && errors.As(err, &ne) && ne.Timeout() && time.Now().Before(deadline) {
		return 0, errPause
	}
	return n, err
}

// startPauses has reads during DATA pause (see dataRepair) until
// stopPauses.
func (c *clientConn) startPauses() {
	c.lastRead.Store(time.Now().UnixNano())
	c.pauses.Store(true)
}

func (c *clientConn) stopPauses() { c.pauses.Store(false) }

// cutRead has the next read return errPause: go-smtp's DATA reader stops
// reading a message that the relay ended. The reply to the message
// clears it, should the reader not read again.
func (c *clientConn) cutRead() { c.cut.Store(true) }

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (c *clientConn) Write(b []byte) (int, error) {
	if err := c.admit(); err != nil {
		return 0, err
	}
	c.cut.Store(false)
	return c.Conn.Write(b)
}

func (c *clientConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.admitOnce.Do(func() { c.admitErr = net.ErrClosed }) // never admitted
		if c.admitErr == nil {
			c.timer.Stop()
			c.srv.release(c.ip)
		}
	})
	return err
}

// Proxied tells that the address is a balancer's word (PROXY protocol).
func (c *clientConn) Proxied() bool {
	p, ok := c.Conn.(interface{ Proxied() bool })
	return ok && p.Proxied()
}

// clientOf finds the clientConn under a go-smtp connection, through the
// TLS layer of STARTTLS or implicit TLS.
func clientOf(nc net.Conn) *clientConn {
	for {
		switch c := nc.(type) {
		case *clientConn:
			return c
		case *tls.Conn:
			nc = c.NetConn()
		default:
			return nil
		}
	}
}

func remoteIP(addr net.Addr) string {
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

// errorLog sends go-smtp's own messages to the logger at Debug: they are
// connection errors the session already reported, or a client gone.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	e.log.Debug("smtp", "msg", strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (e errorLog) Println(v ...any) {
	e.log.Debug("smtp", "msg", strings.TrimSpace(fmt.Sprintln(v...)))
}
