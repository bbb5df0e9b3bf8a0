package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// maildrop is one POP3 session's view of an upstream mailbox: the UIDs
// present at login, in UID order, are messages 1 to n for the whole
// session (RFC 1939 §4).
//
// Sizes. POP3 sizes count the octets RETR sends, with CRLF line endings
// (RFC 1939 §11). The listing starts from the server's RFC822.SIZE, which
// is that count for a correct server, or from the exact size the cache
// recorded when the message was last read through this gateway. A server
// can be wrong (bare LF stored as is, or a provider's estimate), and the
// only proof is the message itself: every read counts the octets it
// produces, and when the count differs, the exact one replaces the listed
// one for the rest of the session and is recorded, so later sessions list
// it right from the start. Fetching every message at login to check would
// cost far more than the rare mismatch; the RETR that finds one still
// sends the whole message.
type maildrop struct {
	g       *Gateway
	sess    *upstream.Session
	acct    *account
	up      *Upstream
	log     *slog.Logger
	account string
	valid   uint32
	uids    []uint32
	ids     []string        // identities, for the state store
	pending []pendingDelete // deletes of earlier sessions not finished yet
	msgs    []pop3.Message
	unlock  func()
	broken  bool // an upstream command failed: the connection is not reused

	// A batch of messages fetched ahead in the background. Every use of
	// sess waits for it first; it touches nothing but the cache, the
	// channels in ready, and prefetchErr before closing prefetching.
	prefetching chan struct{}         // closed when the batch ends
	ready       map[int]chan struct{} // closed when that message is cached, or the batch ends
	prefetchErr error
}

var errMessageGone = &pop3.Error{Text: "Message was removed by another client."}

func (g *Gateway) newMaildrop(ctx context.Context, sess *upstream.Session, acct *account, log *slog.Logger) (*maildrop, error) {
	pending, err := g.finishDeletes(ctx, sess, acct, log)
	if err != nil {
		return nil, err
	}
	state := sess.Selected()
	entries, ids, ok := g.snaps.get(acct.maildrop(), state)
	if !ok {
		if entries, err = sess.Snapshot(ctx); err != nil {
			return nil, err
		}
		ids = identities(entries)
		g.snaps.put(acct.maildrop(), state, entries, ids)
	}
	m := &maildrop{
		g:       g,
		sess:    sess,
		acct:    acct,
		up:      acct.upstream,
		log:     log,
		account: acct.key(),
		valid:   sess.Selected().UIDValidity,
		pending: pending,
		uids:    make([]uint32, 0, len(entries)),
		ids:     make([]string, 0, len(entries)),
		msgs:    make([]pop3.Message, 0, len(entries)),
	}
	deleting := pendingUIDs(pending)
	proposed := make([]string, len(entries))
	for i, e := range entries {
		proposed[i] = uidl(m.valid, e.UID)
	}
	uidls, hidden, err := g.assign(ctx, acct.maildrop(), ids, proposed)
	if err != nil {
		return nil, fmt.Errorf("recording UIDLs: %w", err)
	}
	for i, e := range entries {
		// A message flagged \Deleted goes at the next expunge by anyone,
		// perhaps a delete of ours that a server without UIDPLUS could not
		// finish; one the client deleted in a mode that keeps mail is
		// hidden, and so is one whose delete is still pending. Listing any
		// of them would serve it again.
		if e.Deleted || hidden[i] || deleting[e.UID] {
			continue
		}
		m.uids = append(m.uids, e.UID)
		m.ids = append(m.ids, ids[i])
		size := e.Size
		if exact, ok := g.cache.Size(cache.Key{Account: m.account, Mailbox: m.up.Mailbox, UIDValidity: m.valid, UID: e.UID}); ok {
			size = exact
		}
		m.msgs = append(m.msgs, pop3.Message{Size: size, UIDL: uidls[i]})
	}
	return m, nil
}

// uidl is the unique-id (RFC 1939 §7) a message gets when the gateway
// first lists it; the StateStore keeps it for the message from then on,
// under any later UIDVALIDITY. It is the UID and the mailbox's
// UIDVALIDITY, each as eight lower-case hex digits. That is what
// Dovecot's default pop3_uidl_format (%08Xu%08Xv) produces, so clients
// moving from Dovecot's own POP3 server to the gateway in front of the same
// mailbox do not download everything again.
func uidl(uidValidity, uid uint32) string {
	const hex = "0123456789abcdef"
	var b [16]byte
	for i := 7; i >= 0; i-- {
		b[i] = hex[uid&0xf]
		b[8+i] = hex[uidValidity&0xf]
		uid >>= 4
		uidValidity >>= 4
	}
	return string(b[:])
}

