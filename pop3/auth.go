package pop3

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// canonicalName is the key of a login name, computed once here at the door
// for every lock, limit and counter behind it.
func (s *Server) canonicalName(name string) string {
	if s.CanonicalName == nil {
		return name
	}
	return s.CanonicalName(name)
}

// authAllowed tells whether credentials may be sent on this connection:
// over TLS, from loopback, or anywhere when the server allows it
// (RFC 2595 §2). Only the socket's own peer counts as loopback: an
// address from a PROXY header is the balancer's word, and the balancer is
// on the network.
func (c *conn) authAllowed() bool {
	if c.tls || c.srv.AllowInsecureAuth {
		return true
	}
	if c.proxied || c.srv.RequireTLSOnLoopback {
		return false
	}
	if tcp, ok := c.netConn().RemoteAddr().(*net.TCPAddr); ok {
		return tcp.IP.IsLoopback()
	}
	return false
}

// proxiedConn is a connection whose remote address a load balancer gave
// (internal/proxyproto's PROXY protocol connections).
type proxiedConn interface{ Proxied() bool }

func isProxied(nc net.Conn) bool {
	p, ok := nc.(proxiedConn)
	return ok && p.Proxied()
}

func (c *conn) stlsOffered() bool {
	return c.tlsConfig != nil && !c.tls && c.state == stateAuthorization
}

// plaintextRefused refuses credentials on a connection without TLS
// (RFC 2595 §2).
func (c *conn) plaintextRefused() {
	c.errorf(CodeAuth, "Plaintext authentication disallowed on non-secure connections; use STLS.")
}

// capa lists the capabilities of RFC 2449 §6 that hold in the current state.
func (c *conn) capa(string) error {
	c.ok("Capability list follows")
	c.line("CAPA")
	c.line("TOP")
	c.line("UIDL")
	c.line("RESP-CODES")
	c.line("PIPELINING")
	c.line("AUTH-RESP-CODE")
	if c.srv.Expire != "" {
		c.line("EXPIRE %s", c.srv.Expire)
	}
	if d := c.srv.LoginDelay / time.Second; d > 0 {
		c.line("LOGIN-DELAY %d", d)
	}
	if c.state == stateAuthorization && c.authAllowed() {
		c.line("USER")
		c.line("SASL PLAIN LOGIN")
	}
	if c.stlsOffered() {
		c.line("STLS")
	}
	if c.state == stateTransaction && c.srv.Implementation != "" {
		c.line("IMPLEMENTATION %s", c.srv.Implementation)
	}
	c.line(".")
	return nil
}

// user takes the name for a following PASS (RFC 1939 §7).
func (c *conn) user(arg string) error {
	if !c.authAllowed() {
		c.plaintextRefused()
		return nil
	}
	if arg == "" {
		c.errorf(CodeNone, "No username given.")
		return c.badCommand()
	}
	c.pending = arg
	c.ok("")
	return nil
}

// pass completes a USER/PASS login. The argument is the rest of the line,
// spaces included (RFC 1939 §7).
func (c *conn) pass(arg string) error {
	if !c.authAllowed() {
		c.plaintextRefused()
		return nil
	}
	if c.pending == "" {
		c.errorf(CodeNone, "No username given.")
		return c.badCommand()
	}
	name := c.pending
	c.pending = ""
	return c.login(name, arg, "USER")
}

