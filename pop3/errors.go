package pop3

import "errors"

// Code is the response code of a reply (RFC 2449 §8), sent in brackets
// after -ERR. Every negative reply is given its code where it is made,
// and counted by it; CodeNone is a reply without one.
type Code string

// Response codes from RFC 2449 §8 and RFC 3206.
const (
	CodeNone    Code = ""
	CodeAuth    Code = "AUTH"     // RFC 3206 §5: the credentials were refused
	CodeInUse   Code = "IN-USE"   // RFC 2449 §8.1.2: the maildrop is held by another session
	CodeSysTemp Code = "SYS/TEMP" // RFC 3206 §4: a temporary failure, try again later
	CodeSysPerm Code = "SYS/PERM" // RFC 3206 §4: a permanent failure
)

// Error is a failure shown to the client as "-ERR [Code] Text". Errors of any
// other type are logged and shown as a temporary failure with a generic text,
// so internal detail never reaches the wire.
type Error struct {
	Code Code // CodeNone for a reply without a response code
	Text string
	// Fatal ends the session after the reply.
	Fatal bool
}

func (e *Error) Error() string {
	if e.Code == CodeNone {
		return e.Text
	}
	return "[" + string(e.Code) + "] " + e.Text
}

// Errors a Backend or Maildrop returns for the common cases.
var (
	ErrAuthFailed = &Error{Code: CodeAuth, Text: "Authentication failed."}
	ErrInUse      = &Error{Code: CodeInUse, Text: "Mailbox is locked by another POP3 session."}
	ErrTemporary  = &Error{Code: CodeSysTemp, Text: "Temporary failure, please try again later.", Fatal: true}
)

// asError returns the wire form of err and whether it is one of ours.
func asError(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	return ErrTemporary, false
}
