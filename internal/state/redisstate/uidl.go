package redisstate

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// The UIDL store (a proxy.StateStore) that replicas share. Per maildrop,
// under the hash of its name: a hash identity -> UIDL, a hash UIDL ->
// identity (so a UIDL is given once), a set of hidden identities, a
// string holding the pending-delete journal, a hash identity -> size
// of the sizes measured for messages listed without one (Graph), and a
// counter that every write to the UIDLs or the hidden set moves on (the
// maildrop's generation, proxy.GenerationStore), started at a random value,
// so that a Redis that lost its data does not count up to a value a
// replica remembers from before. The keys never expire.
//
// A write is acknowledged by Redis before the proxy shows a UIDL; that it
// survives a restart of Redis depends on Redis's own persistence
// (appendonly yes): Store.CheckPersistence warns when it is off.

// SharedWithOtherProcesses implements proxy.SharedStateStore: replicas
// write the same keys.
func (s *Store) SharedWithOtherProcesses() {}

// assignChunk bounds the identities sent in one script call.
const assignChunk = 500

// assignScript gives each identity (ARGV, in pairs with the proposed
// UIDL) its recorded UIDL, or records the proposed one, or the first
// variant proposed-1, proposed-2, ... that no other identity holds, the
// rule of proxy.UIDLVariant. It returns UIDL, hidden (0 or 1) pairs. As a
// script it runs atomically, so replicas listing the same new message at
// once agree on its UIDL. Recording one moves the generation (KEYS[4]) on,
// from ARGV[1] if it has none; the pairs follow it.
var assignScript = redis.NewScript(`
local out = {}
local recorded = false
for i = 2, #ARGV, 2 do
	local id, proposed = ARGV[i], ARGV[i + 1]
	local u = redis.call("HGET", KEYS[1], id)
	if not u then
		u = proposed
		local n = 0
		while redis.call("HEXISTS", KEYS[2], u) == 1 do
			n = n + 1
			u = proposed .. "-" .. n
		end
		redis.call("HSET", KEYS[1], id, u)
		redis.call("HSET", KEYS[2], u, id)
		recorded = true
	end
	out[#out + 1] = u
	out[#out + 1] = redis.call("SISMEMBER", KEYS[3], id)
end
if recorded then
	redis.call("SET", KEYS[4], ARGV[1], "NX")
	redis.call("INCR", KEYS[4])
end
return out
`)

// adoptScript gives each identity (ARGV, in pairs with its previous
// identity) that has no UIDL the UIDL of its previous identity, with its
// hidden mark, if the previous identity still holds it (proxy.StateStore
// Adopt). Atomic, so two replicas cannot both adopt one UIDL. Adopting
// one moves the generation (KEYS[4]) on, from ARGV[1] if it has none; the
// pairs follow it.
var adoptScript = redis.NewScript(`
local adopted = false
for i = 2, #ARGV, 2 do
	local id, previous = ARGV[i], ARGV[i + 1]
	if redis.call("HEXISTS", KEYS[1], id) == 0 then
		local u = redis.call("HGET", KEYS[1], previous)
		if u and redis.call("HGET", KEYS[2], u) == previous then
			redis.call("HSET", KEYS[1], id, u)
			redis.call("HSET", KEYS[2], u, id)
			if redis.call("SISMEMBER", KEYS[3], previous) == 1 then
				redis.call("SADD", KEYS[3], id)
			end
			adopted = true
		end
	end
end
if adopted then
	redis.call("SET", KEYS[4], ARGV[1], "NX")
	redis.call("INCR", KEYS[4])
end
return 0
`)

func (s *Store) stateKeys(maildrop string) (uidls, holders, hidden, journal string) {
	h := s.hash(maildrop)
	return s.prefix + "uidl:" + h, s.prefix + "uidl-holder:" + h, s.prefix + "hidden:" + h, s.prefix + "journal:" + h
}

// generationKey names the maildrop's generation counter.
func (s *Store) generationKey(maildrop string) string {
	return s.prefix + "uidl-gen:" + s.hash(maildrop)
}

// generationStart is a random value for a generation counter to start
// from, below 2^62 so that it counts up for ever within Redis's integers.
func generationStart() string {
	var b [8]byte
	rand.Read(b[:])
	return strconv.FormatUint(binary.BigEndian.Uint64(b[:])>>2, 10)
}

// Generation implements proxy.GenerationStore: the maildrop's counter, "0"
// before anything was recorded for it.
func (s *Store) Generation(ctx context.Context, maildrop string) (string, error) {
	g, err := s.rdb.Get(ctx, s.generationKey(maildrop)).Result()
	if errors.Is(err, redis.Nil) {
		return "0", nil
	}
	if err != nil {
		return "", fmt.Errorf("redisstate: reading the UIDLs' generation: %w", err)
	}
	return g, nil
}