func (m *maildrop) key(i int) cache.Key {
	return cache.Key{Account: m.account, Mailbox: m.up.Mailbox, UIDValidity: m.valid, UID: m.uids[i]}
}

func (m *maildrop) Messages() []pop3.Message { return m.msgs }

// Open serves the message from the cache, or fetches it. A message the
// cache can hold is read whole before Open returns, so the size announced
// by RETR is the exact one and a failure upstream is a clean -ERR rather
// than a cut transfer. Larger messages stream through as they arrive.
func (m *maildrop) Open(ctx context.Context, i int) (io.ReadCloser, error) {
	if r, ok := m.cached(i); ok {
		return r, nil
	}
	m.wait()
	sess, err := m.session(ctx)
	if err != nil {
		return nil, err
	}
	// The message comes in one batch with those after it; if the batch
	// fails before it, it is fetched alone.
	if m.prefetch(i) {
		if r, ok := m.cached(i); ok {
			return r, nil
		}
		m.wait()
		if sess, err = m.session(ctx); err != nil {
			return nil, err
		}
	}
	k := m.key(i)
	fetchCtx, abandon := context.WithCancel(ctx)
	raw, err := sess.Fetch(fetchCtx, m.uids[i])
	if err != nil {
		abandon()
		if errors.Is(err, upstream.ErrMessageGone) {
			return nil, errMessageGone
		}
		m.broken = true
		return nil, err
	}
	r := &messageReader{m: m, i: i, ctx: ctx, abandon: abandon, raw: raw, r: pop3.NewCRLFReader(raw)}
	limit := m.g.cache.MaxMessage()
	if m.msgs[i].Size > limit {
		return r, nil
	}
	body, whole, err := readUpTo(r.r, m.msgs[i].Size, limit)
	if err != nil {
		r.err = err
		m.broken = true
		r.Close()
		return nil, err
	}
	if !whole {
		// The server's size was too small: send what was read, then the
		// rest as it comes.
		r.n = int64(len(body))
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(body), r), r}, nil
	}
	r.eof = true
	r.Close()
	m.g.cache.Add(k, body)
	m.setSize(i, int64(len(body)))
	m.prefetch(i + 1)
	return io.NopCloser(bytes.NewReader(body)), nil
}

// readUpTo reads r to its end into one buffer sized for the expected
// length, unless it holds more than limit octets: then it returns what it
// read with whole == false.
func readUpTo(r io.Reader, expected, limit int64) (body []byte, whole bool, err error) {
	body = make([]byte, 0, min(expected+2, limit)+1)
	for {
		if int64(len(body)) > limit {
			return body, false, nil
		}
		if len(body) == cap(body) {
			body = slices.Grow(body, len(body))
		}
		n, err := r.Read(body[len(body):min(int64(cap(body)), limit+1)])
		body = body[:len(body)+n]
		if err == io.EOF {
			return body, int64(len(body)) <= limit, nil
		}
		if err != nil {
			return body, false, err
		}
	}
}

// cached serves message i from the cache, waiting for it if it is being
// fetched ahead, and fetches ahead of it.
func (m *maildrop) cached(i int) (io.ReadCloser, bool) {
	m.waitMessage(i)
	body, ok := m.g.cache.Get(m.key(i))
	if !ok {
		return nil, false
	}
	m.setSize(i, int64(len(body)))
	m.prefetch(i + 1)
	return io.NopCloser(bytes.NewReader(body)), true
}

// Fetching ahead: after a message is served, the next ones the cache can
// hold are fetched in the background with one UID FETCH, up to
// prefetchCount messages or prefetchBytes, so the server's transfers
// overlap the client's and cost one round trip per batch.
const (
	prefetchCount = 16
	prefetchBytes = 4 << 20
)

// errLargerThanListed stops a batch at a message larger than its listed
// size allows to cache; RETR streams it instead.
var errLargerThanListed = errors.New("message larger than listed")

