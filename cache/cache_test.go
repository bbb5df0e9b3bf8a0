package cache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"unsafe"
)

func key(uid uint32) Key {
	return Key{Account: "corp/alice", Mailbox: "INBOX", Epoch: "7", ID: strconv.FormatUint(uint64(uid), 10)}
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

// TestSizeOutlivesBody: a body over max_message is not kept, and a body
// kept is not its size recorded; a size recorded by SetSize is kept
// either way.
func TestSizeOutlivesBody(t *testing.T) {
	c := New(100, 40)
	if c.Add(key(1), make([]byte, 41)) {
		t.Fatal("a body over max_message was kept")
	}
	if !c.Add(key(2), make([]byte, 30)) {
		t.Fatal("a body under max_message was not kept")
	}
	for _, k := range []Key{key(1), key(2)} {
		if n, ok := c.Size(k); ok {
			t.Errorf("Size(%v) = %d, recorded by Add", k, n)
		}
	}
	c.SetSize(key(1), 41)
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
	other.Epoch = "8"
	if _, ok := c.Get(other); ok {
		t.Error("a body from an older epoch was served")
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

// Eviction is by bytes: a body evicts exactly as many of the least
// recently used bodies as it needs room for, whatever their number.
func TestEvictsExactlyTheBytesNeeded(t *testing.T) {
	c := New(100, 100)
	for uid, n := range []int{10, 20, 30, 40} {
		if !c.Add(key(uint32(uid+1)), make([]byte, n)) {
			t.Fatalf("Add(%d) refused", uid+1)
		}
	}
	if st := c.Stats(); st.Bytes != 100 || st.Entries != 4 || st.Evictions != 0 {
		t.Fatalf("stats = %+v; want 4 entries filling 100 bytes, no eviction", st)
	}
	c.Add(key(5), make([]byte, 1))
	if st := c.Stats(); st.Bytes != 91 || st.Entries != 4 || st.Evictions != 1 {
		t.Fatalf("stats = %+v; want only the 10-byte body evicted", st)
	}
	c.Add(key(6), make([]byte, 50))
	if st := c.Stats(); st.Bytes != 91 || st.Entries != 3 || st.Evictions != 3 {
		t.Fatalf("stats = %+v; want the 20- and 30-byte bodies evicted, 40+1+50 kept", st)
	}
	for uid, want := range map[uint32]bool{1: false, 2: false, 3: false, 4: true, 5: true, 6: true} {
		if _, ok := c.Peek(key(uid)); ok != want {
			t.Errorf("body %d cached: %v, want %v", uid, ok, want)
		}
	}
}

// A held body passed over by an eviction keeps its place: once released it
// is the first to go, not the body added after it.
func TestHeldBodyKeepsItsPlace(t *testing.T) {
	c := New(100, 100)
	release := c.AddHeld(key(1), make([]byte, 30))
	c.Add(key(2), make([]byte, 30))
	c.Add(key(3), make([]byte, 30))
	c.Add(key(4), make([]byte, 30)) // evicts 2, passing over the held 1
	if _, ok := c.Peek(key(2)); ok {
		t.Fatal("the oldest unheld body survived")
	}
	release()
	c.Add(key(5), make([]byte, 30))
	if _, ok := c.Peek(key(1)); ok {
		t.Error("the released body, the least recently used, survived")
	}
	if _, ok := c.Peek(key(3)); !ok {
		t.Error("a more recently used body was evicted before the released one")
	}
}

// Whatever the order of adds, reads, holds, replacements and releases, the
// cache counts exactly the bodies it keeps plus the replaced ones still
// held, and never more than its bound.
func TestBytesExactUnderAnyOrder(t *testing.T) {
	const bound = 1000
	c := New(bound, 400)
	rng := rand.New(rand.NewPCG(1, 2))
	type holding struct {
		k       Key
		body    []byte
		release func()
	}
	var holds []holding
	for i := 0; i < 20_000; i++ {
		k := key(uint32(rng.IntN(40)))
		switch op := rng.IntN(10); {
		case op < 4:
			c.Add(k, make([]byte, rng.IntN(401)))
		case op < 5:
			body := make([]byte, rng.IntN(401))
			if r := c.AddHeld(k, body); r != nil {
				holds = append(holds, holding{k, body, r})
			}
		case op < 7:
			if body, r, ok := c.Hold(k); ok {
				holds = append(holds, holding{k, body, r})
			}
		case op < 8:
			c.Get(k)
		default:
			if len(holds) > 0 {
				j := rng.IntN(len(holds))
				holds[j].release()
				holds = slices.Delete(holds, j, j+1)
			}
		}
		// Replaced bodies still held count once each, however many
		// readers hold them.
		want := c.listedBytes()
		replaced := map[*byte]bool{}
		for _, h := range holds {
			cached, ok := c.Peek(h.k)
			if len(h.body) > 0 && (!ok || unsafe.SliceData(cached) != unsafe.SliceData(h.body)) && !replaced[unsafe.SliceData(h.body)] {
				replaced[unsafe.SliceData(h.body)] = true
				want += int64(len(h.body))
			}
		}
		st := c.Stats()
		if st.Bytes > bound {
			t.Fatalf("op %d: %d bytes counted, over the bound of %d", i, st.Bytes, bound)
		}
		if st.Bytes != want {
			t.Fatalf("op %d: %d bytes counted, %d kept or held", i, st.Bytes, want)
		}
	}
	for _, h := range holds {
		h.release()
	}
	if st := c.Stats(); st.Bytes != c.listedBytes() {
		t.Fatalf("after every release: %d bytes counted, %d kept", st.Bytes, c.listedBytes())
	}
}

// listedBytes adds up the bodies in the recency list.

func (c *Cache) listedBytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for el := c.recent.Front(); el != nil; el = el.Next() {
		n += int64(len(el.Value.(*entry).body))
	}
	return n
}

// TestHasSizes: a mailbox version has sizes recorded once one of its
// messages has, by SetSize (not by Add), and none once they are all evicted
// from the table of sizes; another mailbox, or another epoch of the same
// one, has its own.
func TestHasSizes(t *testing.T) {
	c := New(1<<20, 1<<20)
	k := Key{Account: "a", Mailbox: "INBOX", Epoch: "1"}
	if c.HasSizes(k) {
		t.Fatal("sizes recorded in an empty cache")
	}
	k.ID = "1"
	c.Add(k, []byte("body"))
	if c.HasSizes(k) {
		t.Fatal("sizes recorded for the mailbox by Add")
	}
	c.SetSize(k, 4)
	c.SetSize(k, 4) // the same message again: still one
	if !c.HasSizes(Key{Account: "a", Mailbox: "INBOX", Epoch: "1", ID: "other"}) {
		t.Fatal("no sizes recorded for the mailbox after SetSize")
	}
	for _, other := range []Key{{Account: "a", Mailbox: "INBOX", Epoch: "2"}, {Account: "b", Mailbox: "INBOX", Epoch: "1"}, {Account: "a", Mailbox: "Other", Epoch: "1"}} {
		if c.HasSizes(other) {
			t.Errorf("sizes recorded for %+v", other)
		}
	}
	// Fill the table with another mailbox's sizes: the first one's goes.
	for i := range maxSizes {
		c.SetSize(Key{Account: "b", Mailbox: "INBOX", Epoch: "1", ID: strconv.Itoa(i)}, 1)
	}
	if c.HasSizes(k) {
		t.Error("sizes still recorded for a mailbox whose sizes were all evicted")
	}
	if !c.HasSizes(Key{Account: "b", Mailbox: "INBOX", Epoch: "1"}) {
		t.Error("no sizes for the mailbox that filled the table")
	}
}
