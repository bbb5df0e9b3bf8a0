// Package imapmem runs an in-process IMAP server holding mail in memory, on
// a loopback port: the upstream of fast tests.
package imapmem

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
)

// Server is a running in-memory IMAP server.
type Server struct {
	srv *imapserver.Server
	mem *imapmemserver.Server
	ln  net.Listener

	mu     sync.Mutex
	users  map[string]*imapmemserver.User
	bearer map[string]*bearerCount // by SASL mechanism
	done   chan struct{}
}

// Options adjust the server.
type Options struct {
	// Caps replaces the advertised capabilities; nil advertises IMAP4rev1
	// with UIDPLUS, MOVE, SPECIAL-USE and the other IMAP4rev2 extensions.
	Caps imap.CapSet
	// Logger receives the server's error messages; nil discards them.
	Logger *log.Logger
	// TLSConfig enables TLS: STARTTLS, or TLS from the first octet with
	// ImplicitTLS. With TLS, authentication is accepted only over TLS.
	TLSConfig *tls.Config
	// ImplicitTLS wraps the listener in TLS; it needs TLSConfig.
	ImplicitTLS bool
	// LoginOnly advertises no SASL mechanism (no AUTH=PLAIN), so clients
	// must use LOGIN.
	LoginOnly bool
	// DebugWriter receives the raw traffic of every connection, after TLS.
	DebugWriter io.Writer
	// Bearer, when set, makes the server OAuth2-only, like a provider with
	// passwords disabled: it advertises and accepts AUTHENTICATE XOAUTH2
	// and OAUTHBEARER, refuses LOGIN with NO and does not offer PLAIN.
	// A bearer login succeeds only for a user added with AddUser for whom
	// Bearer(user, token) is true. It takes precedence over LoginOnly.
	Bearer func(user, token string) bool
}

// Start listens on addr ("127.0.0.1:0" for any free port) and serves.
func Start(addr string, opts *Options) (*Server, error) {
	if opts == nil {
		opts = &Options{}
	}
	caps := opts.Caps
	if caps == nil {
		caps = imap.CapSet{
			imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {},
		}
	}
	logger := opts.Logger
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	s := &Server{
		mem:    imapmemserver.New(),
		users:  make(map[string]*imapmemserver.User),
		bearer: make(map[string]*bearerCount),
		done:   make(chan struct{}),
	}
	if opts.ImplicitTLS && opts.TLSConfig == nil {
		return nil, errors.New("imapmem: ImplicitTLS needs a TLSConfig")
	}
	loginOnly := opts.LoginOnly
	bearer := opts.Bearer
	srvOpts := &imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			if bearer != nil {
				return &bearerSession{server: s, valid: bearer}, nil, nil
			}
			if loginOnly {
				return &loginOnlySession{server: s}, nil, nil
			}
			return s.mem.NewSession(), nil, nil
		},
		Caps:         caps,
		InsecureAuth: opts.TLSConfig == nil,
		Logger:       logger,
		DebugWriter:  opts.DebugWriter,
	}
	if opts.TLSConfig != nil && !opts.ImplicitTLS {
		srvOpts.TLSConfig = opts.TLSConfig
	}
	s.srv = imapserver.New(srvOpts)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if opts.ImplicitTLS {
		ln = tls.NewListener(ln, opts.TLSConfig)
	}
	s.ln = ln
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server and closes its connections.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}

// AddUser creates a user with an INBOX and a Trash mailbox. Trash asks for
// the \Trash special-use attribute, but imapmemserver does not keep it, so
// LIST does not report it.
func (s *Server) AddUser(name, password string) error {
	u := imapmemserver.NewUser(name, password)
	if err := u.Create("INBOX", nil); err != nil {
		return err
	}
	if err := u.Create("Trash", &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttrTrash}}); err != nil {
		return err
	}
	s.mem.AddUser(u)
	s.mu.Lock()
	s.users[name] = u
	s.mu.Unlock()
	return nil
}

func (s *Server) user(name string) (*imapmemserver.User, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[name]
	if !ok {
		return nil, fmt.Errorf("imapmem: no user %q", name)
	}
	return u, nil
}

// loginOnlySession is imapmemserver's session without SASL mechanisms.
type loginOnlySession struct {
	*imapmemserver.UserSession // nil until logged in

	server *Server
}

var _ imapserver.SessionSASL = (*loginOnlySession)(nil)

func (sess *loginOnlySession) Login(username, password string) error {
	u, err := sess.server.user(username)
	if err != nil {
		return imapserver.ErrAuthFailed
	}
	if err := u.Login(username, password); err != nil {
		return err
	}
	sess.UserSession = imapmemserver.NewUserSession(u)
	return nil
}

