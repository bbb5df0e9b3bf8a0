package upstream

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
)

// Security is how the connection to the server is protected.
type Security string

const (
	SecurityImplicit Security = "implicit" // TLS from the first octet (port 993)
	SecurityStartTLS Security = "starttls" // STARTTLS before login (RFC 9051 §6.2.1)
	SecurityNone     Security = "none"     // cleartext; for loopback and tests
)

// Server says where and how to reach an IMAP server.
type Server struct {
	Address  string
	Security Security
	// TLSConfig verifies the server; its ServerName defaults to the host of
	// Address.
	TLSConfig *tls.Config
	// Timeout bounds the connection set-up and, later, any wait for data
	// while a command is under way.
	Timeout time.Duration
	// SendClientIP tells the server, before logging in, the address of the
	// POP3 client a connection is for (Dial's context, see WithClient), by
	// IMAP ID x-originating-ip (RFC 2971), so that a server which trusts
	// the gateway (Dovecot's login_trusted_networks) penalises and logs
	// the client rather than the gateway.
	SendClientIP bool
	// Observe, when set, is told how long each operation took: connect,
	// login, select, list, fetch (until the message starts to arrive),
	// fetch-batch and delete; err is nil on success.
	Observe func(op string, d time.Duration, err error)
}

// Errors that callers tell apart.
var (
	// ErrAuthFailed means the server refused the credentials.
	ErrAuthFailed = errors.New("upstream: credentials refused")
	// ErrMessageGone means the message was expunged by someone else.
	ErrMessageGone = errors.New("upstream: message no longer exists")
)

// Session is one logged-in IMAP connection with a selected mailbox. Its
// methods must not be called concurrently.
type Session struct {
	client  *imapclient.Client
	conn    *watchdogConn
	address string // host:port, for OAUTHBEARER
	observe func(op string, d time.Duration, err error)
	mailbox string
	info    Mailbox
}

// Mailbox describes the selected mailbox.
type Mailbox struct {
	Name        string
	UIDValidity uint32
	UIDNext     uint32
	Messages    uint32
}

// Entry is one message of a snapshot.
type Entry struct {
	UID  uint32
	Size int64 // RFC822.SIZE as the server reports it
}

// Dial connects to srv and waits for its greeting; with starttls it also
// negotiates TLS. The session must then log in.
func Dial(ctx context.Context, srv *Server) (_ *Session, err error) {
	if srv.Observe != nil {
		defer func(start time.Time) { srv.Observe("connect", time.Since(start), err) }(time.Now())
	}
	timeout := srv.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	host, _, err := net.SplitHostPort(srv.Address)
	if err != nil {
		return nil, fmt.Errorf("upstream: bad address %q: %w", srv.Address, err)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if srv.TLSConfig != nil {
		tlsConfig = srv.TLSConfig.Clone()
	}
	if tlsConfig.ServerName == "" {
		tlsConfig.ServerName = host
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := net.Dialer{}
	raw, err := d.DialContext(ctx, "tcp", srv.Address)
	if err != nil {
		return nil, fmt.Errorf("upstream: connect %s: %w", srv.Address, err)
	}
	var nc net.Conn = raw
	if srv.Security == SecurityImplicit {
		tc := tls.Client(raw, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("upstream: TLS with %s: %w", srv.Address, err)
		}
		nc = tc
	}
	wd := newWatchdogConn(nc, timeout)
	// Dialing is bounded by ctx as well as by the watchdog.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	wd.begin()
	defer wd.end()

	var client *imapclient.Client
	if addr, ok := clientFrom(ctx); ok && srv.SendClientIP {
		ic, err := introduce(wd, srv.Security == SecurityStartTLS, tlsConfig, addr)
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("upstream: introducing the client to %s: %w", srv.Address, err)
		}
		client = imapclient.New(ic, nil)
		if err := client.WaitGreeting(); err != nil {
			client.Close()
			return nil, fmt.Errorf("upstream: greeting from %s: %w", srv.Address, err)
		}
	} else if srv.Security == SecurityStartTLS {
		client, err = imapclient.NewStartTLS(wd, &imapclient.Options{TLSConfig: tlsConfig})
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("upstream: STARTTLS with %s: %w", srv.Address, err)
		}
	} else {
		client = imapclient.New(wd, nil)
		if err := client.WaitGreeting(); err != nil {
			client.Close()
			return nil, fmt.Errorf("upstream: greeting from %s: %w", srv.Address, err)
		}
	}
	if ctx.Err() != nil {
		client.Close()
		return nil, fmt.Errorf("upstream: connect %s: %w", srv.Address, ctx.Err())
	}
	return &Session{client: client, conn: wd, address: srv.Address, observe: srv.Observe}, nil
}

// op brackets one exchange with the server: the watchdog runs, and a
// cancelled ctx closes the connection, which fails the pending command.
func (s *Session) op(ctx context.Context) (done func()) {
	s.conn.begin()
	stop := context.AfterFunc(ctx, func() { s.client.Close() })
	return func() {
		stop()
		s.conn.end()
	}
}

