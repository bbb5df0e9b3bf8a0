// Package redisstate keeps the state that gateway replicas behind one
// load balancer must share in Redis: the maildrop locks behind POP3
// [IN-USE] (a proxy.Locker) and the failed-login counters (a
// pop3.LoginGuard).
//
// # Maildrop locks
//
// A lock is a Redis key set with SET NX PX to a random token, so only the
// replica that took it can extend or delete it. The key expires after
// Options.LockTTL: when a replica is killed, or loses its connection to
// Redis, its locks are gone within LockTTL and the maildrops can be opened
// again through another replica. While a session holds a lock, a goroutine
// extends it every LockTTL/3, and only if it still holds the token; should
// it find the lock expired or taken over (for example after Redis was
// unreachable for longer than LockTTL), it logs a warning and stops.
// Release stops the renewal and deletes the key only if it still holds
// the token, so a late release never removes another session's lock.
//
// Locks fail closed: when Redis cannot be asked, Lock returns an error and
// the login is refused with a temporary error, since letting two sessions
// into one maildrop could lose or duplicate deletions (RFC 1939 §4).
//
// # Login guard
//
// Failed logins are counted in keys that expire Window after the last
// failure, one per remote address and one per user name, and every
// replica computes the same delay from them with guard.DelayFor. Each key
// also holds the next allowed time, which every attempt advances in one
// Lua script on the Redis server's clock, so attempts through any number
// of replicas and connections queue one delay apart. The guard
// fails open: when Redis cannot be asked, Delay returns 0 and the failure
// is not counted, so a Redis outage only removes the slowdown of password
// guessing and never locks every user out. Such errors are logged at most
// once every 30 seconds.
//
// User names and maildrop keys appear in Redis keys only as HMAC-SHA256
// digests, never in the clear and never logged. The HMAC key is
// Options.NameKey, which the gateway derives from the sealing key
// (secrets.key_file or key_env) when one is configured. Without one, the
// first replica to connect stores a random key in Redis itself
// (<prefix>namekey, no expiry) and every replica reads it from there: a
// copy of the data then needs that key too, and a dictionary of names
// made for one deployment is of no use against another. Changing the key
// (setting a sealing key, rotating it, or deleting namekey) renames every
// lock and counter: do it with all replicas stopped.
package redisstate

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Defaults for the zero values of Options.
const (
	DefaultKeyPrefix = "pop3gw:"
	DefaultLockTTL   = 30 * time.Second
)

// Client timeouts.
const (
	dialTimeout  = 5 * time.Second
	readTimeout  = 3 * time.Second
	writeTimeout = 3 * time.Second
	// lockTimeout bounds taking a lock, on top of the caller's context.
	lockTimeout = 5 * time.Second
	// releaseTimeout bounds giving a lock back; release does not use the
	// session's context, which may be cancelled by then.
	releaseTimeout = 3 * time.Second
	// guardTimeout bounds each guard operation, so that an unreachable
	// Redis delays a login by at most this much.
	guardTimeout = 2 * time.Second
)

// minLockTTL keeps the renewal period (LockTTL/3) meaningful.
const minLockTTL = 30 * time.Millisecond

// Options configure a Store; zero fields take the defaults.
type Options struct {
	// Addr is the Redis server, host:port.
	Addr string
	// Username and Password authenticate to Redis (AUTH); both may be
	// empty.
	Username, Password string
	// DB is the database number.
	DB int
	// TLS, when set, is used to connect to Redis over TLS.
	TLS *tls.Config
	// KeyPrefix starts every key; DefaultKeyPrefix when empty. Replicas
	// share state only if they use the same prefix.
	KeyPrefix string
	// LockTTL is how long a lock outlives its last renewal, and so how
	// long a maildrop stays locked after its replica died; DefaultLockTTL
	// when zero.
	LockTTL time.Duration
	// Logger receives warnings; slog.Default() when nil.
	Logger *slog.Logger
	// NameKey keys the HMAC that stands for user names and maildrops in
	// Redis keys. Replicas share state only with the same NameKey. When
	// nil, New uses the deployment's random key kept in Redis, creating
	// it if no replica has.
	NameKey []byte
}

