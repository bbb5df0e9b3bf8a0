// Package memstore is a mail store in memory behind the gateway's store
// seam (proxy.Store): no IMAP, no network. Tests run the POP3 rules of
// package proxy through it, to show that those rules hold for any store,
// and that a store needs nothing but the seam.
//
// Messages are kept as given, so a body with bare LF is listed at its raw
// size, as some IMAP servers list it. Its IDs are not numbers ("m-" and
// hex digits), nor in the order of the listing, so that tests show the
// gateway neither parses nor orders them; it suggests its IDs as UIDLs,
// as a JMAP store suggests its Email ids. Renumber gives every message a
// new ID in a new epoch, as a rebuilt IMAP mailbox does. It reads one
// message per request: fetching ahead takes them one by one. It lists its
// changes since an earlier state with the IDs that went, as a store that
// knows what it removed does (JMAP's Email/changes); wrap a session to
// hide that, for a store that lists everything. UnknownSizes makes it list
// no sizes, as Graph does.
package memstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// Store holds the mailboxes of its users. It is safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	accounts map[string]*account
	// failDeletes makes that many deletes fail before they change
	// anything, as a connection lost at the command would.
	failDeletes int
	logins      int
	bodies      int
	listings    int
	changes     int
	// cutAfter makes the next whole body end after that many octets with
	// the connection lost, as a server that drops mid-message.
	cutAfter int64
	// identities makes listings carry each message's permanent id.
	identities bool
	// sizeless lists every message with upstream.SizeUnknown, as a store
	// that has no MIME size does (Graph).
	sizeless bool
}

type account struct {
	password string
	epoch    int    // a new one after Renumber
	next     uint32 // the number of the next message delivered in the epoch
	// seq counts the changes to the inbox; the state is "s" and seq.
	seq   uint64
	inbox []*message // in delivery order
	gone  []removal  // the messages removed in this epoch
	trash [][]byte
}

type message struct {
	id      upstream.ID
	n       uint32 // its number within the epoch
	added   uint64 // the seq that delivered it
	hash    string // permanent: a hash of the octets, as Cyrus's EMAILID
	body    []byte
	arrived time.Time
	deleted bool // \Deleted: gone at the next expunge
	seen    bool
}

// New returns an empty store.
func New() *Store { return &Store{accounts: make(map[string]*account)} }

// AddUser creates a user with an empty inbox.
func (s *Store) AddUser(name, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accounts[name] = &account{password: password, epoch: 1, next: 1}
}

// removal is a message that went, and the seq that removed it.
type removal struct {
	id             upstream.ID
	added, removed uint64
}

// id is the ID of the n-th message of the epoch: the same in every Store
// for the same deliveries.
func (a *account) id(n uint32) upstream.ID {
	sum := sha256.Sum256(fmt.Appendf(nil, "%d/%d", a.epoch, n))
	return upstream.ID("m-" + hex.EncodeToString(sum[:6]))
}

// remove takes the messages for which gone is true out of the inbox.
func (a *account) remove(gone func(*message) bool) {
	a.seq++
	a.inbox = slices.DeleteFunc(a.inbox, func(m *message) bool {
		if !gone(m) {
			return false
		}
		a.gone = append(a.gone, removal{id: m.id, added: m.added, removed: a.seq})
		return true
	})
}

// Deliver appends messages to the user's inbox.
func (s *Store) Deliver(user string, bodies ...[]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.accounts[user]
	a.seq++
	for _, b := range bodies {
		sum := sha256.Sum256(b)
		a.inbox = append(a.inbox, &message{id: a.id(a.next), n: a.next, added: a.seq, hash: fmt.Sprintf("memstore:%x", sum[:12]), body: bytes.Clone(b), arrived: time.Unix(int64(1e9+a.next), 0)})
		a.next++
	}
}

// IDs returns the IDs of the user's messages, in the order they are
// listed.
func (s *Store) IDs(user string) []upstream.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []upstream.ID
	for _, m := range s.accounts[user].inbox {
		ids = append(ids, m.id)
	}
	return ids
}

// GiveIdentities makes every listing from now on carry each message's
// permanent id (Entry.Identity), as a store that has them (RFC 8474
// EMAILID, Gmail's X-GM-MSGID) does, or one that starts to. The id is a
// hash of the message's octets, as Cyrus's EMAILID is: copies of one
// message share it.
func (s *Store) GiveIdentities() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.identities = true
}

// Redate gives every message of the user's inbox a new arrival time, as
// a mailbox rebuilt by copying its messages may: only a permanent id
// then tells a message from its copy.
func (s *Store) Redate(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.accounts[user].inbox {
		m.arrived = m.arrived.Add(time.Hour)
	}
}