// timed reports an operation's duration to the Server's Observe.
func (s *Session) timed(op string, start time.Time, err *error) {
	if s.observe != nil {
		s.observe(op, time.Since(start), *err)
	}
}

// Login authenticates with AUTHENTICATE PLAIN where the server offers it,
// and LOGIN otherwise. Refused credentials give ErrAuthFailed.
func (s *Session) Login(ctx context.Context, username, password string) (err error) {
	defer s.timed("login", time.Now(), &err)
	defer s.op(ctx)()
	caps := s.client.Caps()
	if caps.Has(imap.CapLoginDisabled) {
		return errors.New("upstream: server refuses login on this connection (LOGINDISABLED): use tls implicit or starttls")
	}
	if caps.Has(imap.AuthCap(sasl.Plain)) {
		err = s.client.Authenticate(sasl.NewPlainClient("", username, password))
	} else {
		err = s.client.Login(username, password).Wait()
	}
	if err != nil {
		return classifyLoginError(err)
	}
	return nil
}

func classifyLoginError(err error) error {
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo {
		switch ie.Code {
		case imap.ResponseCodeUnavailable, imap.ResponseCodeServerBug, imap.ResponseCodeLimit:
			return fmt.Errorf("upstream: login: %w", err)
		}
		return fmt.Errorf("%w: %s", ErrAuthFailed, ie.Text)
	}
	return fmt.Errorf("upstream: login: %w", err)
}

// Select opens the mailbox read-write.
func (s *Session) Select(ctx context.Context, mailbox string) (_ *Mailbox, err error) {
	defer s.timed("select", time.Now(), &err)
	defer s.op(ctx)()
	data, err := s.client.Select(mailbox, nil).Wait()
	if err != nil {
		return nil, fmt.Errorf("upstream: select %q: %w", mailbox, err)
	}
	s.mailbox = mailbox
	s.info = Mailbox{
		Name:        mailbox,
		UIDValidity: data.UIDValidity,
		UIDNext:     uint32(data.UIDNext),
		Messages:    data.NumMessages,
	}
	return &s.info, nil
}

// Snapshot lists every message of the selected mailbox by UID with its
// size, in UID order, with one UID FETCH.
func (s *Session) Snapshot(ctx context.Context) (_ []Entry, err error) {
	defer s.timed("list", time.Now(), &err)
	if s.info.Messages == 0 {
		return nil, nil
	}
	defer s.op(ctx)()
	var all imap.SeqSet
	all.AddRange(1, 0) // 1:*
	cmd := s.client.Fetch(all, &imap.FetchOptions{UID: true, RFC822Size: true})
	entries := make([]Entry, 0, s.info.Messages)
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		var uid imap.UID
		size := int64(-1)
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = item.UID
			case imapclient.FetchItemDataRFC822Size:
				size = item.Size
			}
		}
		// A response without the size is a flag update the server sent
		// on its own, e.g. for a message expunged by another client.
		if uid == 0 || size < 0 {
			continue
		}
		entries = append(entries, Entry{UID: uint32(uid), Size: size})
	}
	if err := cmd.Close(); err != nil {
		return nil, fmt.Errorf("upstream: listing messages: %w", err)
	}
	slices.SortFunc(entries, func(a, b Entry) int { return cmp.Compare(a.UID, b.UID) })
	entries = slices.CompactFunc(entries, func(a, b Entry) bool { return a.UID == b.UID })
	return entries, nil
}

// Fetch streams the raw octets of the message with the given UID
// (BODY.PEEK[], so \Seen is not set). The caller reads to the end or closes
// early: Close then reads and discards the rest, unless ctx was cancelled,
// in which case the connection is closed instead and the session is over.
func (s *Session) Fetch(ctx context.Context, uid uint32) (_ io.ReadCloser, err error) {
	defer s.timed("fetch", time.Now(), &err)
	done := s.op(ctx)
	cmd := s.client.Fetch(imap.UIDSetNum(imap.UID(uid)), &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	})
	msg := cmd.Next()
	if msg == nil {
		err := cmd.Close()
		done()
		if err != nil {
			return nil, fmt.Errorf("upstream: fetch UID %d: %w", uid, err)
		}
		return nil, ErrMessageGone
	}
	for {
		item := msg.Next()
		if item == nil {
			break
		}
		if body, ok := item.(imapclient.FetchItemDataBodySection); ok {
			lit := &literalReader{r: strings.NewReader("")}
			if body.Literal != nil {
				lit = &literalReader{r: body.Literal, size: body.Literal.Size()}
			}
			return &messageReader{s: s, ctx: ctx, cmd: cmd, msg: msg, lit: lit, done: done}, nil
		}
	}
	err = cmd.Close()
	done()
	if err != nil {
		return nil, fmt.Errorf("upstream: fetch UID %d: %w", uid, err)
	}
	return nil, ErrMessageGone
}

