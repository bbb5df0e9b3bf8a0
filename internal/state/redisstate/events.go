package redisstate

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Two limits count events over a sliding span of time, for every replica:
// the messages an account relayed in the last hour (the SMTP relay's
// hourly limit) and the refused passthrough logins forwarded to an
// upstream in the last minute (its failure budget). Each is a sorted set
// with one member per event, scored by its time in milliseconds, that
// expires a span after its newest member, so nothing is left behind once
// the events stop.
const (
	sentWindow    = time.Hour
	refusedWindow = time.Minute
)

// sentKey is the Redis key of the messages an account relayed.
func (s *Store) sentKey(key string) string { return s.prefix + "sent:" + s.hash(key) }

// refusedKey is the Redis key of the refused logins forwarded to an
// upstream (named as in the configuration, which replicas share).
func (s *Store) refusedKey(upstream string) string { return s.prefix + "refused:" + upstream }

// SentLastHour counts the messages relayed for the account key by every
// replica in the last hour (a submission SentCounter).
func (s *Store) SentLastHour(ctx context.Context, key string) (int, error) {
	n, err := s.events(ctx, s.sentKey(key), sentWindow, false)
	if err != nil {
		return 0, fmt.Errorf("redisstate: counting relayed messages: %w", err)
	}
	return n, nil
}

// CountSent counts one message relayed for the account key now.
func (s *Store) CountSent(ctx context.Context, key string) error {
	if _, err := s.events(ctx, s.sentKey(key), sentWindow, true); err != nil {
		return fmt.Errorf("redisstate: counting a relayed message: %w", err)
	}
	return nil
}

// RefusedLastMinute counts the refused passthrough logins that every
// replica forwarded to the upstream in the last minute (a
// proxy.RefusalCounter).
func (s *Store) RefusedLastMinute(ctx context.Context, upstream string) (int, error) {
	n, err := s.events(ctx, s.refusedKey(upstream), refusedWindow, false)
	if err != nil {
		return 0, fmt.Errorf("redisstate: counting refused logins: %w", err)
	}
	return n, nil
}

// CountRefused counts one refused passthrough login forwarded to the
// upstream now, and returns the count of the last minute with it.
func (s *Store) CountRefused(ctx context.Context, upstream string) (int, error) {
	n, err := s.events(ctx, s.refusedKey(upstream), refusedWindow, true)
	if err != nil {
		return 0, fmt.Errorf("redisstate: counting a refused login: %w", err)
	}
	return n, nil
}

// events counts the events of the sorted set k in the span up to now,
// removing older ones, after adding one now if add is set, in one
// transaction.
func (s *Store) events(ctx context.Context, k string, span time.Duration, add bool) (int, error) {
	now := time.Now()
	cut := strconv.FormatInt(now.Add(-span).UnixMilli(), 10)
	var card *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, k, "-inf", cut)
		if add {
			// The random member keeps two events of the same
			// millisecond apart.
			p.ZAdd(ctx, k, redis.Z{Score: float64(now.UnixMilli()), Member: rand.Text()})
			p.PExpire(ctx, k, span)
		}
		card = p.ZCard(ctx, k)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return int(card.Val()), nil
}
