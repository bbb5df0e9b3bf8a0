package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/internal/username"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// memMaildrop is a Maildrop over byte slices.
type memMaildrop struct {
	mu        sync.Mutex
	msgs      [][]byte
	committed []int
	keep      bool // Commit keeps the messages on the server
	closed    bool
	openErr   error
	readErr   error // returned after half of the message
}

func (m *memMaildrop) Messages() []Message {
	var out []Message
	for i, b := range m.msgs {
		n, _ := io.Copy(io.Discard, NewCRLFReader(bytes.NewReader(b)))
		out = append(out, Message{Size: n, UIDL: "uid" + string(rune('a'+i))})
	}
	return out
}

func (m *memMaildrop) Open(ctx context.Context, i int) (io.ReadCloser, int64, error) {
	if m.openErr != nil {
		return nil, 0, m.openErr
	}
	size := m.Messages()[i].Size
	r := NewCRLFReader(bytes.NewReader(m.msgs[i]))
	if m.readErr != nil {
		half := int64(len(m.msgs[i]) / 2)
		return io.NopCloser(io.MultiReader(io.LimitReader(r, half), errReader{m.readErr})), size, nil
	}
	return io.NopCloser(r), size, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func (m *memMaildrop) Commit(ctx context.Context, deleted []int) (CommitResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.committed = append([]int(nil), deleted...)
	if m.keep {
		return CommitResult{Kept: len(deleted)}, nil
	}
	return CommitResult{Removed: len(deleted)}, nil
}

func (m *memMaildrop) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

type memBackend struct {
	mu     sync.Mutex
	md     *memMaildrop
	logins []LoginInfo
}

func (b *memBackend) Login(ctx context.Context, li *LoginInfo) (Maildrop, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logins = append(b.logins, *li)
	switch {
	case li.Username == "alice" && li.Password == "secret pass":
		return b.md, nil
	case li.Username == "busy":
		return nil, ErrInUse
	case li.Username == "down":
		return nil, errors.New("dial tcp: connection refused")
	}
	return nil, ErrAuthFailed
}

var sample = [][]byte{
	[]byte("Subject: one\r\n\r\nHello\r\n.\r\n..dots\r\n"),
	[]byte("Subject: two\n\nbare LF\nline 2\nline 3"),
	[]byte(""),
}

type harness struct {
	t    *testing.T
	srv  *Server
	be   *memBackend
	addr string
}

func newHarness(t *testing.T, configure func(*Server)) *harness {
	t.Helper()
	be := &memBackend{md: &memMaildrop{msgs: sample}}
	// Names fold as the gateway folds them (case), so tests of the
	// session limit and the guard see one key per user.
	srv := &Server{Backend: be, Logger: slog.New(slog.DiscardHandler), Implementation: "test", CanonicalName: username.Canonical}
	if configure != nil {
		configure(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &harness{t: t, srv: srv, be: be, addr: ln.Addr().String()}
}

type client struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

func (h *harness) dial() *client {
	h.t.Helper()
	c, greeting := h.dialRaw()
	if greeting != "+OK POP3 gateway ready." {
		h.t.Fatalf("greeting %q", greeting)
	}
	return c
}

func (c *client) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, line+"\r\n"); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading reply: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("reply line %q does not end in CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (c *client) expect(want string) {
	c.t.Helper()
	if got := c.line(); got != want {
		c.t.Fatalf("got %q, want %q", got, want)
	}
}

// multi reads a multi-line body up to the terminating line, raw.
func (c *client) multi() string {
	c.t.Helper()
	var b strings.Builder
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading multi-line reply: %v", err)
		}
		if l == ".\r\n" {
			return b.String()
		}
		b.WriteString(l)
	}
}

func (c *client) cmd(line, want string) {
	c.t.Helper()
	c.send(line)
	c.expect(want)
}

func (c *client) login() {
	c.cmd("USER alice", "+OK")
	c.cmd("PASS secret pass", "+OK Logged in.")
}

func (c *client) closed() bool {
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.r.ReadByte()
	return err != nil
}

