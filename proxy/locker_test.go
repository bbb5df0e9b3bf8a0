package proxy

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
)

// losingLocker hands out in-process locks, then reports them lost, as a
// shared lock store does after an outage longer than the locks' life.
type losingLocker struct {
	*MemoryLocker
	lost atomic.Bool
}

func (l *losingLocker) Held(context.Context, string) (bool, error) { return !l.lost.Load(), nil }

func TestLostLockDeletesNothing(t *testing.T) {
	e := newEnv(t, envOptions{})
	locker := &losingLocker{MemoryLocker: NewMemoryLocker()}
	e.gw.SetLocker(locker)
	e.deliver("alice@example.com", corpus...)
	n := e.count("alice@example.com")

	c := e.login("alice", localPassword)
	c.Dele(1)
	locker.lost.Store(true)
	err := c.Quit()
	if err == nil || !strings.Contains(err.Error(), "[SYS/TEMP]") {
		t.Fatalf("QUIT after the lock was lost: %v, want -ERR [SYS/TEMP]", err)
	}
	if got := e.count("alice@example.com"); got != n {
		t.Fatalf("%d messages left of %d: a session without its lock deleted", got, n)
	}

	// While the lock holds, deletes apply.
	locker.lost.Store(false)
	c = e.login("alice", localPassword)
	c.Dele(1)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.count("alice@example.com") == n-1 })
}