// prefetch starts fetching the messages from i on that are not cached yet,
// unless a batch is already under way, and tells whether message i is in
// the batch it started.
func (m *maildrop) prefetch(i int) bool {
	if !m.g.prefetch || m.up.NoFetchAhead || m.broken || !m.sess.Alive() {
		return false
	}
	if m.prefetching != nil {
		select {
		case <-m.prefetching:
			m.endPrefetch()
		default:
			return false
		}
	}
	limit := m.g.cache.MaxMessage()
	var (
		uids  []uint32
		keys  = make(map[uint32]cache.Key)
		sizes = make(map[uint32]int64)
		ready = make(map[int]chan struct{})
		index = make(map[uint32]chan struct{})
		total int64
	)
	for j := i; j < len(m.uids) && len(uids) < prefetchCount; j++ {
		size := m.msgs[j].Size
		if size > limit || total+size > prefetchBytes && len(uids) > 0 {
			break
		}
		k := m.key(j)
		if _, cached := m.g.cache.Peek(k); cached {
			continue
		}
		uid := m.uids[j]
		uids = append(uids, uid)
		keys[uid], sizes[uid] = k, size
		ready[j] = make(chan struct{})
		index[uid] = ready[j]
		total += size
	}
	if len(uids) == 0 {
		return false
	}
	done := make(chan struct{})
	m.prefetching, m.ready = done, ready
	sess := m.sess
	go func() {
		defer close(done)
		defer func() {
			for _, ch := range index {
				close(ch)
			}
		}()
		m.prefetchErr = sess.FetchEach(context.Background(), uids, func(uid uint32, body io.Reader) error {
			ch, ok := index[uid]
			if !ok {
				return nil
			}
			data, whole, err := readUpTo(pop3.NewCRLFReader(body), sizes[uid], limit)
			if err != nil {
				return err
			}
			if !whole {
				return errLargerThanListed
			}
			m.g.cache.Add(keys[uid], data)
			delete(index, uid)
			close(ch)
			return nil
		})
	}()
	_, ok := ready[i]
	return ok
}

// waitMessage waits until message i, if it is being fetched ahead, is in
// the cache or its batch has failed.
func (m *maildrop) waitMessage(i int) {
	if ch, ok := m.ready[i]; ok {
		<-ch
	}
}

// wait lets a batch fetched ahead finish before the session is used again.
func (m *maildrop) wait() {
	if m.prefetching == nil {
		return
	}
	<-m.prefetching
	m.endPrefetch()
}

func (m *maildrop) endPrefetch() {
	m.prefetching, m.ready = nil, nil
	if err := m.prefetchErr; err != nil {
		m.prefetchErr = nil
		m.log.Debug("fetching ahead failed", "err", err)
		if !m.sess.Alive() {
			m.broken = true
		}
	}
}

func (m *maildrop) setSize(i int, size int64) {
	if m.msgs[i].Size != size {
		m.log.Info("upstream size differs from the message; listing the exact size",
			"uid", m.uids[i], "listed", m.msgs[i].Size, "exact", size)
		m.msgs[i].Size = size
	}
}

// messageReader streams a message too large to cache from the server,
// normalised, and records its exact size once read to the end.
type messageReader struct {
	m       *maildrop
	i       int
	ctx     context.Context
	abandon context.CancelFunc // drops the upstream connection mid-transfer
	raw     io.ReadCloser
	r       io.Reader
	n       int64
	eof     bool
	err     error
}

func (r *messageReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.r.Read(p)
	r.n += int64(n)
	switch {
	case err == io.EOF:
		if !r.eof {
			r.eof = true
			r.finish()
		}
	case err != nil:
		r.err = err
		r.m.broken = true
	}
	return n, err
}

// finish records what a complete read learned: the exact size and, if it
// fits, the body.
func (r *messageReader) finish() {
	r.m.g.cache.SetSize(r.m.key(r.i), r.n)
	r.m.setSize(r.i, r.n)
}

// drainLimit is how much of a message Close reads to finish a transfer
// that was stopped early (TOP); with more left, dropping the connection and
// logging in again costs less.
const drainLimit = 256 << 10

// Close after a partial read (TOP) finishes the transfer: a short rest is
// drained; with more left, the connection is dropped, to be replaced at the
// next command.
func (r *messageReader) Close() error {
	defer r.abandon()
	if !r.eof && r.err == nil && r.ctx.Err() == nil && r.m.msgs[r.i].Size-r.n > drainLimit {
		r.abandon()
	}
	return r.raw.Close()
}

