package guard

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/pop3"
)

var _ pop3.LoginGuard = (*Memory)(nil)

// clock is a settable time source for the window tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestMemory(opts Options) (*Memory, *clock) {
	m := NewMemory(opts)
	clk := &clock{t: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
	m.now = clk.now
	return m, clk
}

var ctx = context.Background()

func TestDefaults(t *testing.T) {
	m := NewMemory(Options{})
	want := Options{Base: time.Second, Max: 15 * time.Second, Window: 15 * time.Minute, MaxEntries: 100000}
	if m.opts != want {
		t.Fatalf("options = %+v, want %+v", m.opts, want)
	}
}

func TestDelayGrowsAndCaps(t *testing.T) {
	m, _ := newTestMemory(Options{Base: time.Second, Max: 15 * time.Second})
	for i, want := range []time.Duration{0, 1, 2, 4, 8, 15, 15, 15} {
		if got := m.Delay(ctx, "192.0.2.1", "alice"); got != want*time.Second {
			t.Fatalf("after %d failures: delay %v, want %v", i, got, want*time.Second)
		}
		m.Failed(ctx, "192.0.2.1", "alice")
	}
}

func TestDelayIsTheLargerCounter(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ip, user string
		want     time.Duration
	}{
		{"same address, other user", "192.0.2.1", "bob", 4 * time.Second},
		{"other address, same user", "192.0.2.9", "alice", 2 * time.Second},
		{"address only", "192.0.2.1", "", 4 * time.Second},
		{"strangers", "192.0.2.9", "bob", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := newTestMemory(Options{})
			m.Failed(ctx, "192.0.2.1", "alice")
			m.Failed(ctx, "192.0.2.1", "alice")
			m.Failed(ctx, "192.0.2.1", "") // a failed SASL exchange: address only
			if got := m.Delay(ctx, tc.ip, tc.user); got != tc.want {
				t.Fatalf("Delay(%q, %q) = %v, want %v", tc.ip, tc.user, got, tc.want)
			}
		})
	}
}

func TestNoOverflow(t *testing.T) {
	for _, tc := range []struct {
		name      string
		base, max time.Duration
		failures  int
	}{
		{"many failures", time.Second, 15 * time.Second, 200},
		{"huge max", time.Second, 1 << 62, 100},
		{"base over max", time.Minute, time.Second, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := newTestMemory(Options{Base: tc.base, Max: tc.max})
			for range tc.failures {
				m.Failed(ctx, "192.0.2.1", "alice")
			}
			if got := m.Delay(ctx, "192.0.2.1", "alice"); got != tc.max {
				t.Fatalf("delay %v, want the cap %v", got, tc.max)
			}
		})
	}
}

func TestSucceededResets(t *testing.T) {
	m, _ := newTestMemory(Options{})
	m.Failed(ctx, "192.0.2.1", "alice")
	m.Failed(ctx, "192.0.2.1", "alice")
	m.Succeeded(ctx, "192.0.2.1", "alice")
	if got := m.Delay(ctx, "192.0.2.1", "alice"); got != 0 {
		t.Fatalf("delay after success = %v", got)
	}
	m.Failed(ctx, "192.0.2.1", "alice")
	if got := m.Delay(ctx, "192.0.2.1", "alice"); got != time.Second {
		t.Fatalf("delay after a new failure = %v, want the base again", got)
	}
}

func TestWindowExpiry(t *testing.T) {
	m, clk := newTestMemory(Options{Window: time.Minute})
	m.Failed(ctx, "192.0.2.1", "alice")
	m.Failed(ctx, "192.0.2.1", "alice")
	clk.advance(59 * time.Second)
	if got := m.Delay(ctx, "192.0.2.1", "alice"); got != 2*time.Second {
		t.Fatalf("delay inside the window = %v", got)
	}
	// A failure restarts the window from now.
	m.Failed(ctx, "192.0.2.1", "alice")
	clk.advance(59 * time.Second)
	if got := m.Delay(ctx, "192.0.2.1", "alice"); got != 4*time.Second {
		t.Fatalf("delay inside the renewed window = %v", got)
	}
	clk.advance(time.Second)
	if got := m.Delay(ctx, "192.0.2.1", "alice"); got != 0 {
		t.Fatalf("delay after the window = %v", got)
	}
	if m.ips.Len() != 0 || m.users.Len() != 0 {
		t.Fatalf("expired entries kept: %d addresses, %d users", m.ips.Len(), m.users.Len())
	}
	// Counting starts over after expiry.
	m.Failed(ctx, "192.0.2.1", "alice")
	if got := m.Delay(ctx, "192.0.2.1", "alice"); got != time.Second {
		t.Fatalf("delay after a failure past the window = %v, want the base", got)
	}
}

func TestBoundedEntries(t *testing.T) {
	m, _ := newTestMemory(Options{MaxEntries: 10})
	m.Failed(ctx, "192.0.2.1", "victim")
	for i := range 1000 {
		m.Failed(ctx, "192.0.2.2", fmt.Sprintf("user%d", i))
		m.Failed(ctx, fmt.Sprintf("198.51.100.%d", i%250), "")
	}
	if m.ips.Len() > 10 || m.users.Len() > 10 {
		t.Fatalf("tables grew to %d addresses, %d users; bound is 10", m.ips.Len(), m.users.Len())
	}
	// The least recently failed entries went first.
	if got := m.Delay(ctx, "203.0.113.1", "victim"); got != 0 {
		t.Fatalf("oldest user entry kept: delay %v", got)
	}
	if got := m.Delay(ctx, "203.0.113.1", "user999"); got != time.Second {
		t.Fatalf("newest user entry lost: delay %v", got)
	}
}

func TestConcurrentUse(t *testing.T) {
	m := NewMemory(Options{Max: time.Hour})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			user := fmt.Sprintf("user%d", g)
			for range 100 {
				m.Delay(ctx, "192.0.2.1", user)
				m.Failed(ctx, "192.0.2.1", user)
			}
			m.Succeeded(ctx, "192.0.2.9", user)
		})
	}
	wg.Wait()
	if e, _ := m.ips.Peek("192.0.2.1"); e.failures != 800 {
		t.Fatalf("%d failures counted for the shared address, want 800", e.failures)
	}
	if got := m.Delay(ctx, "192.0.2.9", "user0"); got != 0 {
		t.Fatalf("delay after success = %v", got)
	}
}
