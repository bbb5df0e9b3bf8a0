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
// common case for a client that polls. A mailbox whose store reports the
// same epoch and state holds the same messages (IMAP: the same
// UIDVALIDITY, UIDNEXT and message count, see upstream.Session.Select);
// the message an ID names never changes, so neither does its size. When
// the mailbox did change, the listing remembered is the base that the
// store's changes are merged into (see listing.go).
//
// With each listing goes the state store's answer for it (the UIDLs and
// which messages are hidden), unless the state store is shared with other
// processes: a poller logging in again then costs no lookups, and one new
// message costs one.
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
	// gen counts the forgettings: a listing made without the maildrop's
	// lock (between sessions) is remembered only if none happened while
	// it was made, since a session's deletes or hidden messages may not
	// show in it.
	gen uint64
}

// snapshot is one mailbox's listing; read-only once remembered.
type snapshot struct {
	state   upstream.Mailbox
	entries []listedEntry
	ids     []string // the entries' identities
	// uidls and hidden are the state store's answer for ids; nil when
	// not known.
	uidls  []string
	hidden []bool
	bytes  int64
}

// listedEntry is what a listing keeps of a message: what its identity is
// made of is in the identity. UIDL is the one the store suggested, given
// to the message should its identity be new to the state store.
type listedEntry struct {
	ID      upstream.ID
	UIDL    string
	Deleted bool
	Size    int64
}

func listedEntryOf(e upstream.Entry) listedEntry {
	return listedEntry{ID: e.ID, UIDL: e.UIDL, Deleted: e.Deleted, Size: e.Size}
}

func listedEntries(entries []upstream.Entry) []listedEntry {
	listed := make([]listedEntry, len(entries))
	for i, e := range entries {
		listed[i] = listedEntryOf(e)
	}
	return listed
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

// listingBytes is what remembering a listing costs: its entries, their
// identities, UIDLs and hidden flags, its key and the bookkeeping around
// them.
func listingBytes(maildrop string, snap *snapshot) int64 {
	const overhead = 200
	n := int64(len(snap.entries))*int64(unsafe.Sizeof(listedEntry{})) + int64(len(maildrop)) + overhead
	for _, e := range snap.entries {
		n += int64(len(e.ID)) + int64(len(e.UIDL))
	}
	for _, id := range snap.ids {
		n += int64(unsafe.Sizeof(id)) + int64(len(id))
	}
	for _, u := range snap.uidls {
		n += int64(unsafe.Sizeof(u)) + int64(len(u))
	}
	return n + int64(len(snap.hidden))
}

// last returns the listing last recorded for the mailbox, in whatever
// state it was then, or nil.
func (s *snapshots) last(maildrop string) *snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, _ := s.lru.Get(maildrop)
	return snap
}

// generation is the count of forgettings so far, for putSince.
func (s *snapshots) generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen + 1
}

// put records the listing, unless it cannot be trusted later: the store
// gave no state, or the count is not the mailbox's.
func (s *snapshots) put(maildrop string, snap *snapshot) { s.putSince(maildrop, snap, 0) }

// putSince is put, if nothing was forgotten since generation returned
// since; 0 puts in any case.
func (s *snapshots) putSince(maildrop string, snap *snapshot, since uint64) {
	if snap.state.State == "" || len(snap.entries) != snap.state.Messages {
		if since == 0 {
			s.forget(maildrop)
		}
		return
	}
	n := listingBytes(maildrop, snap)
	snap.bytes = n
	s.mu.Lock()
	defer s.mu.Unlock()
	if since != 0 && s.gen+1 != since {
		return
	}
	s.lru.Remove(maildrop)
	if s.maxBytes >= 0 && n > s.maxBytes {
		return
	}
	for s.maxBytes >= 0 && s.bytes+n > s.maxBytes || !s.budget.Reserve(n) {
		if _, _, ok := s.lru.RemoveOldest(); !ok {
			return // bodies hold the budget
		}
	}
	s.lru.Add(maildrop, snap)
	s.bytes += n
}

// forget drops the mailbox's listing, after a change its state would not
// show, such as messages flagged \Deleted.
func (s *snapshots) forget(maildrop string) {
	s.mu.Lock()
	s.gen++
	s.lru.Remove(maildrop)
	s.mu.Unlock()
}

// forgetAssignment drops the state store's answer remembered with the
// mailbox's listing, after the store changed it (Hide); the listing
// itself stays.
func (s *snapshots) forgetAssignment(maildrop string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	snap, ok := s.lru.Peek(maildrop)
	if !ok || snap.uidls == nil {
		return
	}
	lighter := &snapshot{state: snap.state, entries: snap.entries, ids: snap.ids}
	lighter.bytes = listingBytes(maildrop, lighter)
	// Replacing the entry releases the heavier one's bytes; the lighter
	// one's fit in what those held.
	s.lru.Remove(maildrop)
	if s.budget.Reserve(lighter.bytes) {
		s.lru.Add(maildrop, lighter)
		s.bytes += lighter.bytes
	}
}
