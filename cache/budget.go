package cache

import "sync"

// Budget bounds the bytes a gateway holds outside the cache: bodies being
// read whole before RETR answers, bodies fetched ahead until the cache
// takes them, and remembered mailbox listings. The cache bounds what it
// keeps; the budget bounds the rest, so the two together bound the memory
// that grows with the number of sessions and the size of their messages.
//
// Reserve never waits: a caller refused a reservation streams instead of
// holding, or does not fetch ahead. Nothing ever needs a reservation to
// give one back, so the budget cannot deadlock.
//
// A nil *Budget has no limit and counts nothing.
type Budget struct {
	limit int64

	mu      sync.Mutex
	used    int64
	high    int64
	refused int64
}

// NewBudget returns a budget of limit bytes; 0 refuses every reservation.
func NewBudget(limit int64) *Budget {
	return &Budget{limit: max(limit, 0)}
}

// Reserve takes n bytes of the budget if they are free, and reports
// whether it did. A reservation of 0 bytes always succeeds.
func (b *Budget) Reserve(n int64) bool {
	if b == nil || n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		b.refused++
		return false
	}
	b.used += n
	b.high = max(b.high, b.used)
	return true
}

// Release gives back n bytes reserved before.
func (b *Budget) Release(n int64) {
	if b == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	b.used = max(b.used-n, 0)
	b.mu.Unlock()
}

// Limit is the size of the budget; -1 for a nil budget, which has none.
func (b *Budget) Limit() int64 {
	if b == nil {
		return -1
	}
	return b.limit
}

// BudgetStats are a budget's counters.
type BudgetStats struct {
	Limit     int64
	InUse     int64 // reserved now
	HighWater int64 // the most ever reserved at once
	Refused   int64 // reservations refused for want of room
}

// Stats returns the current counters.
func (b *Budget) Stats() BudgetStats {
	if b == nil {
		return BudgetStats{Limit: -1}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return BudgetStats{Limit: b.limit, InUse: b.used, HighWater: b.high, Refused: b.refused}
}