// auth runs a SASL exchange (RFC 5034). Without an argument it lists the
// mechanisms, as many clients expect.
func (c *conn) auth(arg string) error {
	if !c.authAllowed() {
		c.plaintextRefused()
		return nil
	}
	c.pending = ""
	mech, ir, hasIR := strings.Cut(strings.TrimSpace(arg), " ")
	if mech == "" {
		c.ok("")
		c.line("PLAIN")
		c.line("LOGIN")
		c.line(".")
		return nil
	}

	var username, password string
	var server sasl.Server
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		server = sasl.NewPlainServer(func(identity, u, p string) error {
			// Acting for another user is not supported (RFC 4616 §2).
			if identity != "" && identity != u {
				return errors.New("authorization identity differs")
			}
			username, password = u, p
			return nil
		})
	case sasl.Login:
		server = &loginServer{done: func(u, p string) { username, password = u, p }}
	default:
		c.errorf(CodeNone, "Unsupported authentication mechanism.")
		return c.badCommand()
	}

	var response []byte
	if hasIR {
		// RFC 5034 §4: "=" is an empty initial response.
		if ir != "=" {
			var err error
			if response, err = base64.StdEncoding.DecodeString(ir); err != nil {
				c.errorf(CodeNone, "Invalid base64 data in initial response.")
				return nil
			}
		} else {
			response = []byte{}
		}
	}
	for {
		challenge, done, err := server.Next(response)
		if err != nil {
			c.srv.observer().Login("AUTH "+strings.ToUpper(mech), "auth-failed")
			return c.authFailed("")
		}
		if done {
			break
		}
		c.challenge(challenge)
		line, err := c.readLine(maxSASLLine)
		if errors.Is(err, errLineTooLong) {
			if c.tracing {
				c.traceLine("recv", "<line too long, discarded>")
			}
			c.errorf(CodeNone, "Line too long.")
			return c.badCommand()
		}
		if err != nil {
			return err
		}
		if c.tracing {
			c.traceLine("recv", redactResponse(line))
		}
		if line == "*" {
			c.errorf(CodeNone, "Authentication cancelled.")
			return nil
		}
		if response, err = base64.StdEncoding.DecodeString(line); err != nil {
			c.errorf(CodeNone, "Invalid base64 data in response.")
			return nil
		}
	}
	return c.login(username, password, "AUTH "+strings.ToUpper(mech))
}

// login checks the credentials with the backend and enters the TRANSACTION
// state (RFC 1939 §4). A refusal for an unknown user and for a wrong
// password look the same on the wire, and both wait the same delay.
func (c *conn) login(username, password, method string) error {
	began := time.Now()
	defer func() { c.checking += time.Since(began) }()
	// Credentials travel on as IMAP strings; control characters in them are
	// refused here, so they can never turn into extra upstream commands.
	// Such a name is not used as a key either.
	validName := username != "" && !strings.ContainsAny(username, "\x00\r\n")
	key := ""
	if validName {
		key = c.srv.canonicalName(username)
	}
	if err := c.loginDelay(key); err != nil {
		return errClose
	}
	checked := time.Now()
	if !validName || strings.ContainsAny(password, "\x00\r\n") {
		c.srv.observer().Login(method, "auth-failed")
		if err := c.refusalFloor(checked); err != nil {
			return errClose
		}
		return c.authFailed(key)
	}
	if !c.srv.admitUser(c, key) {
		c.srv.observer().Login(method, "too-many-sessions")
		c.log.Info("login refused", "method", method, "reason", "too many sessions")
		c.log.Debug("login refused", "user", username)
		c.errorf(CodeSysTemp, "Too many sessions for this user.")
		return nil
	}
	login := &LoginInfo{
		Username: username,
		Key:      key,
		Password: password,
		Remote:   c.netConn().RemoteAddr(),
		TLS:      c.tls,
		Method:   method,
	}
	md, err := c.srv.Backend.Login(c.ctx, login)
	if err != nil {
		c.srv.releaseUser(c)
		if c.isAborted() {
			// Shutdown cut the login short; nothing to report.
			return errClose
		}
		e, known := asError(err)
		c.srv.observer().Login(method, loginOutcome(e))
		// A name that did not log in may be a password typed into the
		// wrong field: it is logged at Debug only, never above.
		if !known {
			c.log.Error("login failed", "method", method, "err", err)
		} else {
			c.log.Info("login refused", "method", method, "reason", e.Error())
		}
		c.log.Debug("login refused", "user", username)
		if e.Code == CodeAuth {
			if err := c.refusalFloor(checked); err != nil {
				return errClose
			}
			return c.authFailed(key)
		}
		c.replyError(e)
		if e.Fatal {
			c.result = "error"
			return errClose
		}
		return nil
	}
	c.mu.Lock()
	c.state = stateTransaction
	c.mu.Unlock()
	c.maildrop = md
	c.loginUser = username
	if g := c.srv.Guard; g != nil {
		g.Succeeded(c.ctx, c.remoteIP(), key)
	}
	c.msgs = md.Messages()
	c.deleted = make([]bool, len(c.msgs))
	c.log = c.log.With("user", username)
	c.log.Info("logged in", "method", method, "messages", len(c.deleted))
	c.srv.observer().Login(method, "ok")
	c.ok("Logged in.")
	return nil
}

