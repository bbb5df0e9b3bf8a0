package submission

import (
	"sync"
	"time"
)

// rateLimit counts the messages each account relayed in the last hour.
type rateLimit struct {
	perHour int // <= 0: no limit
	mu      sync.Mutex
	sent    map[string][]time.Time // oldest first
	now     func() time.Time
}

func newRateLimit(perHour int) *rateLimit {
	if perHour == 0 {
		perHour = DefaultMessagesPerHour
	}
	return &rateLimit{perHour: perHour, sent: make(map[string][]time.Time), now: time.Now}
}

// allow tells whether the account may send one more message now.
func (r *rateLimit) allow(key string) bool {
	if r.perHour <= 0 {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.prune(key)) < r.perHour
}

// add counts a message the upstream accepted.
func (r *rateLimit) add(key string) {
	if r.perHour <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent[key] = append(r.prune(key), r.now())
}

func (r *rateLimit) prune(key string) []time.Time {
	times := r.sent[key]
	cut := r.now().Add(-time.Hour)
	i := 0
	for i < len(times) && !times[i].After(cut) {
		i++
	}
	times = times[i:]
	if len(times) == 0 {
		delete(r.sent, key)
		return nil
	}
	r.sent[key] = times
	return times
}
