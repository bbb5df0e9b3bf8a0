package pop3

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/state/guard"
	"github.com/pop3gw/gateway/internal/state/redisstate"
	"github.com/pop3gw/gateway/internal/testkit/redistest"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// fakeGuard records the calls it gets and answers Reserve with a fixed value.
type fakeGuard struct {
	delay time.Duration
	mu    sync.Mutex
	calls []string
}

func (g *fakeGuard) Reserve(ctx context.Context, ip, user string) time.Duration {
	g.record("Reserve", ip, user)
	return g.delay
}

func (g *fakeGuard) Failed(ctx context.Context, ip, user string) { g.record("Failed", ip, user) }

func (g *fakeGuard) Succeeded(ctx context.Context, ip, user string) {
	g.record("Succeeded", ip, user)
}

func (g *fakeGuard) record(op, ip, user string) {
	g.mu.Lock()
	g.calls = append(g.calls, op+" "+ip+" "+user)
	g.mu.Unlock()
}

// take returns the calls so far and forgets them.
func (g *fakeGuard) take() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	calls := g.calls
	g.calls = nil
	return calls
}

func (g *fakeGuard) expect(t *testing.T, want ...string) {
	t.Helper()
	if got := g.take(); !slices.Equal(got, want) {
		t.Fatalf("guard calls = %q, want %q", got, want)
	}
}

func TestLoginGuardCalls(t *testing.T) {
	g := &fakeGuard{}
	h := newHarness(t, func(s *Server) { s.Guard = g; s.MaxAuthFailures = 10 })
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	c := h.dial()
	for _, tc := range []struct {
		name  string
		lines []string
		want  string
		calls []string
	}{
		{"wrong password", []string{"USER alice", "PASS wrong"}, "-ERR [AUTH] Authentication failed.",
			[]string{"Reserve 127.0.0.1 alice", "Failed 127.0.0.1 alice"}},
		{"bad SASL response", []string{"AUTH PLAIN " + b64("bob\x00alice\x00secret pass")}, "-ERR [AUTH] Authentication failed.",
			[]string{"Failed 127.0.0.1 "}},
		{"control character in name", []string{"AUTH PLAIN " + b64("\x00al\nice\x00x")}, "-ERR [AUTH] Authentication failed.",
			[]string{"Reserve 127.0.0.1 ", "Failed 127.0.0.1 "}},
		{"control character in password", []string{"AUTH PLAIN " + b64("\x00alice\x00x\ny")}, "-ERR [AUTH] Authentication failed.",
			[]string{"Reserve 127.0.0.1 alice", "Failed 127.0.0.1 alice"}},
		{"in use is no failure", []string{"USER busy", "PASS x"}, "-ERR [IN-USE] Mailbox is locked by another POP3 session.",
			[]string{"Reserve 127.0.0.1 busy"}},
		{"success", []string{"USER alice", "PASS secret pass"}, "+OK Logged in.",
			[]string{"Reserve 127.0.0.1 alice", "Succeeded 127.0.0.1 alice"}},
	} {
		for _, l := range tc.lines[:len(tc.lines)-1] {
			c.cmd(l, "+OK")
		}
		c.cmd(tc.lines[len(tc.lines)-1], tc.want)
		if got := g.take(); !slices.Equal(got, tc.calls) {
			t.Fatalf("%s: guard calls = %q, want %q", tc.name, got, tc.calls)
		}
	}
}

