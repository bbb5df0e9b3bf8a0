package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/emersion/go-imap/v2"
)

// DeleteMode is what removing a message does upstream.
type DeleteMode string

const (
	// DeleteExpunge flags the messages \Deleted and expunges them.
	DeleteExpunge DeleteMode = "expunge"
	// DeleteTrash moves them to the trash mailbox.
	DeleteTrash DeleteMode = "trash"
	// DeleteSeen only flags them \Seen.
	DeleteSeen DeleteMode = "seen"
	// DeleteKeep leaves them untouched.
	DeleteKeep DeleteMode = "keep"
)

// ErrNoTrash means no trash mailbox could be found.
var ErrNoTrash = errors.New("upstream: no trash mailbox: the server marks none with \\Trash and none is configured")

// Delete removes the messages with the given UIDs from the selected mailbox
// as mode says. trash names the trash mailbox for DeleteTrash when the
// server marks none with the \Trash special-use attribute (RFC 6154).
func (s *Session) Delete(ctx context.Context, uids []uint32, mode DeleteMode, trash string) error {
	return s.DeleteJournaled(ctx, uids, mode, trash, nil)
}

// DeleteJournaled is Delete that calls copied, when not nil, once a COPY
// to the trash (a server without MOVE) has succeeded and before the
// expunge that completes the move, so the caller can record that a retry
// must not copy again. An error from copied stops the delete there.
func (s *Session) DeleteJournaled(ctx context.Context, uids []uint32, mode DeleteMode, trash string, copied func() error) (err error) {
	defer s.timed("delete", time.Now(), &err)
	if len(uids) == 0 || mode == DeleteKeep {
		return nil
	}
	defer s.op(ctx)()
	var set imap.UIDSet
	for _, uid := range uids {
		set.AddNum(imap.UID(uid))
	}
	switch mode {
	case DeleteSeen:
		return s.addFlag(set, imap.FlagSeen)
	case DeleteExpunge:
		return s.expunge(ctx, set)
	case DeleteTrash:
		mailbox, err := s.trashMailbox(trash)
		if err != nil {
			return err
		}
		if s.client.Caps().Has(imap.CapMove) {
			if _, err := s.client.Move(set, mailbox).Wait(); err != nil {
				return fmt.Errorf("upstream: move to %q: %w", mailbox, err)
			}
			return nil
		}
		if _, err := s.client.Copy(set, mailbox).Wait(); err != nil {
			return fmt.Errorf("upstream: copy to %q: %w", mailbox, err)
		}
		if copied != nil {
			if err := copied(); err != nil {
				return err
			}
		}
		return s.expunge(ctx, set)
	}
	return fmt.Errorf("upstream: unknown delete mode %q", mode)
}

func (s *Session) addFlag(set imap.UIDSet, flag imap.Flag) error {
	err := s.client.Store(set, &imap.StoreFlags{
		Op:     imap.StoreFlagsAdd,
		Silent: true,
		Flags:  []imap.Flag{flag},
	}, nil).Close()
	if err != nil {
		return fmt.Errorf("upstream: store %s: %w", flag, err)
	}
	return nil
}

// expunge removes exactly the given messages. With UIDPLUS (RFC 4315) that
// is UID EXPUNGE. Without it a plain EXPUNGE would also remove messages
// that another client flagged \Deleted but meant to keep for now, so it is
// sent only when no other message carries the flag; otherwise ours stay
// flagged \Deleted, for the next expunge by anyone, and a warning is logged.
func (s *Session) expunge(ctx context.Context, set imap.UIDSet) error {
	if err := s.addFlag(set, imap.FlagDeleted); err != nil {
		return err
	}
	if s.client.Caps().Has(imap.CapUIDPlus) {
		if err := s.client.UIDExpunge(set).Close(); err != nil {
			return fmt.Errorf("upstream: uid expunge: %w", err)
		}
		return nil
	}
	data, err := s.client.UIDSearch(&imap.SearchCriteria{Flag: []imap.Flag{imap.FlagDeleted}}, nil).Wait()
	if err != nil {
		return fmt.Errorf("upstream: search deleted: %w", err)
	}
	for _, uid := range data.AllUIDs() {
		if !set.Contains(uid) {
			slog.WarnContext(ctx, "upstream lacks UIDPLUS and other messages are flagged \\Deleted; leaving ours flagged for a later expunge",
				"mailbox", s.mailbox)
			return nil
		}
	}
	if err := s.client.Expunge().Close(); err != nil {
		return fmt.Errorf("upstream: expunge: %w", err)
	}
	return nil
}

// trashMailbox finds the mailbox marked \Trash, or falls back to the
// configured name.
func (s *Session) trashMailbox(configured string) (string, error) {
	options := &imap.ListOptions{}
	if s.client.Caps().Has(imap.CapSpecialUse) {
		options.ReturnSpecialUse = true
	}
	list, err := s.client.List("", "*", options).Collect()
	if err != nil {
		return "", fmt.Errorf("upstream: list mailboxes: %w", err)
	}
	for _, mbox := range list {
		for _, attr := range mbox.Attrs {
			if attr == imap.MailboxAttrTrash {
				return mbox.Mailbox, nil
			}
		}
	}
	if configured != "" {
		return configured, nil
	}
	return "", ErrNoTrash
}