// Count returns the number of messages in the user's inbox.
func (s *Store) Count(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.accounts[user].inbox)
}

// Trash returns the number of messages in the user's trash.
func (s *Store) Trash(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.accounts[user].trash)
}

// Seen returns the number of messages in the user's inbox marked seen.
func (s *Store) Seen(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.accounts[user].inbox {
		if m.seen {
			n++
		}
	}
	return n
}

// Renumber gives every message of the user's inbox a new ID in a new
// epoch.
func (s *Store) Renumber(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.accounts[user]
	a.epoch++
	a.next = 1
	a.seq++
	a.gone = nil
	for _, m := range a.inbox {
		m.id, m.n, m.added = a.id(a.next), a.next, a.seq
		a.next++
	}
}

// UnknownSizes makes the store list its messages without sizes
// (upstream.SizeUnknown), as Graph does, or with them again.
func (s *Store) UnknownSizes(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sizeless = on
}

// FailDeletes makes the next n deletes fail, changing nothing.
func (s *Store) FailDeletes(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failDeletes = n
}

// Logins returns how many logins the store accepted.
func (s *Store) Logins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins
}

// CutAfter makes the connection that sends the next whole body drop it
// after n octets.
func (s *Store) CutAfter(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cutAfter = n
}

// Bodies returns how many message bodies, whole or in part, the store
// has sent.
func (s *Store) Bodies() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bodies
}

// Login implements proxy.Store.
func (s *Store) Login(ctx context.Context, login proxy.StoreLogin) (proxy.Session, error) {
	s.mu.Lock()
	a := s.accounts[login.Username]
	ok := a != nil && login.OAuth2 == "" && login.Password == a.password
	if ok {
		s.logins++
	}
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("memstore: %w", upstream.ErrAuthFailed)
	}
	sess := &session{store: s, acct: a}
	if _, err := sess.Select(ctx, login.Mailbox); err != nil {
		return nil, err
	}
	return sess, nil
}

var _ proxy.Store = (*Store)(nil)

type session struct {
	store  *Store
	acct   *account
	info   upstream.Mailbox
	closed bool
}

var errClosed = errors.New("memstore: session closed")

func (c *session) Select(ctx context.Context, mailbox string) (*upstream.Mailbox, error) {
	if c.closed {
		return nil, errClosed
	}
	if mailbox != "INBOX" {
		return nil, fmt.Errorf("memstore: no mailbox %q", mailbox)
	}
	c.store.mu.Lock()
	defer c.store.mu.Unlock()
	c.info = upstream.Mailbox{
		Name:     mailbox,
		Epoch:    "e" + strconv.Itoa(c.acct.epoch),
		State:    "s" + strconv.FormatUint(c.acct.seq, 10),
		Messages: len(c.acct.inbox),
	}
	info := c.info
	return &info, nil
}

func (c *session) Refresh(ctx context.Context) (upstream.Mailbox, error) {
	info, err := c.Select(ctx, c.info.Name)
	if err != nil {
		return upstream.Mailbox{}, err
	}
	return *info, nil
}

func (c *session) Selected() upstream.Mailbox { return c.info }

func (c *session) Snapshot(ctx context.Context) ([]upstream.Entry, error) {
	if c.closed {
		return nil, errClosed
	}
	c.store.mu.Lock()
	defer c.store.mu.Unlock()
	c.store.listings++
	entries := make([]upstream.Entry, 0, len(c.acct.inbox))
	for _, m := range c.acct.inbox {
		entries = append(entries, c.store.entry(m))
	}
	return entries, nil
}

// entry lists a message; s.mu must be held.
func (s *Store) entry(m *message) upstream.Entry {
	e := upstream.Entry{
		ID: m.id, UIDL: string(m.id), Size: int64(len(m.body)), Deleted: m.deleted,
		MessageID: messageID(m.body), InternalDate: m.arrived,
	}
	if s.identities {
		e.Identity = m.hash
	}
	if s.sizeless {
		e.Size = upstream.SizeUnknown
	}
	return e
}

func messageID(body []byte) string {
	end := bytes.Index(body, []byte("\n\n"))
	if i := bytes.Index(body, []byte("\r\n\r\n")); i >= 0 && (end < 0 || i < end) {
		end = i
	}
	if end < 0 {
		end = len(body)
	}
	for _, line := range bytes.Split(body[:end], []byte("\n")) {
		k, v, ok := bytes.Cut(bytes.TrimRight(line, "\r"), []byte(":"))
		if ok && textproto.CanonicalMIMEHeaderKey(string(k)) == "Message-Id" {
			return string(bytes.TrimSpace(v))
		}
	}
	return ""
}