// Store is a connection to Redis holding the shared state. It is safe for
// concurrent use.
type Store struct {
	rdb    *redis.Client
	prefix string
	ttl    time.Duration
	log    *slog.Logger

	nameKey []byte // see Options.NameKey

	mu     sync.Mutex
	closed bool
	done   chan struct{} // closed by Close: renewals stop
	wg     sync.WaitGroup
	held   map[string]*lock // by Redis key: the locks this Store holds

	// noRenew is a test hook: locks are not renewed, as if their replica
	// had stopped.
	noRenew bool
}

// New connects to Redis and checks the connection with PING.
//
// The Redis client's own messages (such as each failed connection
// attempt) are logged by slog.Default() at Debug level; the Store reports
// what matters at Warn level through Options.Logger.
func New(ctx context.Context, opts Options) (*Store, error) {
	setClientLogger.Do(func() { redis.SetLogger(clientLogger{}) })
	if opts.Addr == "" {
		return nil, errors.New("redisstate: no Redis address")
	}
	s := &Store{
		prefix: cmp.Or(opts.KeyPrefix, DefaultKeyPrefix),
		ttl:    cmp.Or(opts.LockTTL, DefaultLockTTL),
		log:    opts.Logger,
		done:   make(chan struct{}),
	}
	if s.ttl < minLockTTL {
		return nil, fmt.Errorf("redisstate: lock TTL %v is shorter than %v", s.ttl, minLockTTL)
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.rdb = redis.NewClient(&redis.Options{
		Addr:                  opts.Addr,
		Username:              opts.Username,
		Password:              opts.Password,
		DB:                    opts.DB,
		TLSConfig:             opts.TLS,
		DialTimeout:           dialTimeout,
		ReadTimeout:           readTimeout,
		WriteTimeout:          writeTimeout,
		ContextTimeoutEnabled: true,
		// One retry covers a pooled connection that Redis closed (say,
		// after a restart); more would only make an outage slower to
		// report.
		MaxRetries:    1,
		DialerRetries: 2,
		// Cluster maintenance notifications are of no use to the gateway.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		s.rdb.Close()
		return nil, fmt.Errorf("redisstate: connecting to Redis at %s: %w", opts.Addr, err)
	}
	s.nameKey = opts.NameKey
	if s.nameKey == nil {
		var err error
		if s.nameKey, err = s.sharedNameKey(ctx); err != nil {
			s.rdb.Close()
			return nil, err
		}
	}
	return s, nil
}

// sharedNameKey returns the deployment's random name key kept in Redis,
// storing a new one if there is none yet (SET NX, so replicas starting
// together agree on the first).
func (s *Store) sharedNameKey(ctx context.Context) ([]byte, error) {
	key := s.prefix + "namekey"
	if err := s.rdb.SetNX(ctx, key, rand.Text(), 0).Err(); err != nil {
		return nil, fmt.Errorf("redisstate: storing the name key: %w", err)
	}
	v, err := s.rdb.Get(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstate: reading the name key: %w", err)
	}
	return []byte(v), nil
}

// Ping checks that Redis answers, for readiness checks.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisstate: %w", err)
	}
	return nil
}

// Close stops renewing the locks still held, without deleting them (they
// expire after LockTTL), and closes the connections. Locks and guard calls
// fail afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.wg.Wait()
	return s.rdb.Close()
}

var setClientLogger sync.Once

// clientLogger passes the Redis client's messages to slog at Debug level,
// instead of the client's default of printing them to standard error.
type clientLogger struct{}

func (clientLogger) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}

// hash returns the hex HMAC-SHA256 of name under the name key, which
// stands for a user name or maildrop key in Redis keys. Unkeyed, a list
// of likely names would turn the keys back into names.
func (s *Store) hash(name string) string {
	mac := hmac.New(sha256.New, s.nameKey)
	mac.Write([]byte(name))
	return hex.EncodeToString(mac.Sum(nil))
}

// renewScript extends the lock KEYS[1] to ARGV[2] milliseconds if it
// still holds the token ARGV[1]; it returns 1 if so, else 0.
var renewScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
`)

// releaseScript deletes the lock KEYS[1] if it holds the token ARGV[1].
var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0
`)

// lockKey is the Redis key of the maildrop lock named key.
func (s *Store) lockKey(key string) string {
	return s.prefix + "lock:" + s.hash(key)
}

