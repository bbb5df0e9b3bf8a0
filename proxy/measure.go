package proxy

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// Sizes a store does not know. POP3 lists every message with its exact
// size at login (RFC 1939 §5 STAT, §7 LIST, §11: CRLF octets before
// dot-stuffing), and a store such as Graph has no MIME size to list. Such
// a message is read once, at the first login that lists it, through the
// same CRLF normalisation RETR uses, and counted; a body the cache can
// hold is kept there, so the RETR that follows costs nothing. The size is
// then recorded in the cache's table of exact sizes, with the remembered
// listing, and in the state store where it keeps sizes (SizeStore), so a
// later poll, or the first after a restart, lists it without reading it
// again.
// Reading happens up to four messages at once where the store reads
// several at a time (FetchEach). A message gone while it is measured is
// not listed.

// measureGuess is the first buffer of a message measured: most mail fits.
const measureGuess = 64 << 10

// measure reads the messages of the listing whose size is unknown and
// returns their sizes by index; a message the store no longer has is
// missing from the answer. On an error it returns the sizes it found
// before.
func (m *maildrop) measure(ctx context.Context, unknown []int) (map[int]int64, error) {
	if len(unknown) == 0 {
		return nil, nil
	}
	ids := make([]upstream.ID, len(unknown))
	index := make(map[upstream.ID]int, len(unknown))
	for j, i := range unknown {
		ids[j] = m.id(i)
		index[m.id(i)] = i
	}
	limit := m.g.cache.MaxMessage()
	sizes := make(map[int]int64, len(unknown))
	err := fetchEach(ctx, m.sess, ids, func(id upstream.ID, body io.Reader) error {
		i, ok := index[id]
		if !ok {
			return nil
		}
		r := pop3.NewCRLFReader(body)
		res := &reservation{budget: m.g.budget}
		defer res.release()
		data, whole, err := readUpTo(r, measureGuess, limit, res.fit)
		if err != nil {
			return err
		}
		n := int64(len(data))
		if whole {
			m.g.cache.Add(m.key(i), data)
		} else {
			// Too large to cache, or no room: counted as it streams by.
			rest, err := io.Copy(io.Discard, r)
			if err != nil {
				return err
			}
			n += rest
		}
		m.recordSize(i, n)
		sizes[i] = n
		delete(index, id)
		return nil
	})
	if err != nil {
		m.broken = true
	}
	return sizes, err
}

// measureUnknown gives every message listed with an unknown size its
// exact size, and drops from the listing those gone meanwhile. It returns
// the sizes measured, by ID, for the remembered listing.
func (m *maildrop) measureUnknown(ctx context.Context) (map[upstream.ID]int64, error) {
	var unknown []int
	for i, msg := range m.listing {
		if msg.Size < 0 {
			unknown = append(unknown, i)
		}
	}
	if len(unknown) == 0 {
		return nil, nil
	}
	byID := make(map[upstream.ID]int64, len(unknown))
	found := func(i int, n int64) {
		// A listing with a size unknown is the session's own (see
		// newMaildrop), and m.sizes is not made yet.
		m.listing[i].Size = n
		byID[m.id(i)] = n
	}
	recorded, _ := m.g.state.(SizeStore)
	if recorded != nil {
		sizes, err := m.recordedSizes(ctx, recorded, unknown)
		if err != nil {
			return nil, err
		}
		left := unknown[:0:0]
		for j, i := range unknown {
			if sizes[j] >= 0 {
				found(i, sizes[j])
				m.recordSize(i, sizes[j])
			} else {
				left = append(left, i)
			}
		}
		unknown = left
	}
	sizes, err := m.measure(ctx, unknown)
	if recorded != nil && len(sizes) > 0 {
		// Recorded even when the login fails (a client that gave up on a
		// first login to a large mailbox): the next one goes on from
		// there.
		ids := make([]string, 0, len(sizes))
		ns := make([]int64, 0, len(sizes))
		for i, n := range sizes {
			ids, ns = append(ids, m.ids[i]), append(ns, n)
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if err := recorded.SetSizes(rctx, m.acct.maildrop(), ids, ns); err != nil {
			// This session lists them; the next one after a restart
			// reads those messages again.
			m.log.Warn("recording measured sizes failed", "err", err)
		}
		cancel()
	}
	if err != nil {
		return nil, err
	}
	for i, n := range sizes {
		found(i, n)
	}
	if len(sizes) < len(unknown) {
		m.log.Info("messages removed while they were measured are not listed", "count", len(unknown)-len(sizes))
		gone := func(i int) bool { return m.listing[i].Size < 0 }
		keep := 0
		// The entries and identities may be the remembered listing's.
		entries, ids := make([]listedEntry, 0, len(m.entries)), make([]string, 0, len(m.ids))
		for i := range m.entries {
			if gone(i) {
				continue
			}
			entries, ids = append(entries, m.entries[i]), append(ids, m.ids[i])
			m.listing[keep] = m.listing[i]
			keep++
		}
		m.entries, m.ids, m.listing = entries, ids, m.listing[:keep]
	}
	return byID, nil
}

// recordedSizes asks the state store for the sizes measured before of
// the messages at the indices given, -1 where it has none.
func (m *maildrop) recordedSizes(ctx context.Context, recorded SizeStore, at []int) ([]int64, error) {
	ids := make([]string, len(at))
	for j, i := range at {
		ids[j] = m.ids[i]
	}
	sizes, err := recorded.Sizes(ctx, m.acct.maildrop(), ids)
	if err != nil {
		return nil, fmt.Errorf("reading measured sizes: %w", err)
	}
	return sizes, nil
}

// sized records sizes measured for messages of the maildrop's listing
// snap, if it is still the one remembered, so the next login lists them
// without reading them again. A remembered listing is read-only: the
// sizes go into a copy.
func (s *snapshots) sized(maildrop string, snap *snapshot, sizes map[upstream.ID]int64) {
	if len(sizes) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.lru.Peek(maildrop)
	if !ok || cur != snap {
		return
	}
	entries := slices.Clone(cur.entries)
	for i, e := range entries {
		if n, ok := sizes[e.ID]; ok && e.Size < 0 {
			entries[i].Size = n
		}
	}
	sized := *cur
	sized.entries = entries
	// The same key and as many bytes: replacing the value evicts nothing.
	s.lru.Add(maildrop, &sized)
}
