package redisstate

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pop3gw/gateway/internal/guard"
)

// warnEvery is the shortest interval between two warnings of a Guard.
const warnEvery = 30 * time.Second

// Guard is a pop3.LoginGuard whose counters are kept in Redis and shared
// by every replica using the same Redis and key prefix. It is safe for
// concurrent use.
type Guard struct {
	s    *Store
	opts guard.Options

	mu         sync.Mutex
	lastWarn   time.Time
	suppressed int // errors not logged since lastWarn
}

// Guard returns a login guard with the delays and window of opts (zero
// fields take the guard package's defaults). opts.MaxEntries does not
// apply: the counters expire in Redis.
func (s *Store) Guard(opts guard.Options) *Guard {
	if opts.Base <= 0 {
		opts.Base = guard.DefaultBase
	}
	if opts.Max <= 0 {
		opts.Max = guard.DefaultMax
	}
	if opts.Window <= 0 {
		opts.Window = guard.DefaultWindow
	}
	return &Guard{s: s, opts: opts}
}

// keys returns the counter keys of ip and user, leaving out empty ones.
func (g *Guard) keys(ip, user string) []string {
	keys := make([]string, 0, 2)
	if ip != "" {
		keys = append(keys, g.s.prefix+"fail:ip:"+ip)
	}
	if user != "" {
		keys = append(keys, g.s.prefix+"fail:user:"+hash(user))
	}
	return keys
}

// Delay implements pop3.LoginGuard: the delay for the larger of the
// failure counts of ip and user, by guard.DelayFor. It returns 0 when
// Redis cannot be asked.
func (g *Guard) Delay(ctx context.Context, ip, user string) time.Duration {
	keys := g.keys(ip, user)
	if len(keys) == 0 {
		return 0
	}
	opCtx, cancel := context.WithTimeout(ctx, guardTimeout)
	defer cancel()
	vals, err := g.s.rdb.MGet(opCtx, keys...).Result()
	if err != nil {
		if ctx.Err() == nil { // not the client going away
			g.warn("delay", err)
		}
		return 0
	}
	n := 0
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // no failures
		}
		c, err := strconv.ParseInt(str, 10, 64)
		if err != nil {
			g.warn("delay", errors.New("counter is not a number"))
			continue
		}
		n = max(n, int(min(c, 1<<30)))
	}
	return guard.DelayFor(n, g.opts.Base, g.opts.Max)
}

// Failed implements pop3.LoginGuard: it counts one failure for ip and
// for user (unless empty), each kept until Window after its last failure.
func (g *Guard) Failed(ctx context.Context, ip, user string) {
	keys := g.keys(ip, user)
	if len(keys) == 0 {
		return
	}
	// A client that hangs up right after a failure is still counted.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), guardTimeout)
	defer cancel()
	// MULTI/EXEC, so that no counter is left without its expiry.
	_, err := g.s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Incr(ctx, k)
			p.PExpire(ctx, k, g.opts.Window)
		}
		return nil
	})
	if err != nil {
		g.warn("failed", err)
	}
}

// Succeeded implements pop3.LoginGuard: it deletes the counters of ip and
// user.
func (g *Guard) Succeeded(ctx context.Context, ip, user string) {
	keys := g.keys(ip, user)
	if len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), guardTimeout)
	defer cancel()
	if err := g.s.rdb.Del(ctx, keys...).Err(); err != nil {
		g.warn("succeeded", err)
	}
}

// warn logs a Redis error, at most once every warnEvery.
func (g *Guard) warn(op string, err error) {
	g.mu.Lock()
	now := time.Now()
	if !g.lastWarn.IsZero() && now.Sub(g.lastWarn) < warnEvery {
		g.suppressed++
		g.mu.Unlock()
		return
	}
	suppressed := g.suppressed
	g.lastWarn, g.suppressed = now, 0
	g.mu.Unlock()
	g.s.log.Warn("redisstate: login guard cannot use Redis; logins are not slowed down",
		"op", op, "err", err, "suppressed", suppressed)
}