// Lock implements proxy.Locker. ok is false when another session, on
// this replica or another, holds the lock; err is set when Redis could
// not be asked.
func (s *Store) Lock(ctx context.Context, key string) (release func(), ok bool, err error) {
	rkey := s.lockKey(key)
	token := rand.Text()
	ctx, cancel := context.WithTimeout(ctx, lockTimeout)
	defer cancel()
	ok, err = s.rdb.SetNX(ctx, rkey, token, s.ttl).Result()
	if err == nil && !ok {
		// A retried SET whose first attempt took the lock finds it held,
		// by this very token.
		var v string
		v, err = s.rdb.Get(ctx, rkey).Result()
		if errors.Is(err, redis.Nil) {
			err = nil
		}
		ok = err == nil && v == token
	}
	if err != nil {
		return nil, false, fmt.Errorf("redisstate: taking a maildrop lock: %w", err)
	}
	if !ok {
		return nil, false, nil
	}

	l := &lock{s: s, key: rkey, token: token, stop: make(chan struct{}), stopped: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.delete()
		return nil, false, fmt.Errorf("redisstate: taking a maildrop lock: %w", redis.ErrClosed)
	}
	s.wg.Add(1)
	if s.held == nil {
		s.held = make(map[string]*lock)
	}
	s.held[rkey] = l
	s.mu.Unlock()
	go l.renew()
	return l.release, true, nil
}

// Held tells whether the lock named key, taken through this Store, is
// still this Store's in Redis: a session asks before it deletes, so a
// lock lost to another replica (a Redis outage longer than LockTTL) stops
// the deletes.
func (s *Store) Held(ctx context.Context, key string) (bool, error) {
	rkey := s.lockKey(key)
	s.mu.Lock()
	l := s.held[rkey]
	s.mu.Unlock()
	if l == nil {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, lockTimeout)
	defer cancel()
	v, err := s.rdb.Get(ctx, rkey).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("redisstate: checking a maildrop lock: %w", err)
	}
	return v == l.token, nil
}

// lock is one held maildrop lock.
type lock struct {
	s          *Store
	key, token string

	stop    chan struct{} // closed by release
	stopped chan struct{} // closed when renew returns
	once    sync.Once
}

// renew extends the lock every LockTTL/3 until release, Close, or the lock
// is found lost.
func (l *lock) renew() {
	defer l.s.wg.Done()
	defer close(l.stopped)
	if l.s.noRenew {
		select {
		case <-l.stop:
		case <-l.s.done:
		}
		return
	}
	every := l.s.ttl / 3
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-l.stop:
			return
		case <-l.s.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		n, err := renewScript.Run(ctx, l.s.rdb, []string{l.key}, l.token, l.s.ttl.Milliseconds()).Int()
		cancel()
		switch {
		case err != nil:
			// Keep trying: the lock survives until LockTTL after the last
			// renewal that got through.
			if !failing {
				l.s.log.Warn("redisstate: cannot renew a maildrop lock", "key", l.key, "err", err)
				failing = true
			}
		case n == 0:
			select {
			case <-l.stop: // released meanwhile
				return
			default:
			}
			// A Redis restarted without persistence has forgotten every
			// lock: take ours again unless someone else already has.
			ctx, cancel := context.WithTimeout(context.Background(), every)
			again, err := l.s.rdb.SetNX(ctx, l.key, l.token, l.s.ttl).Result()
			cancel()
			if err == nil && again {
				l.s.log.Info("redisstate: took a maildrop lock again after Redis lost it", "key", l.key)
				failing = false
				continue
			}
			l.s.log.Warn("redisstate: maildrop lock expired or taken over while the session was open", "key", l.key)
			return
		default:
			failing = false
		}
	}
}

// release stops the renewal and deletes the lock if it is still ours. It
// may be called more than once.
func (l *lock) release() {
	l.once.Do(func() {
		close(l.stop)
		<-l.stopped
		l.s.mu.Lock()
		if l.s.held[l.key] == l {
			delete(l.s.held, l.key)
		}
		l.s.mu.Unlock()
		l.delete()
	})
}

// delete removes the lock if it holds our token.
func (l *lock) delete() {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	err := releaseScript.Run(ctx, l.s.rdb, []string{l.key}, l.token).Err()
	if err != nil && !errors.Is(err, redis.ErrClosed) {
		l.s.log.Warn("redisstate: cannot release a maildrop lock; it expires by itself", "key", l.key, "err", err)
	}
}
