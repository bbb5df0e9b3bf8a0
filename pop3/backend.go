package pop3

import (
	"context"
	"io"
	"net"
	"time"
)

// Backend authenticates POP3 logins.
type Backend interface {
	// Login checks the credentials and opens the user's maildrop. A failure
	// to report to the client is an *Error (for instance ErrAuthFailed or
	// ErrInUse); any other error is logged and shown as a temporary failure.
	Login(ctx context.Context, login *LoginInfo) (Maildrop, error)
}

// LoginGuard slows down repeated failed logins (per remote IP and per user name).
type LoginGuard interface {
	// Reserve books the next check of a login from ip for user and
	// returns how long to wait before it; user is empty when no name was
	// given. Booking moves the next allowed time on, atomically, so
	// attempts made in parallel are checked one delay apart. It depends
	// only on the failures recorded, never on whether the user exists.
	Reserve(ctx context.Context, ip, user string) time.Duration
	// Failed records refused credentials.
	Failed(ctx context.Context, ip, user string)
	// Succeeded clears the failures of user after a login; those of ip
	// stay, so a success on one account does not reset guesses at others.
	Succeeded(ctx context.Context, ip, user string)
}

// LoginInfo describes one login attempt.
type LoginInfo struct {
	Username string // as the client typed it
	// Key is Username folded by Server.CanonicalName: the one name of this
	// login in every lock, limit, counter and cache key.
	Key      string
	Password string
	Remote   net.Addr
	TLS      bool   // the connection is encrypted
	Method   string // "USER", "AUTH PLAIN" or "AUTH LOGIN"
}

// Message is one entry of a maildrop listing.
type Message struct {
	// Size is the exact number of octets Open's reader returns for the
	// message: CRLF line endings, before dot-stuffing (RFC 1939 §11).
	Size int64
	// UIDL is the unique-id listing: 1 to 70 characters in 0x21-0x7E,
	// unique in the maildrop and stable across sessions (RFC 1939 §7).
	UIDL string
}

// Maildrop is the mail of one user for the length of one session. The list
// of messages is fixed when the maildrop is opened (RFC 1939 §4); messages
// are addressed by their index in that list, from 0.
type Maildrop interface {
	// Messages returns the listing, once, at login. The slice is
	// read-only for both: the maildrop may hand the same one to other
	// sessions, and never changes it. A size the maildrop finds wrong once
	// it has read the message reaches the session through the size Open
	// returns, never by patching the listing.
	Messages() []Message

	// Open returns the message with CRLF line endings, undotted; a last
	// line without a line ending stays so, and the response ends it
	// without counting it (RFC 1939 §11). size is the exact number of
	// octets the reader returns when the maildrop has read the message
	// (cached, or read whole before Open returns); otherwise the listed
	// size, and the session takes the count of a complete read as the
	// exact one. The caller reads the body to the end or closes it early;
	// if ctx is cancelled before Close, the maildrop abandons the transfer
	// rather than finishing it. A read error means the message could not
	// be delivered whole.
	Open(ctx context.Context, index int) (body io.ReadCloser, size int64, err error)

	// Commit removes the given messages. It is called only from QUIT in the
	// TRANSACTION state (RFC 1939 §6), with the indexes marked deleted, and
	// reports what it did, for the reply.
	Commit(ctx context.Context, deleted []int) (CommitResult, error)

	// Close ends the session and releases the maildrop.
	Close() error
}

// TopOpener is a Maildrop that can serve TOP (RFC 1939 §7) without reading
// the whole message, e.g. from a fetched prefix.
type TopOpener interface {
	// OpenTop returns the start of message index, as Open returns it, up
	// to at least the header, the blank line after it and lines lines of
	// the body, or the whole message if it is shorter; size is as Open's.
	OpenTop(ctx context.Context, index int, lines int64) (body io.ReadCloser, size int64, err error)
}
