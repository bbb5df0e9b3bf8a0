package pop3

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sessionBound is how long a session may take to end once the client has
// sent its last octet: everything here is in memory, so any wait is a hang.
const sessionBound = 5 * time.Second

// FuzzSession drives the whole state machine (RFC 1939 §4-§6, with AUTH
// and the limits) with arbitrary input over an in-memory maildrop, twice:
// the whole input followed by QUIT, and the input cut off at an arbitrary
// octet (the client hangs up there). Each time the session must answer in
// well-formed lines and end within a bound once the client has stopped
// sending, release the maildrop (closed once, every body closed, nothing
// used after), leave no goroutine behind, and remove messages only when
// QUIT was answered in the TRANSACTION state, exactly those marked then
// (RFC 1939 §6: a session that ends any other way deletes nothing).
func FuzzSession(f *testing.F) {
	f.Add([]byte("USER alice\r\nPASS secret pass\r\nSTAT\r\nRETR 1\r\nTOP 2 1\r\nDELE 1\r\nQUIT\r\n"), uint16(60))
	f.Add([]byte("AUTH PLAIN\r\nAGFsaWNlAHNlY3JldCBwYXNz\r\nLIST\r\nUIDL\r\nQUIT\r\n"), uint16(0))
	f.Add([]byte("CAPA\r\nAUTH LOGIN\r\n*\r\n\x00\r\nRETR 99999999999999999999\r\n"), uint16(12))
	f.Add([]byte("USER alice\nPASS secret pass\nDELE 2\nRSET\nDELE 3\nDELE 3\nLIST\nUIDL 3\nQUIT\n"), uint16(1000))
	f.Add([]byte("AUTH LOGIN YWxpY2U=\r\nc2VjcmV0IHBhc3M=\r\nDELE 1\r\nDELE 2\r\n"), uint16(40))
	f.Add([]byte("USER busy\r\nPASS x\r\nUSER down\r\nPASS x\r\nUSER alice\r\nPASS secret pass\r\nCAPA\r\nNOOP\r\nQUIT\r\n"), uint16(75))
	f.Fuzz(func(t *testing.T, input []byte, cut uint16) {
		whole := append(append([]byte(nil), input...), "\r\nQUIT\r\n"...)
		runFuzzSession(t, whole)
		runFuzzSession(t, input[:int(cut)%(len(input)+1)])
	})
}