type messageReader struct {
	s    *Session
	ctx  context.Context
	cmd  *imapclient.FetchCommand
	msg  *imapclient.FetchMessageData
	lit  *literalReader
	done func()
	eof  bool
	err  error
}

func (r *messageReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.lit.Read(p)
	if err == io.EOF {
		r.eof = true
	} else if err != nil {
		r.err = fmt.Errorf("upstream: reading message: %w", err)
		return n, r.err
	}
	return n, err
}

func (r *messageReader) Close() error {
	defer r.done()
	if r.err != nil || r.ctx.Err() != nil {
		r.s.abort()
		if r.err == nil {
			// Once a read of the literal has failed, the IMAP client's
			// reader owns the stream again; read it only if none has.
			io.Copy(io.Discard, r.lit)
		}
		// The failed literal leaves the response unreadable: the IMAP
		// client's reader fails on the closed connection and ends every
		// pending command, which Close waits for.
		r.s.client.Close()
		return r.err
	}
	if !r.eof {
		if _, err := io.Copy(io.Discard, r.lit); err != nil {
			r.s.client.Close()
			return fmt.Errorf("upstream: reading message: %w", err)
		}
	}
	for r.msg.Next() != nil {
	}
	if err := r.cmd.Close(); err != nil {
		return fmt.Errorf("upstream: fetch: %w", err)
	}
	return nil
}

// abort breaks the connection at once. The IMAP client's reader may be
// waiting for a literal to be consumed; with the connection gone, what is
// left of it drains quickly and the client can shut down.
func (s *Session) abort() {
	s.conn.Conn.Close()
}

// Close logs out, waiting a moment for the server's reply, and closes the
// connection.
func (s *Session) Close() error {
	select {
	case <-s.client.Closed():
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := s.op(ctx)
	s.client.Logout().Wait()
	done()
	return s.client.Close()
}

// Alive tells whether the connection is still open.
func (s *Session) Alive() bool {
	select {
	case <-s.client.Closed():
		return false
	default:
		return true
	}
}

// Selected describes the mailbox chosen by the last Select.
func (s *Session) Selected() Mailbox { return s.info }

// FetchEach fetches several messages with one UID FETCH and calls each
// with every message's UID and raw octets, in the server's order. A
// message expunged by someone else is skipped. If each fails, or ctx is
// cancelled, the connection is closed and the session is over.
func (s *Session) FetchEach(ctx context.Context, uids []uint32, each func(uid uint32, body io.Reader) error) (err error) {
	defer s.timed("fetch-batch", time.Now(), &err)
	if len(uids) == 0 {
		return nil
	}
	defer s.op(ctx)()
	var set imap.UIDSet
	for _, uid := range uids {
		set.AddNum(imap.UID(uid))
	}
	cmd := s.client.Fetch(set, &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	})
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		var uid imap.UID
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = item.UID
			case imapclient.FetchItemDataBodySection:
				if uid == 0 || item.Literal == nil {
					continue // an unsolicited update, or no body
				}
				r := &literalReader{r: item.Literal, size: item.Literal.Size()}
				if err := each(uint32(uid), r); err != nil || r.err != nil {
					s.abort()
					if r.err == nil {
						drainFetch(cmd, msg, r)
					}
					s.client.Close()
					if err == nil {
						err = r.err
					}
					return fmt.Errorf("upstream: fetch: %w", err)
				}
			}
		}
	}
	if err := cmd.Close(); err != nil {
		return fmt.Errorf("upstream: fetch: %w", err)
	}
	return nil
}

// drainFetch reads what is left of a fetch after the connection was
// closed, so the IMAP client's reader, which waits for each literal to be
// consumed, can see the connection fail and stop. What is already buffered
// still reads fine; the first failed read ends it, and a literal whose read
// failed is never read again, since the client's reader then owns the
// stream.
func drainFetch(cmd *imapclient.FetchCommand, msg *imapclient.FetchMessageData, cur *literalReader) {
	for {
		if _, err := io.Copy(io.Discard, cur); err != nil {
			return
		}
		for {
			item := msg.Next()
			if item == nil {
				break
			}
			if body, ok := item.(imapclient.FetchItemDataBodySection); ok && body.Literal != nil {
				cur = &literalReader{r: body.Literal, size: body.Literal.Size()}
				if _, err := io.Copy(io.Discard, cur); err != nil {
					return
				}
			}
		}
		if msg = cmd.Next(); msg == nil {
			return
		}
		cur = &literalReader{r: strings.NewReader("")}
	}
}

// literalReader reads one message literal and reports a connection that
// ended inside it.
type literalReader struct {
	r    io.Reader
	size int64
	n    int64
	err  error
}

func (l *literalReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if err == io.EOF && l.n < l.size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		l.err = err
	}
	return n, err
}
