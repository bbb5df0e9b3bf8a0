package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/pop3gw/gateway/upstream"
)

// StateStore keeps what the sessions of a maildrop must agree on across
// gateway restarts, replicas and changes of the store's epoch (IMAP:
// UIDVALIDITY). A maildrop is named by an opaque string that holds a user
// name, so stores keep it hashed; a message by its identity, a string
// derived from what the store keeps when its IDs change (see identities).
//
// Every write is recorded when the method returns (on disk, for a store
// on disk): a UIDL is shown to a client only after it is recorded, so a
// crash can never give the same message a second UIDL (RFC 1939 §7: a
// unique-id is stable across sessions).
type StateStore interface {
	// Assign returns the UIDL recorded for each of ids, and whether the
	// message is hidden. An identity seen for the first time is given
	// proposed[i], or, should another identity of the maildrop already
	// hold that UIDL, the first of proposed[i]+"-1", proposed[i]+"-2", ...
	// that none holds, so UIDLs stay unique within the maildrop.
	Assign(ctx context.Context, maildrop string, ids, proposed []string) (uidls []string, hidden []bool, err error)
	// Adopt lets a message keep its UIDL when the gateway starts naming
	// it differently (a store that begins to give permanent ids): each
	// ids[i] that has no UIDL yet takes the UIDL of previous[i], and its
	// hidden mark, if previous[i] still holds that UIDL. The UIDL's holder
	// becomes ids[i], so no other identity can adopt it again; previous[i]
	// keeps its record, for a gateway of an older version sharing the
	// store. An empty previous[i] adopts nothing.
	Adopt(ctx context.Context, maildrop string, ids, previous []string) error
	// Hide records that the client deleted these messages but the upstream
	// keeps them (on_delete seen or keep): later listings leave them out.
	Hide(ctx context.Context, maildrop string, ids []string) error
	// Journal returns the maildrop's pending-delete journal, nil when there
	// is none.
	Journal(ctx context.Context, maildrop string) ([]byte, error)
	// SetJournal replaces the maildrop's journal; nil removes it.
	SetJournal(ctx context.Context, maildrop string, journal []byte) error
}

// SharedStateStore is a StateStore that other gateway processes write
// too, such as one in Redis shared by replicas. The gateway asks it at
// every login, since another process may have hidden messages meanwhile;
// the answers of any other store are remembered while the listing stays
// the same.
type SharedStateStore interface {
	StateStore
	SharedWithOtherProcesses()
}

// GenerationStore is a SharedStateStore that tells when any process
// last changed a maildrop's UIDLs or hidden marks: Generation returns a
// value that changes with every such change. The gateway then remembers
// the store's answers with the maildrop's listing, as for a store of its
// own, for as long as the generation stays the one it read after its own
// last write, and asks for every message again only once it moved.
type GenerationStore interface {
	SharedStateStore
	Generation(ctx context.Context, maildrop string) (string, error)
}

// SizeStore is a StateStore that also keeps the exact sizes the gateway
// measured for messages their store lists without one
// (upstream.SizeUnknown: Graph), by identity, so that a restarted gateway
// does not read them again. The message an identity names never changes.
type SizeStore interface {
	// Sizes returns the size recorded for each of ids, -1 where none is.
	Sizes(ctx context.Context, maildrop string, ids []string) ([]int64, error)
	// SetSizes records sizes[i] as the size of ids[i].
	SetSizes(ctx context.Context, maildrop string, ids []string, sizes []int64) error
}

// SetState replaces the in-memory state store, for instance by one on disk
// or shared among replicas. A store must be used by one Gateway only,
// unless it is a SharedStateStore. Call it before serving.
func (g *Gateway) SetState(s StateStore) { g.state = s }

// hide is g.state.Hide; the answer remembered with the maildrop's listing
// is stale after it.
func (g *Gateway) hide(ctx context.Context, maildrop string, ids []string) error {
	defer g.snaps.forgetAssignment(maildrop)
	return g.state.Hide(ctx, maildrop, ids)
}

// identities names each message of a listing by what survives a change of
// epoch (IMAP: UIDVALIDITY): the permanent id the store gives it
// (Entry.Identity), or else a digest of its Message-ID, size as the store
// reports it and arrival time. Messages with the same id or digest (a
// message delivered twice, mail without Message-ID arriving in the same
// second, or two byte-identical messages where the id is a content hash,
// as Cyrus's EMAILID is) are told apart by their rank among those in
// listing order, which a rebuild of the mailbox
// keeps; when the first of them goes, the next takes its rank, and so its
// UIDL and whether it is hidden: harmless between copies of one message.
func identities(entries []upstream.Entry) []string {
	ids, _ := identitiesWithPrevious(entries)
	return ids
}