func TestTransaction(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial()
	c.login()
	c.cmd("STAT", "+OK 3 73")
	c.cmd("LIST", "+OK 3 messages:")
	if got := c.multi(); got != "1 34\r\n2 39\r\n3 0\r\n" {
		t.Fatalf("LIST = %q", got)
	}
	c.cmd("LIST 2", "+OK 2 39")
	c.cmd("UIDL", "+OK")
	if got := c.multi(); got != "1 uida\r\n2 uidb\r\n3 uidc\r\n" {
		t.Fatalf("UIDL = %q", got)
	}
	c.cmd("UIDL 3", "+OK 3 uidc")
	c.cmd("RETR 1", "+OK 34 octets")
	if got := c.multi(); got != "Subject: one\r\n\r\nHello\r\n..\r\n...dots\r\n" {
		t.Fatalf("RETR 1 = %q", got)
	}
	c.cmd("RETR 2", "+OK 39 octets")
	if got := c.multi(); got != "Subject: two\r\n\r\nbare LF\r\nline 2\r\nline 3\r\n" {
		t.Fatalf("RETR 2 = %q", got)
	}
	c.cmd("RETR 3", "+OK 0 octets")
	if got := c.multi(); got != "" {
		t.Fatalf("RETR 3 = %q", got)
	}
	c.cmd("TOP 2 1", "+OK")
	if got := c.multi(); got != "Subject: two\r\n\r\nbare LF\r\n" {
		t.Fatalf("TOP 2 1 = %q", got)
	}
	c.cmd("TOP 1 0", "+OK")
	if got := c.multi(); got != "Subject: one\r\n\r\n" {
		t.Fatalf("TOP 1 0 = %q", got)
	}
	c.cmd("TOP 1 100", "+OK")
	if got := c.multi(); got != "Subject: one\r\n\r\nHello\r\n..\r\n...dots\r\n" {
		t.Fatalf("TOP 1 100 = %q", got)
	}
	c.cmd("DELE 1", "+OK Marked to be deleted.")
	c.cmd("DELE 1", "-ERR Message is deleted.")
	c.cmd("RETR 1", "-ERR Message is deleted.")
	c.cmd("STAT", "+OK 2 39")
	c.cmd("LIST", "+OK 2 messages:")
	if got := c.multi(); got != "2 39\r\n3 0\r\n" {
		t.Fatalf("LIST after DELE = %q", got)
	}
	c.cmd("RSET", "+OK")
	c.cmd("STAT", "+OK 3 73")
	c.cmd("DELE 2", "+OK Marked to be deleted.")
	c.cmd("NOOP", "+OK")
	c.cmd("QUIT", "+OK Logging out, messages deleted.")
	if !c.closed() {
		t.Fatal("connection open after QUIT")
	}
	waitFor(t, func() bool {
		h.be.md.mu.Lock()
		defer h.be.md.mu.Unlock()
		return h.be.md.closed
	})
	if got := h.be.md.committed; len(got) != 1 || got[0] != 1 {
		t.Fatalf("committed %v, want [1]", got)
	}
}

func waitFor(t *testing.T, cond func() bool) { t.Helper(); testenv.WaitFor(t, cond) }

func TestDroppedConnectionDeletesNothing(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial()
	c.login()
	c.cmd("DELE 1", "+OK Marked to be deleted.")
	c.nc.Close()
	waitFor(t, func() bool {
		h.be.md.mu.Lock()
		defer h.be.md.mu.Unlock()
		return h.be.md.closed
	})
	if h.be.md.committed != nil {
		t.Fatalf("a dropped session committed %v", h.be.md.committed)
	}
}

