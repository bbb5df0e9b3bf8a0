// Package cache keeps message bodies in memory, bounded in bytes, so a
// message read twice is fetched from the upstream server once. It also
// remembers the exact sizes of messages it has seen, which outlive the
// bodies and are small. Its Budget bounds what is held outside it.
package cache

import (
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Key names one message version: a UID is only meaningful with its
// mailbox's UIDVALIDITY (RFC 9051 §2.3.1.1), and a mailbox only within its
// account.
type Key struct {
	Account     string // upstream name and user
	Mailbox     string
	UIDValidity uint32
	UID         uint32
}

// maxSizes bounds the table of exact sizes; an entry is about 100 bytes.
const maxSizes = 200_000

// Cache is safe for concurrent use. The zero value is not usable; call New.
type Cache struct {
	maxBytes   int64
	maxMessage int64

	mu     sync.Mutex
	bodies *simplelru.LRU[Key, *entry]
	bytes  int64 // cached bodies, and replaced ones still held
	held   int64 // bodies held by readers
	sizes  *simplelru.LRU[Key, int64]

	hits, misses, evictions atomic.Int64
}

// entry is a cached body and the readers holding it. A body replaced while
// held stays counted in the cache's bytes until its last reader lets go:
// the memory is only free then.
type entry struct {
	body    []byte
	holds   int
	evicted bool
}

// New returns a cache holding at most maxBytes of bodies, none larger than
// maxMessage. A maxBytes of 0 disables body caching.
func New(maxBytes, maxMessage int64) *Cache {
	c := &Cache{maxBytes: maxBytes, maxMessage: min(maxMessage, maxBytes)}
	// Entries are bounded by bytes, not by count: the count limit is only a
	// backstop, eviction is driven by Add.
	c.bodies, _ = simplelru.NewLRU[Key, *entry](1<<30, func(_ Key, e *entry) {
		if e.holds > 0 {
			e.evicted = true
			return
		}
		c.bytes -= int64(len(e.body))
	})
	c.sizes, _ = simplelru.NewLRU[Key, int64](maxSizes, nil)
	return c
}

// MaxMessage is the largest body Add keeps.
func (c *Cache) MaxMessage() int64 { return c.maxMessage }

// Get returns the cached body. The slice must not be modified.
func (c *Cache) Get(k Key) ([]byte, bool) {
	c.mu.Lock()
	e, ok := c.bodies.Get(k)
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
	e, ok := c.bodies.Get(k)
	if ok {
		c.hold(e)
	}
	c.mu.Unlock()
	c.count(ok)
	if !ok {
		return nil, nil, false
	}
	var once sync.Once
	return e.body, func() { once.Do(func() { c.release(e) }) }, true
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
	e, ok := c.bodies.Peek(k)
	if !ok {
		return nil, false
	}
	return e.body, true
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
	var once sync.Once
	return func() { once.Do(func() { c.release(e) }) }
}

func (c *Cache) add(k Key, body []byte, hold bool) *entry {
	size := int64(len(body))
	c.SetSize(k, size)
	if size > c.maxMessage {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bodies.Remove(k)
	for c.bytes+size > c.maxBytes {
		// Evicting a held body would free nothing until its readers let
		// go: held bodies are skipped, and without room besides them the
		// new body is not kept.
		if c.held+size > c.maxBytes {
			return nil
		}
		oldest, e, _ := c.bodies.GetOldest()
		if e.holds > 0 {
			c.bodies.Get(oldest)
			continue
		}
		c.bodies.RemoveOldest()
		c.evictions.Add(1)
	}
	e := &entry{body: body}
	if hold {
		c.hold(e)
	}
	c.bodies.Add(k, e)
	c.bytes += size
	return e
}

// SetSize records the exact size of a message.
func (c *Cache) SetSize(k Key, size int64) {
	c.mu.Lock()
	c.sizes.Add(k, size)
	c.mu.Unlock()
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
		Entries:   c.bodies.Len(),
	}
}
