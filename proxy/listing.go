package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// A listing costs what changed. A poller's next login usually finds the
// mailbox as it left it, or with a few new messages, or a few gone. The
// listing remembered for the maildrop (snapshots) is then the base: a
// store that can say what changed since (a changeLister) is asked for that
// only, and its answer is merged in; the identities and the state store's
// UIDLs of the messages that stayed are reused, so only the new ones are
// looked up. The store checks its own answer against what its protocol
// promises (IMAP: new UIDs between the old and the new UIDNEXT); the
// merge then checks what holds for every store before it is trusted, and
// on any doubt every message is listed again:
//
//   - every ID the store says went is one the old listing has;
//   - no new message has an ID the merged listing already holds, or one
//     that another new message has;
//   - the merged count is the mailbox's count as the store last reported
//     it.
//
// What remains proportional to the mailbox is memory work: copying the
// remembered listing into the merged one, a lookup per message in the
// small sets of what came or went (identities rank copies of one message),
// and building the POP3 listing with each message's exact size from the
// cache.

// changeLister is a Session that can tell how the mailbox changed since
// it was in an earlier state of the same epoch (IMAP: UIDNEXT:* and,
// after expunges, the UIDs still there; JMAP: Email/changes).
type changeLister interface {
	Changes(ctx context.Context, since upstream.Mailbox) (upstream.Changes, error)
}

var _ changeLister = (*upstream.Session)(nil)

// listed is a maildrop's listing at login with the state store's answer
// for it, and the POP3 listing made of them, which the login may share
// (snapshot.listing; the snapshot may be remembered without it).
type listed struct {
	*snapshot
	uidls  []string
	hidden []bool
	shared []pop3.Message
}

// listing lists the mailbox sess has selected, from the remembered
// listing where it can, and assigns the messages their UIDLs.
func (g *Gateway) listing(ctx context.Context, sess Session, maildrop string, log *slog.Logger) (listed, error) {
	return g.listingSince(ctx, sess, maildrop, log, 0)
}

// prelist brings the maildrop's remembered listing up to date on a kept
// session, between POP3 sessions (see pool.refreshListing): the next
// login's listing is then the one remembered. No lock is held, so the
// listing is remembered only if no session changed the maildrop's
// messages or hidden set meanwhile (snapshots.generation). Only a
// listing that costs what changed is made: with no listing remembered
// with its UIDLs in the same epoch, or a state store shared with other
// processes (which may write it between sessions), the refresh alone is
// done, which lets the store do its part (Dovecot's rescan).
func (g *Gateway) prelist(ctx context.Context, maildrop string, acct *account, sess Session) error {
	since := g.snaps.generation()
	if _, err := sess.Refresh(ctx); err != nil {
		return err
	}
	last := g.snaps.last(maildrop)
	if _, shared := g.state.(SharedStateStore); shared || last == nil || last.uidls == nil || last.state.Epoch != sess.Selected().Epoch {
		return nil
	}
	log := g.log.With("upstream", acct.upstream.Name)
	if _, err := g.listingSince(ctx, sess, maildrop, log, since); err != nil {
		return err
	}
	log.Debug("listing brought up to date between sessions", "messages", sess.Selected().Messages)
	return nil
}

// listingSince is listing, remembering the listing only if the
// snapshots' generation is still since; 0 always remembers it.
func (g *Gateway) listingSince(ctx context.Context, sess Session, maildrop string, log *slog.Logger, since uint64) (listed, error) {
	state := sess.Selected()
	last := g.snaps.last(maildrop)
	shared := g.askAll(ctx, maildrop, last, log)
	if last != nil && state.State != "" && last.state == state {
		if last.uidls != nil && !shared {
			return listed{last, last.uidls, last.hidden, last.listing}, nil
		}
		snap := &snapshot{state: state, entries: last.entries, ids: last.ids, ext: last.ext}
		return g.assign(ctx, maildrop, snap, nil, since)
	}
	if snap, changed := g.merged(ctx, sess, last, shared, log); snap != nil {
		return g.assign(ctx, maildrop, snap, changed, since)
	}
	entries, err := sess.Snapshot(ctx)
	if err != nil {
		return listed{}, err
	}
	// A store may learn the mailbox's state only by listing it (Graph).
	state = sess.Selected()
	ids, previous := identitiesWithPrevious(entries)
	snap := &snapshot{state: state, entries: listedEntries(entries), ids: ids, ext: newExtent(len(entries))}
	if err := checkIDs(snap.entries); err != nil {
		return listed{}, err
	}
	if err := g.adopt(ctx, maildrop, ids, previous); err != nil {
		return listed{}, err
	}
	return g.assign(ctx, maildrop, snap, nil, since)
}