func (sess *loginOnlySession) AuthenticateMechanisms() []string { return nil }

func (sess *loginOnlySession) Authenticate(string) (sasl.Server, error) {
	return nil, &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Text: "SASL mechanism not supported",
	}
}

type literal struct{ *bytes.Reader }

func (l literal) Size() int64 { return l.Reader.Size() }

// Append stores messages, unchanged, in a user's mailbox.
func (s *Server) Append(user, mailbox string, msgs ...[]byte) error {
	u, err := s.user(user)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if _, err := u.Append(mailbox, literal{bytes.NewReader(m)}, &imap.AppendOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// Count returns the number of messages in a user's mailbox.
func (s *Server) Count(user, mailbox string) (int, error) {
	u, err := s.user(user)
	if err != nil {
		return 0, err
	}
	data, err := u.Status(mailbox, &imap.StatusOptions{NumMessages: true})
	if err != nil {
		return 0, err
	}
	if data.NumMessages == nil {
		return 0, errors.New("imapmem: no message count")
	}
	return int(*data.NumMessages), nil
}

// SASL mechanisms that carry an OAuth2 access token, offered when
// Options.Bearer is set.
const (
	// XOAuth2 is Google's mechanism. The client's initial response is
	// "user=" user "\x01auth=Bearer " token "\x01\x01".
	XOAuth2 = "XOAUTH2"
	// OAuthBearer is the mechanism of RFC 7628. The client's initial
	// response is "n,a=" user ",\x01host=...\x01port=...\x01auth=Bearer "
	// token "\x01\x01"; the user is the authorization identity (a=).
	OAuthBearer = "OAUTHBEARER"
)

// bearerScope is the scope named in failure challenges, Gmail's.
const bearerScope = "https://mail.google.com/"

type bearerCount struct{ ok, failed int }

func (s *Server) countBearer(mech string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.bearer[mech]
	if c == nil {
		c = &bearerCount{}
		s.bearer[mech] = c
	}
	if ok {
		c.ok++
	} else {
		c.failed++
	}
}

// BearerLogins returns how many XOAUTH2 and OAUTHBEARER authentications
// succeeded and how many failed, a malformed response counting as failed.
// An exchange the client cancels before sending its response is not
// counted.
func (s *Server) BearerLogins() (ok, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.bearer {
		ok += c.ok
		failed += c.failed
	}
	return ok, failed
}

// BearerLoginsWith is BearerLogins for one mechanism, XOAuth2 or
// OAuthBearer.
func (s *Server) BearerLoginsWith(mech string) (ok, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.bearer[mech]; c != nil {
		return c.ok, c.failed
	}
	return 0, 0
}

// bearerSession is imapmemserver's session for an OAuth2-only server.
type bearerSession struct {
	*imapmemserver.UserSession // nil until logged in

	server *Server
	valid  func(user, token string) bool
}

var _ imapserver.SessionSASL = (*bearerSession)(nil)

func (sess *bearerSession) Login(username, password string) error {
	return &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCodeAuthenticationFailed,
		Text: "LOGIN disabled: use AUTHENTICATE XOAUTH2 or OAUTHBEARER",
	}
}

func (sess *bearerSession) AuthenticateMechanisms() []string {
	return []string{XOAuth2, OAuthBearer}
}

func (sess *bearerSession) Authenticate(mech string) (sasl.Server, error) {
	switch mech {
	case XOAuth2:
		return &bearerServer{sess: sess, mech: mech, parse: parseXOAuth2}, nil
	case OAuthBearer:
		return &bearerServer{sess: sess, mech: mech, parse: parseOAuthBearer}, nil
	}
	return nil, &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Text: "SASL mechanism not supported",
	}
}

// login checks a bearer token and, if it is good, logs the session in.
func (sess *bearerSession) login(user, token string) bool {
	u, err := sess.server.user(user)
	if err != nil || !sess.valid(user, token) {
		return false
	}
	sess.UserSession = imapmemserver.NewUserSession(u)
	return true
}

// bearerServer is the server side of XOAUTH2 and OAUTHBEARER: one client
// response carrying the token; on failure a JSON error challenge, one
// more client response (empty for XOAUTH2, 0x01 for OAUTHBEARER, but
// anything is taken), and NO [AUTHENTICATIONFAILED].
type bearerServer struct {
	sess   *bearerSession
	mech   string
	parse  func([]byte) (user, token string, ok bool)
	failed bool
	done   bool
}