func TestUnknownUserLooksLikeWrongPassword(t *testing.T) {
	g := &fakeGuard{delay: 10 * time.Millisecond}
	h := newHarness(t, func(s *Server) { s.Guard = g })
	exchange := func(user, pass string) ([]byte, []string) {
		c := h.dial()
		c.send("USER " + user + "\r\nPASS " + pass + "\r\nQUIT")
		c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		raw, err := io.ReadAll(c.r)
		if err != nil {
			t.Fatal(err)
		}
		calls := g.take()
		for i := range calls {
			calls[i] = calls[i][:len(calls[i])-len(user)] // drop the name
		}
		return raw, calls
	}
	wrongRaw, wrongCalls := exchange("alice", "wrong")
	unknownRaw, unknownCalls := exchange("nobody", "secret pass")
	if string(wrongRaw) != string(unknownRaw) {
		t.Fatalf("wrong password got %q, unknown user %q", wrongRaw, unknownRaw)
	}
	if !slices.Equal(wrongCalls, unknownCalls) {
		t.Fatalf("guard calls differ: wrong password %q, unknown user %q", wrongCalls, unknownCalls)
	}
	if want := []string{"Reserve 127.0.0.1 ", "Failed 127.0.0.1 "}; !slices.Equal(wrongCalls, want) {
		t.Fatalf("guard calls = %q, want %q", wrongCalls, want)
	}
}

func TestLoginDelayGrowsAndResets(t *testing.T) {
	const base = 20 * time.Millisecond
	g := guard.NewMemory(guard.Options{Base: base, Max: time.Second})
	h := newHarness(t, func(s *Server) { s.Guard = g })
	// Each attempt on a new connection from the same address is checked
	// at least base << (failures-1) after the last failure, so at least
	// that long after the last attempt was sent.
	var last time.Time
	attempt := func(pass, want string) time.Duration {
		c := h.dial()
		c.cmd("USER alice", "+OK")
		start := time.Now()
		c.cmd("PASS "+pass, want)
		took := time.Since(last)
		last = start
		return took
	}
	for failures := range 4 {
		took := attempt("wrong", "-ERR [AUTH] Authentication failed.")
		if failures > 0 {
			if least := base << (failures - 1); took < least {
				t.Fatalf("attempt after %d failures took %v, want at least %v", failures, took, least)
			}
		}
	}
	if took := attempt("secret pass", "+OK Logged in."); took < 8*base {
		t.Fatalf("login after 4 failures took %v, want at least %v", took, 8*base)
	}
	// The success clears the user's failures, not the address's.
	if d := g.Delay(context.Background(), "", "alice"); d != 0 {
		t.Fatalf("user's delay after a successful login = %v", d)
	}
	if d := g.Delay(context.Background(), "127.0.0.1", ""); d != 8*base {
		t.Fatalf("address's delay after a successful login = %v, want %v", d, 8*base)
	}
}

func TestShutdownInterruptsLoginDelay(t *testing.T) {
	g := &fakeGuard{delay: time.Minute}
	h := newHarness(t, func(s *Server) { s.Guard = g })
	c := h.dial()
	c.send("USER alice\r\nPASS secret pass")
	waitFor(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.calls) > 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Shutdown took %v", took)
	}
	if !c.closed() {
		t.Fatal("connection open after Shutdown")
	}
	if len(h.be.logins) != 0 {
		t.Fatal("an interrupted login reached the backend")
	}
}

// dialRaw connects and returns the first line the server sends.
func (h *harness) dialRaw() (*client, string) {
	h.t.Helper()
	nc, err := net.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &client{t: h.t, nc: nc, r: bufio.NewReader(nc)}
	return c, c.line()
}

const errTooManyConns = "-ERR [SYS/TEMP] Too many connections from your address."

func TestMaxConnsPerIP(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.MaxConnsPerIP = 2 })
	first := h.dial()
	h.dial()
	c, greeting := h.dialRaw()
	if greeting != errTooManyConns {
		t.Fatalf("third connection got %q", greeting)
	}
	if !c.closed() {
		t.Fatal("refused connection left open")
	}
	first.cmd("QUIT", "+OK Logging out.")
	waitFor(t, func() bool { return h.srv.Sessions() == 1 })
	c = h.dial()
	c.login()
	if _, greeting := h.dialRaw(); greeting != errTooManyConns {
		t.Fatalf("connection over the limit got %q", greeting)
	}
}

