package proxy

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultPassthroughFailures is how many refused passthrough logins per
// minute the gateway forwards to one upstream.
const DefaultPassthroughFailures = 30

// RefusalCounter counts the refused passthrough logins forwarded to each
// upstream in the last minute, by every replica of the gateway: they all
// reach the upstream from the gateway's addresses, so one budget for all
// of them keeps the upstream's per-address penalty away however many
// replicas a guesser's logins are spread over. Upstreams are named as in
// the configuration, which replicas share.
type RefusalCounter interface {
	// RefusedLastMinute is the number of refusals counted for the
	// upstream in the minute up to now.
	RefusedLastMinute(ctx context.Context, upstream string) (int, error)
	// CountRefused counts one refusal for the upstream, now, and returns
	// the number in the minute up to now, this one included.
	CountRefused(ctx context.Context, upstream string) (int, error)
}

// SetRefusalCounter shares the passthrough failure budgets with other
// replicas through c (see RefusalCounter). Call it before serving.
func (g *Gateway) SetRefusalCounter(c RefusalCounter) { g.refusals = c }

// failureBudget caps the refused passthrough logins forwarded to one
// upstream. They all reach the upstream from the gateway's address, so
// past some rate an upstream that penalises addresses (Dovecot's auth
// penalty, a provider's IP block) would punish every user of the gateway
// for one guesser. Over budget, forwarded logins are refused with
// [SYS/TEMP] without asking the upstream, until the budget refills.
//
// The replica's own budget is a token bucket of perMinute tokens,
// refilled evenly over a minute. With a RefusalCounter the budget is the
// replicas' together: at most perMinute refusals counted in the last
// minute. A counter that cannot be asked leaves the budget to the
// replica's own bucket (logged) rather than stopping logins; the bucket
// always counts.
type failureBudget struct {
	perMinute int
	now       func() time.Time
	upstream  string
	shared    RefusalCounter // nil: this replica's own
	log       *slog.Logger

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newFailureBudget(perMinute int, upstream string, shared RefusalCounter, log *slog.Logger) *failureBudget {
	return &failureBudget{perMinute: perMinute, now: time.Now, tokens: float64(perMinute), upstream: upstream, shared: shared, log: log}
}

// refill adds the tokens earned since the last call; b.mu is held.
func (b *failureBudget) refill() {
	now := b.now()
	if !b.last.IsZero() {
		b.tokens = min(float64(b.perMinute), b.tokens+now.Sub(b.last).Minutes()*float64(b.perMinute))
	}
	b.last = now
}

// allow tells whether a forwarded login may ask the upstream.
func (b *failureBudget) allow(ctx context.Context) bool {
	if b == nil {
		return true
	}
	if b.shared != nil {
		n, err := b.shared.RefusedLastMinute(ctx, b.upstream)
		if err == nil {
			return n < b.perMinute
		}
		b.log.Warn("shared count of refused passthrough logins unavailable: this replica's own budget applies", "err", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	return b.tokens >= 1
}

// spend counts a refused forwarded login and tells whether that used up
// the budget.
func (b *failureBudget) spend(ctx context.Context) (exhausted bool) {
	if b == nil {
		return false
	}
	b.mu.Lock()
	b.refill()
	b.tokens = max(b.tokens-1, 0)
	exhausted = b.tokens < 1
	b.mu.Unlock()
	if b.shared != nil {
		n, err := b.shared.CountRefused(ctx, b.upstream)
		if err == nil {
			return n >= b.perMinute
		}
		b.log.Warn("shared count of refused passthrough logins not updated", "err", err)
	}
	return exhausted
}

// passthroughBudget returns the failure budget of up, shared by every configuration
// that names the upstream alike, or nil for no limit.
func (g *Gateway) passthroughBudget(up *Upstream) *failureBudget {
	n := up.PassthroughFailures
	if n == 0 {
		n = DefaultPassthroughFailures
	}
	if n < 0 {
		return nil
	}
	g.budgetsMu.Lock()
	defer g.budgetsMu.Unlock()
	b := g.budgets[up.Name]
	if b == nil || b.perMinute != n {
		b = newFailureBudget(n, up.Name, g.refusals, g.log)
		if g.budgets == nil {
			g.budgets = make(map[string]*failureBudget)
		}
		g.budgets[up.Name] = b
	}
	return b
}
