package pop3

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero values of Server's limits.
const (
	DefaultAuthTimeout     = 60 * time.Second
	DefaultIdleTimeout     = 10 * time.Minute // RFC 1939 §3: at least 10 minutes
	DefaultMaxBadCommands  = 10
	DefaultMaxAuthFailures = 3
	// DefaultLoginTimeout bounds the whole AUTHORIZATION state. The
	// inactivity timer of RFC 1939 §3 protects a session's state; before
	// login there is none, and a client that keeps a connection open with
	// a CAPA now and then only holds a slot.
	DefaultLoginTimeout = 3 * time.Minute
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("pop3: server closed")

// Server serves POP3 sessions on the listeners given to Serve and ServeTLS.
// Set its fields before the first call to Serve.
type Server struct {
	Backend Backend

	// TLSConfig enables STLS on Serve's listeners and is required by
	// ServeTLS. Certificates may be swapped at run time through
	// GetCertificate.
	TLSConfig *tls.Config

	// AllowInsecureAuth permits USER, PASS and AUTH without TLS from
	// addresses other than loopback. Loopback is permitted too unless
	// RequireTLSOnLoopback is set; an address learnt from a PROXY header
	// is never loopback.
	AllowInsecureAuth    bool
	RequireTLSOnLoopback bool

	// Implementation is advertised in CAPA after login (RFC 2449 §6.9).
	Implementation string

	// Expire, when set, is advertised as EXPIRE in both states
	// (RFC 2449 §6.7): the least number of days a message the client
	// leaves on the server is kept, or NEVER.
	Expire string

	// LoginDelay, when positive, is advertised as LOGIN-DELAY in both
	// states (RFC 2449 §6.5), in whole seconds: the least time a client
	// should wait between logins. It is a request, not enforced.
	LoginDelay time.Duration

	Logger *slog.Logger

	// Observer, when set, is told of sessions, logins, commands, errors
	// and octets sent, for metrics.
	Observer Observer

	// AuthTimeout bounds the wait for each command before login;
	// IdleTimeout after login, and each write to the client.
	AuthTimeout time.Duration
	IdleTimeout time.Duration
	// LoginTimeout bounds the time from accept to login, however busy
	// the client keeps the connection. The time the server spends checking
	// logins is not the client's and counts only beyond a second
	// LoginTimeout.
	LoginTimeout time.Duration

	// MaxBadCommands unknown, malformed or misplaced commands close the
	// connection; so do MaxAuthFailures refused logins.
	MaxBadCommands  int
	MaxAuthFailures int

	// Guard, when set, books each login's turn for the remote address and
	// the user name and delays it until then, and learns of every refused
	// and accepted login. The turn is booked and waited for before the
	// backend sees the credentials, so parallel connections queue, and an
	// unknown user is treated exactly like a wrong password.
	Guard LoginGuard

	// MaxConnsPerIP bounds the open connections from one remote address;
	// one more is told so with [SYS/TEMP] (RFC 3206) instead of the
	// greeting and closed. Zero means no limit.
	MaxConnsPerIP int

	// MaxConnections bounds the open connections on all listeners; one
	// more is refused like one over MaxConnsPerIP. Zero means no limit.
	MaxConnections int

	// MaxSessionsPerUser bounds the sessions per user name, counting those
	// logging in and those logged in; a further login is refused with
	// [SYS/TEMP] before the backend is asked, and does not count as a
	// failed login. Names count by their key (see CanonicalName), so with
	// case folding "u2" and "U2" share one allowance. Zero means no limit.
	MaxSessionsPerUser int

	// CanonicalName, when set, folds a login name into the key that the
	// session limit, the Guard and the Backend (LoginInfo.Key) use for it,
	// so that names a store treats as one user share one key. Nil: names
	// are keys exactly as typed.
	CanonicalName func(name string) string

	// MinRefusalTime is the least time from the start of a credentials
	// check to its [AUTH] refusal, so that refusals by a local hash, by an
	// upstream and of unknown names take alike. Zero: no floor.
	MinRefusalTime time.Duration

	mu           sync.Mutex
	listeners    map[net.Listener]struct{}
	conns        map[*conn]struct{}
	admitted     int            // conns within MaxConnections
	ipConns      map[string]int // open connections per remote address
	userSessions map[string]int // sessions per user name
	closing      atomic.Bool
	sessions     sync.WaitGroup
	nextID       atomic.Uint64
}

// Serve accepts cleartext connections on l, offering STLS when TLSConfig is
// set. It returns ErrServerClosed after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	return s.ServeListener(l, s.TLSConfig, false)
}

