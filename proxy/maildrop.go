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

// maildrop is one POP3 session's view of an upstream mailbox: the
// messages present at login, in the order the store lists them, are
// messages 1 to n for the whole session (RFC 1939 §4).
//
// Sizes. POP3 sizes count the octets of the message as RETR sends it, with
// CRLF line endings, but not the CRLF that RETR adds to end a last line
// that has none (RFC 1939 §11; Dovecot's pop3d counts the same). The
// listing starts from the server's RFC822.SIZE, which is that count for a
// correct server, or from the exact size the cache recorded when the
// message was last read through this gateway; a store that knows no size
// has each such message read once at login (measure.go). A server
// can be wrong (bare LF stored as is, or a provider's estimate), and the
// only proof is the message itself: every read counts the octets it
// produces, and when the count differs, the exact one is recorded, so
// later sessions list it right from the start. The listing handed to the
// POP3 session never changes: Open returns the size as best known with
// each body, and the session takes that, or the count of a whole transfer,
// as the message's size from then on. Fetching every message at login to
// check would cost far more than the rare mismatch; the RETR that finds
// one still sends the whole message.
type maildrop struct {
	g       *Gateway
	sess    Session
	acct    *account
	up      *Upstream
	log     *slog.Logger
	account string
	epoch   string
	entries []listedEntry   // as listed; read-only, perhaps the remembered listing's
	ids     []string        // identities, for the state store; read-only too
	pending []pendingDelete // deletes of earlier sessions not finished yet
	listing []pop3.Message  // as listed at login; never changed, perhaps the remembered listing's
	sizes   []int64         // each message's size as best known, once one differs from the listing's (see size)
	unlock  func()
	broken  bool // an upstream command failed: the connection is not reused

	ahead *fetcher // fetches the following messages in the background
}

var errMessageGone = &pop3.Error{Text: "Message was removed by another client."}

// errNoBody answers RETR and TOP when the server listed the message but
// sent no body for it: a temporary failure (RFC 3206), never 0 octets.
var errNoBody = &pop3.Error{Code: pop3.CodeSysTemp, Text: "The server did not send this message; please try again later."}

func (g *Gateway) newMaildrop(ctx context.Context, sess Session, acct *account, log *slog.Logger) (*maildrop, error) {
	pending, err := g.finishDeletes(ctx, sess, acct, log)
	if err != nil {
		return nil, err
	}
	list, err := g.listing(ctx, sess, acct.maildrop(), log)
	if err != nil {
		return nil, err
	}
	entries, ids, uidls, hidden := list.entries, list.ids, list.uidls, list.hidden
	m := &maildrop{
		g:       g,
		sess:    sess,
		acct:    acct,
		up:      acct.upstream,
		log:     log,
		account: acct.key(),
		epoch:   list.state.Epoch,
		pending: pending,
	}
	deleting := pendingIDs(pending)
	// The sizes the cache recorded are asked for message by message only
	// if it has any for this mailbox: a poller that only lists a large
	// mailbox costs no lookup per message.
	exact := g.cache.HasSizes(cache.Key{Account: m.account, Mailbox: m.up.Mailbox, Epoch: m.epoch})
	if list.shared != nil && len(list.shared) == len(entries) && len(deleting) == 0 && !exact {
		// Every message is listed as the store lists it: the session
		// reads the POP3 listing remembered with the maildrop's, which a
		// poller's next login to a large mailbox then does not build
		// again. Its capacity is cut, so nothing appends to it.
		m.entries, m.ids = entries, ids
		m.listing = list.shared[:len(list.shared):len(list.shared)]
		m.ahead = newFetcher(ctx, m)
		return m, nil
	}
	m.listing = make([]pop3.Message, 0, len(entries))
	// A message flagged \Deleted goes at the next expunge by anyone,
	// perhaps a delete of ours that a server without UIDPLUS could not
	// finish; one the client deleted in a mode that keeps mail is hidden,
	// and so is one whose delete is still pending. Listing any of them
	// would serve it again. When none is left out, the session reads the
	// listing's entries and identities where they are.
	listed := func(i int) bool {
		return !entries[i].Deleted && !hidden[i] && (len(deleting) == 0 || !deleting[entries[i].ID])
	}
	m.entries, m.ids = entries, ids
	shared := true // m.entries and m.ids are the listing's
	for i, e := range entries {
		switch {
		case !listed(i):
			if shared {
				// Every message before this one is listed.
				m.entries = append(make([]listedEntry, 0, len(entries)), entries[:i]...)
				m.ids = append(make([]string, 0, len(entries)), ids[:i]...)
				shared = false
			}
			continue
		case !shared:
			m.entries, m.ids = append(m.entries, e), append(m.ids, ids[i])
		}
		size := e.Size
		if exact {
			if n, ok := g.cache.Size(cache.Key{Account: m.account, Mailbox: m.up.Mailbox, Epoch: m.epoch, ID: string(e.ID)}); ok {
				size = n
			}
		}
		m.listing = append(m.listing, pop3.Message{Size: size, UIDL: uidls[i]})
	}
	measured, err := m.measureUnknown(ctx)
	if err != nil {
		return nil, err
	}
	g.snaps.sized(acct.maildrop(), list.snapshot, measured)
	m.ahead = newFetcher(ctx, m)
	return m, nil
}

