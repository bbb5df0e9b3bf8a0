package redisstate

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/redistest"
)

// TestNamesAreKeyedHashes: a name in a Redis key is an HMAC under the
// deployment's key, not a plain SHA-256 that a list of likely names
// would reverse; replicas without a configured key share one stored in
// Redis, and a configured key is used as given.
func TestNamesAreKeyedHashes(t *testing.T) {
	addr := redistest.Start(t)
	ctx := context.Background()
	rc := raw(t, addr)
	a := replica(t, addr, time.Second, nil)
	b := replica(t, addr, time.Second, nil)

	rel, ok := tryLock(t, a, "mem/alice@example.org\x00INBOX")
	if !ok {
		t.Fatal("lock not taken")
	}
	defer rel()
	a.Guard(testGuardOptions).Failed(ctx, "", "alice@example.org")
	keys := must[[]string](t)(rc.Keys(ctx, "*").Result())
	for _, name := range []string{"mem/alice@example.org\x00INBOX", "alice@example.org"} {
		sum := sha256.Sum256([]byte(name))
		for _, k := range keys {
			if len(k) > 64 && k[len(k)-64:] == hex.EncodeToString(sum[:]) {
				t.Errorf("key %q is the unkeyed SHA-256 of %q", k, name)
			}
		}
	}
	stored := must[string](t)(rc.Get(ctx, "pop3gw:namekey").Result())
	if len(stored) < 16 {
		t.Fatalf("stored name key %q is too short", stored)
	}
	// The second replica uses the same stored key: one lock, one counter.
	if _, ok := tryLock(t, b, "mem/alice@example.org\x00INBOX"); ok {
		t.Error("the second replica took a lock the first holds")
	}
	if d := b.Guard(testGuardOptions).Delay(ctx, "", "alice@example.org"); d == 0 {
		t.Error("the second replica does not see the first's failure")
	}

	// A configured key (derived from the sealing key) is used as given.
	nameKey := []byte("0123456789abcdef0123456789abcdef")
	c, err := New(ctx, Options{Addr: addr, KeyPrefix: "other:", NameKey: nameKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mac := hmac.New(sha256.New, nameKey)
	mac.Write([]byte("bob@example.org"))
	c.Guard(testGuardOptions).Failed(ctx, "", "bob@example.org")
	want := "other:guard:user:" + hex.EncodeToString(mac.Sum(nil))
	if keys := must[[]string](t)(rc.Keys(ctx, "other:*").Result()); !slices.Equal(keys, []string{want}) {
		t.Errorf("keys with a configured name key = %q, want %q", keys, want)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