// runFuzzSession sends sent to a new session, then ends its half of the
// connection, reads everything the server answers and checks the session's
// end.
func runFuzzSession(t *testing.T, sent []byte) {
	t.Helper()
	baseline := runtime.NumGoroutine()
	md := &fuzzMaildrop{memMaildrop: memMaildrop{msgs: sample}}
	be := &fuzzBackend{md: md}
	srv := &Server{Backend: be, Logger: slog.New(slog.DiscardHandler), AllowInsecureAuth: true,
		MaxAuthFailures: 100, MaxSessionsPerUser: 1, MaxConnsPerIP: 1}
	client, server := newHalfPipe()
	c := srv.newConn(server, nil, false)
	served := make(chan struct{})
	go func() {
		defer close(served)
		c.serve()
	}()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		// A session that ends early closes its side: the rest of the
		// input is refused, never waited for.
		client.in.Write(sent)
		client.in.Close()
	}()
	var out []byte
	read := make(chan struct{})
	go func() {
		defer close(read)
		out, _ = io.ReadAll(client.out)
	}()
	timer := time.NewTimer(sessionBound)
	defer timer.Stop()
	for _, ch := range []chan struct{}{wrote, read, served} {
		select {
		case <-ch:
		case <-timer.C:
			// Unblock the session so the report is not followed by a
			// stuck worker.
			client.out.Close()
			server.Close()
			t.Fatalf("the session did not end within %v after the client's last octet; it sent %q", sessionBound, out)
		}
	}

	if len(out) > 0 && !bytes.HasSuffix(out, []byte("\r\n")) {
		t.Fatalf("output does not end with CRLF: %q", out)
	}
	for _, line := range bytes.Split(out, []byte("\r\n")) {
		if len(line) > 510 && !bytes.HasPrefix(line, []byte("+ ")) {
			t.Fatalf("a status line of %d octets (RFC 1939 §3: 512 with CRLF)", len(line))
		}
	}

	srv.mu.Lock()
	held := len(srv.conns) + len(srv.userSessions) + len(srv.ipConns) + srv.admitted
	srv.mu.Unlock()
	if held != 0 {
		t.Fatalf("the server still counts the session: %d conns, %v sessions, %v per address, %d admitted",
			len(srv.conns), srv.userSessions, srv.ipConns, srv.admitted)
	}

	quit, marked := replay(t, sent, out)
	md.mu.Lock()
	defer md.mu.Unlock()
	if md.misuse != "" {
		t.Fatalf("maildrop misused: %s", md.misuse)
	}
	if be.handedOut() && md.closes != 1 {
		t.Fatalf("the maildrop was closed %d times, want once", md.closes)
	}
	if md.openBodies != 0 {
		t.Fatalf("%d message bodies left open", md.openBodies)
	}
	switch {
	case !quit && md.commits > 0:
		t.Fatalf("deletes %v applied without QUIT answered in TRANSACTION; the client sent %q and read %q", md.committed, sent, out)
	case quit && len(marked) > 0 && md.commits != 1:
		t.Fatalf("QUIT answered with %v marked, Commit called %d times", marked, md.commits)
	case md.commits > 0 && !slices.Equal(md.committed, marked):
		t.Fatalf("committed %v, the client marked %v", md.committed, marked)
	case md.commits > 1:
		t.Fatalf("Commit called %d times", md.commits)
	}

	// The session's goroutines are gone once serve has returned; the
	// pipe's copy goroutines end with it.
	deadline := time.Now().Add(sessionBound)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines after the session, %d before:\n%s", runtime.NumGoroutine(), baseline, buf)
		}
		time.Sleep(time.Millisecond)
	}
}

// replay reads the transcript as a client does, pairing each line it sent
// with the reply it got, and tells whether QUIT was answered with +OK in
// the TRANSACTION state and, if so, the messages (indexes from 0) marked
// deleted at that moment. It knows nothing of the server's code: only of
// the replies and of which commands have multi-line answers (RFC 1939 §3).
func replay(t *testing.T, sent, out []byte) (quit bool, marked []int) {
	t.Helper()
	replies := strings.Split(string(out), "\r\n")
	replies = replies[:len(replies)-1] // after the last CRLF
	next := func() (string, bool) {
		if len(replies) == 0 {
			return "", false
		}
		r := replies[0]
		replies = replies[1:]
		return r, true
	}
	if greeting, ok := next(); !ok || !strings.HasPrefix(greeting, "+OK") {
		if ok {
			t.Fatalf("greeting %q", greeting)
		}
		return false, nil
	}
	transaction, inSASL := false, false
	deleted := map[int]bool{}
	lines := bytes.SplitAfter(sent, []byte("\n"))
	for _, raw := range lines {
		if !bytes.HasSuffix(raw, []byte("\n")) {
			break // cut off: the server never reads it as a line
		}
		line := strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")
		reply, ok := next()
		if !ok {
			break // the server has ended the session
		}
		if inSASL {
			switch {
			case strings.HasPrefix(reply, "+ "):
			case strings.HasPrefix(reply, "+OK"):
				transaction, inSASL = true, false
			default:
				inSASL = false
			}
			continue
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		fields := strings.Fields(arg)
		if strings.HasPrefix(reply, "+ ") {
			if verb != "AUTH" || transaction {
				t.Fatalf("a SASL challenge %q in reply to %q", reply, line)
			}
			inSASL = true
			continue
		}
		if !strings.HasPrefix(reply, "+OK") {
			continue
		}
		multi := false
		switch verb {
		case "PASS", "AUTH":
			if transaction {
				t.Fatalf("%q accepted in TRANSACTION", line)
			}
			transaction = true
		case "QUIT":
			if !transaction {
				return false, nil
			}
			for i := range deleted {
				marked = append(marked, i)
			}
			slices.Sort(marked)
			return true, marked
		case "DELE":
			n, err := strconv.Atoi(fields[0])
			if err != nil {
				t.Fatalf("%q answered %q", line, reply)
			}
			deleted[n-1] = true
		case "RSET":
			clear(deleted)
		case "CAPA", "RETR", "TOP":
			multi = true
		case "LIST", "UIDL":
			multi = len(fields) == 0
		}
		if multi {
			for {
				l, ok := next()
				if !ok || l == "." {
					break
				}
			}
		}
	}
	return false, nil
}

// fuzzBackend hands out one maildrop, to alice.
type fuzzBackend struct {
	mu     sync.Mutex
	md     *fuzzMaildrop
	handed bool
}

func (b *fuzzBackend) Login(ctx context.Context, li *LoginInfo) (Maildrop, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case li.Username == "alice" && li.Password == "secret pass":
		if b.handed {
			return nil, ErrInUse
		}
		b.handed = true
		return b.md, nil
	case li.Username == "busy":
		return nil, ErrInUse
	case li.Username == "down":
		return nil, fmt.Errorf("dial tcp: connection refused")
	}
	return nil, ErrAuthFailed
}

