package proxy

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// gatewayGoroutines returns the stacks of the goroutines running code of
// the gateway's proxy or upstream packages, or of the IMAP client, and
// with pop3 set of the POP3 server, apart from the test's own helpers.
func gatewayGoroutines(pop3 bool) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		lines := strings.Split(g, "\n")
		for i := 1; i+1 < len(lines); i += 2 {
			fn, file := lines[i], lines[i+1]
			if strings.Contains(file, "_test.go") {
				continue
			}
			if pop3 && strings.HasPrefix(fn, "github.com/pop3gw/gateway/pop3.") ||
				strings.HasPrefix(fn, "github.com/pop3gw/gateway/proxy.") ||
				strings.HasPrefix(fn, "github.com/pop3gw/gateway/upstream.") ||
				strings.HasPrefix(fn, "github.com/emersion/go-imap/v2/imapclient.") {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

// TestCloseLeavesNoGoroutine: once the POP3 server has shut down and the
// gateway is closed, no goroutine the server or the gateway started is
// left: not a batch
// fetched ahead for a client that went away in the middle of it, not an
// idle connection's timer or logout.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.gw.SetPool(time.Minute, 10)
	var msgs []string
	for i := range 40 {
		msgs = append(msgs, fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat("body line\r\n", 20000)))
	}
	e.deliver("alice@example.com", msgs...)

	// A client that leaves in the middle of a batch fetched ahead.
	c := e.login("alice", localPassword)
	if _, err := c.Retr(1); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// A session that ends with QUIT and leaves its connection in the pool.
	c = e.login("alice", localPassword)
	for i := 1; i <= 3; i++ {
		if _, err := c.Retr(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if e.gw.pool.len() != 1 {
		t.Fatalf("%d connections kept, want 1", e.gw.pool.len())
	}
	// The kept connection idles (IDLE, RFC 2177): Close must end that too.
	waitFor(t, func() bool { return e.proxy.idles.Load() > 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		e.gw.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("Close has not returned after 5 s:\n%s", strings.Join(gatewayGoroutines(true), "\n\n"))
	}
	// Close waits for what the gateway started; the IMAP client's own
	// reader ends when its connection does, a moment later.
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := gatewayGoroutines(true)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNothingStartsAfterClose: a gateway closed under a live session
// stops its fetching ahead, and the session, ending later, starts nothing
// and keeps no connection.
func TestNothingStartsAfterClose(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.gw.SetPool(time.Minute, 10)
	var msgs []string
	for i := range 20 {
		msgs = append(msgs, fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat("body line\r\n", 2000)))
	}
	e.deliver("alice@example.com", msgs...)
	c := e.login("alice", localPassword)
	if _, err := c.Retr(1); err != nil {
		t.Fatal(err)
	}
	e.gw.Close()
	for i := 2; i <= 4; i++ {
		if _, err := c.Retr(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if n := e.gw.pool.len(); n != 0 {
		t.Fatalf("%d connections kept after Close, want none", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := gatewayGoroutines(false)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after the last session:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
