package export

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// Everything the export knows of the store seam (proxy.Session) is in
// this file: how a store names a message (an ID that means something
// only under the mailbox's epoch) stays here, and the rest of the package handles messages
// by their identity and UIDL only.

// Opener logs in to the account and opens mailbox; "" is the account's
// default mailbox.
type Opener func(ctx context.Context, mailbox string) (proxy.Session, error)

// message is one message of a folder's listing.
type message struct {
	identity string // as the UIDL store names it (proxy.Identities)
	uidl     string // unique within the folder: for file names
	date     time.Time
	size     int64 // as the store reports it
	flags    []string
	ref      upstream.ID // the store's name for it; used in this file only
}

// folder is a mailbox of the account.
type folder struct {
	name  string
	delim rune
}

// source is one logged-in session of the store.
type source struct {
	sess proxy.Session
	open Opener
}

func openSource(ctx context.Context, open Opener, mailbox string) (*source, error) {
	sess, err := open(ctx, mailbox)
	if err != nil {
		return nil, err
	}
	return &source{sess: sess, open: open}, nil
}

// selector is a Session that can open another mailbox of the account on
// the same connection (IMAP: SELECT).
type selector interface {
	Select(ctx context.Context, mailbox string) (*upstream.Mailbox, error)
}

// enterFolder makes the session's mailbox the named one: on the same
// connection where the store can, else on a new session.
func (s *source) enterFolder(ctx context.Context, name string) (upstream.Mailbox, error) {
	if s.sess.Selected().Name == name {
		return s.sess.Refresh(ctx)
	}
	if sel, ok := s.sess.(selector); ok {
		mb, err := sel.Select(ctx, name)
		if err != nil {
			return upstream.Mailbox{}, err
		}
		return *mb, nil
	}
	sess, err := s.open(ctx, name)
	if err != nil {
		return upstream.Mailbox{}, err
	}
	s.sess.Close()
	s.sess = sess
	return sess.Selected(), nil
}

func (s *source) close() { s.sess.Close() }

func (s *source) alive() bool { return s.sess.Alive() }

// folders lists the account's mailboxes; errNoFolderList when the store
// cannot list them.
func (s *source) folders(ctx context.Context) ([]folder, error) {
	lister, ok := s.sess.(interface {
		Mailboxes(ctx context.Context) ([]upstream.MailboxName, error)
	})
	if !ok {
		return nil, errNoFolderList
	}
	names, err := lister.Mailboxes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]folder, len(names))
	for i, n := range names {
		out[i] = folder{name: n.Name, delim: n.Delim}
	}
	return out, nil
}

var errNoFolderList = errors.New("the store cannot list its mailboxes")

// listing is a folder's messages as one session listed them.
type listing struct {
	folder folder
	msgs   []message
	epoch  string // what refs mean: the mailbox's epoch (IMAP: UIDVALIDITY)
}

// errListingStale: the folder's messages were renumbered since it was
// listed (UIDVALIDITY changed), so the listing's refs name nothing.
var errListingStale = errors.New("the mailbox was renumbered (UIDVALIDITY changed) while exporting; run the export again")

// list selects the folder and lists its messages.
func (s *source) list(ctx context.Context, fo folder) (*listing, error) {
	mb, err := s.enterFolder(ctx, fo.name)
	if err != nil {
		return nil, err
	}
	entries, err := s.sess.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	ids := proxy.Identities(entries)
	valid := mb.Epoch
	msgs := make([]message, len(entries))
	for i, e := range entries {
		msgs[i] = message{
			identity: ids[i],
			uidl:     proxy.ProposedUIDL(e),
			date:     e.InternalDate,
			size:     e.Size,
			flags:    e.Flags,
			ref:      e.ID,
		}
	}
	return &listing{folder: fo, msgs: msgs, epoch: valid}, nil
}

// enter selects the listed folder for fetching its messages.
func (s *source) enter(ctx context.Context, l *listing) error {
	mb, err := s.enterFolder(ctx, l.folder.name)
	if err != nil {
		return err
	}
	if mb.Epoch != l.epoch {
		return errListingStale
	}
	return nil
}

// fetch reads the messages of the selected folder whole, in one request
// where the store can, calling each with every body it gets. A message
// it does not get is left out: fetchOne tells why.
func (s *source) fetch(ctx context.Context, msgs []*message, each func(m *message, body io.Reader) error) error {
	byRef := make(map[upstream.ID]*message, len(msgs))
	refs := make([]upstream.ID, len(msgs))
	for i, m := range msgs {
		byRef[m.ref] = m
		refs[i] = m.ref
	}
	call := func(ref upstream.ID, body io.Reader) error {
		m := byRef[ref]
		if m == nil {
			return nil // not asked for
		}
		return each(m, body)
	}
	if b, ok := s.sess.(interface {
		FetchEach(ctx context.Context, ids []upstream.ID, each func(id upstream.ID, body io.Reader) error) error
	}); ok {
		return b.FetchEach(ctx, refs, call)
	}
	for _, m := range msgs {
		body, err := s.sess.Open(ctx, m.ref, 0, -1)
		if errors.Is(err, upstream.ErrMessageGone) || errors.Is(err, upstream.ErrNoBody) {
			continue
		}
		if err != nil {
			return err
		}
		err = each(m, body)
		if cerr := body.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// fetchOne reads one message whole: for a message a batch left out, to
// learn why.
func (s *source) fetchOne(ctx context.Context, m *message) (io.ReadCloser, error) {
	return s.sess.Open(ctx, m.ref, 0, -1)
}

// Why a message could not be read.
var (
	errGone   = upstream.ErrMessageGone
	errNoBody = upstream.ErrNoBody
)

// isThrottled tells a store's "slow down" (IMAP [LIMIT] and
// [UNAVAILABLE], RFC 5530 §3; Exchange's and Gmail's throttling texts)
// from other failures: those are retried after a pause.
func isThrottled(err error) bool {
	if err == nil {
		return false
	}
	s := strings.ToLower(err.Error())
	return slices.ContainsFunc([]string{"[limit]", "[unavailable]", "throttl", "too many", "try again later", "bandwidth"}, func(k string) bool {
		return strings.Contains(s, k)
	})
}