// loginDelay books the login's turn with the Guard and waits for it
// before the credentials are checked. Only closing the session cuts the
// wait short; the turn stays used.
func (c *conn) loginDelay(user string) error {
	g := c.srv.Guard
	if g == nil {
		return nil
	}
	d := g.Reserve(c.ctx, c.remoteIP(), user)
	if d <= 0 {
		return nil
	}
	c.log.Debug("delaying login", "user", user, "delay", d)
	return c.wait(d)
}

// refusalFloor waits until MinRefusalTime has passed since the check of
// the credentials began, so that a refusal takes as long whether a local
// hash or the upstream refused it: the time does not tell a mapped user
// from a forwarded name or an unknown one.
func (c *conn) refusalFloor(checked time.Time) error {
	return c.wait(time.Until(checked.Add(c.srv.MinRefusalTime)))
}

// wait sleeps for d, or until the connection's context ends.
func (c *conn) wait(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
}

// authFailed refuses credentials and reports the failure to the Guard;
// user is empty when no usable name was given.
func (c *conn) authFailed(user string) error {
	if g := c.srv.Guard; g != nil {
		g.Failed(c.ctx, c.remoteIP(), user)
	}
	c.authFails++
	c.replyError(ErrAuthFailed)
	if c.authFails >= c.srv.maxAuthFailures() {
		c.result = "auth-failed"
		return errClose
	}
	return nil
}

// stls upgrades the connection to TLS (RFC 2595 §4). Anything the client
// sent behind the command is discarded unread, and a name given by USER
// before it is forgotten.
func (c *conn) stls(string) error {
	if !c.stlsOffered() {
		if c.tls {
			c.errorf(CodeNone, "TLS is already active.")
		} else {
			c.errorf(CodeNone, "STLS is not available.")
		}
		return c.badCommand()
	}
	c.ok("Begin TLS negotiation now.")
	if err := c.bw.Flush(); err != nil {
		return err
	}
	if n := c.br.Buffered(); n > 0 {
		c.log.Warn("discarded data pipelined after STLS", "octets", n)
	}
	tc := tls.Server(c.netConn(), c.tlsConfig)
	tc.SetDeadline(time.Now().Add(c.srv.authTimeout()))
	if err := tc.HandshakeContext(c.ctx); err != nil {
		c.log.Debug("STLS handshake failed", "err", err)
		c.result = "tls-failed"
		return errClose
	}
	tc.SetDeadline(time.Time{})
	c.mu.Lock()
	c.nc = tc
	c.mu.Unlock()
	c.tls = true
	c.pending = ""
	c.br = bufio.NewReaderSize(tc, 4096)
	return nil
}

// quit ends the session; in the TRANSACTION state it first enters the
// UPDATE state and removes the messages marked deleted (RFC 1939 §6).
func (c *conn) quit(string) error {
	if c.state != stateTransaction {
		c.result = "ok"
		c.ok("Logging out.")
		return errClose
	}
	var marked []int
	for i, d := range c.deleted {
		if d {
			marked = append(marked, i)
		}
	}
	// The maildrop is released before the reply, so a client that logs in
	// again at once does not find it still in use.
	if len(marked) == 0 {
		c.result = "ok"
		c.releaseMaildrop()
		c.ok("Logging out.")
		return errClose
	}
	res, err := c.maildrop.Commit(c.ctx, marked)
	if err != nil {
		c.log.Error("applying deletes failed", "err", err, "marked", len(marked))
		c.result = "commit-failed"
		c.releaseMaildrop()
		c.errorf(CodeSysTemp, "Some deleted messages were not removed.")
		return errClose
	}
	c.deletes = len(marked)
	c.srv.observer().Deleted(res)
	c.result = "ok"
	c.releaseMaildrop()
	c.ok("Logging out, %s", quitSummary(res))
	return errClose
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): the user name, then the password, each
// answering a prompt. An initial response is taken as the user name.
type loginServer struct {
	step int
	user string
	done func(user, password string)
}

func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		s.user = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 1:
		s.user = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		s.done(s.user, string(response))
		return nil, true, nil
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}
