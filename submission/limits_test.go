package submission

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// TestConnectionsPerIP: one connection more than MaxConnsPerIP is told
// 421 in place of the greeting; a closed one frees its place.
func TestConnectionsPerIP(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, func(s *Server) { s.MaxConnsPerIP = 1 })
	first := h.dial()
	nc, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	second := &rawClient{t: t, nc: nc, r: newReader(nc)}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	second.expect("421 4.7.0")
	first.cmd("QUIT", "221 ")
	first.nc.Close()
	time.Sleep(50 * time.Millisecond)
	h.dial().cmd("EHLO device.example", "250-")
}

// TestLoginTimeout: a connection that has not logged in within
// LoginTimeout is closed, however busy it keeps itself; one that logged
// in stays.
func TestLoginTimeout(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, func(s *Server) { s.LoginTimeout = 300 * time.Millisecond })
	idle := h.dial()
	in := h.dial()
	in.login()
	for range 3 {
		idle.cmd("NOOP", "250 ")
		time.Sleep(50 * time.Millisecond)
	}
	idle.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(idle.r); err != nil {
		t.Fatalf("the idle connection was not closed: %v", err)
	}
	in.cmd("NOOP", "250 ")
	in.cmd("MAIL FROM:<alice@example.com>", "250 ")
}

// TestTrace: at LevelTrace the session's commands are logged, the AUTH
// exchange by its mechanism only.
func TestTrace(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	c.cmd("MAIL FROM:<ceo@example.com>", "553 ")
	logs := h.logs.String()
	for _, want := range []string{`line="AUTH PLAIN"`, `line="MAIL FROM:<ceo@example.com>"`, `line="553 5.7.1 Sender address not allowed`} {
		if !strings.Contains(logs, want) {
			t.Errorf("trace lacks %s:\n%s", want, logs)
		}
	}
	if blob := base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00local")); strings.Contains(logs, blob) {
		t.Error("the AUTH payload reached the trace")
	}
}

// TestShutdownDrains: Shutdown stops accepting, lets a transaction under
// way finish, and returns once the client has left.
func TestShutdownDrains(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	c.cmd("MAIL FROM:<alice@example.com>", "250 ")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- h.srv.Shutdown(ctx)
	}()
	time.Sleep(100 * time.Millisecond)
	if nc, err := net.DialTimeout("tcp", h.addr, time.Second); err == nil {
		nc.Close()
		t.Error("a new connection was accepted during shutdown")
	}
	c.cmd("RCPT TO:<b@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	io.WriteString(c.nc, "Subject: last\r\n\r\nlast\r\n.\r\n")
	c.expect("250 ")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned during a session: %v", err)
	default:
	}
	c.cmd("QUIT", "221 ")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(up.delivered()) != 1 {
		t.Fatal("the last message was not delivered")
	}
}

// TestSessionsPerUser: a login past MaxSessionsPerUser for one name, in
// any case, is refused with 454 before the backend is asked; a session
// that ends frees its place.
func TestSessionsPerUser(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, func(s *Server) { s.MaxSessionsPerUser = 1 })
	first := h.dial()
	first.login()
	second := h.dial()
	second.cmd("EHLO device.example", "250-")
	second.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00SCANNER\x00local")), "454 4.7.0")
	first.cmd("QUIT", "221 ")
	testenv.WaitFor(t, func() bool { h.srv.mu.Lock(); defer h.srv.mu.Unlock(); return len(h.srv.users) == 0 })
	second.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00local")), "235 ")
}

// sentCounter is a SentCounter another replica may have counted in; err,
// when set, makes it unreachable.
type sentCounter struct {
	mu   sync.Mutex
	sent map[string]int
	err  error
}

func (c *sentCounter) SentLastHour(_ context.Context, key string) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent[key], c.err
}

func (c *sentCounter) CountSent(_ context.Context, key string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.sent[key]++
	}
	return c.err
}

// TestSharedSentCount: MAIL is refused once the shared count reaches the
// limit, messages counted by other replicas included; a shared count
// that cannot be asked leaves the limit to this relay's own count, and
// mail goes on.
func TestSharedSentCount(t *testing.T) {
	shared := &sentCounter{sent: map[string]int{"fake/alice": 1}} // one from another replica
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, func(s *Server) { s.MessagesPerHour, s.Sent = 2, shared })
	c := h.dial()
	c.login()
	if got := c.send("alice@example.com", []string{"b@example.org"}, "Subject: x\r\n\r\nx"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA reply %q", got)
	}
	c.cmd("MAIL FROM:<alice@example.com>", "450 4.7.1")
	if n, _ := shared.SentLastHour(context.Background(), "fake/alice"); n != 2 {
		t.Errorf("shared count %d, want 2", n)
	}
	shared.mu.Lock()
	shared.err = errors.New("redis down")
	shared.mu.Unlock()
	// This relay has sent one of two.
	if got := c.send("alice@example.com", []string{"b@example.org"}, "Subject: x\r\n\r\nx"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA reply with the shared count unreachable %q", got)
	}
	c.cmd("MAIL FROM:<alice@example.com>", "450 4.7.1")
	if !strings.Contains(h.logs.String(), "shared hourly message count unavailable") {
		t.Errorf("the unreachable shared count was not logged:\n%s", h.logs)
	}
}
