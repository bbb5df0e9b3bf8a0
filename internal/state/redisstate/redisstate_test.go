package redisstate

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pop3gw/gateway/internal/testkit/redistest"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
)

var (
	_ proxy.Locker      = (*Store)(nil)
	_ proxy.HeldChecker = (*Store)(nil)
	// The package stays free of proxy, whose tests use it.
	_ proxy.GenerationStore = (*Store)(nil)
	_ proxy.RefusalCounter  = (*Store)(nil)
	_ proxy.SizeStore       = (*Store)(nil)
	_ pop3.LoginGuard       = (*Guard)(nil)
)

// replica connects a Store to addr, as one gateway replica would, with
// its log in buf (when not nil).
func replica(t *testing.T, addr string, ttl time.Duration, buf *testenv.Buffer) *Store {
	t.Helper()
	opts := Options{Addr: addr, LockTTL: ttl, Logger: slog.New(slog.DiscardHandler)}
	if buf != nil {
		opts.Logger = slog.New(slog.NewTextHandler(buf, nil))
	}
	s, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// raw returns a plain client of the test server, to look at the keys.
func raw(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	return c
}

func tryLock(t *testing.T, s *Store, key string) (func(), bool) {
	t.Helper()
	release, ok, err := s.Lock(context.Background(), key)
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if ok != (release != nil) {
		t.Fatalf("Lock: ok = %v but release = %v", ok, release != nil)
	}
	return release, ok
}

func TestLockTwoReplicas(t *testing.T) {
	addr := redistest.Start(t)
	a := replica(t, addr, time.Second, nil)
	b := replica(t, addr, time.Second, nil)

	relA, ok := tryLock(t, a, "alice")
	if !ok {
		t.Fatal("A: lock not taken")
	}
	if _, ok := tryLock(t, b, "alice"); ok {
		t.Fatal("B took the lock that A holds")
	}
	if _, ok := tryLock(t, a, "alice"); ok {
		t.Fatal("A took its own lock a second time")
	}
	relOther, ok := tryLock(t, b, "bob")
	if !ok {
		t.Fatal("B: lock of another maildrop not taken")
	}
	defer relOther()

	relA()
	relB, ok := tryLock(t, b, "alice")
	if !ok {
		t.Fatal("B: lock not taken after A released it")
	}
	relA() // again: must not remove B's lock
	if _, ok := tryLock(t, a, "alice"); ok {
		t.Fatal("a second release by A removed B's lock")
	}
	relB()
	relB()
	relA2, ok := tryLock(t, a, "alice")
	if !ok {
		t.Fatal("A: lock not taken after B released it")
	}
	relA2()
}

// A release that comes after the lock expired and was taken by another
// replica leaves the new holder's lock in place.
func TestStaleReleaseKeepsOthersLock(t *testing.T) {
	addr := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	a := replica(t, addr, ttl, nil)
	a.noRenew = true
	b := replica(t, addr, ttl, nil)

	relA, ok := tryLock(t, a, "alice")
	if !ok {
		t.Fatal("A: lock not taken")
	}
	var relB func()
	testenv.WaitFor(t, func() bool {
		relB, ok = tryLock(t, b, "alice")
		return ok
	})
	defer relB()
	relA()
	if _, ok := tryLock(t, a, "alice"); ok {
		t.Fatal("A's stale release deleted B's lock")
	}
}

func TestLockRenewal(t *testing.T) {
	addr := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	var buf testenv.Buffer
	a := replica(t, addr, ttl, &buf)
	b := replica(t, addr, ttl, nil)

	relA, ok := tryLock(t, a, "alice")
	if !ok {
		t.Fatal("A: lock not taken")
	}
	for end := time.Now().Add(4 * ttl); time.Now().Before(end); time.Sleep(ttl / 6) {
		if rel, ok := tryLock(t, b, "alice"); ok {
			rel()
			t.Fatal("B took the lock while A held and renewed it")
		}
	}
	relA()
	relB, ok := tryLock(t, b, "alice")
	if !ok {
		t.Fatal("B: lock not taken after A released it")
	}
	relB()
	if s := buf.String(); s != "" {
		t.Errorf("unexpected log output:\n%s", s)
	}
}

// A replica that dies holding a lock stops renewing it; the lock expires
// and another replica gets it about LockTTL later.
func TestDeadReplicaLockExpires(t *testing.T) {
	addr := redistest.Start(t)
	const ttl = 400 * time.Millisecond
	a := replica(t, addr, ttl, nil)
	b := replica(t, addr, ttl, nil)

	if _, ok := tryLock(t, a, "alice"); !ok {
		t.Fatal("A: lock not taken")
	}
	start := time.Now()
	if err := a.Close(); err != nil { // renewal stops, the key stays
		t.Fatal(err)
	}
	if _, ok := tryLock(t, b, "alice"); ok {
		t.Fatal("closing A deleted its lock at once")
	}
	var relB func()
	var ok bool
	for {
		if relB, ok = tryLock(t, b, "alice"); ok {
			break
		}
		if time.Since(start) > ttl+time.Second {
			t.Fatal("B did not get the dead replica's lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer relB()
	if d := time.Since(start); d < ttl/2 {
		t.Errorf("lock free after %v, before LockTTL %v", d, ttl)
	}
	if _, _, err := a.Lock(context.Background(), "bob"); err == nil {
		t.Error("Lock on a closed Store: no error")
	}
}

// A renewal that finds the lock taken over logs one warning and stops.
func TestLostLockWarnsOnce(t *testing.T) {
	addr := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	var buf testenv.Buffer
	a := replica(t, addr, ttl, &buf)
	rc := raw(t, addr)

	relA, ok := tryLock(t, a, "alice")
	if !ok {
		t.Fatal("A: lock not taken")
	}
	defer relA()
	// Another holder's token replaces A's, as after a long Redis outage.
	if err := rc.Set(context.Background(), a.lockKey("alice"), "other", 0).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, func() bool { return strings.Contains(buf.String(), "taken over") })
	time.Sleep(ttl) // further renewals would warn again
	if n := strings.Count(buf.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, buf.String())
	}
	if strings.Contains(buf.String(), "alice") {
		t.Errorf("log names the maildrop:\n%s", buf.String())
	}
	relA()
	if v, err := rc.Get(context.Background(), a.lockKey("alice")).Result(); err != nil || v != "other" {
		t.Errorf("after release, lock = %q, %v; want the other holder's", v, err)
	}
}

func TestLockConcurrent(t *testing.T) {
	addr := redistest.Start(t)
	stores := []*Store{replica(t, addr, time.Second, nil), replica(t, addr, time.Second, nil)}
	var (
		mu       sync.Mutex
		winners  int
		releases []func()
		wg       sync.WaitGroup
	)
	for i := range 20 {
		wg.Go(func() {
			rel, ok, err := stores[i%2].Lock(context.Background(), "alice")
			if err != nil {
				t.Error(err)
				return
			}
			if ok {
				mu.Lock()
				winners++
				releases = append(releases, rel)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if winners != 1 {
		t.Errorf("%d sessions got the lock, want 1", winners)
	}
	for _, rel := range releases {
		rel()
	}
}

// Neither maildrop keys nor user names appear in Redis keys or values.
func TestKeysHoldNoPlaintext(t *testing.T) {
	addr := redistest.Start(t)
	var buf testenv.Buffer
	s := replica(t, addr, time.Second, &buf)
	ctx := context.Background()

	rel, ok := tryLock(t, s, "alice@example.org")
	if !ok {
		t.Fatal("lock not taken")
	}
	defer rel()
	g := s.Guard(testGuardOptions)
	g.Failed(ctx, "192.0.2.7", "bob@example.org")

	rc := raw(t, addr)
	keys, err := rc.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"pop3gw:lock:" + s.hash("alice@example.org"):     true,
		"pop3gw:guard:ip:192.0.2.7":                      true,
		"pop3gw:guard:user:" + s.hash("bob@example.org"): true,
		"pop3gw:namekey":                                 true,
	}
	if len(keys) != len(want) {
		t.Errorf("keys %q, want %d", keys, len(want))
	}
	var scanned []string
	iter := rc.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		scanned = append(scanned, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range scanned {
		if !want[k] {
			t.Errorf("unexpected key %q", k)
		}
		v, _ := rc.Get(ctx, k).Result()
		for _, name := range []string{"alice", "bob", "example.org"} {
			if strings.Contains(k, name) || strings.Contains(v, name) {
				t.Errorf("key %q = %q contains %q", k, v, name)
			}
		}
	}
	if buf.String() != "" {
		t.Errorf("unexpected log output:\n%s", buf.String())
	}
}

// When Redis goes away, Lock fails (closed) and promptly, and the guard
// lets logins through without delay.
func TestRedisStopped(t *testing.T) {
	addr, stop := redistest.StartStoppable(t)
	var buf testenv.Buffer
	s := replica(t, addr, 300*time.Millisecond, &buf)
	g := s.Guard(testGuardOptions)
	ctx := context.Background()
	g.Failed(ctx, "192.0.2.7", "alice")
	if d := g.Delay(ctx, "192.0.2.7", "alice"); d == 0 {
		t.Fatal("no delay after a failure")
	}
	held, ok := tryLock(t, s, "held")
	if !ok {
		t.Fatal("lock not taken")
	}
	stop()

	// Bounded by the client's timeouts; on loopback a refused connection
	// is reported at once.
	const prompt = 3 * time.Second
	start := time.Now()
	rel, ok, err := s.Lock(ctx, "alice")
	if err == nil || ok || rel != nil {
		t.Fatalf("Lock with Redis stopped = %v, %v, %v; want an error", rel != nil, ok, err)
	}
	if d := time.Since(start); d > prompt {
		t.Errorf("Lock took %v", d)
	}

	start = time.Now()
	if d := g.Delay(ctx, "192.0.2.7", "alice"); d != 0 {
		t.Errorf("Delay with Redis stopped = %v, want 0", d)
	}
	g.Failed(ctx, "192.0.2.7", "alice")
	g.Succeeded(ctx, "192.0.2.7", "alice")
	if d := time.Since(start); d > prompt {
		t.Errorf("guard calls took %v", d)
	}
	if err := s.Ping(ctx); err == nil {
		t.Error("Ping with Redis stopped: no error")
	}

	start = time.Now()
	held()
	if d := time.Since(start); d > releaseTimeout+time.Second {
		t.Errorf("release took %v", d)
	}

	log := buf.String()
	if n := strings.Count(log, "login guard cannot use Redis"); n != 1 {
		t.Errorf("%d guard warnings, want 1 (rate limited):\n%s", n, log)
	}
	if strings.Contains(log, "alice") {
		t.Errorf("log names the user:\n%s", log)
	}
}

func TestNewErrorHidesPassword(t *testing.T) {
	addr, stop := redistest.StartStoppable(t)
	stop()
	start := time.Now()
	_, err := New(context.Background(), Options{Addr: addr, Password: "hunter2-secret"})
	if err == nil {
		t.Fatal("New with Redis stopped: no error")
	}
	if !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q: want the address and not the password", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("New took %v", d)
	}
}

// Redis forgets every key (a restart without persistence): a session's
// lock is taken again at the next renewal, so no second session gets it.
func TestLockRetakenAfterRedisForgets(t *testing.T) {
	addr := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	var buf testenv.Buffer
	a := replica(t, addr, ttl, &buf)
	b := replica(t, addr, ttl, nil)
	rc := raw(t, addr)

	relA, ok := tryLock(t, a, "alice")
	if !ok {
		t.Fatal("A: lock not taken")
	}
	defer relA()
	if err := rc.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, func() bool { return strings.Contains(buf.String(), "took a maildrop lock again") })
	if _, ok := tryLock(t, b, "alice"); ok {
		t.Fatal("B took the lock A still holds")
	}
	if strings.Contains(buf.String(), "level=WARN") {
		t.Errorf("warned although the lock was taken again:\n%s", buf.String())
	}
}

func TestHeld(t *testing.T) {
	addr := redistest.Start(t)
	a := replica(t, addr, time.Second, nil)
	b := replica(t, addr, time.Second, nil)
	rc := raw(t, addr)
	ctx := context.Background()

	if held, err := a.Held(ctx, "alice"); err != nil || held {
		t.Fatalf("before locking: held %v, %v", held, err)
	}
	rel, ok := tryLock(t, a, "alice")
	if !ok {
		t.Fatal("lock not taken")
	}
	if held, err := a.Held(ctx, "alice"); err != nil || !held {
		t.Fatalf("while held: %v, %v", held, err)
	}
	// Another replica never holds A's lock.
	if held, _ := b.Held(ctx, "alice"); held {
		t.Fatal("B reports A's lock as its own")
	}
	// Taken over: A no longer holds it.
	rc.Set(ctx, a.lockKey("alice"), "other", 0)
	if held, err := a.Held(ctx, "alice"); err != nil || held {
		t.Fatalf("after a takeover: %v, %v", held, err)
	}
	rel()
	if held, _ := a.Held(ctx, "alice"); held {
		t.Fatal("held after release")
	}
}

// Sizes one replica measured are the other's; an identity never measured
// has none.
func TestSizesShared(t *testing.T) {
	addr := redistest.Start(t)
	a, b := replica(t, addr, 30*time.Second, nil), replica(t, addr, 30*time.Second, nil)
	ctx := context.Background()
	if err := a.SetSizes(ctx, "md", []string{"x", "y"}, []int64{0, 150 << 20}); err != nil {
		t.Fatal(err)
	}
	sizes, err := b.Sizes(ctx, "md", []string{"y", "z", "x"})
	if err != nil || len(sizes) != 3 || sizes[0] != 150<<20 || sizes[1] != -1 || sizes[2] != 0 {
		t.Fatalf("sizes on the other replica: %v, %v", sizes, err)
	}
	if sizes, _ := b.Sizes(ctx, "other", []string{"x"}); sizes[0] != -1 {
		t.Fatal("a size is shared between maildrops")
	}
}
