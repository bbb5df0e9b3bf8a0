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

func TestSucceededResetsTheUserOnly(t *testing.T) {
	m, _ := newTestMemory(Options{})
	m.Failed(ctx, "192.0.2.1", "alice")
	m.Failed(ctx, "192.0.2.1", "alice")
	// A success on another account, the guesser's own, from the same
	// address.
	m.Succeeded(ctx, "192.0.2.1", "mallory")
	if got := m.Delay(ctx, "192.0.2.1", ""); got != 2*time.Second {
		t.Fatalf("address delay after another account's success = %v, want 2s", got)
	}
	m.Succeeded(ctx, "192.0.2.1", "alice")
	if got := m.Delay(ctx, "", "alice"); got != 0 {
		t.Fatalf("user delay after success = %v", got)
	}
	if got := m.Delay(ctx, "192.0.2.1", ""); got != 2*time.Second {
		t.Fatalf("address delay after the user's success = %v, want 2s", got)
	}
	m.Failed(ctx, "192.0.2.9", "alice")
	if got := m.Delay(ctx, "", "alice"); got != time.Second {
		t.Fatalf("delay after a new failure = %v, want the base again", got)
	}
}

// TestReserveQueues: attempts booked together are spaced by the delay,
// not all let through when the first delay ends.
func TestReserveQueues(t *testing.T) {
	m, clk := newTestMemory(Options{Base: time.Second, Max: time.Second})
	if got := m.Reserve(ctx, "192.0.2.1", "alice"); got != 0 {
		t.Fatalf("first attempt waits %v", got)
	}
	m.Failed(ctx, "192.0.2.1", "alice")
	// Five connections from the address, for five names, at once.
	for i, want := range []time.Duration{1, 2, 3, 4, 5} {
		if got := m.Reserve(ctx, "192.0.2.1", fmt.Sprintf("user%d", i)); got != want*time.Second {
			t.Fatalf("attempt %d waits %v, want %v", i, got, want*time.Second)
		}
	}
	// Another address is not in that queue.
	if got := m.Reserve(ctx, "192.0.2.2", "bob"); got != 0 {
		t.Fatalf("other address waits %v", got)
	}
	// The queue drains with time.
	clk.advance(10 * time.Second)
	if got := m.Reserve(ctx, "192.0.2.1", "carol"); got != 0 {
		t.Fatalf("after the queue drained: wait %v", got)
	}
	// A user's queue holds its owner back by at most Max, whatever the
	// guesses from other addresses booked.
	m.Failed(ctx, "198.51.100.1", "dave")
	for i := range 10 {
		m.Reserve(ctx, fmt.Sprintf("198.51.100.%d", i+2), "dave")
	}
	if got := m.Reserve(ctx, "203.0.113.1", "dave"); got > time.Second {
		t.Fatalf("the owner waits %v behind guesses from elsewhere, want at most Max", got)
	}
}

// TestFailureAfterBookingsKeepsTheQueue: a failure does not pull the next
// allowed time back before slots already booked.
func TestFailureAfterBookingsKeepsTheQueue(t *testing.T) {
	m, _ := newTestMemory(Options{Base: time.Second, Max: time.Second})
	m.Failed(ctx, "192.0.2.1", "")
	for range 3 {
		m.Reserve(ctx, "192.0.2.1", "")
	}
	m.Failed(ctx, "192.0.2.1", "")
	if got := m.Reserve(ctx, "192.0.2.1", ""); got != 4*time.Second {
		t.Fatalf("wait %v, want 4s", got)
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
				m.Reserve(ctx, "192.0.2.1", user)
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
