package graph

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/internal/web"
)

// The Graph store: a mailbox folder served through the gateway's store
// seam, in the vocabulary of package upstream. The wiring joins it to the
// POP3 side (proxy.GraphStore).
//
//   - The epoch is "graph:" and the folder's id: a folder deleted and made
//     again under the same name is another era of ids.
//   - The state is the @odata.deltaLink of the last delta round that found
//     changes (delta-query-messages): a round that finds none keeps the
//     state it started from, so equal states mean an unchanged listing.
//     After a login or Refresh the state is "" until a listing or a delta
//     round tells it; the gateway then asks for the changes since the
//     state it remembers, which costs one request when nothing changed.
//   - A message's ID is its immutable id (outlook-immutable-id), which
//     survives moves; its Identity is the same id under a "graph:" prefix,
//     so it never meets an IMAP identity; its UIDL a digest of the id
//     (Graph ids are longer than the 70 characters of RFC 1939 §7).
//   - Graph has no MIME size (see Message): entries carry
//     upstream.SizeUnknown, and the gateway measures each message once.

// Store opens Graph sessions. Its HTTP client, and so its connections,
// are shared by every login.
type Store struct {
	opts Options
}

// NewStore returns a store whose clients take opts, but for Tokens, which
// each login brings.
func NewStore(opts Options) *Store {
	if opts.HTTPClient == nil {
		timeout := cmp.Or(opts.Timeout, DefaultTimeout)
		tr := web.Transport(nil, timeout)
		tr.MaxIdleConnsPerHost = cmp.Or(opts.Concurrency, DefaultConcurrency)
		opts.HTTPClient = &http.Client{Transport: tr}
	}
	return &Store{opts: opts}
}

// Login opens the mailbox folder (INBOX is Graph's inbox; see Folder) of
// the account whose tokens are given: the token's user is the account
// (/me). Refused tokens are upstream.ErrAuthFailed.
func (s *Store) Login(ctx context.Context, tokens TokenSource, mailbox string) (*Session, error) {
	opts := s.opts
	opts.Tokens = tokens
	c, err := New(opts)
	if err != nil {
		return nil, err
	}
	sess := &Session{c: c, name: mailbox}
	if _, err := sess.Refresh(ctx); err != nil {
		return nil, err
	}
	return sess, nil
}

// Session is one login's view of a folder. Its methods are not called
// concurrently; FetchEach makes concurrent requests of its own.
type Session struct {
	c      *Client
	name   string
	folder string // the folder's id
	info   upstream.Mailbox
	closed bool
}

var errClosed = errors.New("graph: session closed")

// Refresh looks the folder up again (one request): its id and its count.
// The state is unknown until the next listing or delta round.
func (s *Session) Refresh(ctx context.Context) (upstream.Mailbox, error) {
	if s.closed {
		return upstream.Mailbox{}, errClosed
	}
	f, err := s.c.Folder(ctx, s.name)
	if err != nil {
		return upstream.Mailbox{}, err
	}
	s.folder = f.ID
	s.info = upstream.Mailbox{Name: s.name, Epoch: "graph:" + f.ID, Messages: f.TotalItemCount}
	return s.info, nil
}

// Selected is the folder as the login, Refresh, or the last listing or
// delta round found it.
func (s *Session) Selected() upstream.Mailbox { return s.info }

// Snapshot lists the folder with a delta round from the start, whose link
// becomes the state: the next poll asks only for what changed since.
func (s *Session) Snapshot(ctx context.Context) ([]upstream.Entry, error) {
	if s.closed {
		return nil, errClosed
	}
	d, err := s.c.Delta(ctx, s.folder, "")
	if err != nil {
		return nil, err
	}
	entries := entries(d.Changed)
	s.info.State, s.info.Messages = d.Link, len(entries)
	return entries, nil
}

// Changes runs the delta round that starts from since's state: the
// messages that came or changed (a delta round does not tell which), and
// those removed. A state Graph no longer knows is ErrDeltaExpired; the
// gateway then lists the folder again.
func (s *Session) Changes(ctx context.Context, since upstream.Mailbox) (upstream.Changes, error) {
	if s.closed {
		return upstream.Changes{}, errClosed
	}
	if since.Epoch != s.info.Epoch || since.State == "" {
		return upstream.Changes{}, fmt.Errorf("graph: no changes from folder state %q (epoch %q) in epoch %q", since.State, since.Epoch, s.info.Epoch)
	}
	d, err := s.c.Delta(ctx, s.folder, since.State)
	if err != nil {
		return upstream.Changes{}, err
	}
	ch := upstream.Changes{Changed: entries(d.Changed)}
	if len(d.Removed) > 0 {
		gone := make(map[upstream.ID]bool, len(d.Removed))
		for _, id := range d.Removed {
			gone[upstream.ID(id)] = true
		}
		// A round may name messages removed that the earlier listing
		// never had (came and went between rounds): what matters is
		// which of the listed ones stay.
		ch.Kept = func(id upstream.ID) bool { return !gone[id] }
	}
	s.info.State = since.State
	if len(d.Changed)+len(d.Removed) > 0 {
		s.info.State = d.Link
	}
	return ch, nil
}