func TestMaxConnsPerIPImplicitTLS(t *testing.T) {
	srv := &Server{
		Backend:       &memBackend{md: &memMaildrop{msgs: sample}},
		Logger:        slog.New(slog.DiscardHandler),
		TLSConfig:     serverTLS(t),
		MaxConnsPerIP: 1,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln)
	defer srv.Shutdown(context.Background())
	dial := func() *client {
		tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		return &client{t: t, nc: tc, r: bufio.NewReader(tc)}
	}
	dial().expect("+OK POP3 gateway ready.")
	refusedBeforeHandshake(t, ln.Addr().String())
}

// refusedBeforeHandshake dials a TLS listener and checks that the server
// closed the connection without sending a single TLS record.
func refusedBeforeHandshake(t *testing.T, addr string) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &readCounter{Conn: nc}
	tc := tls.Client(rc, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err == nil {
		t.Fatal("the handshake of a refused connection succeeded")
	} else if isTimeout(err) {
		t.Fatalf("handshake: %v; want the connection closed", err)
	}
	if rc.n != 0 {
		t.Fatalf("the server sent %d octets to a refused TLS client; want none", rc.n)
	}
}

type readCounter struct {
	net.Conn
	n int
}

func (r *readCounter) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.n += n
	return n, err
}

func TestMaxConnections(t *testing.T) {
	const refusal = "-ERR [SYS/TEMP] Too many connections, try again later."
	h := newHarness(t, func(s *Server) { s.MaxConnections = 2; s.MaxConnsPerIP = 5 })
	first := h.dial()
	second := h.dial()
	second.login()
	c, greeting := h.dialRaw()
	if greeting != refusal {
		t.Fatalf("third connection got %q", greeting)
	}
	if !c.closed() {
		t.Fatal("refused connection left open")
	}
	// A refused connection takes no place once it is gone.
	waitFor(t, func() bool { return h.srv.Sessions() == 2 })
	if _, greeting := h.dialRaw(); greeting != refusal {
		t.Fatalf("fourth connection got %q", greeting)
	}
	first.cmd("QUIT", "+OK Logging out.")
	waitFor(t, func() bool { return h.srv.Sessions() == 1 })
	h.dial()
}

func TestMaxConnectionsImplicitTLS(t *testing.T) {
	srv := &Server{
		Backend:        &memBackend{md: &memMaildrop{msgs: sample}},
		Logger:         slog.New(slog.DiscardHandler),
		TLSConfig:      serverTLS(t),
		MaxConnections: 1,
	}
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
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	(&client{t: t, nc: tc, r: bufio.NewReader(tc)}).expect("+OK POP3 gateway ready.")
	refusedBeforeHandshake(t, ln.Addr().String())
}

// A client that never logs in is closed after LoginTimeout, however often
// it sends a command within AuthTimeout.
func TestLoginTimeoutBoundsUnauthenticatedPhase(t *testing.T) {
	h := newHarness(t, func(s *Server) {
		s.AuthTimeout = time.Second
		s.LoginTimeout = 1500 * time.Millisecond
	})
	c := h.dial()
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		time.Sleep(300 * time.Millisecond)
		// Once the server has closed, the write may fail; its farewell
		// is still there to read.
		io.WriteString(c.nc, "CAPA\r\n")
		l := c.line()
		if l == "-ERR Too long without logging in." {
			if !c.closed() {
				t.Fatal("connection left open after the login timeout")
			}
			return
		}
		if l != "+OK Capability list follows" {
			t.Fatalf("got %q", l)
		}
		c.multi()
	}
	t.Fatalf("a client sending CAPA every 300ms was still connected after %v", time.Since(start).Round(time.Second))
}

