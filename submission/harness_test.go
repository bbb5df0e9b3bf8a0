package submission

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// fakeUpstream is an in-process submission server on loopback (go-smtp),
// recording what it accepted; its hooks refuse or cut a transaction.
type fakeUpstream struct {
	addr string
	srv  *smtp.Server

	mu       sync.Mutex
	messages []fakeMessage
	received int64 // octets of DATA read so far, for the streaming test

	user, pass string
	refuseAuth atomic.Bool
	rcptErr    func(to string) error
	dataErr    error // returned after reading the whole message
	dropAfter  int64 // > 0: close the connection after this many DATA octets
	sizeLimit  int64
	smtputf8   bool
	// tls, when set, is offered by STARTTLS, or from the first octet
	// with implicit; the relay then trusts roots.
	tls      *tls.Config
	implicit bool
	roots    *x509.CertPool
}

type fakeMessage struct {
	from string
	to   []string
	body []byte
	tls  bool // received under TLS
}

func newFakeUpstream(t *testing.T, configure func(*fakeUpstream)) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{user: "alice@example.com", pass: "upstream-secret"}
	if configure != nil {
		configure(f)
	}
	f.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &fakeSession{f: f, conn: c}, nil
	}))
	f.srv.AllowInsecureAuth = true
	f.srv.MaxMessageBytes = f.sizeLimit
	f.srv.EnableSMTPUTF8 = f.smtputf8
	f.srv.ErrorLog = errorLog{slog.New(slog.DiscardHandler)}
	f.srv.TLSConfig = f.tls
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	if f.implicit {
		ln = tls.NewListener(ln, f.tls)
	}
	go f.srv.Serve(ln)
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (f *fakeUpstream) delivered() []fakeMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeMessage(nil), f.messages...)
}

type fakeSession struct {
	f      *fakeUpstream
	conn   *smtp.Conn
	authed bool
	from   string
	to     []string
}

func (s *fakeSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *fakeSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, u, p string) error {
		if u != s.f.user || p != s.f.pass || s.f.refuseAuth.Load() {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "upstream says no"}
		}
		s.authed = true
		return nil
	}), nil
}
func (s *fakeSession) Mail(from string, _ *smtp.MailOptions) error {
	if !s.authed {
		return smtp.ErrAuthRequired
	}
	s.from = from
	return nil
}
func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.f.rcptErr != nil {
		if err := s.f.rcptErr(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	return nil
}
func (s *fakeSession) Data(r io.Reader) error {
	var body []byte
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		body = append(body, buf[:n]...)
		s.f.mu.Lock()
		s.f.received += int64(n)
		s.f.mu.Unlock()
		if s.f.dropAfter > 0 && int64(len(body)) >= s.f.dropAfter {
			s.conn.Close()
			return errors.New("dropped")
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if s.f.dataErr != nil {
		return s.f.dataErr
	}
	s.f.mu.Lock()
	_, isTLS := s.conn.TLSConnectionState()
	s.f.messages = append(s.f.messages, fakeMessage{from: s.from, to: s.to, body: body, tls: isTLS})
	s.f.mu.Unlock()
	return nil
}
func (s *fakeSession) Reset()        { s.from, s.to = "", nil }
func (s *fakeSession) Logout() error { return nil }

// backendFunc adapts a function to Backend.
type backendFunc func(ctx context.Context, login *LoginInfo) (*Account, error)

func (f backendFunc) Login(ctx context.Context, login *LoginInfo) (*Account, error) {
	return f(ctx, login)
}

// relayHarness is a relay in front of a fake upstream: user "scanner",
// password "local", sending as alice@example.com or scanner@example.com.
type relayHarness struct {
	t    *testing.T
	srv  *Server
	addr string
	up   *fakeUpstream
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func newRelay(t *testing.T, up *fakeUpstream, configure func(*Server)) *relayHarness {
	t.Helper()
	h := &relayHarness{t: t, up: up, logs: &syncBuffer{}}
	upstream := &Upstream{Name: "fake", Address: up.addr, Security: SecurityNone, Timeout: 5 * time.Second}
	if up.tls != nil {
		upstream.Security = SecurityStartTLS
		if up.implicit {
			upstream.Security = SecurityImplicit
		}
		upstream.TLSConfig = &tls.Config{RootCAs: up.roots, MinVersion: tls.VersionTLS12}
	}
	h.srv = &Server{
		Backend: backendFunc(func(_ context.Context, l *LoginInfo) (*Account, error) {
			if l.Key != "scanner" || l.Password != "local" {
				return nil, ErrAuthFailed
			}
			return &Account{
				Key: "fake/alice", Upstream: upstream, Username: up.user, Password: up.pass,
				Senders: []string{"alice@example.com", "scanner@example.com"},
			}, nil
		}),
		Logger:        slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: LevelTrace})),
		CanonicalName: strings.ToLower,
	}
	if configure != nil {
		configure(h.srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	go h.srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
		if strings.Contains(h.logs.String(), "local\"") || strings.Contains(h.logs.String(), up.pass) {
			t.Errorf("a password reached the logs:\n%s", h.logs)
		}
	})
	return h
}

// rawClient speaks SMTP line by line, so each reply can be checked as it
// is written on the wire.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

func (h *relayHarness) dial() *rawClient {
	h.t.Helper()
	nc, err := net.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	c := &rawClient{t: h.t, nc: nc, r: bufio.NewReader(nc)}
	c.expect("220 ")
	return c
}

// reply reads one reply, multi-line replies joined by "\n".
func (c *rawClient) reply() string {
	c.t.Helper()
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply: %v (so far %q)", err, lines)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

func (c *rawClient) expect(prefix string) string {
	c.t.Helper()
	got := c.reply()
	if !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("reply %q, want %q...", got, prefix)
	}
	return got
}

// drip sends body in eight pieces idle/2 apart, then the end of the data,
// and expects 250: a DATA longer than several idle timeouts, each silence
// shorter than one.
func (c *rawClient) drip(body string, idle time.Duration) {
	c.t.Helper()
	start := time.Now()
	for i := 0; i < len(body); i += len(body) / 8 {
		io.WriteString(c.nc, body[i:min(i+len(body)/8, len(body))])
		time.Sleep(idle / 2)
	}
	io.WriteString(c.nc, "\r\n.\r\n")
	c.expect("250 ")
	if d := time.Since(start); d < 3*idle {
		c.t.Fatalf("DATA took %v, not several idle timeouts: the test proves nothing", d)
	}
}

func (c *rawClient) cmd(line, prefix string) string {
	c.t.Helper()
	fmt.Fprintf(c.nc, "%s\r\n", line)
	return c.expect(prefix)
}

func (c *rawClient) login() {
	c.t.Helper()
	c.cmd("EHLO device.example", "250-")
	c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00local")), "235 ")
}

// envelope begins a transaction: MAIL and RCPT, each accepted.
func (c *rawClient) envelope(from string, to ...string) {
	c.t.Helper()
	c.cmd("MAIL FROM:<"+from+">", "250 ")
	for _, r := range to {
		c.cmd("RCPT TO:<"+r+">", "250 ")
	}
}

// send runs one transaction with body as the DATA octets, the final
// CRLF.CRLF added here, and returns the reply to the final ".".
func (c *rawClient) send(from string, to []string, body string) string {
	c.t.Helper()
	c.envelope(from, to...)
	c.cmd("DATA", "354 ")
	io.WriteString(c.nc, body+"\r\n.\r\n")
	return c.reply()
}

func newReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