// Commit applies the upstream's delete mode to the marked messages.
//
// Expunge and trash: a journal of the deletes is recorded first and
// removed when they are done, so a QUIT cut short is finished by the next
// session; on a server without MOVE, the journal also records when the
// messages are in the trash, so that finishing never copies them twice.
//
// Seen and keep leave the messages on the server; they are recorded as
// hidden, so they are not served again to a client that deleted them
// (RFC 1939 §6 has QUIT remove them from the maildrop).
func (m *maildrop) Commit(ctx context.Context, deleted []int) (pop3.CommitResult, error) {
	m.wait()
	uids := make([]uint32, len(deleted))
	ids := make([]string, len(deleted))
	for j, i := range deleted {
		uids[j], ids[j] = m.uids[i], m.ids[i]
	}
	if hc, ok := m.g.locker.(HeldChecker); ok {
		held, err := hc.Held(ctx, m.acct.maildrop())
		if err != nil {
			return pop3.CommitResult{}, fmt.Errorf("checking the maildrop lock before deleting: %w", err)
		}
		if !held {
			m.log.Error("maildrop lock lost during the session; deleting nothing", "marked", len(uids))
			return pop3.CommitResult{}, errors.New("maildrop lock lost during the session")
		}
	}
	maildrop := m.acct.maildrop()
	mode := m.up.OnDelete
	if mode == upstream.DeleteSeen || mode == upstream.DeleteKeep {
		if mode == upstream.DeleteSeen {
			sess, err := m.session(ctx)
			if err != nil {
				return pop3.CommitResult{}, err
			}
			if err := sess.Delete(ctx, uids, mode, m.up.Trash); err != nil {
				m.broken = true
				return pop3.CommitResult{}, err
			}
		}
		if err := m.g.hide(ctx, maildrop, ids); err != nil {
			return pop3.CommitResult{}, fmt.Errorf("hiding deleted messages: %w", err)
		}
		m.log.Info("deleted messages hidden, kept upstream", "count", len(uids), "mode", mode)
		return pop3.CommitResult{Kept: len(uids)}, nil
	}
	sess, err := m.session(ctx)
	if err != nil {
		return pop3.CommitResult{}, err
	}
	journal := append(slices.Clip(m.pending), pendingDelete{UIDValidity: m.valid, UIDs: uids, Mode: mode, Trash: m.up.Trash})
	if err := m.g.writeJournal(ctx, maildrop, journal); err != nil {
		return pop3.CommitResult{}, err
	}
	// Whatever happens now, the listing remembered may be wrong: messages
	// flagged \Deleted but not expunged leave the mailbox's counts as
	// they were.
	defer m.g.snaps.forget(maildrop)
	err = sess.DeleteJournaled(ctx, uids, mode, m.up.Trash, func() error {
		journal[len(journal)-1].Copied = true
		return m.g.writeJournal(ctx, maildrop, journal)
	})
	if err != nil {
		m.broken = true
		return pop3.CommitResult{}, err
	}
	if err := m.g.writeJournal(ctx, maildrop, m.pending); err != nil {
		// The deletes are done; the next session repeats them harmlessly.
		m.log.Warn("clearing the pending-delete journal failed", "err", err)
	}
	m.log.Info("deletes applied", "count", len(uids), "mode", mode)
	return pop3.CommitResult{Removed: len(uids)}, nil
}

// session returns the upstream session, logging in again if the connection
// was dropped: deliberately after a stopped transfer, or by the server
// while the client was idle. The snapshot stays valid only while the
// mailbox keeps its UIDVALIDITY.
func (m *maildrop) session(ctx context.Context) (*upstream.Session, error) {
	if m.sess.Alive() {
		return m.sess, nil
	}
	m.sess.Close()
	sess, err := m.g.open(ctx, m.acct)
	if err != nil {
		return nil, fmt.Errorf("reconnecting: %w", err)
	}
	m.sess = sess
	if v := sess.Selected().UIDValidity; v != m.valid {
		return nil, fmt.Errorf("reconnecting: UIDVALIDITY changed from %d to %d", m.valid, v)
	}
	m.log.Debug("upstream connection replaced")
	return sess, nil
}

// Close logs out of the server and releases the maildrop.
// The connection goes back to the pool if it is sound: no command of this
// session failed on it.
func (m *maildrop) Close() error {
	m.wait()
	if m.broken {
		m.sess.Close()
	} else {
		m.g.pool.put(m.acct.maildrop(), m.acct, m.sess)
	}
	if m.unlock != nil {
		m.unlock()
	}
	return nil
}