func (b *fuzzBackend) handedOut() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.handed
}

// fuzzMaildrop is a memMaildrop that records how it is used.
type fuzzMaildrop struct {
	memMaildrop
	closes     int
	commits    int
	openBodies int
	misuse     string
}

func (m *fuzzMaildrop) Open(ctx context.Context, i int) (io.ReadCloser, int64, error) {
	m.mu.Lock()
	if m.closes > 0 {
		m.misuse = "Open after Close"
	}
	m.openBodies++
	m.mu.Unlock()
	body, size, err := m.memMaildrop.Open(ctx, i)
	if err != nil {
		m.mu.Lock()
		m.openBodies--
		m.mu.Unlock()
		return nil, 0, err
	}
	return &fuzzBody{Reader: body, md: m}, size, nil
}

func (m *fuzzMaildrop) Commit(ctx context.Context, deleted []int) (CommitResult, error) {
	m.mu.Lock()
	if m.closes > 0 {
		m.misuse = "Commit after Close"
	}
	m.commits++
	m.mu.Unlock()
	return m.memMaildrop.Commit(ctx, deleted)
}

func (m *fuzzMaildrop) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closes++
	return nil
}

type fuzzBody struct {
	io.Reader
	md     *fuzzMaildrop
	closed bool
}

func (b *fuzzBody) Close() error {
	b.md.mu.Lock()
	defer b.md.mu.Unlock()
	if !b.closed {
		b.closed = true
		b.md.openBodies--
	}
	return nil
}

// halfPipe is the client's end of an in-memory connection that the client
// can close for writing only, as TCP's half-close does: the server reads
// to the end of what was sent, and the client still reads the replies.
type halfPipe struct {
	in  *io.PipeWriter // what the client sends
	out net.Conn       // what the server answers
}

// halfConn is the server's end.
type halfConn struct {
	net.Conn // writes, addresses and deadlines
	in       *io.PipeReader
}

func newHalfPipe() (*halfPipe, *halfConn) {
	a, b := net.Pipe()
	r, w := io.Pipe()
	return &halfPipe{in: w, out: a}, &halfConn{Conn: b, in: r}
}

func (c *halfConn) Read(p []byte) (int, error) { return c.in.Read(p) }

func (c *halfConn) Close() error {
	c.in.Close()
	return c.Conn.Close()
}
