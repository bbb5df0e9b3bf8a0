// Package guard slows down repeated failed POP3 logins. It counts failures
// per remote address and per user name and turns the counts into a delay
// before the next attempt, so guessing passwords gets slower with each miss
// while a client that logs in at the first try is never held up.
//
// The delay is a queue, not a wait: each key with failures has a next
// allowed time, and every attempt books the first free slot and moves that
// time on by the delay before its credentials are checked. Attempts sent
// in parallel over many connections therefore get their checks one delay
// apart, as if they had come one after the other. A success clears the
// user's counter only; the address keeps its failures until they expire,
// so logging in to one's own account between guesses resets nothing.
package guard

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Defaults for the zero values of Options.
const (
	DefaultBase       = time.Second
	DefaultMax        = 15 * time.Second
	DefaultWindow     = 15 * time.Minute
	DefaultMaxEntries = 100000
)

// Options tune a Memory guard; zero fields take the defaults.
type Options struct {
	// Base is the delay after one failure; it doubles with each further
	// failure, up to Max.
	Base, Max time.Duration
	// Window is how long a counter is kept after its last failure.
	Window time.Duration
	// MaxEntries bounds each table (addresses and user names); when one is
	// full, the least recently failed entry is forgotten first, so spraying
	// many names cannot grow memory without bound.
	MaxEntries int
}

// Memory keeps the failure counters in the process. It is safe for
// concurrent use.
type Memory struct {
	opts Options
	now  func() time.Time

	mu    sync.Mutex
	ips   *simplelru.LRU[string, entry]
	users *simplelru.LRU[string, entry]
}

type entry struct {
	failures int
	last     time.Time // time of the last failure
	next     time.Time // no attempt is checked before this
}

// maxFailures caps a counter; the delay reaches Max long before.
const maxFailures = 1 << 20

// NewMemory returns an empty guard.
func NewMemory(opts Options) *Memory {
	if opts.Base <= 0 {
		opts.Base = DefaultBase
	}
	if opts.Max <= 0 {
		opts.Max = DefaultMax
	}
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	ips, _ := simplelru.NewLRU[string, entry](opts.MaxEntries, nil) // errors only for size <= 0
	users, _ := simplelru.NewLRU[string, entry](opts.MaxEntries, nil)
	return &Memory{opts: opts, now: time.Now, ips: ips, users: users}
}

// Delay returns the spacing that the failures of ip and user call for:
// nothing before any failure, else Base doubled for each failure after the
// first, at most Max; the larger of the two counters decides. It books
// nothing: logins go through Reserve.
func (m *Memory) Delay(ctx context.Context, ip, user string) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	n := max(m.count(m.ips, ip, now), m.count(m.users, user, now))
	return DelayFor(n, m.opts.Base, m.opts.Max)
}

// Reserve books the next attempt from ip for user and returns how long it
// must wait before its credentials are checked: until the later of the
// two keys' next allowed times. Each key with failures then moves its
// next allowed time to that slot plus its own delay, so the next attempt,
// on this connection or another, queues behind this one. user may be
// empty.
//
// An address's queue has no end: it holds only its own guesses. A user's
// holds the owner back by at most Max, so guesses at one name from many
// addresses cannot lock its owner out for longer than that.
func (m *Memory) Reserve(ctx context.Context, ip, user string) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	slot := now
	type live struct {
		t   *simplelru.LRU[string, entry]
		key string
		cap bool // the user's key: its queue counts for at most Max
		e   entry
	}
	var keys []live
	for _, k := range []live{{t: m.ips, key: ip}, {t: m.users, key: user, cap: true}} {
		if m.count(k.t, k.key, now) == 0 {
			continue
		}
		k.e, _ = k.t.Peek(k.key)
		next := k.e.next
		if limit := now.Add(m.opts.Max); k.cap && next.After(limit) {
			next = limit
		}
		if next.After(slot) {
			slot = next
		}
		keys = append(keys, k)
	}
	for _, k := range keys {
		k.e.next = slot.Add(DelayFor(k.e.failures, m.opts.Base, m.opts.Max))
		k.t.Add(k.key, k.e)
	}
	return slot.Sub(now)
}

// Failed records a refused login from ip for user; an empty user counts
// for the address alone. The next attempt waits at least the new delay
// from now, or longer if attempts are already booked.
func (m *Memory) Failed(ctx context.Context, ip, user string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.add(m.ips, ip, now)
	m.add(m.users, user, now)
}

// Succeeded forgets the failures of user. Those of ip stay: a success on
// another account, perhaps the guesser's own, says nothing about the
// guesses.
func (m *Memory) Succeeded(ctx context.Context, ip, user string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if user != "" {
		m.users.Remove(user)
	}
}

// count returns the live failures of key, dropping an expired entry.
func (m *Memory) count(t *simplelru.LRU[string, entry], key string, now time.Time) int {
	if key == "" {
		return 0
	}
	e, ok := t.Peek(key)
	if !ok {
		return 0
	}
	if m.expired(e, now) {
		t.Remove(key)
		return 0
	}
	return e.failures
}

func (m *Memory) add(t *simplelru.LRU[string, entry], key string, now time.Time) {
	if key == "" {
		return
	}
	e, ok := t.Peek(key)
	if !ok || m.expired(e, now) {
		e = entry{}
	}
	e.failures = min(e.failures+1, maxFailures)
	e.last = now
	if next := now.Add(DelayFor(e.failures, m.opts.Base, m.opts.Max)); next.After(e.next) {
		e.next = next
	}
	t.Add(key, e)
}

func (m *Memory) expired(e entry, now time.Time) bool {
	return now.Sub(e.last) >= m.opts.Window
}

// DelayFor is the delay after failures failed logins: 0 for none, else
// base doubled for each failure after the first, at most max, computed
// without overflowing. Every LoginGuard implementation of the gateway
// uses it, so a delay does not depend on where the counters are kept.
func DelayFor(failures int, base, max time.Duration) time.Duration {
	if failures <= 0 {
		return 0
	}
	shift := failures - 1
	if shift >= 63 || base > max>>shift {
		return max
	}
	return base << shift
}