// id is message i's ID in the store.
func (m *maildrop) id(i int) upstream.ID { return m.entries[i].ID }

func (m *maildrop) key(i int) cache.Key {
	return cache.Key{Account: m.account, Mailbox: m.up.Mailbox, Epoch: m.epoch, ID: string(m.id(i))}
}

// Messages is the listing made at login, which the POP3 session reads
// and the maildrop keeps, read-only both (pop3.Maildrop): each corrects a
// size in a place of its own.
func (m *maildrop) Messages() []pop3.Message { return m.listing }

// Open serves the message from the cache, or fetches it. A message the
// cache can hold is read whole before Open returns, when the budget has
// room for it, so the size announced by RETR is the exact one and a
// failure upstream is a clean -ERR rather than a cut transfer. Larger
// messages, and any message when the budget is spent, stream through as
// they arrive.
func (m *maildrop) Open(ctx context.Context, i int) (io.ReadCloser, int64, error) {
	r, err := m.open(ctx, i, true)
	if err != nil {
		return nil, 0, err
	}
	return r, m.size(i), nil
}

// open is Open, fetching the following messages ahead only if ahead is
// set.
func (m *maildrop) open(ctx context.Context, i int, ahead bool) (io.ReadCloser, error) {
	if r, ok := m.cached(i, ahead); ok {
		return r, nil
	}
	m.ahead.wait()
	sess, err := m.session(ctx)
	if err != nil {
		return nil, err
	}
	// The message comes in one batch with those after it, handed
	// straight to this RETR; if the batch fails before it, it is fetched
	// alone.
	if ahead && m.ahead.start(i, true) {
		if got, ok := m.ahead.take(i); ok {
			return m.serveWhole(i, got.body, got.res, ahead), nil
		}
		m.ahead.wait()
		if sess, err = m.session(ctx); err != nil {
			return nil, err
		}
	}
	fetchCtx, abandon := context.WithCancel(ctx)
	raw, err := sess.Open(fetchCtx, m.id(i), 0, -1)
	if err != nil {
		abandon()
		return nil, m.fetchFailed(i, err)
	}
	if sized, ok := raw.(interface{ Size() int64 }); ok && sized.Size() == 0 && m.size(i) > 0 {
		// An empty literal for a message listed with octets is no
		// message either.
		raw.Close()
		abandon()
		m.log.Warn("the server sent an empty body for a listed message", "id", m.id(i), "listed", m.size(i))
		return nil, errNoBody
	}
	resumable := newResumingReader(m, i, fetchCtx, raw)
	r := &messageReader{m: m, i: i, ctx: ctx, abandon: abandon, raw: resumable, r: pop3.NewCRLFReader(resumable)}
	limit := m.g.cache.MaxMessage()
	if m.size(i) > limit {
		return r, nil
	}
	res := &reservation{budget: m.g.budget}
	body, whole, err := readUpTo(r.r, m.size(i), limit, res.fit)
	if err != nil {
		res.release()
		r.err = err
		m.broken = true
		r.Close()
		return nil, err
	}
	if !whole {
		// The server's size was too small, or the budget has no room for
		// the message: send what was read, then the rest as it comes.
		r.n = int64(len(body))
		return heldReader{io.MultiReader(bytes.NewReader(body), r), func() error {
			defer res.release()
			return r.Close()
		}}, nil
	}
	r.eof = true
	r.Close()
	return m.serveWhole(i, body, res, ahead), nil
}