// askAll tells whether the state store must be asked for every message
// of the maildrop, its answers remembered with last not to be trusted: a
// store that other processes write too, unless it is a GenerationStore
// whose generation is the one last was stamped with.
func (g *Gateway) askAll(ctx context.Context, maildrop string, last *snapshot, log *slog.Logger) bool {
	if _, shared := g.state.(SharedStateStore); !shared {
		return false
	}
	gs, ok := g.state.(GenerationStore)
	if !ok || last == nil || last.uidls == nil || last.gen == "" {
		return true
	}
	gen, err := gs.Generation(ctx, maildrop)
	if err != nil {
		log.Warn("reading the state store's generation failed; asking it for every message", "err", err)
		return true
	}
	return gen != last.gen
}

// stamp marks snap's answers with the state store's generation after the
// gateway's own writes, for a GenerationStore; for another store shared
// with other processes, or when the generation cannot be read, it drops
// them, so the next login asks for every message again. The maildrop's
// lock keeps other processes from writing its state meanwhile.
func (g *Gateway) stamp(ctx context.Context, maildrop string, snap *snapshot) {
	if _, shared := g.state.(SharedStateStore); !shared {
		return
	}
	gen := ""
	if gs, ok := g.state.(GenerationStore); ok {
		gen, _ = gs.Generation(ctx, maildrop)
	}
	if gen == "" {
		snap.uidls, snap.hidden, snap.listing = nil, nil, nil
	}
	snap.gen = gen
}

// adopt carries the UIDLs of messages the state store knows by their
// digest over to their store ids (see StateStore.Adopt): a store that
// starts giving permanent ids, or a gateway that starts asking for them,
// makes no client download anything again. Only a whole listing needs
// it: a message merged in as new is new.
func (g *Gateway) adopt(ctx context.Context, maildrop string, ids, previous []string) error {
	if previous == nil {
		return nil
	}
	var adopting, from []string
	for i, p := range previous {
		if p != "" {
			adopting, from = append(adopting, ids[i]), append(from, p)
		}
	}
	if err := g.state.Adopt(ctx, maildrop, adopting, from); err != nil {
		return fmt.Errorf("recording UIDLs: %w", err)
	}
	return nil
}

// assign asks the state store for the UIDLs of the listing's messages:
// of those at the indices changed only, when the listing carries the
// others' already, else of all. The listing is remembered with the
// answer and the POP3 listing made of it (snapshot.listing), unless the
// state store is shared and cannot tell when it changes (stamp), when
// the next login must ask again; and only if the snapshots' generation
// is since, unless since is 0.
func (g *Gateway) assign(ctx context.Context, maildrop string, snap *snapshot, changed []int, since uint64) (listed, error) {
	uidls, hidden := snap.uidls, snap.hidden
	switch {
	case uidls == nil:
		proposed := make([]string, len(snap.entries))
		for i, e := range snap.entries {
			proposed[i] = proposedUIDL(e)
		}
		var err error
		if uidls, hidden, err = g.state.Assign(ctx, maildrop, snap.ids, proposed); err != nil {
			return listed{}, fmt.Errorf("recording UIDLs: %w", err)
		}
		snap.uidls, snap.hidden = uidls, hidden
		g.stamp(ctx, maildrop, snap)
	case len(changed) > 0:
		ids := make([]string, len(changed))
		proposed := make([]string, len(changed))
		for j, i := range changed {
			ids[j], proposed[j] = snap.ids[i], proposedUIDL(snap.entries[i])
		}
		got, gotHidden, err := g.state.Assign(ctx, maildrop, ids, proposed)
		if err != nil {
			return listed{}, fmt.Errorf("recording UIDLs: %w", err)
		}
		for j, i := range changed {
			uidls[i], hidden[i] = got[j], gotHidden[j]
		}
		snap.listing = grownListing(snap, changed)
		g.stamp(ctx, maildrop, snap)
	}
	// stamp may have dropped the answer from snap; this login has it.
	if snap.listing == nil && snap.uidls != nil {
		snap.listing = pop3Listing(snap.entries, uidls, hidden)
	}
	shared := snap.listing
	g.snaps.putSince(maildrop, snap, since)
	return listed{snap, uidls, hidden, shared}, nil
}

