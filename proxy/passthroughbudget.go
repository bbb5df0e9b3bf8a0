package proxy

import (
	"sync"
	"time"
)

// DefaultPassthroughFailures is how many refused passthrough logins per
// minute the gateway forwards to one upstream.
const DefaultPassthroughFailures = 30

// failureBudget caps the refused passthrough logins forwarded to one
// upstream. They all reach the upstream from the gateway's address, so
// past some rate an upstream that penalises addresses (Dovecot's auth
// penalty, a provider's IP block) would punish every user of the gateway
// for one guesser. Over budget, forwarded logins are refused with
// [SYS/TEMP] without asking the upstream, until the budget refills: a
// token bucket of perMinute tokens, refilled evenly over a minute.
type failureBudget struct {
	perMinute int
	now       func() time.Time

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newFailureBudget(perMinute int) *failureBudget {
	return &failureBudget{perMinute: perMinute, now: time.Now, tokens: float64(perMinute)}
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
func (b *failureBudget) allow() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	return b.tokens >= 1
}

// spend counts a refused forwarded login and tells whether that used up
// the budget.
func (b *failureBudget) spend() (exhausted bool) {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	b.tokens = max(b.tokens-1, 0)
	return b.tokens < 1
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
		b = newFailureBudget(n)
		if g.budgets == nil {
			g.budgets = make(map[string]*failureBudget)
		}
		g.budgets[up.Name] = b
	}
	return b
}