// serveWhole serves message i, read whole into body under res, and keeps
// it in the cache if there is room. Once the cache holds the body, it
// counts there; otherwise the reservation lasts until the client has it.
func (m *maildrop) serveWhole(i int, body []byte, res *reservation, ahead bool) io.ReadCloser {
	release := res.release
	if held := m.g.cache.AddHeld(m.key(i), body); held != nil {
		res.release()
		release = held
	}
	m.recordSize(i, int64(len(body)))
	m.setSize(i, int64(len(body)))
	if ahead {
		m.ahead.start(i+1, false)
	}
	return heldReader{bytes.NewReader(body), func() error { release(); return nil }}
}

// heldReader sends a body and lets go of its memory when closed.
type heldReader struct {
	io.Reader
	close func() error
}

func (r heldReader) Close() error { return r.close() }

// reservation is the part of the gateway's budget one buffer holds.
type reservation struct {
	budget *cache.Budget
	n      int64
}

// fit makes the reservation n bytes, if the budget has room.
func (r *reservation) fit(n int64) bool {
	if n <= r.n {
		return true
	}
	if !r.budget.Reserve(n - r.n) {
		return false
	}
	r.n = n
	return true
}

func (r *reservation) release() {
	r.budget.Release(r.n)
	r.n = 0
}

// fetchFailed turns a failed fetch of message i into the error for the
// client.
func (m *maildrop) fetchFailed(i int, err error) error {
	switch {
	case errors.Is(err, upstream.ErrMessageGone):
		return errMessageGone
	case errors.Is(err, upstream.ErrNoBody):
		m.log.Warn("the server sent no body for a listed message", "id", m.id(i))
		return errNoBody
	}
	m.broken = true
	return err
}

// TOP reads a prefix of the message: topPrefix first, where most headers
// fit with room for a few lines of the body, doubling while the lines
// asked for are not in, up to topPrefixMax; past that, the whole message.
const (
	topPrefix    = 32 << 10
	topPrefixMax = 256 << 10
)

// OpenTop serves TOP from the cache, or from a prefix of the raw message
// (BODY.PEEK[]<0.n>, byte for byte what RETR sends) that grows until it
// holds the lines asked for, so that clients scanning headers do not
// download whole mailboxes. It fetches nothing ahead. TOP for more lines
// than the message can have (fetchmail asks for 99999999), or for more
// than the largest prefix holds, reads the whole message as RETR does.
func (m *maildrop) OpenTop(ctx context.Context, i int, lines int64) (io.ReadCloser, int64, error) {
	r, err := m.openTop(ctx, i, lines)
	if err != nil {
		return nil, 0, err
	}
	return r, m.size(i), nil
}

