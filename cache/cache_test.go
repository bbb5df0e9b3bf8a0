package cache

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

func key(uid uint32) Key {
	return Key{Account: "corp/alice", Mailbox: "INBOX", UIDValidity: 7, UID: uid}
}

func TestBoundedInBytes(t *testing.T) {
	c := New(100, 40)
	for uid := uint32(1); uid <= 5; uid++ {
		if !c.Add(key(uid), bytes.Repeat([]byte{'x'}, 30)) {
			t.Fatalf("Add(%d) refused a body under the ceiling", uid)
		}
	}
	st := c.Stats()
	if st.Bytes > 100 || st.Entries != 3 || st.Evictions != 2 {
		t.Fatalf("stats = %+v, want 3 entries within 100 bytes after 2 evictions", st)
	}
	if _, ok := c.Get(key(1)); ok {
		t.Error("oldest entry still cached")
	}
	if _, ok := c.Get(key(5)); !ok {
		t.Error("newest entry missing")
	}
}

func TestCeilingKeepsSize(t *testing.T) {
	c := New(100, 40)
	if c.Add(key(1), make([]byte, 41)) {
		t.Fatal("a body over max_message was kept")
	}
	if n, ok := c.Size(key(1)); !ok || n != 41 {
		t.Fatalf("Size = %d, %v; want 41, true", n, ok)
	}
}

func TestRecencyProtectsUsedEntries(t *testing.T) {
	c := New(90, 30)
	c.Add(key(1), make([]byte, 30))
	c.Add(key(2), make([]byte, 30))
	c.Add(key(3), make([]byte, 30))
	c.Get(key(1))
	c.Add(key(4), make([]byte, 30))
	if _, ok := c.Get(key(1)); !ok {
		t.Error("recently read entry was evicted")
	}
	if _, ok := c.Get(key(2)); ok {
		t.Error("least recently used entry survived")
	}
}

func TestReplaceAccountsBytes(t *testing.T) {
	c := New(100, 100)
	c.Add(key(1), make([]byte, 60))
	c.Add(key(1), make([]byte, 20))
	if st := c.Stats(); st.Bytes != 20 || st.Entries != 1 {
		t.Fatalf("stats = %+v, want 20 bytes in 1 entry", st)
	}
}

func TestKeysSeparateAccountsAndValidity(t *testing.T) {
	c := New(1000, 100)
	c.Add(key(1), []byte("alice"))
	other := key(1)
	other.Account = "corp/bob"
	if _, ok := c.Get(other); ok {
		t.Error("another account's body was served")
	}
	other = key(1)
	other.UIDValidity = 8
	if _, ok := c.Get(other); ok {
		t.Error("a body from an older UIDVALIDITY was served")
	}
}

func TestConcurrentUse(t *testing.T) {
	c := New(10_000, 100)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				k := key(uint32(i % 300))
				k.Account = fmt.Sprint(g % 2)
				if _, ok := c.Get(k); !ok {
					c.Add(k, make([]byte, 50))
				}
			}
		}(g)
	}
	wg.Wait()
	if st := c.Stats(); st.Bytes > 10_000 {
		t.Fatalf("over budget: %+v", st)
	}
}

// A body handed to a reader is not evicted and stays counted until the
// reader lets it go, so the cache's bound includes the bodies being sent.
func TestHeldBodiesStayCounted(t *testing.T) {
	c := New(100, 60)
	c.Add(key(1), make([]byte, 60))
	body, release, ok := c.Hold(key(1))
	if !ok || len(body) != 60 {
		t.Fatalf("Hold = %d bytes, %v", len(body), ok)
	}
	if !c.Add(key(2), make([]byte, 40)) {
		t.Fatal("a body that fits beside the held one was refused")
	}
	// Room for 3 means evicting 2; 1 is held.
	if !c.Add(key(3), make([]byte, 40)) {
		t.Fatal("a body that fits once an unheld one goes was refused")
	}
	if _, ok := c.Peek(key(2)); ok {
		t.Fatal("the unheld body survived; the held one should have")
	}
	if c.Add(key(4), make([]byte, 50)) {
		t.Fatal("a body was kept while the held one leaves no room")
	}
	if _, ok := c.Peek(key(1)); !ok {
		t.Fatal("the held body was evicted")
	}
	if _, ok := c.Peek(key(3)); !ok {
		t.Fatal("a refused Add evicted a body for nothing")
	}
	if st := c.Stats(); st.Bytes > 100 {
		t.Fatalf("stats = %+v: over the bound", st)
	}
	release()
	release() // a second call is harmless
	if !c.Add(key(4), make([]byte, 50)) {
		t.Fatal("released room was not reusable")
	}
	if _, ok := c.Peek(key(1)); ok {
		t.Fatal("the released body, now the oldest, was not evicted")
	}
	if st := c.Stats(); st.Bytes != 90 || st.Entries != 2 {
		t.Fatalf("stats = %+v; want 3 and 4", st)
	}
}

func TestHoldAndReplace(t *testing.T) {
	c := New(100, 100)
	c.Add(key(1), make([]byte, 60))
	_, release, _ := c.Hold(key(1))
	c.Add(key(1), make([]byte, 30))
	if st := c.Stats(); st.Bytes != 90 {
		t.Fatalf("bytes = %d; want 90 (the held old body and the new one)", st.Bytes)
	}
	release()
	if st := c.Stats(); st.Bytes != 30 {
		t.Fatalf("bytes = %d; want 30", st.Bytes)
	}
}

func TestAddHeld(t *testing.T) {
	c := New(100, 100)
	release := c.AddHeld(key(1), make([]byte, 80))
	if release == nil {
		t.Fatal("AddHeld did not keep a body that fits")
	}
	if c.Add(key(2), make([]byte, 30)) {
		t.Fatal("a body was kept while the held one fills the cache")
	}
	if st := c.Stats(); st.Hits != 0 {
		t.Fatalf("stats = %+v: AddHeld counted a hit", st)
	}
	release()
	if !c.Add(key(2), make([]byte, 30)) {
		t.Fatal("released room was not reusable")
	}
	if c.AddHeld(key(3), make([]byte, 101)) != nil {
		t.Fatal("AddHeld kept a body over max_message")
	}
}
