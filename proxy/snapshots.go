package proxy

import (
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/pop3"
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
	// listing is the POP3 listing of a session that lists every message
	// as the store lists it, with uidls: nil unless each message is
	// neither hidden, nor flagged \Deleted, nor of a size unknown. A
	// login that needs no other shares it, read-only (pop3.Maildrop).
	listing []pop3.Message
	// gen is the state store's generation that uidls and hidden are the
	// answer of, for a GenerationStore.
	gen   string
	bytes int64
	// ext is how far the arrays above are in use by the listings that
	// share them (see extent).
	ext *extent
	// content is what the messages weigh in bytes (listingBytes without
	// the POP3 listing and the key), once remembered; the first counted
	// of them weigh countedBytes, known from the listing this one was
	// appended to.
	content      int64
	counted      int
	countedBytes int64
}

// extent is how much of a line of arrays is in use. A listing merged from
// the last one with messages appended shares its arrays, writing past the
// last one's end, which the last one never reads: only one listing may
// extend another, the first to claim the extent, so two listings merged
// from the same one never write the same place. A listing that cannot
// claim it copies.
type extent struct{ n atomic.Int64 }

func newExtent(n int) *extent {
	x := &extent{}
	x.n.Store(int64(n))
	return x
}

// extend claims the arrays from from to to, if from is their end.
func (x *extent) extend(from, to int) bool {
	return x != nil && x.n.CompareAndSwap(int64(from), int64(to))
}

// grown is s with room for n elements: in its own array if that has the
// room, else in a copy with more.
func grown[T any](s []T, n int) []T {
	if cap(s) >= n {
		return s
	}
	return append(make([]T, 0, roomFor(n)), s...)
}

// roomFor is the capacity given to arrays of n messages: room for a few
// more to be appended in place.
func roomFor(n int) int { return n + n/16 + 16 }

// privatise gives the listing arrays of its own, before it changes a
// message that listings sharing its arrays hold.
func (snap *snapshot) privatise() {
	snap.entries = slices.Clone(snap.entries)
	snap.ids = slices.Clone(snap.ids)
	if snap.uidls != nil {
		snap.uidls = slices.Clone(snap.uidls)
		snap.hidden = slices.Clone(snap.hidden)
	}
	if snap.listing != nil {
		snap.listing = slices.Clone(snap.listing)
	}
	snap.ext = newExtent(len(snap.entries))
	snap.counted, snap.countedBytes = 0, 0
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

// pop3Listing is the POP3 listing of entries with their UIDLs, made with
// room to grow (roomFor); nil unless every message is listed as the store
// lists it (see snapshot.listing).
func pop3Listing(entries []listedEntry, uidls []string, hidden []bool) []pop3.Message {
	for i, e := range entries {
		if !listedAsIs(e, hidden[i]) {
			return nil
		}
	}
	listing := make([]pop3.Message, len(entries), roomFor(len(entries)))
	for i, e := range entries {
		listing[i] = pop3.Message{Size: e.Size, UIDL: uidls[i]}
	}
	return listing
}

// listedAsIs tells whether a session lists a message as the store lists
// it: not hidden, not flagged \Deleted, of a size known.
func listedAsIs(e listedEntry, hidden bool) bool {
	return !e.Deleted && !hidden && e.Size >= 0
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
// identities, UIDLs and hidden flags, its POP3 listing, its key and the
// bookkeeping around them.
func listingBytes(maildrop string, snap *snapshot) int64 {
	return messagesBytes(snap, 0) + pop3Bytes(snap) + keyBytes(maildrop)
}

// pop3Bytes is what the POP3 listing adds: its UIDLs are uidls' strings.
func pop3Bytes(snap *snapshot) int64 {
	return int64(len(snap.listing)) * int64(unsafe.Sizeof(pop3.Message{}))
}

// keyBytes is what remembering a listing costs besides its messages.
func keyBytes(maildrop string) int64 {
	const overhead = 200
	return int64(len(maildrop)) + overhead
}

// messagesBytes is what the messages of the listing from the from-th on
// weigh.
func messagesBytes(snap *snapshot, from int) int64 {
	n := int64(len(snap.entries)-from) * int64(unsafe.Sizeof(listedEntry{}))
	for _, e := range snap.entries[from:] {
		n += int64(len(e.ID)) + int64(len(e.UIDL))
	}
	for _, id := range snap.ids[from:] {
		n += int64(unsafe.Sizeof(id)) + int64(len(id))
	}
	if snap.uidls != nil {
		for i, u := range snap.uidls[from:] {
			n += int64(unsafe.Sizeof(u))
			// The UIDL the store suggested, given back by the state store
			// for a message new to it, is one string, held once.
			if s := snap.entries[from+i].UIDL; len(s) != len(u) || unsafe.StringData(s) != unsafe.StringData(u) {
				n += int64(len(u))
			}
		}
	}
	return n + int64(len(snap.hidden)-min(from, len(snap.hidden)))
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
	// A listing appended to the last one counts the messages appended
	// only.
	snap.content = snap.countedBytes + messagesBytes(snap, snap.counted)
	n := snap.content + pop3Bytes(snap) + keyBytes(maildrop)
	if s.maxBytes >= 0 && n > s.maxBytes && snap.listing != nil {
		// The POP3 listing only saves the next login building its own
		// (this one has it: listed.shared): a listing too large with it
		// is remembered without it.
		n -= pop3Bytes(snap)
		snap.listing = nil
	}
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
	lighter := &snapshot{state: snap.state, entries: snap.entries, ids: snap.ids, ext: snap.ext}
	lighter.bytes = listingBytes(maildrop, lighter)
	// Replacing the entry releases the heavier one's bytes; the lighter
	// one's fit in what those held.
	s.lru.Remove(maildrop)
	if s.budget.Reserve(lighter.bytes) {
		s.lru.Add(maildrop, lighter)
		s.bytes += lighter.bytes
	}
}