func (m *maildrop) openTop(ctx context.Context, i int, lines int64) (io.ReadCloser, error) {
	m.ahead.waitMessage(i)
	if body, ok := m.g.cache.Get(m.key(i)); ok {
		return io.NopCloser(bytes.NewReader(body)), nil
	}
	if lines >= m.size(i) {
		// Every line takes an octet at least: this is the whole message.
		return m.open(ctx, i, false)
	}
	m.ahead.wait()
	limit := m.g.cache.MaxMessage()
	var raw []byte
	for n := int64(topPrefix); len(raw) < topPrefixMax; n *= 2 {
		got, err := m.fetchPart(ctx, i, int64(len(raw)), n)
		if err != nil {
			return nil, err
		}
		raw = append(raw, got...)
		whole := int64(len(got)) < n
		if len(raw) == 0 && m.size(i) > 0 {
			m.log.Warn("the server sent an empty body for a listed message", "id", m.id(i), "listed", m.size(i))
			return nil, errNoBody
		}
		body, _ := io.ReadAll(pop3.NewCRLFReader(bytes.NewReader(raw)))
		if whole && int64(len(body)) <= limit {
			m.g.cache.Add(m.key(i), body)
			m.recordSize(i, int64(len(body)))
		}
		if whole || pop3.TopComplete(body, lines) {
			return io.NopCloser(bytes.NewReader(body)), nil
		}
	}
	return m.open(ctx, i, false)
}

// fetchPart reads at most n raw octets of message i from offset on,
// continuing on a new connection if the upstream one dies.
func (m *maildrop) fetchPart(ctx context.Context, i int, offset, n int64) ([]byte, error) {
	sess, err := m.session(ctx)
	if err != nil {
		return nil, err
	}
	part, err := sess.Open(ctx, m.id(i), offset, n)
	if err != nil {
		return nil, m.fetchFailed(i, err)
	}
	r := newResumingReader(m, i, ctx, part)
	r.base = offset
	got, err := io.ReadAll(io.LimitReader(r, n))
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		m.broken = true
		return nil, err
	}
	return got, nil
}