// grownListing is the POP3 listing merged from the last one with the
// messages at the indices changed given their UIDLs: the last one's, with
// the new messages appended where they are, in the arrays the merge
// claimed, and a message ranked anew given its UIDL, in the arrays the
// merge made private (mergeChanges). Nil when there is no last one, or a
// message changed is not listed as the store lists it.
func grownListing(snap *snapshot, changed []int) []pop3.Message {
	listing := snap.listing
	if listing == nil {
		return nil
	}
	for _, i := range changed {
		if !listedAsIs(snap.entries[i], snap.hidden[i]) {
			return nil
		}
		if i < len(listing) {
			listing[i].UIDL = snap.uidls[i]
		}
	}
	for i := len(listing); i < len(snap.entries); i++ {
		listing = append(listing, pop3.Message{Size: snap.entries[i].Size, UIDL: snap.uidls[i]})
	}
	return listing
}

// merged is the listing last merged with the store's changes since, and
// the indices of the messages whose identities are new to it; nil when
// the store cannot say, or its answer does not add up. With the state
// store's answer remembered and not shared, the merged listing carries it
// for every message but those.
func (g *Gateway) merged(ctx context.Context, sess Session, last *snapshot, shared bool, log *slog.Logger) (*snapshot, []int) {
	cl, ok := sess.(changeLister)
	state := sess.Selected()
	if !ok || last == nil || last.state.Epoch != state.Epoch {
		return nil, nil
	}
	ch, err := cl.Changes(ctx, last.state)
	if err != nil {
		if state.State == "" {
			// A store that cannot tell its state (IMAP without UIDNEXT)
			// cannot tell its changes either: no news.
			log.Debug("listing the mailbox's changes failed; listing every message", "err", err)
		} else {
			log.Warn("listing the mailbox's changes failed; listing every message", "err", err)
		}
		return nil, nil
	}
	// A store that learns its state only while listing its changes
	// (Graph: the delta round's link) reports it now.
	state = sess.Selected()
	snap, changed, why := mergeChanges(last, ch, state, last.uidls != nil && !shared)
	if snap == nil {
		log.Warn("the mailbox's changes do not add up; listing every message", "why", why)
		return nil, nil
	}
	log.Debug("listing merged from the last one", "added", len(ch.Added), "kept", len(snap.entries)-len(ch.Added))
	return snap, changed
}