// identitiesWithPrevious is identities, and for each message named by
// its store id the digest identity it had before the gateway saw that id
// ("" for the others; nil when no message has a store id), so the state
// store can carry its UIDL over (StateStore.Adopt). Digests are ranked
// among all messages, as when none had an id, so they are the identities
// recorded then.
func identitiesWithPrevious(entries []upstream.Entry) (ids, previous []string) {
	ids = make([]string, len(entries))
	// Digests are ranked among the messages named by them (as a merged
	// listing ranks them), and for previous among all.
	rank := make(map[[16]byte]int, len(entries))
	var rankAll map[[16]byte]int
	var idRank map[string]int
	var buf []byte
	for i, e := range entries {
		var digest [16]byte
		digest, buf = identityDigest(e, buf)
		if rankAll != nil || e.Identity != "" {
			if rankAll == nil {
				rankAll = maps.Clone(rank)
				previous = make([]string, len(entries))
				idRank = make(map[string]int, len(entries))
			}
			r := rankAll[digest]
			rankAll[digest] = r + 1
			if e.Identity != "" {
				previous[i] = identity(digest, r)
				r = idRank[e.Identity]
				idRank[e.Identity] = r + 1
				ids[i] = rankedIdentity(e.Identity, r)
				continue
			}
		}
		r := rank[digest]
		rank[digest] = r + 1
		ids[i] = identity(digest, r)
	}
	return ids, previous
}

// identityDigest is what identifies a message without a store id but for
// its rank; buf is scratch space, returned for reuse.
func identityDigest(e upstream.Entry, buf []byte) ([16]byte, []byte) {
	buf = append(buf[:0], e.MessageID...)
	buf = append(buf, 0)
	buf = binary.BigEndian.AppendUint64(buf, uint64(e.Size))
	buf = binary.BigEndian.AppendUint64(buf, uint64(e.InternalDate.Unix()))
	sum := sha256.Sum256(buf)
	return [16]byte(sum[:16]), buf
}

// identity is the identity of the message with the digest and rank:
// "d:" and the digest in hex, then ":" and the rank.
func identity(digest [16]byte, rank int) string {
	id := make([]byte, 0, len(identityPrefix)+32+1+4)
	id = append(id, identityPrefix...)
	id = hex.AppendEncode(id, digest[:])
	id = append(id, ':')
	id = strconv.AppendInt(id, int64(rank), 10)
	return string(id)
}

const identityPrefix = "d:"

// rankedIdentity is the identity of the message of the given base (a
// store id, or "d:" and a digest in hex) and rank.
func rankedIdentity(base string, rank int) string {
	return base + ":" + strconv.Itoa(rank)
}

// identityBase is an identity without its rank: a store id, or "d:" and
// the digest in hex. Neither kind holds a colon after its prefix.
func identityBase(id string) string {
	return id[:strings.LastIndexByte(id, ':')]
}

// entryBase is the base of the identity of a message with the digest.
func entryBase(e upstream.Entry, digest [16]byte) string {
	if e.Identity != "" {
		return e.Identity
	}
	return identityPrefix + hex.EncodeToString(digest[:])
}

// maxProposedUIDL is the longest UIDL the gateway takes from a store as
// is: RFC 1939 §7 allows 70 characters, and UIDLVariant may add a few.
const maxProposedUIDL = 64

// proposedUIDL is the UIDL that the message gets should the state store
// not know it yet: the one its store suggests, if it is a valid
// unique-id (RFC 1939 §7: 0x21 to 0x7E) short enough to take a variant;
// otherwise one made from it, or from the message's ID when the store
// suggests none (a JMAP Email id may be up to 255 characters long).
func proposedUIDL(e listedEntry) string {
	if validUIDL(e.UIDL, maxProposedUIDL) {
		return e.UIDL
	}
	from := e.UIDL
	if from == "" {
		from = string(e.ID)
	}
	sum := sha256.Sum256([]byte(from))
	return hex.EncodeToString(sum[:16])
}