// entries lists messages in the order of their arrival, ids breaking ties,
// as the folder's listing is stable in.
func entries(msgs []Message) []upstream.Entry {
	out := make([]upstream.Entry, len(msgs))
	for i, m := range msgs {
		sum := sha256.Sum256([]byte(m.ID))
		out[i] = upstream.Entry{
			ID:           upstream.ID(m.ID),
			Size:         upstream.SizeUnknown,
			UIDL:         hex.EncodeToString(sum[:16]),
			Identity:     "graph:" + m.ID,
			MessageID:    m.InternetMessageID,
			InternalDate: m.ReceivedDateTime,
		}
	}
	slices.SortStableFunc(out, func(a, b upstream.Entry) int {
		return cmp.Or(a.InternalDate.Compare(b.InternalDate), strings.Compare(string(a.ID), string(b.ID)))
	})
	return out
}

// Open streams a message's MIME octets. Graph has no range requests for
// $value: the octets before offset are read and dropped.
func (s *Session) Open(ctx context.Context, id upstream.ID, offset, n int64) (io.ReadCloser, error) {
	if s.closed {
		return nil, errClosed
	}
	b, err := s.c.Open(ctx, string(id))
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		if _, err := io.CopyN(io.Discard, b, offset); err != nil && err != io.EOF {
			b.Close()
			return nil, err
		}
	}
	if n < 0 {
		return b, nil
	}
	return limitedBody{io.LimitReader(b, n), b}, nil
}

type limitedBody struct {
	io.Reader
	io.Closer
}

// FetchEach reads the messages whole, up to the client's concurrency
// (4) at once, calling each for one at a time, in the order they come. A
// message gone is skipped.
func (s *Session) FetchEach(ctx context.Context, ids []upstream.ID, each func(id upstream.ID, body io.Reader) error) error {
	if s.closed {
		return errClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		one   sync.Mutex // each runs alone
		mu    sync.Mutex
		first error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = err
			cancel()
		}
	}
	work := make(chan upstream.ID)
	for range min(len(ids), cap(s.c.slots)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				b, err := s.c.Open(ctx, string(id))
				if errors.Is(err, upstream.ErrMessageGone) {
					continue
				}
				if err != nil {
					fail(err)
					continue
				}
				one.Lock()
				if ctx.Err() == nil {
					err = each(id, b)
				}
				one.Unlock()
				b.Close()
				if err != nil {
					fail(err)
				}
			}
		}()
	}
feed:
	for _, id := range ids {
		select {
		case work <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// Mailboxes lists the account's folders by path (see Client.Folders),
// which Login and Folder take; the inbox is "INBOX", as IMAP names it
// (RFC 9051 §5.1). Graph has no hierarchy delimiter: "/" is the
// delimiter.
func (s *Session) Mailboxes(ctx context.Context) ([]upstream.MailboxName, error) {
	if s.closed {
		return nil, errClosed
	}
	inbox, err := s.c.Folder(ctx, "inbox")
	if err != nil {
		return nil, err
	}
	paths, folders, err := s.c.Folders(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]upstream.MailboxName, len(paths))
	for i, p := range paths {
		if folders[i].ID == inbox.ID {
			p = "INBOX"
		}
		names[i] = upstream.MailboxName{Name: p, Delim: '/'}
	}
	slices.SortFunc(names, func(a, b upstream.MailboxName) int { return strings.Compare(a.Name, b.Name) })
	return names, nil
}

// DeleteJournaled applies a delete mode (see Client.Remove). A move to
// the trash is one request per message that keeps the immutable id, with
// no copy that could be whole while the original stays: copied is never
// called, and a delete journal finished again moves again, harmlessly.
func (s *Session) DeleteJournaled(ctx context.Context, ids []upstream.ID, mode upstream.DeleteMode, trash string, copied func() error) error {
	if s.closed {
		return errClosed
	}
	if mode == upstream.DeleteTrash && s.isServed(cmp.Or(trash, "deleteditems")) {
		return fmt.Errorf("graph: the trash %q is the served folder: nothing moved", trash)
	}
	strs := make([]string, len(ids))
	for i, id := range ids {
		strs[i] = string(id)
	}
	return s.c.Remove(ctx, strs, mode, trash)
}

// isServed tells whether a folder name names the served folder.
func (s *Session) isServed(name string) bool {
	if wk := WellKnownFolder(name); wk != "" {
		return wk == WellKnownFolder(s.name)
	}
	return name == s.name || name == s.folder
}

// FindTrash tells where on_delete trash moves messages, for `gateway
// check`: the configured folder, else Deleted Items.
func (s *Session) FindTrash(ctx context.Context, configured string) (upstream.Trash, error) {
	name := cmp.Or(configured, "deleteditems")
	f, err := s.c.Folder(ctx, name)
	if err != nil {
		return upstream.Trash{}, err
	}
	return upstream.Trash{
		Mailbox: cmp.Or(f.DisplayName, name),
		Marked:  WellKnownFolder(name) == "deleteditems",
		Exists:  true,
		Served:  f.ID == s.folder,
	}, nil
}

// Alive tells whether the session is open: HTTP needs no connection kept.
func (s *Session) Alive() bool { return !s.closed }

// Close ends the session; the shared connections stay for other logins.
func (s *Session) Close() error {
	s.closed = true
	return nil
}
