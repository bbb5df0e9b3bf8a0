package proxy

import (
	"context"
	"sync"
)

// Locker holds the maildrop locks behind [IN-USE] (RFC 2449 §8.1.2): a
// maildrop has one session at a time (RFC 1939 §4).
type Locker interface {
	// Lock takes the lock named key; ok is false when another session
	// holds it. release gives it back and may be called more than once.
	Lock(ctx context.Context, key string) (release func(), ok bool, err error)
}

// HeldChecker is a Locker whose locks can be lost while held (one shared
// through a server that may forget them). A session asks before it applies
// deletes, and deletes nothing if its lock is gone.
type HeldChecker interface {
	Held(ctx context.Context, key string) (bool, error)
}

// MemoryLocker is a Locker for one process.
type MemoryLocker struct {
	mu    sync.Mutex
	locks map[string]*struct{}
}

// NewMemoryLocker returns an empty MemoryLocker.
func NewMemoryLocker() *MemoryLocker {
	return &MemoryLocker{locks: make(map[string]*struct{})}
}

// Lock implements Locker.
func (l *MemoryLocker) Lock(_ context.Context, key string) (func(), bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.locks[key] != nil {
		return nil, false, nil
	}
	held := &struct{}{}
	l.locks[key] = held
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		// Only the holder's own lock is removed, however often it is
		// released.
		if l.locks[key] == held {
			delete(l.locks, key)
		}
	}, true, nil
}