// TestLoginTimeoutCountsTheClientsTime: a login that the backend takes
// longer than LoginTimeout to refuse with [IN-USE] leaves the prompt client
// its QUIT; a client that keeps retrying such logins is still closed, once
// the server's time exceeds a second LoginTimeout.
func TestLoginTimeoutCountsTheClientsTime(t *testing.T) {
	h := newHarness(t, func(s *Server) {
		s.LoginTimeout = time.Second
		s.Backend = slowBackend{Backend: s.Backend, delay: 1500 * time.Millisecond}
	})
	c := h.dial()
	c.cmd("USER busy", "+OK")
	c.cmd("PASS x", "-ERR [IN-USE] Mailbox is locked by another POP3 session.")
	c.cmd("QUIT", "+OK Logging out.")

	c = h.dial()
	start := time.Now()
	for i := 0; time.Since(start) < 10*time.Second; i++ {
		if i%2 == 0 {
			c.send("USER busy")
		} else {
			c.send("PASS x")
		}
		switch l := c.line(); l {
		case "+OK", "-ERR [IN-USE] Mailbox is locked by another POP3 session.":
			continue
		case "-ERR Too long without logging in.":
			if !c.closed() {
				t.Fatal("connection left open after the login timeout")
			}
			return
		default:
			t.Fatalf("got %q", l)
		}
	}
	t.Fatalf("a client retrying slow logins was still connected after %v", time.Since(start).Round(time.Second))
}

// slowBackend takes delay to answer each login.
type slowBackend struct {
	Backend
	delay time.Duration
}

func (b slowBackend) Login(ctx context.Context, li *LoginInfo) (Maildrop, error) {
	time.Sleep(b.delay)
	return b.Backend.Login(ctx, li)
}

// An accept error that is neither a timeout nor EMFILE, such as a
// connection reset before accept or a PROXY listener's fault, must not
// stop the server.
func TestAcceptErrorKeepsServing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &faultyListener{Listener: ln, faults: 3}
	srv := &Server{Backend: &memBackend{md: &memMaildrop{msgs: sample}}, Logger: slog.New(slog.DiscardHandler)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(fl) }()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	h := &harness{t: t, srv: srv, addr: ln.Addr().String()}
	h.dial().cmd("QUIT", "+OK Logging out.")
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v after an accept error", err)
	default:
	}
	if fl.faulted() != 3 {
		t.Fatalf("listener returned %d faults, want 3", fl.faulted())
	}
	srv.Shutdown(context.Background())
	if err := <-served; err != ErrServerClosed {
		t.Fatalf("Serve after Shutdown = %v", err)
	}
}

// faultyListener fails its first Accept calls with an error that is not
// temporary.
type faultyListener struct {
	net.Listener
	mu     sync.Mutex
	faults int
	done   int
}

func (l *faultyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.done < l.faults {
		l.done++
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.ECONNABORTED}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

func (l *faultyListener) faulted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.done
}

const errTooManySessions = "-ERR [SYS/TEMP] Too many sessions for this user."

func TestMaxSessionsPerUser(t *testing.T) {
	g := &fakeGuard{}
	h := newHarness(t, func(s *Server) { s.Guard = g; s.MaxSessionsPerUser = 1; s.MaxAuthFailures = 1 })
	first := h.dial()
	first.login()
	g.take()

	second := h.dial()
	second.cmd("USER alice", "+OK")
	second.cmd("PASS secret pass", errTooManySessions)
	g.expect(t, "Reserve 127.0.0.1 alice") // neither a failure nor a success
	// Not an authentication failure: with MaxAuthFailures 1 the session
	// would otherwise be closed.
	second.cmd("USER alice", "+OK")
	second.cmd("PASS wrong", errTooManySessions)
	// A name in another case is the same user (item 6: "u2" and "U2"
	// must not hold one allowance each).
	second.cmd("USER ALICE", "+OK")
	second.cmd("PASS secret pass", errTooManySessions)
	g.take()
	second.cmd("USER nobody", "+OK")
	second.cmd("PASS secret pass", "-ERR [AUTH] Authentication failed.")
	if !second.closed() {
		t.Fatal("session open after a failed login with MaxAuthFailures 1")
	}
	h.be.mu.Lock()
	logins := len(h.be.logins)
	h.be.mu.Unlock()
	if logins != 2 {
		t.Fatalf("%d logins reached the backend, want 2", logins)
	}

	// A failed login gives its slot back at once.
	third := h.dial()
	third.cmd("USER bob", "+OK")
	third.cmd("PASS x", "-ERR [AUTH] Authentication failed.")
	fourth := h.dial()
	fourth.cmd("USER bob", "+OK")
	fourth.cmd("PASS x", "-ERR [AUTH] Authentication failed.")

	// The end of the session gives its slot back.
	first.cmd("QUIT", "+OK Logging out.")
	waitFor(t, func() bool { return h.srv.Sessions() == 0 })
	h.dial().login()
}

