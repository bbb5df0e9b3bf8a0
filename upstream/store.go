package upstream

import (
	"errors"
	"time"
)

// The vocabulary of the gateway's store seam (proxy.Store, proxy.Session):
// what every mail store says about a mailbox and its messages, whatever it
// speaks. It is written for what POP3 needs and names nothing of IMAP, so
// a store in a package of its own (JMAP, Microsoft Graph) uses it without
// importing the POP3 side. The IMAP store (Session) maps its UIDs,
// UIDVALIDITY and UIDNEXT onto it.

// ID names a message within its mailbox for as long as the mailbox's
// Epoch stays the same: a store never gives it to another message of that
// epoch. It is opaque to the gateway, which never parses or orders it.
// IMAP's is the UID in decimal; JMAP's the Email id (RFC 8621 §4.1.1);
// Graph's the immutable message id.
type ID string

// Mailbox is the state of the mailbox a session serves.
type Mailbox struct {
	Name string
	// Epoch names the era of the mailbox's IDs: when it changes, every
	// ID may name another message, or none (IMAP: UIDVALIDITY in
	// decimal, RFC 9051 §2.3.1.1).
	Epoch string
	// State is opaque: two equal non-empty states of one Epoch promise
	// the same listing, and a store that lists its changes takes the
	// Mailbox that held a state as where to list them from. "" when the
	// store cannot tell (IMAP: a server that gave no UIDNEXT).
	State    string
	Messages int
}

// Entry is one message of a listing.
type Entry struct {
	ID ID
	// Size is the size as the store reports it, which may be wrong, or
	// SizeUnknown from a store that has none to give (Graph: the message
	// resource has no MIME size); the gateway then measures the message.
	Size int64
	// Deleted is set when the store will remove the message at its next
	// clean-up by anyone (IMAP: \Deleted, RFC 9051 §2.3.2).
	Deleted bool
	// UIDL is the unique-id (RFC 1939 §7) the store suggests for the
	// message when the gateway first sees it; the gateway keeps the one
	// it gave from then on, whatever the store suggests later.
	UIDL string
	// Identity is a permanent id the store gives the message, one that
	// outlives a change of Epoch (RFC 8474 EMAILID, Gmail's X-GM-MSGID);
	// "" when it gives none. The gateway then tells the message apart
	// by MessageID, Size and InternalDate.
	Identity string
	// MessageID is the Message-ID header field's value, "" when there is
	// none, and InternalDate the store's arrival time (IMAP: RFC 9051
	// §2.3.3).
	MessageID    string
	InternalDate time.Time
	// Flags are the message's flags and keywords as the store gave them
	// (IMAP: RFC 9051 §2.3.2), for exports that keep \Seen, \Answered
	// and the rest.
	Flags []string
}

// SizeUnknown is the Size of an Entry whose store does not know it. POP3
// lists exact sizes (RFC 1939 §11), so the gateway reads such a message
// once, counting what RETR would send, before it lists it.
const SizeUnknown = -1

// Changes is how a mailbox changed since an earlier state of it in the
// same Epoch.
type Changes struct {
	// Added lists the messages that came, in the order a full listing
	// would give them after the earlier ones.
	Added []Entry
	// Removed lists the IDs of messages of the earlier listing that
	// went, for a store that knows them (JMAP: Email/changes destroyed).
	Removed []ID
	// Changed lists messages that came or changed, for a store that
	// cannot tell which (Graph's delta query reports both alike): those
	// of the earlier listing stay as they were, the others came, in the
	// order given, after Added.
	Changed []Entry
	// Kept, when not nil, tells whether a message of the earlier
	// listing is still there, for a store that knows what is present
	// rather than what went (IMAP: the UIDs a UID SEARCH finds).
	// With neither Removed nor Kept, no message went.
	Kept func(ID) bool
}

// Errors that callers tell apart; every store wraps its own in them.
var (
	// ErrAuthFailed means the store refused the credentials.
	ErrAuthFailed = errors.New("upstream: credentials refused")
	// ErrMessageGone means the message was removed by someone else.
	ErrMessageGone = errors.New("upstream: message no longer exists")
	// ErrNoBody means the store answered a body fetch without the
	// message although the message is still there: Exchange does this
	// over IMAP for a message it cannot convert.
	ErrNoBody = errors.New("upstream: the server sent no body for an existing message")
)