// Assign implements proxy.StateStore.
func (s *Store) Assign(ctx context.Context, maildrop string, ids, proposed []string) ([]string, []bool, error) {
	uidlKey, holderKey, hiddenKey, _ := s.stateKeys(maildrop)
	uidls := make([]string, 0, len(ids))
	hidden := make([]bool, 0, len(ids))
	for start := 0; start < len(ids); start += assignChunk {
		end := min(start+assignChunk, len(ids))
		args := make([]any, 0, 1+2*(end-start))
		args = append(args, generationStart())
		for i := start; i < end; i++ {
			args = append(args, ids[i], proposed[i])
		}
		res, err := assignScript.Run(ctx, s.rdb, []string{uidlKey, holderKey, hiddenKey, s.generationKey(maildrop)}, args...).Slice()
		if err != nil {
			return nil, nil, fmt.Errorf("redisstate: recording UIDLs: %w", err)
		}
		if len(res) != 2*(end-start) {
			return nil, nil, errors.New("redisstate: recording UIDLs: short reply")
		}
		for i := 0; i < len(res); i += 2 {
			u, _ := res[i].(string)
			h, _ := res[i+1].(int64)
			uidls = append(uidls, u)
			hidden = append(hidden, h == 1)
		}
	}
	return uidls, hidden, nil
}

// Adopt implements proxy.StateStore.
func (s *Store) Adopt(ctx context.Context, maildrop string, ids, previous []string) error {
	uidlKey, holderKey, hiddenKey, _ := s.stateKeys(maildrop)
	for start := 0; start < len(ids); start += assignChunk {
		end := min(start+assignChunk, len(ids))
		args := make([]any, 0, 1+2*(end-start))
		args = append(args, generationStart())
		for i := start; i < end; i++ {
			if previous[i] != "" {
				args = append(args, ids[i], previous[i])
			}
		}
		if len(args) == 1 {
			continue
		}
		if err := adoptScript.Run(ctx, s.rdb, []string{uidlKey, holderKey, hiddenKey, s.generationKey(maildrop)}, args...).Err(); err != nil {
			return fmt.Errorf("redisstate: carrying UIDLs over: %w", err)
		}
	}
	return nil
}

// Hide implements proxy.StateStore.
func (s *Store) Hide(ctx context.Context, maildrop string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	_, _, hiddenKey, _ := s.stateKeys(maildrop)
	members := make([]any, len(ids))
	for i, id := range ids {
		members[i] = id
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, hiddenKey, members...)
		p.SetNX(ctx, s.generationKey(maildrop), generationStart(), 0)
		p.Incr(ctx, s.generationKey(maildrop))
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstate: hiding messages: %w", err)
	}
	return nil
}

// sizeKey names the maildrop's hash identity -> size measured, for
// messages their store lists without one (Graph).
func (s *Store) sizeKey(maildrop string) string { return s.prefix + "size:" + s.hash(maildrop) }

// Sizes implements proxy.SizeStore.
func (s *Store) Sizes(ctx context.Context, maildrop string, ids []string) ([]int64, error) {
	sizes := make([]int64, len(ids))
	for start := 0; start < len(ids); start += assignChunk {
		end := min(start+assignChunk, len(ids))
		vals, err := s.rdb.HMGet(ctx, s.sizeKey(maildrop), ids[start:end]...).Result()
		if err != nil {
			return nil, fmt.Errorf("redisstate: reading measured sizes: %w", err)
		}
		for i, v := range vals {
			sizes[start+i] = -1
			if str, ok := v.(string); ok {
				if n, err := strconv.ParseInt(str, 10, 64); err == nil && n >= 0 {
					sizes[start+i] = n
				}
			}
		}
	}
	return sizes, nil
}

// SetSizes implements proxy.SizeStore.
func (s *Store) SetSizes(ctx context.Context, maildrop string, ids []string, sizes []int64) error {
	if len(ids) == 0 {
		return nil
	}
	fields := make([]any, 0, 2*len(ids))
	for i, id := range ids {
		fields = append(fields, id, strconv.FormatInt(sizes[i], 10))
	}
	if err := s.rdb.HSet(ctx, s.sizeKey(maildrop), fields...).Err(); err != nil {
		return fmt.Errorf("redisstate: recording measured sizes: %w", err)
	}
	return nil
}

// Journal implements proxy.StateStore.
func (s *Store) Journal(ctx context.Context, maildrop string) ([]byte, error) {
	_, _, _, journalKey := s.stateKeys(maildrop)
	j, err := s.rdb.Get(ctx, journalKey).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redisstate: reading pending deletes: %w", err)
	}
	return j, nil
}

// SetJournal implements proxy.StateStore.
func (s *Store) SetJournal(ctx context.Context, maildrop string, journal []byte) error {
	_, _, _, journalKey := s.stateKeys(maildrop)
	var err error
	if journal == nil {
		err = s.rdb.Del(ctx, journalKey).Err()
	} else {
		err = s.rdb.Set(ctx, journalKey, journal, 0).Err()
	}
	if err != nil {
		return fmt.Errorf("redisstate: recording pending deletes: %w", err)
	}
	return nil
}

// CheckPersistence warns when Redis says it keeps no append-only file: a
// Redis restart would then forget the UIDLs, and clients would download
// again the mail of any mailbox whose UIDVALIDITY changed since. A Redis
// that refuses CONFIG (many managed services) is not asked further.
func (s *Store) CheckPersistence(ctx context.Context) {
	v, err := s.rdb.ConfigGet(ctx, "appendonly").Result()
	if err != nil {
		return
	}
	if v["appendonly"] == "no" {
		s.log.Warn("redisstate: Redis has appendonly off: a restart of Redis can lose UIDLs recorded since its last snapshot; set appendonly yes")
	}
}