// TestLoginKeyIsCanonical: the backend and the guard get one key for
// every spelling of a name, and the name as typed besides.
func TestLoginKeyIsCanonical(t *testing.T) {
	g := &fakeGuard{}
	h := newHarness(t, func(s *Server) { s.Guard = g; s.MaxAuthFailures = 10 })
	c := h.dial()
	c.cmd("USER ALIce", "+OK")
	c.cmd("PASS wrong", "-ERR [AUTH] Authentication failed.")
	g.expect(t, "Reserve 127.0.0.1 alice", "Failed 127.0.0.1 alice")
	h.be.mu.Lock()
	li := h.be.logins[0]
	h.be.mu.Unlock()
	if li.Username != "ALIce" || li.Key != "alice" {
		t.Fatalf("backend got name %q key %q, want ALIce and alice", li.Username, li.Key)
	}
}

// countingBackend counts the logins that reach it and refuses them all.
type countingBackend struct{ checks atomic.Int32 }

func (b *countingBackend) Login(context.Context, *LoginInfo) (Maildrop, error) {
	b.checks.Add(1)
	return nil, ErrAuthFailed
}

// TestParallelAttemptsAreSerialised: attempts sent at once over many
// connections from one address reach the backend one delay apart, not all
// together when the first delay ends (item 10: 15 connections got 11
// checks through in 19 s with the delay at its 15 s cap).
func TestParallelAttemptsAreSerialised(t *testing.T) {
	const delay = 200 * time.Millisecond
	opts := guard.Options{Base: delay, Max: delay, Window: time.Minute}
	t.Run("memory", func(t *testing.T) { testParallelAttempts(t, guard.NewMemory(opts)) })
	t.Run("redis", func(t *testing.T) {
		store, err := redisstate.New(context.Background(), redisstate.Options{Addr: redistest.Start(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		testParallelAttempts(t, store.Guard(opts))
	})
}

func testParallelAttempts(t *testing.T, g LoginGuard) {
	const delay = 200 * time.Millisecond
	be := &countingBackend{}
	h := newHarness(t, func(s *Server) { s.Guard = g; s.Backend = be })
	g.Failed(context.Background(), "127.0.0.1", "") // an earlier miss from the address

	const n = 5
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = h.dial()
	}
	start := time.Now()
	for i, c := range clients {
		c.send(fmt.Sprintf("USER user%d\r\nPASS guess", i))
	}
	// Without a queue all five are checked at about 200 ms; with one, a
	// check every 200 ms: two by 500 ms.
	time.Sleep(time.Until(start.Add(5 * delay / 2)))
	if got := be.checks.Load(); got > 3 {
		t.Fatalf("%d of %d parallel attempts reached the backend within %v with a %v delay", got, n, 5*delay/2, delay)
	}
	for _, c := range clients {
		c.expect("+OK")
		c.expect("-ERR [AUTH] Authentication failed.")
	}
	if got := be.checks.Load(); got != n {
		t.Fatalf("%d checks in the end, want %d", got, n)
	}
}

// TestSuccessKeepsTheAddressFailures: logging in to one's own account
// between guesses does not reset the address's delay.
func TestSuccessKeepsTheAddressFailures(t *testing.T) {
	g := guard.NewMemory(guard.Options{Base: time.Millisecond, Max: time.Second})
	h := newHarness(t, func(s *Server) { s.Guard = g })
	c := h.dial()
	c.cmd("USER bob", "+OK")
	c.cmd("PASS guess", "-ERR [AUTH] Authentication failed.")
	c.cmd("USER bob", "+OK")
	c.cmd("PASS guess", "-ERR [AUTH] Authentication failed.")
	h.dial().login() // alice, the guesser's own account
	if d := g.Delay(context.Background(), "127.0.0.1", ""); d != 2*time.Millisecond {
		t.Fatalf("address delay after a success on another account = %v, want 2ms", d)
	}
	if d := g.Delay(context.Background(), "", "bob"); d != 2*time.Millisecond {
		t.Fatalf("bob's delay after alice's success = %v, want 2ms", d)
	}
}

// TestRefusedNamesNotLoggedAboveDebug: a name that did not log in may be
// a password typed in the wrong field; it appears only at Debug.
func TestRefusedNamesNotLoggedAboveDebug(t *testing.T) {
	var logs testenv.Buffer
	h := newHarness(t, func(s *Server) {
		s.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		s.MaxSessionsPerUser = 1
		s.MaxAuthFailures = 10
	})
	h.dial().login()
	c := h.dial()
	for _, tc := range []struct{ user, want string }{
		{"nobody", "-ERR [AUTH] Authentication failed."},
		{"ALICE", errTooManySessions},
	} {
		c.cmd("USER "+tc.user, "+OK")
		c.cmd("PASS x", tc.want)
	}
	c.cmd("USER down", "+OK") // an error the backend did not expect
	c.send("PASS x")
	c.line()
	waitFor(t, func() bool { return strings.Contains(logs.String(), "session end") })
	out := logs.String()
	if !strings.Contains(out, "login refused") || !strings.Contains(out, "login failed") {
		t.Fatalf("the refusals are not logged:\n%s", out)
	}
	for _, name := range []string{"nobody", "user=down", "ALICE"} {
		if strings.Contains(out, name) {
			t.Errorf("refused name %q logged at Info or above:\n%s", name, out)
		}
	}
}

// slowRefusals refuses "fast" at once, as a local hash does, and "slow"
// after a while, as an upstream does.
type slowRefusals struct{ memBackend }

func (b *slowRefusals) Login(ctx context.Context, li *LoginInfo) (Maildrop, error) {
	if li.Username == "slow" {
		time.Sleep(150 * time.Millisecond)
		return nil, ErrAuthFailed
	}
	return b.memBackend.Login(ctx, li)
}

// TestRefusalsTakeTheSameMinimumTime: a refusal by a local check and one
// by a slower upstream both take at least MinRefusalTime, so the time
// does not tell a mapped user from a forwarded one.
func TestRefusalsTakeTheSameMinimumTime(t *testing.T) {
	const floor = 400 * time.Millisecond
	be := &slowRefusals{memBackend{md: &memMaildrop{msgs: sample}}}
	h := newHarness(t, func(s *Server) { s.Backend = be; s.MinRefusalTime = floor; s.MaxAuthFailures = 10 })
	c := h.dial()
	for _, cmd := range []string{
		"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00wrong")), // refused at once
		"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00slow\x00x")),      // refused after 150ms
		"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00al\nice\x00x")),   // never reaches the backend
	} {
		start := time.Now()
		c.cmd(cmd, "-ERR [AUTH] Authentication failed.")
		if took := time.Since(start); took < floor {
			t.Errorf("%s: refused in %v, want at least %v", cmd, took, floor)
		}
	}
}