// ServeTLS accepts connections on l that start with a TLS handshake
// (implicit TLS, the pop3s port).
func (s *Server) ServeTLS(l net.Listener) error {
	return s.ServeListener(l, s.TLSConfig, true)
}

// ServeListener serves l with TLS settings of its own instead of
// TLSConfig, so that listeners with different settings share one server:
// a listener for old devices that need TLS 1.0 beside one that refuses
// it. With implicitTLS every connection starts with a handshake;
// otherwise STLS is offered when tlsConfig is not nil.
func (s *Server) ServeListener(l net.Listener, tlsConfig *tls.Config, implicitTLS bool) error {
	if implicitTLS && tlsConfig == nil {
		return errors.New("pop3: implicit TLS needs a TLS configuration")
	}
	return s.serve(l, tlsConfig, implicitTLS)
}

func (s *Server) serve(l net.Listener, tlsConfig *tls.Config, implicitTLS bool) error {
	if !s.track(l) {
		l.Close()
		return ErrServerClosed
	}
	defer s.untrack(l)
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of descriptors, a connection reset before it was
			// accepted, or another passing fault: back off, as net/http
			// does, rather than spin, and never stop serving for it.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger().Warn("accept failed, retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		c := s.newConn(nc, tlsConfig, implicitTLS)
		if c == nil {
			nc.Close()
			continue
		}
		go c.serve()
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) track(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrack(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func (s *Server) newConn(nc net.Conn, tlsConfig *tls.Config, implicitTLS bool) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return nil
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	c := newConn(s, nc, tlsConfig, implicitTLS, s.nextID.Add(1))
	if s.MaxConnections <= 0 || s.admitted < s.MaxConnections {
		s.admitted++
		c.admitted = true
	}
	s.conns[c] = struct{}{}
	s.sessions.Add(1)
	return c
}

func (s *Server) connDone(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if c.admitted {
		s.admitted--
	}
	if c.ipCounted {
		release(s.ipConns, c.ip)
	}
	if c.userCounted {
		release(s.userSessions, c.sessionUser)
	}
	s.mu.Unlock()
	s.sessions.Done()
}

// admitIP counts c against MaxConnsPerIP and tells whether it is within
// the limit.
func (s *Server) admitIP(c *conn) bool {
	if s.MaxConnsPerIP <= 0 {
		return true
	}
	ip := c.remoteIP()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ipConns[ip] >= s.MaxConnsPerIP {
		return false
	}
	if s.ipConns == nil {
		s.ipConns = make(map[string]int)
	}
	s.ipConns[ip]++
	c.ip, c.ipCounted = ip, true
	return true
}

// admitUser counts a login for user against MaxSessionsPerUser and tells
// whether it is within the limit.
func (s *Server) admitUser(c *conn, user string) bool {
	if s.MaxSessionsPerUser <= 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.userSessions[user] >= s.MaxSessionsPerUser {
		return false
	}
	if s.userSessions == nil {
		s.userSessions = make(map[string]int)
	}
	s.userSessions[user]++
	c.sessionUser, c.userCounted = user, true
	return true
}

// releaseUser gives back the session admitUser counted for c.
func (s *Server) releaseUser(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.userCounted {
		release(s.userSessions, c.sessionUser)
		c.sessionUser, c.userCounted = "", false
	}
}

// release decrements a counter, dropping it at zero so the map holds only
// keys in use.
func release(m map[string]int, key string) {
	if m[key] <= 1 {
		delete(m, key)
	} else {
		m[key]--
	}
}

// Shutdown stops accepting connections, then waits for the sessions to end.
// When ctx is done first, it closes the remaining connections (a session
// closed this way deletes nothing) and returns ctx's error once they are
// gone.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	// Sessions that have not logged in hold nothing worth waiting for.
	for c := range s.conns {
		c.shutdownIfIdle()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// Sessions returns the number of open connections.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) authTimeout() time.Duration {
	if s.AuthTimeout > 0 {
		return s.AuthTimeout
	}
	return DefaultAuthTimeout
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

func (s *Server) maxBadCommands() int {
	if s.MaxBadCommands > 0 {
		return s.MaxBadCommands
	}
	return DefaultMaxBadCommands
}

func (s *Server) maxAuthFailures() int {
	if s.MaxAuthFailures > 0 {
		return s.MaxAuthFailures
	}
	return DefaultMaxAuthFailures
}