func TestBadArguments(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.MaxBadCommands = 100 })
	c := h.dial()
	c.cmd("STAT", "-ERR Command not valid in this state.")
	c.cmd("PASS x", "-ERR No username given.")
	c.login()
	for _, tc := range []struct{ cmd, want string }{
		{"RETR 0", "-ERR There's no message 0."},
		{"RETR 4", "-ERR There's no message 4."},
		{"RETR 99999999999999999999999", "-ERR There's no message 9223372036854775807."},
		{"RETR -1", "-ERR Invalid message number."},
		{"RETR +1", "-ERR Invalid message number."},
		{"RETR 1x", "-ERR Invalid message number."},
		{"RETR", "-ERR Wrong number of arguments."},
		{"RETR 1 2", "-ERR Wrong number of arguments."},
		{"TOP 1", "-ERR Wrong number of arguments."},
		{"TOP 1 -1", "-ERR Invalid number of lines."},
		{"TOP 1 x", "-ERR Invalid number of lines."},
		{"LIST a", "-ERR Invalid message number."},
		{"DELE 9", "-ERR There's no message 9."},
		{"USER bob", "-ERR Command not valid in this state."},
		{"STLS", "-ERR Command not valid in this state."},
		{"FOO", "-ERR Unknown command."},
		{"", "-ERR Unknown command."},
		{"STAT\x00", "-ERR Invalid characters in command."},
		{"RETR 1\r2", "-ERR Invalid characters in command."},
		{"LIST " + strings.Repeat("9", 600), "-ERR Line too long."},
	} {
		c.cmd(tc.cmd, tc.want)
	}
	c.cmd("stat", "+OK 3 73") // keywords are case-insensitive
}

func TestTooManyBadCommands(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.MaxBadCommands = 3 })
	c := h.dial()
	c.cmd("X", "-ERR Unknown command.")
	c.cmd("Y", "-ERR Unknown command.")
	c.send("Z")
	c.expect("-ERR Unknown command.")
	c.expect("-ERR Too many bad commands.")
	if !c.closed() {
		t.Fatal("connection still open")
	}
}

func TestHugeLineIsBounded(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial()
	go io.WriteString(c.nc, strings.Repeat("A", 1<<20)+"\r\nQUIT\r\n")
	c.expect("-ERR Line too long.")
	c.expect("+OK Logging out.")
}

func TestAuthFailures(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial()
	c.cmd("USER alice", "+OK")
	c.cmd("PASS wrong", "-ERR [AUTH] Authentication failed.")
	c.cmd("USER nobody", "+OK")
	c.cmd("PASS secret pass", "-ERR [AUTH] Authentication failed.")
	c.cmd("USER busy", "+OK")
	c.cmd("PASS x", "-ERR [IN-USE] Mailbox is locked by another POP3 session.")
	c.cmd("USER down", "+OK")
	c.cmd("PASS x", "-ERR [SYS/TEMP] Temporary failure, please try again later.")
	if !c.closed() {
		t.Fatal("connection open after a temporary failure")
	}
	c = h.dial()
	c.cmd("USER a", "+OK")
	c.cmd("PASS b", "-ERR [AUTH] Authentication failed.")
	c.cmd("USER a", "+OK")
	c.cmd("PASS b", "-ERR [AUTH] Authentication failed.")
	c.cmd("USER a", "+OK")
	c.cmd("PASS b", "-ERR [AUTH] Authentication failed.")
	if !c.closed() {
		t.Fatal("connection open after three failed logins")
	}
}

func TestSASL(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.MaxAuthFailures = 10 })
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	c := h.dial()
	c.cmd("AUTH PLAIN "+b64("\x00alice\x00secret pass"), "+OK Logged in.")
	c.cmd("QUIT", "+OK Logging out.")

	c = h.dial()
	c.cmd("AUTH PLAIN", "+ ")
	c.cmd(b64("alice\x00alice\x00secret pass"), "+OK Logged in.")

	c = h.dial()
	c.cmd("AUTH LOGIN", "+ "+b64("Username:"))
	c.cmd(b64("alice"), "+ "+b64("Password:"))
	c.cmd(b64("secret pass"), "+OK Logged in.")

	c = h.dial()
	c.cmd("auth login "+b64("alice"), "+ "+b64("Password:"))
	c.cmd(b64("secret pass"), "+OK Logged in.")

	c = h.dial()
	c.cmd("AUTH PLAIN "+b64("bob\x00alice\x00secret pass"), "-ERR [AUTH] Authentication failed.")
	c.cmd("AUTH PLAIN "+b64("\x00alice\r\nA1 DELETE INBOX\x00secret pass"), "-ERR [AUTH] Authentication failed.")
	c.cmd("AUTH PLAIN "+b64("\x00alice\x00secret\npass"), "-ERR [AUTH] Authentication failed.")
	c.cmd("AUTH PLAIN "+b64("\x00alice\x00"), "-ERR [AUTH] Authentication failed.")
	c.cmd("AUTH PLAIN !!!", "-ERR Invalid base64 data in initial response.")
	c.cmd("AUTH PLAIN", "+ ")
	c.cmd("*", "-ERR Authentication cancelled.")
	c.cmd("AUTH LOGIN", "+ "+b64("Username:"))
	c.cmd("%%%", "-ERR Invalid base64 data in response.")
	c.cmd("AUTH CRAM-MD5", "-ERR Unsupported authentication mechanism.")
	c.cmd("AUTH", "+OK")
	if got := c.multi(); got != "PLAIN\r\nLOGIN\r\n" {
		t.Fatalf("AUTH list = %q", got)
	}
	for _, li := range h.be.logins {
		if strings.ContainsAny(li.Username+li.Password, "\r\n\x00") {
			t.Fatalf("credentials with control characters reached the backend: %q", li.Username)
		}
	}
}

