package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/leakcheck"
)

// lineServer answers each line "SEND n" with n octets of 'x' and any
// other line with "OK " and the line; it records the lines it read.
type lineServer struct {
	ln    net.Listener
	mu    sync.Mutex
	lines []string
	wg    sync.WaitGroup
}

func startLineServer(t *testing.T) *lineServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &lineServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go s.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *lineServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		s.mu.Lock()
		s.lines = append(s.lines, line)
		s.mu.Unlock()
		reply := "OK " + line + "\n"
		if n, ok := strings.CutPrefix(line, "SEND "); ok {
			k, _ := strconv.Atoi(n)
			reply = strings.Repeat("x", k)
		}
		if _, err := io.WriteString(c, reply); err != nil {
			return
		}
	}
}

func (s *lineServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func send(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

// expectReset reads until the connection ends and fails unless it ends
// with a reset; it returns what arrived before.
func expectReset(t *testing.T, c net.Conn) []byte {
	t.Helper()
	got, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection ended with %v after %q, want a reset", err, got)
	}
	return got
}

func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d octets: %v", n, err)
	}
	return string(buf)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestForwardsAndWatches(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	var toServer, toClient atomic.Int64
	p.Watch(func(up bool, chunk []byte) {
		if up {
			toServer.Add(int64(len(chunk)))
		} else {
			toClient.Add(int64(len(chunk)))
		}
	})
	c := dial(t, p)
	send(t, c, "HELLO\n")
	if got := readN(t, c, 9); got != "OK HELLO\n" {
		t.Fatalf("reply %q", got)
	}
	c.Close()
	waitFor(t, func() bool { return p.Closed() == 1 && p.Open() == 0 })
	if p.Accepted() != 1 || toServer.Load() != 6 || toClient.Load() != 9 {
		t.Fatalf("accepted %d, watched %d octets up and %d down; want 1, 6, 9", p.Accepted(), toServer.Load(), toClient.Load())
	}
}

func TestDown(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	p.Down(true)
	// The reset may come before the dial returns, or before or after the
	// write; the connection ends without an octet from the target.
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		io.WriteString(c, "HELLO\n")
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if got, _ := io.ReadAll(c); len(got) != 0 {
			t.Fatalf("read %q while down", got)
		}
		c.Close()
	}
	waitFor(t, func() bool { return p.Accepted() == 1 })
	if len(s.seen()) != 0 {
		t.Fatalf("the target saw %q while down", s.seen())
	}
	p.Down(false)
	c := dial(t, p)
	send(t, c, "UP\n")
	if got := readN(t, c, 6); got != "OK UP\n" {
		t.Fatalf("reply %q after down", got)
	}
	if p.Accepted() != 2 {
		t.Fatalf("%d accepted, want 2", p.Accepted())
	}
}

// TestResetOnCommandSplit: a pattern split across two reads still
// matches; the command does not reach the target whole, and the fault
// fires once.
func TestResetOnCommandSplit(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	c := dial(t, p)
	send(t, c, "FIRST EXPUNGE\n") // before arming: forwarded
	readN(t, c, len("OK FIRST EXPUNGE\n"))
	var up atomic.Int64
	p.Watch(func(toServer bool, chunk []byte) {
		if toServer {
			up.Add(int64(len(chunk)))
		}
	})
	p.ResetOnCommand([]byte("UID EXPUNGE"))
	send(t, c, "A UID EXP")
	waitFor(t, func() bool { return up.Load() == int64(len("A UID EXP")) })
	send(t, c, "UNGE 1\n")
	expectReset(t, c)
	if p.Fired() != 1 {
		t.Fatalf("%d faults fired, want 1", p.Fired())
	}
	for _, l := range s.seen() {
		if strings.Contains(l, "UNGE 1") {
			t.Fatalf("the target saw %q", l)
		}
	}
	c = dial(t, p)
	send(t, c, "B UID EXPUNGE 2\n")
	if got := readN(t, c, len("OK B UID EXPUNGE 2\n")); got != "OK B UID EXPUNGE 2\n" {
		t.Fatalf("second command after a one-time reset: %q", got)
	}
}

func TestResetAfterCommand(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	c := dial(t, p)
	p.ResetAfterCommand([]byte("EXPUNGE"))
	send(t, c, "A EXPUNGE\n")
	if got := expectReset(t, c); len(got) != 0 {
		t.Fatalf("the reply reached the client: %q", got)
	}
	if seen := s.seen(); len(seen) != 1 || seen[0] != "A EXPUNGE" {
		t.Fatalf("the target saw %q, want the command", seen)
	}
}