// readUpTo reads r to its end into one buffer sized for the expected
// length, unless it holds more than limit octets, or room refuses the
// buffer's next size: then it returns what it read with whole == false.
func readUpTo(r io.Reader, expected, limit int64, room func(int64) bool) (body []byte, whole bool, err error) {
	size := bufferSize(expected, limit)
	if !room(size) {
		return nil, false, nil
	}
	body = make([]byte, 0, size)
	for {
		if int64(len(body)) > limit {
			return body, false, nil
		}
		if len(body) == cap(body) {
			more := min(int64(len(body)), limit+1-int64(len(body)))
			if !room(int64(len(body)) + more) {
				return body, false, nil
			}
			body = slices.Grow(body, int(more))
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
// fetched ahead, and, if ahead is set, fetches ahead of it.
func (m *maildrop) cached(i int, ahead bool) (io.ReadCloser, bool) {
	m.ahead.waitMessage(i)
	body, release, ok := m.g.cache.Hold(m.key(i))
	if !ok {
		return nil, false
	}
	m.setSize(i, int64(len(body)))
	if ahead {
		m.ahead.start(i+1, false)
	}
	return heldReader{bytes.NewReader(body), func() error { release(); return nil }}, true
}

// recordSize keeps message i's exact size n for the listings to come
// (cache.SetSize), if the store lists the message otherwise. A size the
// store has right is not kept: a login then looks up no size per message
// in a mailbox whose listed sizes all hold (cache.HasSizes), however many
// of its messages were read before. Safe from any goroutine.
func (m *maildrop) recordSize(i int, n int64) {
	if n != m.entries[i].Size {
		m.g.cache.SetSize(m.key(i), n)
	}
}

// size is message i's size as best known: listed, then exact.
func (m *maildrop) size(i int) int64 {
	if m.sizes != nil {
		return m.sizes[i]
	}
	return m.listing[i].Size
}

// setSize records the exact size of message i, which Open and OpenTop
// return from then on. The listing is left as it is: it may be shared
// with other sessions, and a session corrects its own (pop3).
func (m *maildrop) setSize(i int, size int64) {
	if m.size(i) == size {
		return
	}
	m.log.Info("upstream size differs from the message; listing the exact size",
		"id", m.id(i), "listed", m.size(i), "exact", size)
	if m.sizes == nil {
		m.sizes = make([]int64, len(m.listing))
		for j, msg := range m.listing {
			m.sizes[j] = msg.Size
		}
	}
	m.sizes[i] = size
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
	r.m.recordSize(r.i, r.n)
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
	if !r.eof && r.err == nil && r.ctx.Err() == nil && r.m.size(r.i)-r.n > drainLimit {
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
	m.ahead.wait()
	msgs := make([]upstream.ID, len(deleted))
	ids := make([]string, len(deleted))
	for j, i := range deleted {
		msgs[j], ids[j] = m.id(i), m.ids[i]
	}
	if hc, ok := m.g.locker.(HeldChecker); ok {
		held, err := hc.Held(ctx, m.acct.maildrop())
		if err != nil {
			return pop3.CommitResult{}, fmt.Errorf("checking the maildrop lock before deleting: %w", err)
		}
		if !held {
			m.log.Error("maildrop lock lost during the session; deleting nothing", "marked", len(msgs))
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
			if err := sess.DeleteJournaled(ctx, msgs, mode, m.up.Trash, nil); err != nil {
				m.broken = true
				return pop3.CommitResult{}, err
			}
		}
		if err := m.g.hide(ctx, maildrop, ids); err != nil {
			return pop3.CommitResult{}, fmt.Errorf("hiding deleted messages: %w", err)
		}
		m.log.Info("deleted messages hidden, kept upstream", "count", len(msgs), "mode", mode)
		return pop3.CommitResult{Kept: len(msgs)}, nil
	}
	sess, err := m.session(ctx)
	if err != nil {
		return pop3.CommitResult{}, err
	}
	journal := append(slices.Clip(m.pending), pendingDelete{Epoch: m.epoch, IDs: msgs, Mode: mode, Trash: m.up.Trash})
	if err := m.g.writeJournal(ctx, maildrop, journal); err != nil {
		return pop3.CommitResult{}, err
	}
	// Whatever happens now, the listing remembered may be wrong: messages
	// flagged \Deleted but not expunged leave the mailbox's state (IMAP:
	// its counts) as it was.
	defer m.g.snaps.forget(maildrop)
	err = sess.DeleteJournaled(ctx, msgs, mode, m.up.Trash, func() error {
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
	m.log.Info("deletes applied", "count", len(msgs), "mode", mode)
	return pop3.CommitResult{Removed: len(msgs)}, nil
}

// session returns the upstream session, logging in again if the connection
// was dropped: deliberately after a stopped transfer, or by the server
// while the client was idle. The snapshot stays valid only while the
// mailbox keeps its epoch.
func (m *maildrop) session(ctx context.Context) (Session, error) {
	if m.sess.Alive() {
		return m.sess, nil
	}
	m.sess.Close()
	sess, err := m.g.open(ctx, m.acct)
	if err != nil {
		return nil, fmt.Errorf("reconnecting: %w", err)
	}
	m.sess = sess
	if e := sess.Selected().Epoch; e != m.epoch {
		return nil, fmt.Errorf("reconnecting: the mailbox's epoch (IMAP: UIDVALIDITY) changed from %q to %q", m.epoch, e)
	}
	m.log.Debug("upstream connection replaced")
	return sess, nil
}

// Close logs out of the server and releases the maildrop.
// The connection goes back to the pool if it is sound: no command of this
// session failed on it.
func (m *maildrop) Close() error {
	m.ahead.close()
	if m.broken {
		// Nothing uses the broken connection any more, and saying goodbye
		// to a stalled server can take its timeout: the client that logs
		// in again right away should not be told [IN-USE] meanwhile.
		m.release()
		m.sess.Close()
		return nil
	}
	m.g.pool.put(m.acct.maildrop(), m.acct, m.sess)
	m.release()
	return nil
}

func (m *maildrop) release() {
	if m.unlock != nil {
		m.unlock()
	}
}