func TestCapa(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.TLSConfig = serverTLS(t) })
	c := h.dial()
	c.cmd("CAPA", "+OK Capability list follows")
	want := "CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n"
	if got := c.multi(); got != want {
		t.Fatalf("CAPA before login = %q", got)
	}
	c.login()
	c.cmd("CAPA", "+OK Capability list follows")
	want = "CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nIMPLEMENTATION test\r\n"
	if got := c.multi(); got != want {
		t.Fatalf("CAPA after login = %q", got)
	}
}

func TestPipelining(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial()
	c.send("USER alice\r\nPASS secret pass\r\nSTAT\r\nRETR 1\r\nLIST 2\r\nUIDL 1\r\nQUIT")
	for _, want := range []string{"+OK", "+OK Logged in.", "+OK 3 73", "+OK 34 octets"} {
		c.expect(want)
	}
	c.multi()
	c.expect("+OK 2 39")
	c.expect("+OK 1 uida")
	c.expect("+OK Logging out.")
}

func TestUpstreamFailureMidMessageClosesWithoutTerminator(t *testing.T) {
	h := newHarness(t, nil)
	h.be.md.readErr = errors.New("connection reset by peer")
	c := h.dial()
	c.login()
	c.send("RETR 1")
	c.expect("+OK 34 octets")
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.r)
	if err != nil {
		t.Fatalf("reading until close: %v", err)
	}
	if bytes.Contains(rest, []byte("\r\n.\r\n")) || bytes.HasPrefix(rest, []byte(".\r\n")) {
		t.Fatalf("a truncated message was terminated: %q", rest)
	}
}

func TestOpenFailureIsTemporaryAndEndsSession(t *testing.T) {
	h := newHarness(t, nil)
	h.be.md.openErr = errors.New("i/o timeout")
	c := h.dial()
	c.login()
	c.cmd("RETR 1", "-ERR [SYS/TEMP] Temporary failure, please try again later.")
	if !c.closed() {
		t.Fatal("session continued after an upstream failure")
	}
	h.be.md.openErr = &Error{Text: "Message was removed by another client."}
	c = h.dial()
	c.login()
	c.cmd("RETR 1", "-ERR Message was removed by another client.")
	c.cmd("NOOP", "+OK")
}

func TestIdleTimeout(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.AuthTimeout = 200 * time.Millisecond })
	c := h.dial()
	c.expect("-ERR Disconnected for inactivity.")
	if !c.closed() {
		t.Fatal("connection open after the timeout")
	}
}

func TestPlaintextAuthRefusedFromNonLoopback(t *testing.T) {
	// The rule is checked on the remote address; a pipe has none, which
	// counts as not loopback.
	be := &memBackend{md: &memMaildrop{msgs: sample}}
	srv := &Server{Backend: be, Logger: slog.New(slog.DiscardHandler), TLSConfig: serverTLS(t)}
	a, b := net.Pipe()
	defer a.Close()
	c := srv.newConn(b, srv.TLSConfig, false)
	go c.serve()
	cl := &client{t: t, nc: a, r: bufio.NewReader(a)}
	a.SetDeadline(time.Now().Add(5 * time.Second))
	cl.expect("+OK POP3 gateway ready.")
	cl.cmd("CAPA", "+OK Capability list follows")
	if got := cl.multi(); strings.Contains(got, "USER") || strings.Contains(got, "SASL") || !strings.Contains(got, "STLS") {
		t.Fatalf("CAPA on an insecure connection = %q", got)
	}
	cl.cmd("USER alice", errPlaintext)
	cl.cmd("AUTH PLAIN", errPlaintext)
	cl.cmd("QUIT", "+OK Logging out.")
	if len(be.logins) != 0 {
		t.Fatal("credentials reached the backend")
	}
}

