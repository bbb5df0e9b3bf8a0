package redisstate

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pop3gw/gateway/internal/state/guard"
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
// Each is a hash: n, the failures, and next, the Unix time in
// milliseconds before which no attempt is checked.
func (g *Guard) keys(ip, user string) []string {
	keys := make([]string, 0, 2)
	if ip != "" {
		keys = append(keys, g.s.prefix+"guard:ip:"+ip)
	}
	if user != "" {
		keys = append(keys, g.s.prefix+"guard:user:"+g.s.hash(user))
	}
	return keys
}

// delayLua is guard.DelayFor in Lua: ARGV[1] (base) doubled per failure
// after the first, at most ARGV[2], in milliseconds. Times come from the
// Redis server's clock, so replicas whose clocks differ book one queue.
const delayLua = `
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function delay(n)
	local d = tonumber(ARGV[1]) * 2 ^ (n - 1)
	if d > tonumber(ARGV[2]) then d = tonumber(ARGV[2]) end
	return math.floor(d)
end
`

// reserveScript books the next attempt for the counters KEYS: the slot is
// the latest of now and their next times, a user's (the keys after the
// first ARGV[3]) counting for at most ARGV[2] from now; each counter with
// failures then moves its next time to the slot plus its own delay. It
// returns the wait in milliseconds. One script, so two replicas never book
// one slot.
var reserveScript = redis.NewScript(delayLua + `
local slot = now
local live = {}
for i, k in ipairs(KEYS) do
	local v = redis.call("HMGET", k, "n", "next")
	local n = tonumber(v[1])
	if n and n > 0 then
		local next = tonumber(v[2]) or 0
		if i > tonumber(ARGV[3]) then next = math.min(next, now + tonumber(ARGV[2])) end
		if next > slot then slot = next end
		live[#live + 1] = {k, n}
	end
end
for _, e in ipairs(live) do
	local next = slot + delay(e[2])
	redis.call("HSET", e[1], "next", next)
	if redis.call("PTTL", e[1]) < next - now then
		redis.call("PEXPIRE", e[1], next - now)
	end
end
return slot - now
`)

// failedScript counts a failure on each of KEYS, moves its next time to
// at least now plus the new delay, and keeps it ARGV[3] milliseconds (the
// window) after this failure, or until that next time if later.
var failedScript = redis.NewScript(delayLua + `
for _, k in ipairs(KEYS) do
	local n = redis.call("HINCRBY", k, "n", 1)
	local next = now + delay(n)
	local old = tonumber(redis.call("HGET", k, "next")) or 0
	if old > next then next = old end
	redis.call("HSET", k, "next", next)
	redis.call("PEXPIRE", k, math.max(tonumber(ARGV[3]), next - now))
end
return 0
`)

func (g *Guard) args() []any {
	return []any{g.opts.Base.Milliseconds(), g.opts.Max.Milliseconds()}
}

// Delay returns the spacing the failures of ip and user call for, by
// guard.DelayFor on the larger count, without booking anything; 0 when
// Redis cannot be asked.
func (g *Guard) Delay(ctx context.Context, ip, user string) time.Duration {
	keys := g.keys(ip, user)
	if len(keys) == 0 {
		return 0
	}
	opCtx, cancel := context.WithTimeout(ctx, guardTimeout)
	defer cancel()
	n := 0
	for _, k := range keys {
		v, err := g.s.rdb.HGet(opCtx, k, "n").Int64()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				g.warn("delay", err)
			}
			return 0
		}
		n = max(n, int(min(v, 1<<30)))
	}
	return guard.DelayFor(n, g.opts.Base, g.opts.Max)
}

// Reserve implements pop3.LoginGuard: it books the attempt's slot in the
// queue that ip and user share on every replica, and returns the wait. It
// returns 0 when Redis cannot be asked.
func (g *Guard) Reserve(ctx context.Context, ip, user string) time.Duration {
	keys := g.keys(ip, user)
	if len(keys) == 0 {
		return 0
	}
	opCtx, cancel := context.WithTimeout(ctx, guardTimeout)
	defer cancel()
	queued := 0 // address keys: the first, if any
	if ip != "" {
		queued = 1
	}
	ms, err := reserveScript.Run(opCtx, g.s.rdb, keys, append(g.args(), queued)...).Int64()
	if err != nil {
		if ctx.Err() == nil { // not the client going away
			g.warn("reserve", err)
		}
		return 0
	}
	return time.Duration(max(ms, 0)) * time.Millisecond
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
	if err := failedScript.Run(ctx, g.s.rdb, keys, append(g.args(), g.opts.Window.Milliseconds())...).Err(); err != nil {
		g.warn("failed", err)
	}
}

// Succeeded implements pop3.LoginGuard: it deletes the counter of user.
// The address's stays: a success on one account, perhaps the guesser's
// own, does not reset the guesses at others.
func (g *Guard) Succeeded(ctx context.Context, ip, user string) {
	if user == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), guardTimeout)
	defer cancel()
	if err := g.s.rdb.Del(ctx, g.keys("", user)...).Err(); err != nil {
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
