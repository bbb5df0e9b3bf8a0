package proxy

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"

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
type snapshots struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, *snapshot]
}

type snapshot struct {
	state   upstream.Mailbox
	entries []upstream.Entry // shared, read-only
	ids     []string         // the entries' identities; shared, read-only
}

func newSnapshots() *snapshots {
	lru, _ := simplelru.NewLRU[string, *snapshot](maxSnapshots, nil)
	return &snapshots{lru: lru}
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
	s.mu.Lock()
	s.lru.Add(maildrop, &snapshot{state: state, entries: entries, ids: ids})
	s.mu.Unlock()
}

// forget drops the mailbox's listing, after a change its state would not
// show, such as messages flagged \Deleted.
func (s *snapshots) forget(maildrop string) {
	s.mu.Lock()
	s.lru.Remove(maildrop)
	s.mu.Unlock()
}