// validUIDL tells whether u is a unique-id of at most max characters.
func validUIDL(u string, max int) bool {
	if u == "" || len(u) > max {
		return false
	}
	for i := 0; i < len(u); i++ {
		if u[i] < 0x21 || u[i] > 0x7e {
			return false
		}
	}
	return true
}

// UIDLVariant is the n-th alternative to a proposed UIDL that another
// message of the maildrop already holds; n counts from 1. Each StateStore
// uses it, so they all give the same UIDLs.
func UIDLVariant(proposed string, n int) string {
	return proposed + "-" + strconv.Itoa(n)
}

// pendingDelete is one QUIT's deletes, journaled before the first
// upstream command and removed from the journal once done, so that a QUIT
// cut short (a dropped connection, a crash) is finished by the next
// session of the maildrop before it lists.
type pendingDelete struct {
	Epoch string              `json:"epoch"`
	IDs   []upstream.ID       `json:"ids"`
	Mode  upstream.DeleteMode `json:"mode"`
	Trash string              `json:"trash,omitempty"`
	// Copied records that the messages are in the trash already (a server
	// without MOVE): what is left is the expunge, and a second COPY would
	// leave two copies there.
	Copied bool `json:"copied,omitempty"`
}

// UnmarshalJSON reads a journal entry, also as gateways recorded it
// before message IDs were strings: IMAP's UIDVALIDITY and UIDs as
// numbers, which the IMAP store names by their decimal forms.
func (d *pendingDelete) UnmarshalJSON(data []byte) error {
	type current pendingDelete // without this method
	var v struct {
		current
		UIDValidity uint32   `json:"uidvalidity"`
		UIDs        []uint32 `json:"uids"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*d = pendingDelete(v.current)
	if d.Epoch == "" && v.UIDValidity != 0 {
		d.Epoch = strconv.FormatUint(uint64(v.UIDValidity), 10)
		for _, uid := range v.UIDs {
			d.IDs = append(d.IDs, upstream.ID(strconv.FormatUint(uint64(uid), 10)))
		}
	}
	return nil
}

func (g *Gateway) readJournal(ctx context.Context, maildrop string) ([]pendingDelete, error) {
	data, err := g.state.Journal(ctx, maildrop)
	if err != nil || data == nil {
		return nil, err
	}
	var journal []pendingDelete
	if err := json.Unmarshal(data, &journal); err != nil {
		g.log.Error("unreadable pending-delete journal; ignoring it", "err", err)
		return nil, nil
	}
	return journal, nil
}

// writeJournal replaces the maildrop's journal; an empty one is removed.
func (g *Gateway) writeJournal(ctx context.Context, maildrop string, journal []pendingDelete) error {
	var data []byte
	if len(journal) > 0 {
		var err error
		if data, err = json.Marshal(journal); err != nil {
			return err
		}
	}
	if err := g.state.SetJournal(ctx, maildrop, data); err != nil {
		return fmt.Errorf("recording pending deletes: %w", err)
	}
	return nil
}

// finishDeletes completes the deletes that earlier sessions' QUITs left
// half done, as the maildrop's journal records them, and returns those it
// could not finish: their messages stay out of the listing, since the
// client deleted them, and the next session tries again. Deletes recorded
// in another epoch are dropped: their IDs name other messages now, or
// none. After any delete the mailbox's state is asked again.
func (g *Gateway) finishDeletes(ctx context.Context, sess Session, acct *account, log *slog.Logger) ([]pendingDelete, error) {
	maildrop := acct.maildrop()
	journal, err := g.readJournal(ctx, maildrop)
	if err != nil {
		return nil, fmt.Errorf("reading pending deletes: %w", err)
	}
	if len(journal) == 0 {
		return nil, nil
	}
	epoch := sess.Selected().Epoch
	var left []pendingDelete
	for i := range journal {
		d := &journal[i]
		if d.Epoch != epoch {
			log.Warn("pending deletes dropped: the mailbox's epoch (IMAP: UIDVALIDITY) changed", "messages", len(d.IDs))
			continue
		}
		mode := d.Mode
		if d.Mode == upstream.DeleteTrash && d.Copied {
			mode = upstream.DeleteExpunge
		}
		err := sess.DeleteJournaled(ctx, d.IDs, mode, d.Trash, func() error {
			d.Copied = true
			return g.writeJournal(ctx, maildrop, append(slices.Clip(left), journal[i:]...))
		})
		if err != nil {
			log.Warn("finishing pending deletes failed; their messages stay unlisted until it works", "err", err, "messages", len(d.IDs))
			left = append(left, *d)
			continue
		}
		log.Info("pending deletes finished", "messages", len(d.IDs), "mode", d.Mode)
	}
	if err := g.writeJournal(ctx, maildrop, left); err != nil {
		return nil, err
	}
	g.snaps.forget(maildrop)
	if _, err := sess.Refresh(ctx); err != nil {
		return nil, err
	}
	return left, nil
}

// pendingIDs is the set of messages whose deletes are pending.
func pendingIDs(journal []pendingDelete) map[upstream.ID]bool {
	ids := make(map[upstream.ID]bool)
	for _, d := range journal {
		for _, id := range d.IDs {
			ids[id] = true
		}
	}
	return ids
}

// MemoryState is a StateStore for one process: what it records is lost at
// exit. It serves tests and the demo.
type MemoryState struct {
	mu        sync.Mutex
	maildrops map[string]*memoryMaildrop
}

type memoryMaildrop struct {
	uidls   map[string]string // identity -> UIDL
	holders map[string]string // UIDL -> identity
	hidden  map[string]bool
	sizes   map[string]int64
	journal []byte
}

// NewMemoryState returns an empty MemoryState.
func NewMemoryState() *MemoryState {
	return &MemoryState{maildrops: make(map[string]*memoryMaildrop)}
}

func (s *MemoryState) maildrop(name string) *memoryMaildrop {
	md := s.maildrops[name]
	if md == nil {
		md = &memoryMaildrop{uidls: map[string]string{}, holders: map[string]string{}, hidden: map[string]bool{}, sizes: map[string]int64{}}
		s.maildrops[name] = md
	}
	return md
}

// Assign implements StateStore.
func (s *MemoryState) Assign(_ context.Context, maildrop string, ids, proposed []string) ([]string, []bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	md := s.maildrop(maildrop)
	uidls := make([]string, len(ids))
	hidden := make([]bool, len(ids))
	for i, id := range ids {
		u, ok := md.uidls[id]
		if !ok {
			u = proposed[i]
			for n := 1; ; n++ {
				if _, taken := md.holders[u]; !taken {
					break
				}
				u = UIDLVariant(proposed[i], n)
			}
			md.uidls[id] = u
			md.holders[u] = id
		}
		uidls[i], hidden[i] = u, md.hidden[id]
	}
	return uidls, hidden, nil
}

// Adopt implements StateStore.
func (s *MemoryState) Adopt(_ context.Context, maildrop string, ids, previous []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	md := s.maildrop(maildrop)
	for i, id := range ids {
		if _, ok := md.uidls[id]; ok || previous[i] == "" {
			continue
		}
		u, ok := md.uidls[previous[i]]
		if !ok || md.holders[u] != previous[i] {
			continue
		}
		md.uidls[id] = u
		md.holders[u] = id
		if md.hidden[previous[i]] {
			md.hidden[id] = true
		}
	}
	return nil
}

// Hide implements StateStore.
func (s *MemoryState) Hide(_ context.Context, maildrop string, ids []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	md := s.maildrop(maildrop)
	for _, id := range ids {
		md.hidden[id] = true
	}
	return nil
}

// Sizes implements SizeStore.
func (s *MemoryState) Sizes(_ context.Context, maildrop string, ids []string) ([]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	md := s.maildrop(maildrop)
	sizes := make([]int64, len(ids))
	for i, id := range ids {
		n, ok := md.sizes[id]
		if !ok {
			n = -1
		}
		sizes[i] = n
	}
	return sizes, nil
}

// SetSizes implements SizeStore.
func (s *MemoryState) SetSizes(_ context.Context, maildrop string, ids []string, sizes []int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	md := s.maildrop(maildrop)
	for i, id := range ids {
		md.sizes[id] = sizes[i]
	}
	return nil
}

// Journal implements StateStore.
func (s *MemoryState) Journal(_ context.Context, maildrop string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if md := s.maildrops[maildrop]; md != nil && md.journal != nil {
		return append([]byte(nil), md.journal...), nil
	}
	return nil, nil
}

// SetJournal implements StateStore.
func (s *MemoryState) SetJournal(_ context.Context, maildrop string, journal []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maildrop(maildrop).journal = append([]byte(nil), journal...)
	if journal == nil {
		s.maildrop(maildrop).journal = nil
	}
	return nil
}