// bearerError is the JSON error challenge; XOAUTH2 and RFC 7628 §3.2.2
// share its shape.
type bearerError struct {
	Status  string `json:"status"`
	Schemes string `json:"schemes"`
	Scope   string `json:"scope"`
}

func (b *bearerServer) Next(resp []byte) (challenge []byte, done bool, err error) {
	switch {
	case b.done:
		return nil, true, sasl.ErrUnexpectedClientResponse
	case b.failed:
		b.done = true
		return nil, true, &imap.Error{
			Type: imap.StatusResponseTypeNo,
			Code: imap.ResponseCodeAuthenticationFailed,
			Text: "Invalid credentials",
		}
	case resp == nil:
		// No initial response: an empty continuation asks for it.
		return nil, false, nil
	}
	user, token, ok := b.parse(resp)
	if ok && b.sess.login(user, token) {
		b.done = true
		b.sess.server.countBearer(b.mech, true)
		return nil, true, nil
	}
	b.sess.server.countBearer(b.mech, false)
	b.failed = true
	e := bearerError{Status: "401", Schemes: "Bearer", Scope: bearerScope}
	if b.mech == OAuthBearer {
		e = bearerError{Status: "invalid_token", Schemes: "bearer", Scope: bearerScope}
		if !ok {
			e.Status = "invalid_request"
		}
	} else if !ok {
		e.Status = "400"
	}
	blob, err := json.Marshal(e)
	if err != nil {
		return nil, true, err
	}
	return blob, false, nil
}

// bearerToken takes the token from an "auth" value, "Bearer <token>" with
// the scheme in any case.
func bearerToken(v string) (string, bool) {
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	return v[len(scheme):], true
}

// parseXOAuth2 reads "user=U\x01auth=Bearer T\x01\x01".
func parseXOAuth2(resp []byte) (user, token string, ok bool) {
	s, found := strings.CutSuffix(string(resp), "\x01\x01")
	if !found {
		return "", "", false
	}
	var haveUser, haveToken bool
	for _, kv := range strings.Split(s, "\x01") {
		k, v, found := strings.Cut(kv, "=")
		if !found {
			return "", "", false
		}
		switch k {
		case "user":
			user, haveUser = v, true
		case "auth":
			token, haveToken = bearerToken(v)
			if !haveToken {
				return "", "", false
			}
		}
	}
	return user, token, haveUser && haveToken && user != ""
}

// parseOAuthBearer reads RFC 7628's client response:
// gs2-header "\x01" *(key "=" value "\x01") "\x01". The user is the
// gs2 authzid, which is therefore required here; channel binding ("p=")
// is refused and keys other than auth are ignored.
func parseOAuthBearer(resp []byte) (user, token string, ok bool) {
	flag, rest, found := strings.Cut(string(resp), ",")
	if !found || (flag != "n" && flag != "y") {
		return "", "", false
	}
	authzid, rest, found := strings.Cut(rest, ",")
	if !found {
		return "", "", false
	}
	if authzid != "" {
		name, found := strings.CutPrefix(authzid, "a=")
		if !found {
			return "", "", false
		}
		// saslname escapes "," as "=2C" and "=" as "=3D" (RFC 5801).
		user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(name)
	}
	kvs, found := strings.CutPrefix(rest, "\x01")
	if !found {
		return "", "", false
	}
	kvs, found = strings.CutSuffix(kvs, "\x01\x01")
	if !found {
		return "", "", false
	}
	var haveToken bool
	for _, kv := range strings.Split(kvs, "\x01") {
		k, v, found := strings.Cut(kv, "=")
		if !found {
			return "", "", false
		}
		if k == "auth" {
			token, haveToken = bearerToken(v)
			if !haveToken {
				return "", "", false
			}
		}
	}
	return user, token, haveToken && user != ""
}

// AppendAt is Append with the given INTERNALDATE.
func (s *Server) AppendAt(user, mailbox string, date time.Time, msgs ...[]byte) error {
	u, err := s.user(user)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if _, err := u.Append(mailbox, literal{bytes.NewReader(m)}, &imap.AppendOptions{Time: date}); err != nil {
			return err
		}
	}
	return nil
}

// Recreate deletes a user's mailbox and creates it again, empty and with a
// new UIDVALIDITY, as a server does when a mailbox is restored or rebuilt.
func (s *Server) Recreate(user, mailbox string) error {
	u, err := s.user(user)
	if err != nil {
		return err
	}
	if err := u.Delete(mailbox); err != nil {
		return err
	}
	return u.Create(mailbox, nil)
}