func TestSTLSDiscardsPipelinedCommands(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.TLSConfig = serverTLS(t) })
	c := h.dial()
	c.cmd("USER alice", "+OK")
	// An attacker's plaintext injection behind STLS must never run after
	// the handshake (RFC 2595 §4, CVE-2011-0411).
	c.send("STLS\r\nPASS secret pass")
	c.expect("+OK Begin TLS negotiation now.")
	tc := tls.Client(c.nc, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c = &client{t: t, nc: tc, r: bufio.NewReader(tc)}
	c.cmd("CAPA", "+OK Capability list follows")
	if got := c.multi(); strings.Contains(got, "STLS") {
		t.Fatalf("STLS offered after TLS: %q", got)
	}
	c.cmd("PASS secret pass", "-ERR No username given.")
	c.cmd("STLS", "-ERR TLS is already active.")
	c.login()
	c.cmd("STAT", "+OK 3 73")
	if len(h.be.logins) != 1 || !h.be.logins[0].TLS {
		t.Fatalf("logins = %+v, want one over TLS", h.be.logins)
	}
}

func TestImplicitTLS(t *testing.T) {
	be := &memBackend{md: &memMaildrop{msgs: sample}}
	srv := &Server{Backend: be, Logger: slog.New(slog.DiscardHandler), TLSConfig: serverTLS(t)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln)
	defer srv.Shutdown(context.Background())
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	c := &client{t: t, nc: tc, r: bufio.NewReader(tc)}
	c.expect("+OK POP3 gateway ready.")
	c.cmd("STLS", "-ERR TLS is already active.")
	c.login()
	c.cmd("STAT", "+OK 3 73")
}

func TestShutdownWaitsForSessions(t *testing.T) {
	h := newHarness(t, nil)
	idle := h.dial()
	busy := h.dial()
	busy.login()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- h.srv.Shutdown(ctx)
	}()
	if !idle.closed() {
		t.Fatal("a session that had not logged in was kept open")
	}
	busy.cmd("DELE 1", "+OK Marked to be deleted.")
	busy.cmd("QUIT", "+OK Logging out, messages deleted.")
	if err := <-done; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
}

func serverTLS(t *testing.T) *tls.Config { return testenv.ServerTLS(t, "localhost") }

func TestShutdownDeadlineDeletesNothing(t *testing.T) {
	h := newHarness(t, nil)
	busy := h.dial()
	busy.login()
	busy.cmd("DELE 1", "+OK Marked to be deleted.")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown returned no error although a session outlived its deadline")
	}
	if !busy.closed() {
		t.Fatal("the session was left open after the drain deadline")
	}
	h.be.md.mu.Lock()
	defer h.be.md.mu.Unlock()
	if h.be.md.committed != nil {
		t.Fatalf("a session closed by the drain committed %v", h.be.md.committed)
	}
}

// A maildrop that keeps deleted mail on the server says so at QUIT: a
// client told "deleted" would have no reason to look for it again.
func TestQuitSaysWhatCommitDid(t *testing.T) {
	h := newHarness(t, nil)
	h.be.md.keep = true
	c := h.dial()
	c.login()
	c.cmd("DELE 1", "+OK Marked to be deleted.")
	c.cmd("DELE 3", "+OK Marked to be deleted.")
	c.cmd("QUIT", "+OK Logging out, 2 messages hidden, kept on the server.")

	for _, tc := range []struct {
		r    CommitResult
		want string
	}{
		{CommitResult{Removed: 3}, "messages deleted."},
		{CommitResult{Kept: 1}, "1 message hidden, kept on the server."},
		{CommitResult{Removed: 1, Kept: 2}, "1 message deleted, 2 messages hidden and kept on the server."},
	} {
		if got := quitSummary(tc.r); got != tc.want {
			t.Errorf("quitSummary(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
