package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
	"golang.org/x/crypto/bcrypt"
)

// Hostile upstreams: an IMAP server that misbehaves in one way per case,
// behind the gateway with a short timeout. Every case must end within a
// few timeouts and a bounded amount of memory, end that POP3 session with
// -ERR [SYS/TEMP] (or refuse the login the same way), and lose or corrupt
// no mail: nothing is deleted upstream, and once the server behaves, a
// new session lists and serves the message byte for byte.
var hostileCases = []struct {
	name string
	// pop3 is what the client does and expects: a refused login, a RETR
	// refused or cut, or a RETR served whole.
	pop3 hostileOutcome
	// list is the RFC822.SIZE the server gives for the message; 0 is its
	// true size.
	list int
	// heap, when set, bounds the gateway's heap growth during the case.
	heap  int64
	serve func(c *imapConn)
}{
	{name: "garbage greeting", pop3: loginRefused, serve: func(c *imapConn) {
		c.send("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
		c.waitClosed()
	}},
	{name: "endless greeting line", pop3: loginRefused, heap: loginHeap + 32<<20, serve: func(c *imapConn) {
		c.send("* OK ")
		c.flood("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
	}},
	{name: "silent before the greeting", pop3: loginRefused, serve: func(c *imapConn) {
		c.waitClosed()
	}},
	{name: "silent after the greeting", pop3: loginRefused, serve: func(c *imapConn) {
		c.greet()
		c.waitClosed()
	}},
	{name: "silent after login", pop3: loginRefused, serve: func(c *imapConn) {
		c.greet()
		c.serveUntil("SELECT")
		c.waitClosed()
	}},
	{name: "silent mid-FETCH", pop3: retrRefused, serve: func(c *imapConn) {
		c.greet()
		c.serveUntil("UID FETCH")
		c.send(fmt.Sprintf("* 1 FETCH (UID 1 BODY[] {%d}\r\n%s", len(hostileMessage), hostileMessage[:50]))
		c.waitClosed()
	}},
	{name: "literal of 2 GB announced", pop3: retrRefused, heap: loginHeap + 32<<20, serve: func(c *imapConn) {
		c.greet()
		c.serveUntil("UID FETCH")
		c.send("* 1 FETCH (UID 1 BODY[] {2147483648}\r\n")
		c.stream(64<<20, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n")
		c.waitClosed()
	}},
	{name: "RFC822.SIZE smaller than the body", pop3: retrServed, list: 50, serve: func(c *imapConn) {
		c.greet()
		c.serveWell()
	}},
	{name: "RFC822.SIZE larger than the body", pop3: retrServed, list: 4000, serve: func(c *imapConn) {
		c.greet()
		c.serveWell()
	}},
	{name: "FETCH for a UID not asked for", pop3: retrRefused, serve: func(c *imapConn) {
		c.greet()
		tag := c.serveUntil("UID FETCH")
		other := "Subject: not this one\r\n\r\nsomeone else's mail\r\n"
		c.send(fmt.Sprintf("* 1 FETCH (UID 2 BODY[] {%d}\r\n%s)\r\n%s OK fetched\r\n", len(other), other, tag))
		c.serveWell()
	}},
	{name: "untagged flood before the answer", pop3: retrServed, heap: loginHeap + 32<<20, serve: func(c *imapConn) {
		c.greet()
		tag := c.serveUntil("UID FETCH")
		var flood strings.Builder
		for range 5000 {
			flood.WriteString("* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n* OK [ALERT] still here\r\n* 1 EXISTS\r\n")
		}
		c.send(flood.String())
		c.send(fmt.Sprintf("* 1 FETCH (UID 1 BODY[] {%d}\r\n%s)\r\n%s OK fetched\r\n", len(hostileMessage), hostileMessage, tag))
		c.serveWell()
	}},
	{name: "untagged flood without end", pop3: retrRefused, heap: loginHeap + 32<<20, serve: func(c *imapConn) {
		c.greet()
		c.serveUntil("UID FETCH")
		c.flood("* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n* OK [ALERT] still here\r\n* 1 EXISTS\r\n")
	}},
}

type hostileOutcome int

const (
	loginRefused hostileOutcome = iota // -ERR [SYS/TEMP] to PASS
	retrRefused                        // -ERR [SYS/TEMP] to RETR, or the connection cut before the terminator
	retrServed                         // RETR serves the message whole
)

func TestHostileUpstreams(t *testing.T) {
	for _, tc := range hostileCases {
		t.Run(tc.name, func(t *testing.T) {
			up := startHostileIMAP(t, tc.serve, tc.list)
			e := newHostileEnv(t, up.Addr(), upstream.SecurityNone)
			e.boundedSession(t, tc.pop3, tc.heap)
			up.good.Store(true)
			e.checkMailIntact(t, &up.deletes)
		})
	}
}

// TestHostileTLSUpstream: an upstream whose TLS handshake fails midway,
// with garbage or with silence, refuses the login with [SYS/TEMP] within
// the timeout.
func TestHostileTLSUpstream(t *testing.T) {
	for name, serve := range hostileTLSHandshakes {
		t.Run(name, func(t *testing.T) {
			up := startHostileIMAP(t, serve, 0)
			e := newHostileEnv(t, up.Addr(), upstream.SecurityImplicit)
			e.timedSession(t, loginRefused)
			if n := up.deletes.Load(); n != 0 {
				t.Errorf("%d delete commands reached the server", n)
			}
		})
	}
}

// hostileTLSHandshakes are servers whose TLS handshake fails midway,
// with garbage or with silence.
var hostileTLSHandshakes = map[string]func(c *imapConn){
	"garbage after ClientHello": func(c *imapConn) {
		c.readSome()
		c.send("\x16\x03\x03\x00\x30" + strings.Repeat("\xff", 48))
		c.waitClosed()
	},
	"silence after ClientHello": func(c *imapConn) {
		c.readSome()
		c.waitClosed()
	},
	"cut after ServerHello's header": func(c *imapConn) {
		c.readSome()
		c.send("\x16\x03\x03\x40\x00\x02")
		c.Close()
	},
}

// timedSession runs hostileSession and checks that it ended within a
// bound of the upstream timeout: a hostile server holds nothing up.
func (e *hostileEnv) timedSession(t *testing.T, outcome hostileOutcome) {
	t.Helper()
	start := time.Now()
	e.hostileSession(t, outcome)
	if d := time.Since(start); d > 20*hostileTimeout {
		t.Errorf("the session took %v with an upstream timeout of %v", d, hostileTimeout)
	}
}

// boundedSession runs timedSession and, unless heap is 0, checks that
// the heap grew by no more than heap meanwhile.
func (e *hostileEnv) boundedSession(t *testing.T, outcome hostileOutcome, heap int64) {
	t.Helper()
	before := liveHeap()
	peak := watchHeap(t)
	e.timedSession(t, outcome)
	if grown := peak() - before; heap > 0 && grown > heap {
		t.Errorf("the heap grew by %d MiB, more than %d MiB", grown>>20, heap>>20)
	}
}

const hostileTimeout = 500 * time.Millisecond

// loginHeap is what checking the local password takes by itself: the
// argon2id hash of passwd.Hash uses 64 MiB.
const loginHeap = 64 << 20

var hostileMessage = message189

type hostileEnv struct {
	*scriptedEnv
}

func newHostileEnv(t *testing.T, addr string, security upstream.Security) *hostileEnv {
	t.Helper()
	return newHostileGateway(t, &Upstream{
		Name:           "hostile",
		Server:         upstream.Server{Address: addr, Security: security, Timeout: hostileTimeout},
		Mailbox:        "INBOX",
		OnDelete:       upstream.DeleteExpunge,
		KeepConnection: -1,
	}, cache.New(4<<20, 1<<20))
}

// newHostileGateway serves alice's mailbox on up, whatever its store;
// her upstream login is alice, password secret.
func newHostileGateway(t *testing.T, up *Upstream, c *cache.Cache) *hostileEnv {
	t.Helper()
	// bcrypt at its lowest cost: the cases are about the upstream, and
	// three logins each at argon2id's cost would take most of the time.
	hash, err := bcrypt.GenerateFromPassword([]byte(localPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &Config{
		Upstreams: map[string]*Upstream{up.Name: up},
		Users: map[string]*User{
			"alice": {
				Name:             "alice",
				PasswordHash:     string(hash),
				Upstream:         up.Name,
				UpstreamUser:     "alice",
				UpstreamPassword: func() (string, error) { return "secret", nil },
				// For a store that takes OAuth2 tokens only (Graph).
				UpstreamToken: func(context.Context, bool) (string, error) { return "secret", nil },
			},
		},
	}
	gw := New(cfg, c, testLogger())
	gw.SetPrefetch(false)
	srv := &pop3.Server{Backend: gw, Logger: testLogger()}
	return &hostileEnv{&scriptedEnv{t: t, cache: c, gw: gw, addr: serve(t, srv, nil)}}
}

var sysTemp = "-ERR [SYS/TEMP] "

// hostileSession logs in and, for a RETR case, lists and fetches the
// message, expecting outcome. It leaves without QUIT.
func (e *hostileEnv) hostileSession(t *testing.T, outcome hostileOutcome) {
	t.Helper()
	c, err := pop3client.Dial(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	expectReply(t, c, "USER alice", "+OK")
	reply, err := c.Cmd("PASS " + localPassword)
	if outcome == loginRefused {
		if !strings.HasPrefix(reply, sysTemp) {
			t.Fatalf("PASS: %q, %v; want %q", reply, err, sysTemp)
		}
		return
	}
	if !strings.HasPrefix(reply, "+OK") {
		t.Fatalf("PASS: %q, %v", reply, err)
	}
	reply, _ = c.Cmd("RETR 1")
	switch {
	case outcome == retrServed:
		if !strings.HasPrefix(reply, "+OK") {
			t.Fatalf("RETR 1: %q", reply)
		}
		if body := must[[]byte](t)(c.RawMulti()); string(body) != hostileMessage {
			t.Fatalf("RETR 1 = %q", body)
		}
	case strings.HasPrefix(reply, sysTemp):
	case strings.HasPrefix(reply, "+OK"):
		// Once +OK is out, the only honest end of a message the
		// server did not give whole is a cut before the terminator.
		if n, err := c.DiscardMulti(); err == nil {
			t.Fatalf("RETR 1: %q, then %d octets served as the whole message", reply, n)
		}
	default:
		t.Fatalf("RETR 1: %q, want %q", reply, sysTemp)
	}
}

// checkMailIntact: nothing was deleted, and with the server behaving, a
// new session lists the message with its true size and serves it byte for
// byte, whatever the failed session left in the cache.
func (e *hostileEnv) checkMailIntact(t *testing.T, deletes *atomic.Int64) {
	t.Helper()
	c := e.loginWhenFree(t)
	if n, size, err := c.Stat(); err != nil || n != 1 {
		t.Fatalf("STAT: %d %d %v", n, size, err)
	}
	if body := must[[]byte](t)(c.Retr(1)); string(body) != hostileMessage {
		t.Fatalf("RETR 1 = %q", body)
	}
	expectReply(t, c, "LIST 1", fmt.Sprintf("+OK 1 %d", len(hostileMessage)))
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if n := deletes.Load(); n != 0 {
		t.Errorf("%d delete commands reached the server", n)
	}
}

// loginWhenFree logs in once the gateway has let go of the maildrop: a
// session the client left without QUIT holds it until the gateway has
// seen the connection close.
func (e *hostileEnv) loginWhenFree(t *testing.T) *pop3client.Client {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := pop3client.Dial(e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		t.Cleanup(func() { c.Close() })
		err = c.Login("alice", localPassword)
		if err == nil {
			return c
		}
		c.Close()
		if !strings.Contains(err.Error(), "[IN-USE]") || time.Now().After(deadline) {
			t.Fatalf("login: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// watchHeap samples the live heap (after a collection, so garbage not
// yet collected does not count) until peak is called, which returns the
// highest sample.
func watchHeap(t *testing.T) (peak func() int64) {
	var high atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if v := liveHeap(); v > high.Load() {
				high.Store(v)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	peak = func() int64 {
		once.Do(func() { close(stop); <-done })
		return high.Load()
	}
	t.Cleanup(func() { peak() })
	return peak
}

// hostileIMAP serves every connection with a case's misbehaviour until
// good is set, then as a well-behaved server of one message, UID 1.
type hostileIMAP struct {
	ln      net.Listener
	hostile func(c *imapConn)
	list    int
	good    atomic.Bool
	deletes atomic.Int64 // STORE and EXPUNGE commands seen

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startHostileIMAP(t *testing.T, hostile func(c *imapConn), list int) *hostileIMAP {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &hostileIMAP{ln: ln, hostile: hostile, list: list}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, nc)
			s.mu.Unlock()
			c := &imapConn{Conn: nc, r: bufio.NewReader(nc), srv: s}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer nc.Close()
				if s.good.Load() {
					c.greet()
					c.serveWell()
					return
				}
				hostile(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *hostileIMAP) Addr() string { return s.ln.Addr().String() }

// imapConn is one connection to the hostile server.
type imapConn struct {
	net.Conn
	r   *bufio.Reader
	srv *hostileIMAP
}

func (c *imapConn) send(s string) { c.Write([]byte(s)) }

func (c *imapConn) greet() {
	c.send("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS] ready\r\n")
}

// readSome reads what the client sent first (a TLS ClientHello).
func (c *imapConn) readSome() {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	c.Read(buf)
	c.SetReadDeadline(time.Time{})
}

// waitClosed reads and drops until the client closes the connection.
func (c *imapConn) waitClosed() {
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// flood sends chunk over and over until the client goes away.
func (c *imapConn) flood(chunk string) {
	go c.waitClosed()
	b := []byte(strings.Repeat(chunk, 1+(32<<10)/len(chunk)))
	for {
		if _, err := c.Write(b); err != nil {
			return
		}
	}
}

// stream sends n octets made of chunk, or fewer if the client goes away.
func (c *imapConn) stream(n int, chunk string) {
	b := []byte(strings.Repeat(chunk, 1+(32<<10)/len(chunk)))
	for sent := 0; sent < n; sent += len(b) {
		if _, err := c.Write(b); err != nil {
			return
		}
	}
}

var (
	literalRE = regexp.MustCompile(`\{(\d+)\+?\}$`)
	partialRE = regexp.MustCompile(`BODY\.PEEK\[\]<(\d+)\.(\d+)>`)
)

// command reads the next command line, with the literals it carries.
func (c *imapConn) command() (tag, command string, ok bool) {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var line strings.Builder
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			return "", "", false
		}
		l = strings.TrimRight(l, "\r\n")
		line.WriteString(l)
		m := literalRE.FindStringSubmatch(l)
		if m == nil {
			break
		}
		n, _ := strconv.Atoi(m[1])
		if !strings.HasSuffix(l, "+}") {
			c.send("+ go on\r\n")
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(c.r, lit); err != nil {
			return "", "", false
		}
		line.Write(lit)
	}
	tag, command, _ = strings.Cut(line.String(), " ")
	upper := strings.ToUpper(command)
	if strings.Contains(upper, "STORE") || strings.Contains(upper, "EXPUNGE") || strings.HasPrefix(upper, "MOVE") || strings.HasPrefix(upper, "UID MOVE") {
		c.srv.deletes.Add(1)
	}
	return tag, command, true
}

// serveUntil answers well every command until one that starts with
// prefix, and returns that command's tag.
func (c *imapConn) serveUntil(prefix string) string {
	for {
		tag, command, ok := c.command()
		if !ok {
			return ""
		}
		if strings.HasPrefix(strings.ToUpper(command), prefix) {
			return tag
		}
		if c.answer(tag, command) {
			return ""
		}
	}
}

// serveWell answers every command well until LOGOUT or the end.
func (c *imapConn) serveWell() {
	for {
		tag, command, ok := c.command()
		if !ok || c.answer(tag, command) {
			return
		}
	}
}

// answer is a well-behaved server's reply to one command, for a mailbox
// of one message with UID 1; it tells whether the connection is over.
func (c *imapConn) answer(tag, command string) (end bool) {
	upper := strings.ToUpper(command)
	verb, _, _ := strings.Cut(upper, " ")
	size := len(hostileMessage)
	switch {
	case verb == "LOGOUT":
		c.send("* BYE bye\r\n" + tag + " OK logged out\r\n")
		return true
	case verb == "SELECT" || verb == "EXAMINE":
		c.send("* 1 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n* OK [UIDNEXT 2] ok\r\n" + tag + " OK [READ-WRITE] selected\r\n")
	case verb == "FETCH" && strings.Contains(upper, "RFC822.SIZE"):
		listed := size
		if c.srv.list > 0 && !c.srv.good.Load() {
			listed = c.srv.list
		}
		c.send(fmt.Sprintf("* 1 FETCH (UID 1 FLAGS () RFC822.SIZE %d)\r\n%s OK fetched\r\n", listed, tag))
	case strings.HasPrefix(upper, "UID FETCH") && strings.Contains(upper, "BODY.PEEK[]"):
		body, section := hostileMessage, "BODY[]"
		if m := partialRE.FindStringSubmatch(upper); m != nil {
			off, _ := strconv.Atoi(m[1])
			n, _ := strconv.Atoi(m[2])
			off = min(off, len(body))
			body = body[off:min(off+n, len(body))]
			section = fmt.Sprintf("BODY[]<%d>", off)
		}
		c.send(fmt.Sprintf("* 1 FETCH (UID 1 %s {%d}\r\n%s)\r\n%s OK fetched\r\n", section, len(body), body, tag))
	case strings.HasPrefix(upper, "UID SEARCH"):
		c.send("* SEARCH 1\r\n" + tag + " OK searched\r\n")
	default:
		c.send(tag + " OK done\r\n")
	}
	return false
}
