package redisstate

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pop3gw/gateway/internal/testkit/redistest"
	"github.com/pop3gw/gateway/submission"
)

var _ submission.SentCounter = (*Store)(nil)

// TestSentCount: messages counted by one replica are counted by the
// other, only for the last hour, under a key that does not name the
// account, which expires.
func TestSentCount(t *testing.T) {
	addr := redistest.Start(t)
	a, b := replica(t, addr, 0, nil), replica(t, addr, 0, nil)
	ctx := context.Background()
	const account = "corp/alice@example.com"
	for range 2 {
		if err := a.CountSent(ctx, account); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.CountSent(ctx, account); err != nil {
		t.Fatal(err)
	}
	if n, err := b.SentLastHour(ctx, account); err != nil || n != 3 {
		t.Fatalf("SentLastHour = %d, %v; want 3", n, err)
	}
	if n, err := a.SentLastHour(ctx, "corp/bob@example.com"); err != nil || n != 0 {
		t.Errorf("another account: %d, %v; want 0", n, err)
	}
	// A message of an hour and a second ago no longer counts.
	rc := raw(t, addr)
	old := float64(time.Now().Add(-time.Hour - time.Second).UnixMilli())
	if err := rc.ZAdd(ctx, a.sentKey(account), redis.Z{Score: old, Member: "old"}).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := a.SentLastHour(ctx, account); err != nil || n != 3 {
		t.Errorf("with an old message: %d, %v; want 3", n, err)
	}
	keys, err := rc.Keys(ctx, "*sent:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %q, %v", keys, err)
	}
	if strings.Contains(keys[0], "alice") {
		t.Errorf("key %q names the account", keys[0])
	}
	if ttl := rc.PTTL(ctx, keys[0]).Val(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("key TTL %v, want at most an hour", ttl)
	}
}

// TestRefusedCount: refused passthrough logins counted by one replica are
// counted by the other, per upstream, only for the last minute, under a
// key that expires a minute after the last one.
func TestRefusedCount(t *testing.T) {
	addr := redistest.Start(t)
	a, b := replica(t, addr, 0, nil), replica(t, addr, 0, nil)
	ctx := context.Background()
	for i := 1; i <= 2; i++ {
		if n, err := a.CountRefused(ctx, "corp"); err != nil || n != i {
			t.Fatalf("CountRefused = %d, %v; want %d", n, err, i)
		}
	}
	if n, err := b.CountRefused(ctx, "corp"); err != nil || n != 3 {
		t.Fatalf("CountRefused on the other replica = %d, %v; want 3", n, err)
	}
	if n, err := a.RefusedLastMinute(ctx, "corp"); err != nil || n != 3 {
		t.Fatalf("RefusedLastMinute = %d, %v; want 3", n, err)
	}
	if n, err := b.RefusedLastMinute(ctx, "gmail"); err != nil || n != 0 {
		t.Errorf("another upstream: %d, %v; want 0", n, err)
	}
	// A refusal of a minute and a second ago no longer counts.
	rc := raw(t, addr)
	old := float64(time.Now().Add(-time.Minute - time.Second).UnixMilli())
	if err := rc.ZAdd(ctx, a.refusedKey("corp"), redis.Z{Score: old, Member: "old"}).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.RefusedLastMinute(ctx, "corp"); err != nil || n != 3 {
		t.Errorf("with an old refusal: %d, %v; want 3", n, err)
	}
	if ttl := rc.PTTL(ctx, a.refusedKey("corp")).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("key TTL %v, want at most a minute", ttl)
	}
}
