package redisstate

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/state/guard"
	"github.com/pop3gw/gateway/internal/testkit/redistest"
)

var testGuardOptions = guard.Options{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond, Window: time.Minute}

func TestDelayFor(t *testing.T) {
	const base, limit = 10 * time.Millisecond, 80 * time.Millisecond
	for n, want := range map[int]time.Duration{
		-1: 0, 0: 0, 1: 10 * time.Millisecond, 2: 20 * time.Millisecond,
		3: 40 * time.Millisecond, 4: 80 * time.Millisecond, 5: limit, 63: limit, 64: limit, 1 << 40: limit,
	} {
		if got := guard.DelayFor(n, base, limit); got != want {
			t.Errorf("DelayFor(%d) = %v, want %v", n, got, want)
		}
	}
	if got := guard.DelayFor(70, time.Second, time.Duration(1<<62)); got != 1<<62 {
		t.Errorf("DelayFor overflowed: %v", got)
	}
}

// Failures counted through one replica slow down logins through another,
// and a success through either clears them.
func TestGuardShared(t *testing.T) {
	addr := redistest.Start(t)
	ga := replica(t, addr, time.Second, nil).Guard(testGuardOptions)
	gb := replica(t, addr, time.Second, nil).Guard(testGuardOptions)
	ctx := context.Background()

	for i := range 6 {
		want := guard.DelayFor(i, testGuardOptions.Base, testGuardOptions.Max)
		if got := gb.Delay(ctx, "192.0.2.1", "alice"); got != want {
			t.Errorf("after %d failures: Delay = %v, want %v", i, got, want)
		}
		ga.Failed(ctx, "192.0.2.1", "alice")
	}
	// 6 failures: capped at Max.
	if got := gb.Delay(ctx, "192.0.2.1", "alice"); got != testGuardOptions.Max {
		t.Errorf("capped Delay = %v, want %v", got, testGuardOptions.Max)
	}
	// Either counter decides.
	if got := gb.Delay(ctx, "192.0.2.99", "alice"); got != testGuardOptions.Max {
		t.Errorf("same user, other address: Delay = %v", got)
	}
	if got := gb.Delay(ctx, "192.0.2.1", "bob"); got != testGuardOptions.Max {
		t.Errorf("same address, other user: Delay = %v", got)
	}
	if got := gb.Delay(ctx, "192.0.2.99", "bob"); got != 0 {
		t.Errorf("unrelated address and user: Delay = %v", got)
	}
	// The larger counter wins.
	gb.Failed(ctx, "192.0.2.99", "bob")
	if got := ga.Delay(ctx, "192.0.2.99", "alice"); got != testGuardOptions.Max {
		t.Errorf("larger counter: Delay = %v", got)
	}

	gb.Succeeded(ctx, "192.0.2.1", "alice")
	if got := ga.Delay(ctx, "", "alice"); got != 0 {
		t.Errorf("after Succeeded via B: user Delay via A = %v, want 0", got)
	}
	// The address keeps its failures: a success says nothing of them.
	if got := ga.Delay(ctx, "192.0.2.1", ""); got != testGuardOptions.Max {
		t.Errorf("Succeeded cleared the address: Delay = %v", got)
	}
	if got := ga.Delay(ctx, "192.0.2.99", "bob"); got != testGuardOptions.Base {
		t.Errorf("Succeeded cleared others' counters: Delay = %v", got)
	}
}

// TestGuardQueuesAcrossReplicas: attempts booked at once through two
// replicas get slots one delay apart, and a success on another account
// leaves the address's queue as it was.
func TestGuardQueuesAcrossReplicas(t *testing.T) {
	addr := redistest.Start(t)
	opts := guard.Options{Base: time.Second, Max: time.Second, Window: time.Minute}
	ga := replica(t, addr, time.Second, nil).Guard(opts)
	gb := replica(t, addr, time.Second, nil).Guard(opts)
	ctx := context.Background()
	if got := ga.Reserve(ctx, "192.0.2.1", "alice"); got != 0 {
		t.Fatalf("first attempt waits %v", got)
	}
	ga.Failed(ctx, "192.0.2.1", "alice")
	gb.Succeeded(ctx, "192.0.2.1", "mallory") // the guesser's own account

	const n = 6
	waits := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		g := ga
		if i%2 == 1 {
			g = gb
		}
		wg.Go(func() { waits[i] = g.Reserve(ctx, "192.0.2.1", fmt.Sprintf("user%d", i)) })
	}
	wg.Wait()
	slices.Sort(waits)
	// Slots are exactly a second apart; each wait is measured from its own
	// call, a few milliseconds apart at most.
	const slack = 500 * time.Millisecond
	for i, w := range waits {
		if want := time.Duration(i+1) * time.Second; w < want-slack || w > want {
			t.Errorf("waits %v: slot %d is %v, want about %v", waits, i, w, want)
		}
	}
	if got := gb.Reserve(ctx, "192.0.2.2", "bob"); got != 0 {
		t.Errorf("another address waits %v", got)
	}
	// A user's queue holds its owner back by at most Max, whatever the
	// guesses from other addresses booked.
	ga.Failed(ctx, "198.51.100.1", "dave")
	for i := range 10 {
		gb.Reserve(ctx, fmt.Sprintf("198.51.100.%d", i+2), "dave")
	}
	if got := ga.Reserve(ctx, "203.0.113.1", "dave"); got > opts.Max {
		t.Errorf("the owner waits %v behind guesses from elsewhere, want at most %v", got, opts.Max)
	}
}

