package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
)

// The store seam. The POP3 rules every store shares (the listing fixed at
// login, exact sizes, deletes at QUIT, the UIDL store, hidden messages, the
// delete journal, the cache, fetching ahead, resumed transfers) live in
// this package, once; a store only has to do what POP3 needs of it. As in
// go-smtp, where a Backend opens a Session per connection, there is one
// small interface per lifetime: a Store for the configuration, a Session
// for one login. upstream.Session (IMAP) is one; the in-memory store of the
// test kit (internal/testkit/memstore) another. The seam's vocabulary
// (upstream.ID, Mailbox, Entry, Changes, DeleteMode and the errors a
// store wraps) lives in package upstream, so that a store in a package of
// its own needs nothing of this one but the two interfaces it meets.

// Store opens sessions on the accounts of one mail store.
type Store interface {
	// Login logs in to the account and opens its mailbox. Refused
	// credentials are an error wrapping upstream.ErrAuthFailed.
	Login(ctx context.Context, login StoreLogin) (Session, error)
}

// StoreLogin is what a store needs to open an account's mailbox.
type StoreLogin struct {
	Username string
	Password string
	// OAuth2 is the SASL mechanism (upstream.XOAuth2 or
	// upstream.OAuthBearer) for Token; empty for Password.
	OAuth2 string
	Token  string
	// Tokens, with OAuth2, is where Token came from, for a store that
	// logs in at every request (HTTP APIs such as Graph): it asks for a
	// fresh token (refresh set) when one is refused mid-session.
	Tokens  func(ctx context.Context, refresh bool) (string, error)
	Mailbox string
}

// Session is one logged-in connection to a store, with the mailbox open.
// Messages are named by IDs (upstream.ID) that the store never gives
// another message while Selected().Epoch stays the same; the gateway
// treats them as opaque strings. Its methods are not called concurrently.
type Session interface {
	// Refresh checks the connection and reports the mailbox's state now,
	// which Selected returns from then on. Equal States promise an
	// unchanged listing.
	Refresh(ctx context.Context) (upstream.Mailbox, error)
	// Selected is the mailbox's state as the login or the last Refresh
	// found it.
	Selected() upstream.Mailbox
	// Snapshot lists every message with its ID, size as the store knows
	// it (or upstream.SizeUnknown), suggested UIDL and what identifies it
	// across a change of IDs. A store that learns the mailbox's state
	// only by listing it (Graph: the delta link) reports that state
	// through Selected afterwards, and so after Changes.
	Snapshot(ctx context.Context) ([]upstream.Entry, error)
	// Open streams the raw octets of a message: whole when n < 0,
	// otherwise at most n octets from offset on (TOP, resumed transfers).
	// A body that knows its length has a Size() int64 method. A message
	// gone is upstream.ErrMessageGone; one the store lists but cannot
	// send, upstream.ErrNoBody.
	Open(ctx context.Context, id upstream.ID, offset, n int64) (io.ReadCloser, error)
	// DeleteJournaled applies a delete mode to the messages; trash
	// names the trash for upstream.DeleteTrash when the store marks none.
	// copied, when not nil, is called once a copy into the trash is whole
	// and before the originals are removed, for the delete journal.
	DeleteJournaled(ctx context.Context, ids []upstream.ID, mode upstream.DeleteMode, trash string, copied func() error) error
	// Alive tells whether the connection is still usable.
	Alive() bool
	Close() error
}

// The IMAP session is a Session that fetches in batches and waits for
// changes while it is kept.
var (
	_ Session     = (*upstream.Session)(nil)
	_ batchOpener = (*upstream.Session)(nil)
	_ waiter      = (*upstream.Session)(nil)
)

// waiter is a Session that can wait for changes to its mailbox while the
// pool keeps it between sessions (IMAP: IDLE), so the store applies a
// change when it comes rather than when the next login asks. Refresh and
// Close end the wait; nothing learnt while waiting is trusted: changed,
// when not nil, is called (without blocking) when the store hints at a
// change, and the pool then lists the changes as a login would.
type waiter interface {
	Idle(changed func()) error
}

// batchOpener is a Session that reads several messages whole in one
// request (IMAP: one UID FETCH), calling each for every body it gets, in
// any order. Fetching ahead uses it where a store has it.
type batchOpener interface {
	FetchEach(ctx context.Context, ids []upstream.ID, each func(id upstream.ID, body io.Reader) error) error
}

// fetchEach reads the messages whole: in one request where the store can,
// else one after the other. A message the store no longer has, or cannot
// send, is skipped: RETR asks for it again alone.
func fetchEach(ctx context.Context, sess Session, ids []upstream.ID, each func(id upstream.ID, body io.Reader) error) error {
	if b, ok := sess.(batchOpener); ok {
		return b.FetchEach(ctx, ids, each)
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		body, err := sess.Open(ctx, id, 0, -1)
		if errors.Is(err, upstream.ErrMessageGone) || errors.Is(err, upstream.ErrNoBody) {
			continue
		}
		if err != nil {
			return err
		}
		err = each(id, body)
		if cerr := body.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// trashFinder is a Session that can tell where deleted messages go, for
// `gateway check`.
type trashFinder interface {
	FindTrash(ctx context.Context, configured string) (upstream.Trash, error)
}

// imapStore is the IMAP server of an upstream.
type imapStore struct{ server *upstream.Server }

func (s imapStore) Login(ctx context.Context, login StoreLogin) (Session, error) {
	sess, err := upstream.Dial(ctx, s.server)
	if err != nil {
		return nil, err
	}
	if login.OAuth2 != "" {
		err = sess.LoginOAuth2(ctx, login.OAuth2, login.Username, login.Token)
	} else {
		err = sess.Login(ctx, login.Username, login.Password)
	}
	if err == nil {
		_, err = sess.Select(ctx, login.Mailbox)
	}
	if err != nil {
		sess.Close()
		return nil, err
	}
	return sess, nil
}

// GraphStore joins a Microsoft Graph store to the seam. Graph takes
// OAuth2 bearer tokens only, from the login's token source, which its
// client asks again, once, when Graph refuses one mid-session.
func GraphStore(s *graph.Store) Store { return graphStore{s} }

type graphStore struct{ store *graph.Store }

func (s graphStore) Login(ctx context.Context, login StoreLogin) (Session, error) {
	if login.Tokens == nil {
		return nil, fmt.Errorf("graph: %w: Microsoft Graph takes OAuth2 tokens, not passwords", upstream.ErrAuthFailed)
	}
	return s.store.Login(ctx, tokenFunc(login.Tokens), login.Mailbox)
}

// tokenFunc is a token source made of a function.
type tokenFunc func(ctx context.Context, refresh bool) (string, error)

func (f tokenFunc) AccessToken(ctx context.Context, refresh bool) (string, error) {
	return f(ctx, refresh)
}

// The Graph session lists its changes and reads several messages at once.
var (
	_ Session      = (*graph.Session)(nil)
	_ batchOpener  = (*graph.Session)(nil)
	_ changeLister = (*graph.Session)(nil)
	_ trashFinder  = (*graph.Session)(nil)
)

// store is the upstream's Store: its own, or its IMAP server.
func (up *Upstream) store() Store {
	if up.Store != nil {
		return up.Store
	}
	return imapStore{server: &up.Server}
}
