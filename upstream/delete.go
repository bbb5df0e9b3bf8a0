package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
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

// DeleteModes lists every DeleteMode, in the order the documentation gives
// them; the configuration's on_delete takes these spellings.
var DeleteModes = []DeleteMode{DeleteExpunge, DeleteTrash, DeleteSeen, DeleteKeep}

// ErrNoTrash means no trash mailbox could be found.
var ErrNoTrash = errors.New("upstream: no trash mailbox: the server marks none with \\Trash and none is configured")

// ErrTrashIsServed means the trash is the mailbox being served: moving a
// message there would only give it a new UID, and every client would
// download it again.
var ErrTrashIsServed = errors.New("upstream: the trash mailbox is the mailbox being served; deleted messages would come back under new UIDs")

// Delete removes the messages with the given UIDs from the selected mailbox
// as mode says. trash names the trash mailbox for DeleteTrash when the
// server marks none with the \Trash special-use attribute (RFC 6154).
func (s *Session) Delete(ctx context.Context, uids []uint32, mode DeleteMode, trash string) error {
	ids := make([]ID, len(uids))
	for i, uid := range uids {
		ids[i] = idOf(uid)
	}
	return s.DeleteJournaled(ctx, ids, mode, trash, nil)
}

// DeleteJournaled is Delete for the messages with the given IDs that
// calls copied, when not nil, once a COPY to the trash (a server without
// MOVE) has succeeded and before the expunge that completes the move, so
// the caller can record that a retry must not copy again. An error from
// copied stops the delete there.
func (s *Session) DeleteJournaled(ctx context.Context, ids []ID, mode DeleteMode, trash string, copied func() error) (err error) {
	defer s.timed("delete", time.Now(), &err)
	if len(ids) == 0 || mode == DeleteKeep {
		return nil
	}
	set, err := uidSet(ids)
	if err != nil {
		return err
	}
	defer s.op(ctx)()
	switch mode {
	case DeleteSeen:
		return s.addFlag(set, imap.FlagSeen)
	case DeleteExpunge:
		return s.expunge(ctx, set)
	case DeleteTrash:
		t, err := s.findTrash(trash)
		if err != nil {
			return err
		}
		if t.Served {
			return fmt.Errorf("%w (%q)", ErrTrashIsServed, t.Mailbox)
		}
		err = s.intoTrash(set, t.Mailbox)
		if isTryCreate(err) && !t.Marked {
			// RFC 9051 §7.1: TRYCREATE says the target does not exist
			// yet. A configured trash is created once, then the move is
			// retried; a missing one would fail every QUIT for good.
			if err := s.createTrash(ctx, t.Mailbox); err != nil {
				return err
			}
			err = s.intoTrash(set, t.Mailbox)
		}
		if err != nil {
			return err
		}
		if s.client.Caps().Has(imap.CapMove) {
			return nil
		}
		// The copy is whole (every chunk): a retry must not copy again.
		if copied != nil {
			if err := copied(); err != nil {
				return err
			}
		}
		return s.expunge(ctx, set)
	}
	return fmt.Errorf("upstream: unknown delete mode %q", mode)
}

// intoTrash moves the messages to mailbox, or copies them where the server
// lacks MOVE (RFC 6851); the caller then expunges the originals.
func (s *Session) intoTrash(set imap.UIDSet, mailbox string) error {
	for _, chunk := range chunkUIDSet(set) {
		if s.client.Caps().Has(imap.CapMove) {
			if _, err := s.client.Move(chunk, mailbox).Wait(); err != nil {
				return fmt.Errorf("upstream: move to %q: %w", mailbox, err)
			}
			continue
		}
		if _, err := s.client.Copy(chunk, mailbox).Wait(); err != nil {
			return fmt.Errorf("upstream: copy to %q: %w", mailbox, err)
		}
	}
	return nil
}

func (s *Session) addFlag(set imap.UIDSet, flag imap.Flag) error {
	for _, chunk := range chunkUIDSet(set) {
		err := s.client.Store(chunk, &imap.StoreFlags{
			Op:     imap.StoreFlagsAdd,
			Silent: true,
			Flags:  []imap.Flag{flag},
		}, nil).Close()
		if err != nil {
			return fmt.Errorf("upstream: store %s: %w", flag, err)
		}
	}
	return nil
}

func (s *Session) uidExpunge(set imap.UIDSet) error {
	for _, chunk := range chunkUIDSet(set) {
		if err := s.client.UIDExpunge(chunk).Close(); err != nil {
			return fmt.Errorf("upstream: uid expunge: %w", err)
		}
	}
	return nil
}

// maxSetOctets bounds the UID set of one command. Servers cap the command
// line (Dovecot's imap_max_line_length is 64 KiB, others less) and RFC 7162
// §4 asks clients to stay near 8192 octets, so the deletes of a large,
// scattered selection are sent in several commands, each well below that.
const maxSetOctets = 4000

