package submission

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// SentCounter counts the messages each account relayed in the last hour,
// for Server.MessagesPerHour. Without one the Server counts its own
// messages only; one kept in Redis is shared by replicas, so an account
// has one allowance whichever replica its devices reach.
type SentCounter interface {
	// SentLastHour is the number of messages counted for key in the hour
	// up to now.
	SentLastHour(ctx context.Context, key string) (int, error)
	// CountSent counts one message for key, now.
	CountSent(ctx context.Context, key string) error
}

// rateLimit holds the hourly message limit. It always counts in the
// process too: a shared counter that cannot be asked leaves the limit to
// this replica's own count (logged) rather than stopping mail.
type rateLimit struct {
	perHour int // <= 0: no limit
	shared  SentCounter
	log     *slog.Logger
	mu      sync.Mutex
	sent    map[string][]time.Time // oldest first
	now     func() time.Time
}

func newRateLimit(perHour int, shared SentCounter, log *slog.Logger) *rateLimit {
	if perHour == 0 {
		perHour = DefaultMessagesPerHour
	}
	return &rateLimit{perHour: perHour, shared: shared, log: log, sent: make(map[string][]time.Time), now: time.Now}
}

// allow tells whether the account may send one more message now.
func (r *rateLimit) allow(ctx context.Context, key string) bool {
	if r.perHour <= 0 {
		return true
	}
	if r.shared != nil {
		n, err := r.shared.SentLastHour(ctx, key)
		if err == nil {
			return n < r.perHour
		}
		r.log.Warn("shared hourly message count unavailable: this replica's own count applies", "err", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.prune(key)) < r.perHour
}

// add counts a message the upstream accepted.
func (r *rateLimit) add(ctx context.Context, key string) {
	if r.perHour <= 0 {
		return
	}
	if r.shared != nil {
		if err := r.shared.CountSent(ctx, key); err != nil {
			r.log.Warn("shared hourly message count not updated", "err", err)
		}
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
