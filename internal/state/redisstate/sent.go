package redisstate

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// sentWindow is the span of the SMTP relay's hourly message limit.
const sentWindow = time.Hour

// sentKey is the Redis key of the messages an account relayed: a sorted
// set with one member per message, scored by its time in milliseconds.
func (s *Store) sentKey(key string) string { return s.prefix + "sent:" + s.hash(key) }

// SentLastHour counts the messages relayed for the account key by every
// replica in the last hour, removing older ones (a submission
// SentCounter).
func (s *Store) SentLastHour(ctx context.Context, key string) (int, error) {
	k := s.sentKey(key)
	cut := strconv.FormatInt(time.Now().Add(-sentWindow).UnixMilli(), 10)
	var card *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, k, "-inf", cut)
		card = p.ZCard(ctx, k)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("redisstate: counting relayed messages: %w", err)
	}
	return int(card.Val()), nil
}

// CountSent counts one message relayed for the account key now. The set
// expires an hour after its newest member, so an account that stops
// sending leaves nothing behind.
func (s *Store) CountSent(ctx context.Context, key string) error {
	k := s.sentKey(key)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		// The random member keeps two messages of the same millisecond
		// apart.
		p.ZAdd(ctx, k, redis.Z{Score: float64(time.Now().UnixMilli()), Member: rand.Text()})
		p.PExpire(ctx, k, sentWindow)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstate: counting a relayed message: %w", err)
	}
	return nil
}
