// Package cache keeps message bodies in memory, bounded in bytes, so a
// message read twice is fetched from the upstream server once. It also
// remembers the exact sizes of messages it has seen, which outlive the
// bodies and are small.
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
	bodies *simplelru.LRU[Key, []byte]
	bytes  int64
	sizes  *simplelru.LRU[Key, int64]

	hits, misses, evictions atomic.Int64
}

// New returns a cache holding at most maxBytes of bodies, none larger than
// maxMessage. A maxBytes of 0 disables body caching.
func New(maxBytes, maxMessage int64) *Cache {
	c := &Cache{maxBytes: maxBytes, maxMessage: min(maxMessage, maxBytes)}
	// Entries are bounded by bytes, not by count: the count limit is only a
	// backstop, eviction is driven by Add.
	c.bodies, _ = simplelru.NewLRU[Key, []byte](1<<30, func(_ Key, body []byte) {
		c.bytes -= int64(len(body))
	})
	c.sizes, _ = simplelru.NewLRU[Key, int64](maxSizes, nil)
	return c
}

// MaxMessage is the largest body Add keeps.
func (c *Cache) MaxMessage() int64 { return c.maxMessage }

// Get returns the cached body. The slice must not be modified.
func (c *Cache) Get(k Key) ([]byte, bool) {
	c.mu.Lock()
	body, ok := c.bodies.Get(k)
	c.mu.Unlock()
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return body, ok
}

// Peek reports whether a body is cached, without counting a hit or a miss
// or refreshing its recency.
func (c *Cache) Peek(k Key) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bodies.Peek(k)
}

// Add stores a body, evicting the least recently used ones to make room,
// and records its size. It reports whether the body was kept. The cache
// takes ownership of body.
func (c *Cache) Add(k Key, body []byte) bool {
	size := int64(len(body))
	c.SetSize(k, size)
	if size > c.maxMessage {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.bodies.Peek(k); ok {
		c.bytes -= int64(len(old))
	}
	c.bodies.Add(k, body)
	c.bytes += size
	for c.bytes > c.maxBytes {
		if _, _, ok := c.bodies.RemoveOldest(); !ok {
			break
		}
		c.evictions.Add(1)
	}
	return true
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
