// Package imapmem runs an in-process IMAP server holding mail in memory, on
// a loopback port: the upstream of `gateway demo` and of fast tests.
package imapmem

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"

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

	mu    sync.Mutex
	users map[string]*imapmemserver.User
	done  chan struct{}
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
		mem:   imapmemserver.New(),
		users: make(map[string]*imapmemserver.User),
		done:  make(chan struct{}),
	}
	if opts.ImplicitTLS && opts.TLSConfig == nil {
		return nil, errors.New("imapmem: ImplicitTLS needs a TLSConfig")
	}
	loginOnly := opts.LoginOnly
	srvOpts := &imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
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