// chunkUIDSet splits set into sets whose text is at most maxSetOctets long.
// The ranges are sorted and merged first, so contiguous UIDs stay one range.
func chunkUIDSet(set imap.UIDSet) []imap.UIDSet {
	ranges := slices.Clone(set)
	slices.SortFunc(ranges, func(a, b imap.UIDRange) int { return cmp.Compare(a.Start, b.Start) })
	var merged imap.UIDSet
	for _, r := range ranges {
		if n := len(merged); n > 0 && r.Start <= merged[n-1].Stop+1 {
			merged[n-1].Stop = max(merged[n-1].Stop, r.Stop)
			continue
		}
		merged = append(merged, r)
	}
	var chunks []imap.UIDSet
	var cur imap.UIDSet
	octets := 0
	for _, r := range merged {
		n := len(strconv.FormatUint(uint64(r.Start), 10)) + 1 // and a comma
		if r.Stop != r.Start {
			n += 1 + len(strconv.FormatUint(uint64(r.Stop), 10))
		}
		if len(cur) > 0 && octets+n > maxSetOctets {
			chunks = append(chunks, cur)
			cur, octets = nil, 0
		}
		cur = append(cur, r)
		octets += n
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	return chunks
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
		return s.uidExpunge(set)
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

// Trash is where on_delete trash puts messages.
type Trash struct {
	Mailbox string
	// Marked says the server marks it \Trash (RFC 6154); otherwise it is
	// the configured name.
	Marked bool
	// Exists says LIST showed it; a configured trash is created at the
	// first delete that needs it.
	Exists bool
	// Served says it is the selected mailbox, or the selected mailbox is
	// marked \Trash: deletes there must not move anything.
	Served bool
}

// FindTrash tells where DeleteTrash would move messages, for `gateway
// check`: the mailbox marked \Trash, else configured.
func (s *Session) FindTrash(ctx context.Context, configured string) (_ Trash, err error) {
	defer s.op(ctx)()
	return s.findTrash(configured)
}

// findTrash looks for the mailbox marked \Trash first (RFC 6154 §2), and
// falls back to the configured name.
func (s *Session) findTrash(configured string) (Trash, error) {
	options := &imap.ListOptions{}
	if s.client.Caps().Has(imap.CapSpecialUse) {
		options.ReturnSpecialUse = true
	}
	list, err := s.client.List("", "*", options).Collect()
	if err != nil {
		return Trash{}, fmt.Errorf("upstream: list mailboxes: %w", err)
	}
	var t Trash
	for _, mbox := range list {
		if !slices.Contains(mbox.Attrs, imap.MailboxAttrTrash) {
			continue
		}
		if SameMailbox(mbox.Mailbox, s.mailbox) {
			return Trash{Mailbox: mbox.Mailbox, Marked: true, Exists: true, Served: true}, nil
		}
		if t.Mailbox == "" {
			t = Trash{Mailbox: mbox.Mailbox, Marked: true, Exists: true}
		}
	}
	if t.Mailbox != "" {
		return t, nil
	}
	if configured == "" {
		return Trash{}, ErrNoTrash
	}
	t = Trash{Mailbox: configured, Served: SameMailbox(configured, s.mailbox)}
	for _, mbox := range list {
		t.Exists = t.Exists || SameMailbox(mbox.Mailbox, configured)
	}
	return t, nil
}

// createTrash creates the configured trash, marked \Trash where the server
// takes CREATE-SPECIAL-USE (RFC 6154 §3), so other clients use it too.
func (s *Session) createTrash(ctx context.Context, mailbox string) error {
	var options *imap.CreateOptions
	if s.client.Caps().Has(imap.CapCreateSpecialUse) {
		options = &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttrTrash}}
	}
	err := s.client.Create(mailbox, options).Wait()
	if options != nil && err != nil && !hasCode(err, imap.ResponseCodeAlreadyExists) {
		// The server will not mark this one \Trash (USEATTR, RFC 6154
		// §5.3, or another refusal); a plain mailbox still stops every
		// QUIT from failing.
		err = s.client.Create(mailbox, nil).Wait()
	}
	if err != nil && !hasCode(err, imap.ResponseCodeAlreadyExists) {
		return fmt.Errorf("upstream: create trash %q: %w", mailbox, err)
	}
	slog.InfoContext(ctx, "created the trash mailbox", "mailbox", mailbox)
	return nil
}

// SameMailbox compares mailbox names; INBOX is case-insensitive (RFC 9051
// §5.1), other names are not.
func SameMailbox(a, b string) bool {
	if strings.EqualFold(a, "INBOX") {
		return strings.EqualFold(b, "INBOX")
	}
	return a == b
}

func isTryCreate(err error) bool { return hasCode(err, imap.ResponseCodeTryCreate) }

func hasCode(err error, code imap.ResponseCode) bool {
	var ie *imap.Error
	return errors.As(err, &ie) && ie.Code == code
}
