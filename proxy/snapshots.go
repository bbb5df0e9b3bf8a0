package proxy

import (
	"sync"
	"unsafe"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/upstream"
)

// maxSnapshots bounds how many mailboxes' listings are remembered.
const maxSnapshots = 1000

// snapshots remembers the last listing of each mailbox, so a login to a
// mailbox that has not changed skips listing every message again: the
// common case for a client that polls. A mailbox has the same set of UIDs
// when its UIDVALIDITY, UIDNEXT and message count are all unchanged: a new
// message raises UIDNEXT, an expunge lowers the count, and UIDs are never
// reused (RFC 9051 §2.3.1.1). A UID's message never changes, so neither
// does its size.
//
// Listings are bounded in bytes too: a few mailboxes of a million messages
// weigh more than a thousand small ones. They hold their size of the
// gateway's budget, at most a quarter of it, so bodies always keep the
// rest; the oldest are forgotten to make room.
type snapshots struct {
	budget   *cache.Budget
	maxBytes int64 // -1: no bound

	mu    sync.Mutex
	lru   *simplelru.LRU[string, *snapshot]
	bytes int64
}

type snapshot struct {
	state   upstream.Mailbox
	entries []upstream.Entry // shared, read-only
	ids     []string         // the entries' identities; shared, read-only
	bytes   int64
}

func newSnapshots(budget *cache.Budget) *snapshots {
	s := &snapshots{budget: budget, maxBytes: -1}
	if budget != nil {
		s.maxBytes = budget.Limit() / 4
	}
	s.lru, _ = simplelru.NewLRU(maxSnapshots, func(_ string, snap *snapshot) {
		s.bytes -= snap.bytes
		s.budget.Release(snap.bytes)
	})
	return s
}

// listingBytes is what remembering a listing costs: its entries with
// their Message-IDs, their identities, its key and the bookkeeping around
// them.
func listingBytes(maildrop string, entries []upstream.Entry, ids []string) int64 {
	const overhead = 200
	n := int64(len(entries))*int64(unsafe.Sizeof(upstream.Entry{})) + int64(len(maildrop)) + overhead
	for _, e := range entries {
		n += int64(len(e.MessageID))
	}
	for _, id := range ids {
		n += int64(unsafe.Sizeof(id)) + int64(len(id))
	}
	return n
}

// get returns the listing recorded for the mailbox in the given state.
func (s *snapshots) get(maildrop string, state upstream.Mailbox) ([]upstream.Entry, []string, bool) {
	if state.UIDNext == 0 {
		return nil, nil, false // the server did not say; nothing can be proved
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, ok := s.lru.Get(maildrop)
	if !ok || snap.state != state {
		return nil, nil, false
	}
	return snap.entries, snap.ids, true
}

func (s *snapshots) put(maildrop string, state upstream.Mailbox, entries []upstream.Entry, ids []string) {
	if state.UIDNext == 0 || uint32(len(entries)) != state.Messages {
		return
	}
	n := listingBytes(maildrop, entries, ids)
	if s.maxBytes >= 0 && n > s.maxBytes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lru.Remove(maildrop)
	for s.maxBytes >= 0 && s.bytes+n > s.maxBytes || !s.budget.Reserve(n) {
		if _, _, ok := s.lru.RemoveOldest(); !ok {
			return // bodies hold the budget
		}
	}
	s.lru.Add(maildrop, &snapshot{state: state, entries: entries, ids: ids, bytes: n})
	s.bytes += n
}

// forget drops the mailbox's listing, after a change its state would not
// show, such as messages flagged \Deleted.
func (s *snapshots) forget(maildrop string) {
	s.mu.Lock()
	s.lru.Remove(maildrop)
	s.mu.Unlock()
}