func TestGuardWindow(t *testing.T) {
	addr := redistest.Start(t)
	const window = 300 * time.Millisecond
	opts := testGuardOptions
	opts.Window = window
	g := replica(t, addr, time.Second, nil).Guard(opts)
	ctx := context.Background()

	g.Failed(ctx, "192.0.2.1", "alice")
	time.Sleep(window / 2)
	g.Failed(ctx, "192.0.2.1", "alice") // extends the window
	last := time.Now()
	if got := g.Delay(ctx, "192.0.2.1", "alice"); got != 2*opts.Base {
		t.Fatalf("Delay = %v, want %v", got, 2*opts.Base)
	}
	ttl, err := raw(t, addr).PTTL(ctx, "pop3gw:guard:ip:192.0.2.1").Result()
	if err != nil || ttl <= 0 || ttl > window {
		t.Errorf("counter TTL = %v, %v; want in (0, %v]", ttl, err, window)
	}
	for g.Delay(ctx, "192.0.2.1", "alice") != 0 {
		if time.Since(last) > window+time.Second {
			t.Fatal("counters did not expire")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(last); d < window*2/3 {
		t.Errorf("counters expired %v after the last failure, window %v", d, window)
	}
	// A fresh count starts at one.
	g.Failed(ctx, "192.0.2.1", "alice")
	if got := g.Delay(ctx, "192.0.2.1", "alice"); got != opts.Base {
		t.Errorf("after expiry and one failure: Delay = %v, want %v", got, opts.Base)
	}
}

func TestGuardEmptyUser(t *testing.T) {
	addr := redistest.Start(t)
	s := replica(t, addr, time.Second, nil)
	g := s.Guard(testGuardOptions)
	ctx := context.Background()

	g.Failed(ctx, "192.0.2.1", "")
	g.Failed(ctx, "192.0.2.1", "")
	keys, err := raw(t, addr).Keys(ctx, "pop3gw:guard:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "pop3gw:guard:ip:192.0.2.1" {
		t.Errorf("keys = %q, want only the address counter", keys)
	}
	if got := g.Delay(ctx, "192.0.2.1", ""); got != 2*testGuardOptions.Base {
		t.Errorf("Delay = %v", got)
	}
	if got := g.Delay(ctx, "192.0.2.1", "alice"); got != 2*testGuardOptions.Base {
		t.Errorf("Delay with a user = %v", got)
	}
	if got := g.Delay(ctx, "192.0.2.2", ""); got != 0 {
		t.Errorf("other address: Delay = %v", got)
	}
	// Nothing to count or ask.
	g.Failed(ctx, "", "")
	if got := g.Delay(ctx, "", ""); got != 0 {
		t.Errorf("no address or user: Delay = %v", got)
	}
	g.Succeeded(ctx, "192.0.2.1", "")
	if got := g.Delay(ctx, "192.0.2.1", ""); got != 2*testGuardOptions.Base {
		t.Errorf("after Succeeded without a user: Delay = %v, want the address's", got)
	}
}

func TestGuardKeyPrefix(t *testing.T) {
	addr := redistest.Start(t)
	ctx := context.Background()
	s1, err := New(ctx, Options{Addr: addr, KeyPrefix: "one:"})
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := New(ctx, Options{Addr: addr, KeyPrefix: "two:"})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	s1.Guard(testGuardOptions).Failed(ctx, "192.0.2.1", "alice")
	if got := s2.Guard(testGuardOptions).Delay(ctx, "192.0.2.1", "alice"); got != 0 {
		t.Errorf("other prefix sees the failure: Delay = %v", got)
	}
	r1, ok, err := s1.Lock(ctx, "alice")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	defer r1()
	r2, ok, err := s2.Lock(ctx, "alice")
	if err != nil || !ok {
		t.Fatalf("other prefix: lock not taken: %v", err)
	}
	r2()
}
