// Package cache keeps message bodies in memory, bounded in bytes, so a
// message read twice is fetched from the upstream server once. It also
// remembers the exact sizes of messages that the store lists otherwise,
// which outlive the bodies and are small. Its Budget bounds what is held
// outside it.
package cache

import (
	"container/list"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Key names one message version: a store's message id is only meaningful
// in its mailbox's epoch (IMAP: a UID under its UIDVALIDITY, RFC 9051
// §2.3.1.1), and a mailbox only within its account.
type Key struct {
	Account string // upstream name and user
	Mailbox string
	Epoch   string
	ID      string
}

// maxSizes bounds the table of exact sizes; an entry is about 100 bytes.
const maxSizes = 200_000

// Cache is safe for concurrent use. The zero value is not usable; call New.
//
// Bodies are kept in a list from the most to the least recently used,
// bounded by the sum of their lengths, not by their number: bytes is
// exactly what the bodies in the list, and the replaced bodies readers
// still hold, take, and never exceeds maxBytes.
type Cache struct {
	maxBytes   int64
	maxMessage int64

	mu     sync.Mutex
	recent *list.List // of *entry, most recently used at the front
	bodies map[Key]*list.Element
	bytes  int64 // cached bodies, and replaced ones still held
	held   int64 // bodies held by readers
	sizes  *simplelru.LRU[Key, int64]
	// sized counts the sizes recorded per mailbox version (a Key without
	// its ID), so that a listing of a mailbox with none skips asking for
	// each of its messages.
	sized map[Key]int

	hits, misses, evictions atomic.Int64
}

// entry is a cached body and the readers holding it. A body replaced while
// held stays counted in the cache's bytes until its last reader lets go:
// the memory is only free then.
type entry struct {
	key     Key
	body    []byte
	holds   int
	evicted bool // no longer in the list
}

// New returns a cache holding at most maxBytes of bodies, none larger than
// maxMessage. A maxBytes of 0 disables body caching.
func New(maxBytes, maxMessage int64) *Cache {
	c := &Cache{
		maxBytes:   maxBytes,
		maxMessage: min(maxMessage, maxBytes),
		recent:     list.New(),
		bodies:     make(map[Key]*list.Element),
	}
	c.sized = make(map[Key]int)
	c.sizes, _ = simplelru.NewLRU(maxSizes, func(k Key, _ int64) {
		// Called with c.mu held, from Add or Remove.
		k.ID = ""
		if c.sized[k]--; c.sized[k] <= 0 {
			delete(c.sized, k)
		}
	})
	return c
}

// MaxMessage is the largest body Add keeps.
func (c *Cache) MaxMessage() int64 { return c.maxMessage }

// lookup returns the entry of k and makes it the most recently used.
// c.mu must be held.
func (c *Cache) lookup(k Key) (*entry, bool) {
	el, ok := c.bodies[k]
	if !ok {
		return nil, false
	}
	c.recent.MoveToFront(el)
	return el.Value.(*entry), true
}

// remove takes an entry out of the list. Its bytes stay counted while
// readers hold it. c.mu must be held.
func (c *Cache) remove(el *list.Element) {
	e := el.Value.(*entry)
	c.recent.Remove(el)
	delete(c.bodies, e.key)
	e.evicted = true
	if e.holds == 0 {
		c.bytes -= int64(len(e.body))
	}
}

// Get returns the cached body. The slice must not be modified.
func (c *Cache) Get(k Key) ([]byte, bool) {
	c.mu.Lock()
	e, ok := c.lookup(k)
	c.mu.Unlock()
	c.count(ok)
	if !ok {
		return nil, false
	}
	return e.body, true
}

// Hold is Get for a reader that keeps the body while it sends it: until
// release is called, the body is not evicted, and stays counted in the
// cache's bytes even if a newer version replaces it, so the cache's bound
// covers the bodies it has handed out.
func (c *Cache) Hold(k Key) (body []byte, release func(), ok bool) {
	c.mu.Lock()
	e, ok := c.lookup(k)
	if ok {
		c.hold(e)
	}
	c.mu.Unlock()
	c.count(ok)
	if !ok {
		return nil, nil, false
	}
	return e.body, c.releaser(e), true
}

// releaser returns the release function of one hold of e; calls after the
// first do nothing.
func (c *Cache) releaser(e *entry) func() {
	var once sync.Once
	return func() { once.Do(func() { c.release(e) }) }
}

func (c *Cache) hold(e *entry) {
	if e.holds == 0 {
		c.held += int64(len(e.body))
	}
	e.holds++
}

func (c *Cache) release(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.holds--
	if e.holds > 0 {
		return
	}
	c.held -= int64(len(e.body))
	if e.evicted {
		c.bytes -= int64(len(e.body))
	}
}

func (c *Cache) count(hit bool) {
	if hit {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
}

// Peek reports whether a body is cached, without counting a hit or a miss
// or refreshing its recency.
func (c *Cache) Peek(k Key) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.bodies[k]
	if !ok {
		return nil, false
	}
	return el.Value.(*entry).body, true
}

// Add stores a body, evicting the least recently used ones to make room,
// and records its size. It reports whether the body was kept: not when
// held bodies that were evicted leave no room. The cache takes ownership
// of body.
func (c *Cache) Add(k Key, body []byte) bool {
	return c.add(k, body, false) != nil
}

// AddHeld is Add followed by Hold, for the reader that fetched the body:
// it returns release, or nil if the body was not kept.
func (c *Cache) AddHeld(k Key, body []byte) (release func()) {
	e := c.add(k, body, true)
	if e == nil {
		return nil
	}
	return c.releaser(e)
}

func (c *Cache) add(k Key, body []byte, hold bool) *entry {
	size := int64(len(body))
	if size > c.maxMessage {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.bodies[k]; ok {
		c.remove(el)
	}
	// Evicting a held body would free nothing until its readers let go:
	// without room besides the held bodies the new body is not kept, and
	// nothing is evicted for it.
	if c.held+size > c.maxBytes {
		return nil
	}
	// Evict from the least recently used end, passing over held bodies
	// (they keep their place), until the new body fits.
	for el := c.recent.Back(); el != nil && c.bytes+size > c.maxBytes; {
		prev := el.Prev()
		if el.Value.(*entry).holds == 0 {
			c.remove(el)
			c.evictions.Add(1)
		}
		el = prev
	}
	e := &entry{key: k, body: body}
	if hold {
		c.hold(e)
	}
	c.bodies[k] = c.recent.PushFront(e)
	c.bytes += size
	return e
}

// SetSize records the exact size of a message. A body added is not its
// size recorded: only a size that the listing would give wrong is worth
// a lookup at every login (HasSizes).
func (c *Cache) SetSize(k Key, size int64) {
	c.mu.Lock()
	if !c.sizes.Contains(k) {
		mailbox := k
		mailbox.ID = ""
		c.sized[mailbox]++
	}
	c.sizes.Add(k, size)
	c.mu.Unlock()
}

// HasSizes tells whether any exact size is recorded for the messages of
// the mailbox version that k names without its ID. A listing of a large
// mailbox asks once rather than for every message.
func (c *Cache) HasSizes(k Key) bool {
	k.ID = ""
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sized[k] > 0
}

// Size returns the exact size recorded for a message.
func (c *Cache) Size(k Key) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sizes.Get(k)
}

// Stats are the cache's counters.
type Stats struct {
	Hits, Misses, Evictions int64
	Bytes                   int64
	Entries                 int
}

// Stats returns the current counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		Hits:      c.hits.Load(),
		Misses:    c.misses.Load(),
		Evictions: c.evictions.Load(),
		Bytes:     c.bytes,
		Entries:   len(c.bodies),
	}
}