func (c *session) find(id upstream.ID) (*message, bool) {
	c.store.mu.Lock()
	defer c.store.mu.Unlock()
	for _, m := range c.acct.inbox {
		if m.id == id {
			c.store.bodies++
			return m, true
		}
	}
	return nil, false
}

// body is a message's octets that know their length, as an IMAP literal
// does.
type body struct {
	*bytes.Reader
	size int64
}

func (b body) Size() int64  { return b.size }
func (b body) Close() error { return nil }

func (c *session) Open(ctx context.Context, id upstream.ID, offset, n int64) (io.ReadCloser, error) {
	if c.closed {
		return nil, errClosed
	}
	m, ok := c.find(id)
	if !ok {
		return nil, upstream.ErrMessageGone
	}
	raw := m.body[min(offset, int64(len(m.body))):]
	if n >= 0 && int64(len(raw)) > n {
		raw = raw[:n]
	}
	c.store.mu.Lock()
	cut := c.store.cutAfter
	if n < 0 && cut > 0 && cut < int64(len(raw)) {
		c.store.cutAfter = 0
	} else {
		cut = 0
	}
	c.store.mu.Unlock()
	if cut > 0 {
		return &cutBody{c: c, r: bytes.NewReader(raw[:cut]), size: int64(len(raw))}, nil
	}
	return body{bytes.NewReader(raw), int64(len(raw))}, nil
}

// cutBody is a body whose connection drops before its end.
type cutBody struct {
	c    *session
	r    *bytes.Reader
	size int64
}

var errCut = errors.New("memstore: connection lost mid-message")

func (b *cutBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.c.closed = true
		return n, errCut
	}
	return n, err
}

func (b *cutBody) Size() int64  { return b.size }
func (b *cutBody) Close() error { return nil }

func (c *session) DeleteJournaled(ctx context.Context, ids []upstream.ID, mode upstream.DeleteMode, trash string, copied func() error) error {
	if c.closed {
		return errClosed
	}
	s := c.store
	s.mu.Lock()
	if s.failDeletes > 0 {
		s.failDeletes--
		s.mu.Unlock()
		c.closed = true // as a connection lost mid-command
		return errors.New("memstore: connection lost")
	}
	s.mu.Unlock()
	marked := make(map[upstream.ID]bool, len(ids))
	for _, id := range ids {
		marked[id] = true
	}
	switch mode {
	case upstream.DeleteKeep:
		return nil
	case upstream.DeleteSeen:
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, m := range c.acct.inbox {
			if marked[m.id] {
				m.seen = true
			}
		}
		return nil
	case upstream.DeleteTrash:
		// A store without MOVE: copy, tell the journal, then remove.
		s.mu.Lock()
		for _, m := range c.acct.inbox {
			if marked[m.id] {
				c.acct.trash = append(c.acct.trash, m.body)
			}
		}
		s.mu.Unlock()
		if copied != nil {
			if err := copied(); err != nil {
				return err
			}
		}
	case upstream.DeleteExpunge:
	default:
		return fmt.Errorf("memstore: unknown delete mode %q", mode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.acct.remove(func(m *message) bool { return marked[m.id] })
	return nil
}

func (c *session) Alive() bool { return !c.closed }

func (c *session) Close() error {
	c.closed = true
	return nil
}

// Changes lists the messages delivered since the state since, and the
// IDs of those that were there then and went, as a store that knows what
// it removed would (JMAP's Email/changes, RFC 8620 §5.2).
func (c *session) Changes(ctx context.Context, since upstream.Mailbox) (upstream.Changes, error) {
	if c.closed {
		return upstream.Changes{}, errClosed
	}
	c.store.mu.Lock()
	defer c.store.mu.Unlock()
	seq, err := strconv.ParseUint(strings.TrimPrefix(since.State, "s"), 10, 64)
	if since.Epoch != "e"+strconv.Itoa(c.acct.epoch) || !strings.HasPrefix(since.State, "s") || err != nil || seq > c.acct.seq {
		return upstream.Changes{}, errors.New("memstore: no changes from another epoch or an unknown state")
	}
	c.store.changes++
	var ch upstream.Changes
	for _, m := range c.acct.inbox {
		if m.added > seq {
			ch.Added = append(ch.Added, c.store.entry(m))
		}
	}
	for _, r := range c.acct.gone {
		if r.removed > seq && r.added <= seq {
			ch.Removed = append(ch.Removed, r.id)
		}
	}
	return ch, nil
}

// Expunge removes the user's message with the given ID, as another mail
// program would.
func (s *Store) Expunge(user string, id upstream.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accounts[user].remove(func(m *message) bool { return m.id == id })
}

// Listings returns how many times the store listed every message, and
// how many times only the changes since an earlier listing.
func (s *Store) Listings() (all, changes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listings, s.changes
}
