package proxy

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// budgetMessage is a message of about size octets with CRLF lines, none
// starting with a dot, so what RETR sends is the message itself.
func budgetMessage(rng *rand.Rand, n, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Subject: budget %d\r\nMessage-ID: <%d.%d@budget.test>\r\n\r\n", n, n, rng.Uint64())
	raw := make([]byte, 57)
	line := make([]byte, 76)
	for b.Len()+len(line)+2 <= size {
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		base64.StdEncoding.Encode(line, raw)
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// liveHeap is the heap still reachable after a full collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// Concurrent RETRs under a small budget: the bodies the gateway holds stay
// within the cache and the budget, the rest stream, and every client gets
// every message byte for byte. The upstream is Dovecot in its own process,
// so this process's heap is the gateway's and its clients'.
func TestBudgetBoundsConcurrentRetrs(t *testing.T) {
	const (
		clients    = 16
		perMailbox = 2
		msgSize    = 2 << 20
		memory     = 4 << 20 // cache.memory and max_message
		budgetSize = 5 << 20
		// Per session: POP3 and IMAP buffers, the copy buffer, the CRLF
		// reader; not message bodies.
		slack = 4 << 20
	)
	users := map[string]string{}
	for i := range clients {
		users[fmt.Sprintf("b%02d", i)] = "pass"
	}
	dc := dovecottest.Start(t, users)
	rng := rand.New(rand.NewPCG(11, 13))
	want := map[string][][]byte{}
	for u := range users {
		for n := range perMailbox {
			want[u] = append(want[u], budgetMessage(rng, n+1, msgSize))
		}
		dc.Deliver(t, u, want[u]...)
	}

	budget := cache.NewBudget(budgetSize)
	c := cache.New(memory, memory)
	gw, addr := serveDovecot(t, dc.IMAPAddr(), c, budget)

	// Small socket buffers on both ends: a stalled client stalls the
	// gateway's writes, instead of the kernel taking megabytes off its
	// hands.
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, smallBuffer)
		})
		return err
	}}
	conns := make(map[string]*pop3client.Client)
	for u := range users {
		nc, err := dialer.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		pc, err := pop3client.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		pc.SetDeadline(time.Now().Add(time.Minute))
		t.Cleanup(func() { pc.Close() })
		if err := pc.Login(u, "pass"); err != nil {
			t.Fatalf("%s: login: %v", u, err)
		}
		conns[u] = pc
	}
	base := liveHeap()

	// Every client asks for message 1 and reads only the status line: the
	// gateway has then read whole what it holds, and the rest waits on
	// the clients.
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for u, pc := range conns {
		wg.Go(func() {
			if _, err := pc.OK("RETR 1"); err != nil {
				errs <- fmt.Errorf("%s: RETR 1: %w", u, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Fetching ahead, where it started, has the time to fill the cache.
	time.Sleep(200 * time.Millisecond)
	held := liveHeap() - base
	if bound := int64(memory + budgetSize + slack); held > bound {
		t.Errorf("the gateway holds %d MiB with every client stalled mid-RETR; want at most %d MiB (cache %d + budget %d + buffers)",
			held>>20, bound>>20, memory>>20, budgetSize>>20)
	}
	if st := c.Stats(); st.Bytes > memory {
		t.Errorf("cache holds %d bytes, over its %d", st.Bytes, memory)
	}

	for u, pc := range conns {
		wg.Go(func() {
			for n := range perMailbox {
				var got []byte
				var err error
				if n == 0 {
					var raw []byte
					raw, err = pc.RawMulti()
					got = pop3client.Unstuff(raw)
				} else {
					got, err = pc.Retr(n + 1)
				}
				if err != nil {
					t.Errorf("%s: RETR %d: %v", u, n+1, err)
					return
				}
				if !bytes.Equal(got, want[u][n]) {
					t.Errorf("%s: RETR %d: %d octets differ from the %d stored", u, n+1, len(got), len(want[u][n]))
				}
			}
			if err := pc.Quit(); err != nil {
				t.Errorf("%s: QUIT: %v", u, err)
			}
		})
	}
	wg.Wait()

	st := budget.Stats()
	t.Logf("budget: %+v; live heap with every client stalled: %.1f MiB over the logged-in sessions", st, float64(held)/(1<<20))
	if st.HighWater > budgetSize {
		t.Errorf("budget high water %d over its %d", st.HighWater, budgetSize)
	}
	if st.HighWater < msgSize {
		t.Errorf("budget high water %d: no body was held under the budget", st.HighWater)
	}
	if st.Refused == 0 {
		t.Error("no reservation was refused: the test did not load the budget")
	}
	// What stays reserved is the remembered listings.
	waitFor(t, func() bool {
		gw.snaps.mu.Lock()
		defer gw.snaps.mu.Unlock()
		return budget.Stats().InUse == gw.snaps.bytes
	})
}

// serveDovecot serves POP3 on loopback, passing logins through to
// Dovecot's IMAP at imapAddr.
func serveDovecot(t *testing.T, imapAddr string, c *cache.Cache, budget *cache.Budget) (*Gateway, string) {
	t.Helper()
	cfg := &Config{
		Upstreams: map[string]*Upstream{"dc": {
			Name:     "dc",
			Server:   upstream.Server{Address: imapAddr, Security: upstream.SecurityNone, Timeout: 30 * time.Second},
			Mailbox:  "INBOX",
			OnDelete: upstream.DeleteKeep,
		}},
		Passthrough: &Passthrough{Upstream: "dc"},
	}
	log := testLogger()
	gw := New(cfg, c, log)
	gw.SetBudget(budget)
	srv := &pop3.Server{Backend: gw, Logger: log}
	t.Cleanup(func() { gw.Close() }) // after the server's shutdown: cleanups run last first
	return gw, serve(t, srv, func(ln net.Listener) net.Listener { return smallSendBuffers{ln} })
}

const smallBuffer = 64 << 10

// smallSendBuffers fixes the send buffer of accepted connections.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(smallBuffer)
	}
	return c, err
}

// With no budget at all, nothing is held: every RETR streams from the
// upstream, nothing is fetched ahead or cached, and nothing waits.
func TestZeroBudgetStreamsEverything(t *testing.T) {
	budget := cache.NewBudget(0)
	e := newEnv(t, envOptions{budget: budget})
	msgs := append([]string{strings.Repeat("Subject: big\r\n", 10) + "\r\n" + strings.Repeat("line\r\n", 50_000)}, corpus...)
	e.deliver("alice@example.com", msgs...)
	c := e.login("alice", localPassword)
	for round := range 2 {
		for i, m := range msgs {
			got := must[[]byte](t)(c.Retr(i + 1))
			if string(got) != m {
				t.Fatalf("round %d: RETR %d: %q, want %q", round, i+1, trim(got), trim([]byte(m)))
			}
		}
	}
	c.Quit()
	if st := e.cache.Stats(); st.Entries != 0 {
		t.Errorf("cache holds %d bodies; want none: there was no budget to read them whole", st.Entries)
	}
	if n := e.proxy.fetches.Load(); n != int64(2*len(msgs)) {
		t.Errorf("%d upstream fetch commands, want %d: one per RETR, none ahead", n, 2*len(msgs))
	}
	if st := budget.Stats(); st.HighWater != 0 || st.Refused == 0 {
		t.Errorf("budget %+v: want nothing granted, something refused", st)
	}
}

func trim(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "..."
	}
	return string(b)
}

// Remembered listings are bounded in bytes, within a quarter of the budget
// they draw on, and give it back when forgotten.
func TestListingsBoundedInBytes(t *testing.T) {
	budget := cache.NewBudget(40 << 10)
	s := newSnapshots(budget)
	listing := func(n int) []upstream.Entry {
		entries := make([]upstream.Entry, n)
		for i := range entries {
			entries[i] = upstream.Entry{ID: upstream.ID(fmt.Sprint(i + 1)), Size: 1000}
		}
		return entries
	}
	state := func(n int) upstream.Mailbox {
		return upstream.Mailbox{Epoch: "1", State: fmt.Sprint(n+1, "/", n), Messages: n}
	}
	for i := range 20 {
		s.put(fmt.Sprintf("mailbox%d", i), &snapshot{state: state(100), entries: listedEntries(listing(100))})
	}
	if s.bytes > 10<<10 {
		t.Errorf("listings hold %d bytes; want at most a quarter of the 40 KiB budget", s.bytes)
	}
	if st := budget.Stats(); st.InUse != s.bytes {
		t.Errorf("budget in use %d; listings hold %d", st.InUse, s.bytes)
	}
	if ok := remembered(s, "mailbox19", state(100)); !ok {
		t.Error("the newest listing was not remembered")
	}
	if ok := remembered(s, "mailbox0", state(100)); ok {
		t.Error("the oldest listing was remembered beyond the bound")
	}
	// Larger than the bound: not remembered, and nothing else forgotten.
	s.put("huge", &snapshot{state: state(1000), entries: listedEntries(listing(1000))})
	if ok := remembered(s, "huge", state(1000)); ok {
		t.Error("a listing over the bound was remembered")
	}
	if ok := remembered(s, "mailbox19", state(100)); !ok {
		t.Error("a listing too large to remember made others forgotten")
	}
	// Bodies holding the whole budget leave no room for listings.
	rest := budget.Limit() - budget.Stats().InUse
	if !budget.Reserve(rest) {
		t.Fatal("reserving the rest of the budget failed")
	}
	s.put("late", &snapshot{state: state(100), entries: listedEntries(listing(100))})
	if ok := remembered(s, "late", state(100)); !ok {
		t.Error("a listing was refused although older ones could make room")
	}
	budget.Release(rest)
	if st := budget.Stats(); st.InUse != s.bytes || st.HighWater > 40<<10 {
		t.Errorf("budget %+v; listings hold %d", st, s.bytes)
	}
}

// remembered tells whether s holds the maildrop's listing in the state.
func remembered(s *snapshots, maildrop string, state upstream.Mailbox) bool {
	snap := s.last(maildrop)
	return snap != nil && snap.state == state
}