func TestCutServerAfter(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	c := dial(t, p)
	p.CutServerAfter(1000)
	send(t, c, "SEND 5000\n")
	if got := expectReset(t, c); len(got) != 1000 {
		t.Fatalf("%d octets before the cut, want 1000", len(got))
	}
	c = dial(t, p)
	send(t, c, "SEND 5000\n")
	readN(t, c, 5000) // once only
}

// TestCloseServerAfter: an orderly close after n octets; the client reads
// all n, however late it reads, then the end.
func TestCloseServerAfter(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	c := dial(t, p)
	p.CloseServerAfter(1000)
	send(t, c, "SEND 5000\n")
	time.Sleep(50 * time.Millisecond) // the close is out before the client reads
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || len(got) != 1000 {
		t.Fatalf("read %d octets, %v; want 1000 and the end", len(got), err)
	}
	if p.Fired() != 1 {
		t.Fatalf("%d cuts, want 1", p.Fired())
	}
}

func TestCutServerRepeatedly(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	p.CutServerRepeatedly(100, 200, 2)
	for _, want := range []int{100, 200} {
		c := dial(t, p)
		send(t, c, "SEND 5000\n")
		if got := expectReset(t, c); len(got) != want {
			t.Fatalf("%d octets before the cut, want %d", len(got), want)
		}
	}
	c := dial(t, p)
	send(t, c, "SEND 5000\n")
	readN(t, c, 5000)
	if p.Fired() != 2 {
		t.Fatalf("%d cuts, want 2", p.Fired())
	}
}

func TestCutClientAfter(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	c := dial(t, p)
	p.CutClientAfter(8)
	send(t, c, "ONE\nTWO\nTHREE\n")
	expectReset(t, c)
	waitFor(t, func() bool { return p.Open() == 0 })
	if seen := s.seen(); strings.Contains(strings.Join(seen, ","), "THREE") {
		t.Fatalf("the target saw %q past the cut", seen)
	}
}

func TestStall(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	c := dial(t, p)
	p.Stall(true)
	send(t, c, "HELD\n")
	waitFor(t, func() bool { return len(s.seen()) == 1 })
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(make([]byte, 10)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d octets while stalled (%v)", n, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	p.Stall(false)
	if got := readN(t, c, 8); got != "OK HELD\n" {
		t.Fatalf("reply after the stall %q", got)
	}

	p.StallCommands(true)
	send(t, c, "LATE\n")
	time.Sleep(50 * time.Millisecond)
	if len(s.seen()) != 1 {
		t.Fatalf("the target saw %q while commands were stalled", s.seen())
	}
	p.StallCommands(false)
	if got := readN(t, c, 8); got != "OK LATE\n" {
		t.Fatalf("reply after the stall %q", got)
	}
}

func TestCloseAll(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	c := dial(t, p)
	send(t, c, "HI\n")
	readN(t, c, 6)
	p.CloseAll()
	if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
		t.Fatalf("read %q, %v after CloseAll; want an orderly end", got, err)
	}
}

func TestStallServerAfter(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	c := dial(t, p)
	p.StallServerAfter(300)
	send(t, c, "SEND 1000\n")
	readN(t, c, 300)
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(make([]byte, 10)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d octets past the stall (%v)", n, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	p.Stall(false)
	readN(t, c, 700)
}

func TestDrip(t *testing.T) {
	s := startLineServer(t)
	p := Start(t, s.ln.Addr().String())
	var biggest atomic.Int64
	p.Watch(func(_ bool, chunk []byte) {
		if n := int64(len(chunk)); n > biggest.Load() {
			biggest.Store(n)
		}
	})
	p.Drip(3, time.Millisecond)
	c := dial(t, p)
	send(t, c, "SEND 100\n")
	if got := readN(t, c, 100); got != strings.Repeat("x", 100) {
		t.Fatalf("dripped reply %q", got)
	}
	if biggest.Load() > 3 {
		t.Fatalf("a chunk of %d octets while dripping 3", biggest.Load())
	}
	p.Drip(0, 0)
	send(t, c, "SEND 10000\n")
	readN(t, c, 10000)
	if biggest.Load() <= 3 {
		t.Fatal("still dripping after Drip(0)")
	}
}

func TestResetAllAndNoLeak(t *testing.T) {
	s := startLineServer(t)
	b := leakcheck.Take()
	p := Start(t, s.ln.Addr().String())
	var conns []net.Conn
	for range 3 {
		c := dial(t, p)
		send(t, c, "HI\n")
		readN(t, c, 6)
		conns = append(conns, c)
	}
	p.ResetAll()
	for _, c := range conns {
		expectReset(t, c)
		c.Close()
	}
	p.Close()
	b.Check(t)
}