// mergeChanges merges ch into the listing last, checking that it adds up
// to the mailbox in state; why says what did not. withUIDLs copies the
// state store's answer for the messages that stay.
func mergeChanges(last *snapshot, ch upstream.Changes, state upstream.Mailbox, withUIDLs bool) (snap *snapshot, changed []int, why string) {
	if len(ch.Changed) > 0 {
		// Of the messages that came or changed, those the last listing
		// does not hold came.
		listed := make(map[upstream.ID]bool, len(last.entries))
		for _, e := range last.entries {
			listed[e.ID] = true
		}
		ch.Added = slices.Clip(ch.Added)
		for _, e := range ch.Changed {
			if !listed[e.ID] {
				ch.Added = append(ch.Added, e)
			}
		}
	}
	added := make(map[upstream.ID]bool, len(ch.Added))
	for _, e := range ch.Added {
		if e.ID == "" || added[e.ID] {
			return nil, nil, fmt.Sprintf("new message ID %q empty or given twice", e.ID)
		}
		added[e.ID] = true
	}
	removed := make(map[upstream.ID]bool, len(ch.Removed))
	for _, id := range ch.Removed {
		removed[id] = true
	}
	// Which messages of the last listing stay, when any went.
	var stays []bool
	kept := len(last.entries)
	if len(removed) > 0 || ch.Kept != nil {
		stays = make([]bool, len(last.entries))
		kept = 0
		found := 0
		for i, e := range last.entries {
			if removed[e.ID] {
				found++
				continue
			}
			if ch.Kept != nil && !ch.Kept(e.ID) {
				continue
			}
			stays[i] = true
			kept++
		}
		if found != len(removed) {
			return nil, nil, fmt.Sprintf("%d of the %d messages gone are not in the last listing", len(removed)-found, len(removed))
		}
	}
	if kept+len(ch.Added) != state.Messages {
		return nil, nil, fmt.Sprintf("%d kept and %d new messages, but the mailbox has %d", kept, len(ch.Added), state.Messages)
	}
	n := kept + len(ch.Added)
	snap = &snapshot{state: state}
	// Identities rank the copies of one message in listing order (see
	// identities): where a message went or came, the ranks of its copies
	// are counted again.
	recount := make(map[string]int)
	switch {
	case stays == nil && last.ext.extend(len(last.entries), n):
		// Only messages came: the merged listing is the last one with
		// them appended, in the same arrays where they have room, after
		// the last one's end, which it does not see.
		snap.entries, snap.ids = grown(last.entries, n), grown(last.ids, n)
		if withUIDLs {
			snap.uidls, snap.hidden = grown(last.uidls, n), grown(last.hidden, n)
			if len(last.listing) == len(last.entries) {
				// assign appends the new messages (grownListing).
				snap.listing = grown(last.listing, n)
			}
		}
		snap.ext = last.ext
		if withUIDLs && last.content > 0 {
			snap.counted, snap.countedBytes = len(last.entries), last.content
		}
	default:
		snap.entries = make([]listedEntry, 0, roomFor(n))
		snap.ids = make([]string, 0, roomFor(n))
		if withUIDLs {
			snap.uidls = make([]string, 0, roomFor(n))
			snap.hidden = make([]bool, 0, roomFor(n))
		}
		snap.ext = newExtent(n)
		// Copied a run of messages that stay at a time: all of them, when
		// none went.
		stay := func(i int) bool { return stays == nil || stays[i] }
		for i := 0; i < len(last.entries); {
			if !stay(i) {
				recount[identityBase(last.ids[i])] = 0
				i++
				continue
			}
			end := i + 1
			for end < len(last.entries) && stay(end) {
				end++
			}
			snap.entries = append(snap.entries, last.entries[i:end]...)
			snap.ids = append(snap.ids, last.ids[i:end]...)
			if withUIDLs {
				snap.uidls = append(snap.uidls, last.uidls[i:end]...)
				snap.hidden = append(snap.hidden, last.hidden[i:end]...)
			}
			i = end
		}
	}
	if len(added) > 0 {
		isAdded := lookup(added)
		for _, e := range snap.entries {
			if isAdded(e.ID) {
				return nil, nil, fmt.Sprintf("new message ID %q already listed", e.ID)
			}
		}
	}
	bases := make([]string, len(ch.Added))
	var buf []byte
	for i, e := range ch.Added {
		var digest [16]byte
		digest, buf = identityDigest(e, buf)
		bases[i] = entryBase(e, digest)
		recount[bases[i]] = 0
	}
	if len(recount) > 0 && len(snap.ids) > 0 {
		recounted := lookup(recount)
		for i, id := range snap.ids {
			base := identityBase(id)
			if !recounted(base) {
				continue
			}
			rank := recount[base]
			recount[base] = rank + 1
			if now := rankedIdentity(base, rank); now != id {
				if snap.ext == last.ext {
					// Appending never ranks a message listed before
					// anew; should it, the arrays it shares with the
					// last listing are not written.
					snap.privatise()
				}
				snap.ids[i] = now
				changed = append(changed, i)
			}
		}
	}
	for i, e := range ch.Added {
		rank := recount[bases[i]]
		recount[bases[i]] = rank + 1
		changed = append(changed, len(snap.entries))
		snap.entries = append(snap.entries, listedEntryOf(e))
		snap.ids = append(snap.ids, rankedIdentity(bases[i], rank))
		if withUIDLs {
			snap.uidls = append(snap.uidls, "")
			snap.hidden = append(snap.hidden, false)
		}
	}
	return snap, changed, ""
}

// lookup tells whether a key is one of m's. Merging looks up every
// message of a large listing in the few that came or went: comparing
// with each of a few keys costs less than hashing.
func lookup[K ~string, V any](m map[K]V) func(K) bool {
	if len(m) > 8 {
		return func(k K) bool {
			_, ok := m[k]
			return ok
		}
	}
	keys := slices.Collect(maps.Keys(m))
	return func(k K) bool { return slices.Contains(keys, k) }
}

// checkIDs refuses a listing with a message the store gave no ID: it
// could be neither served nor deleted. (Each ID once is the store's
// promise; checking it would cost a set of the whole mailbox per listing.)
func checkIDs(entries []listedEntry) error {
	for _, e := range entries {
		if e.ID == "" {
			return errors.New("the store listed a message without an ID")
		}
	}
	return nil
}
