package pop3

import "errors"

// Response codes from RFC 2449 §8 and RFC 3206.
const (
	CodeAuth    = "AUTH"     // the credentials were refused
	CodeInUse   = "IN-USE"   // the maildrop is held by another session
	CodeSysTemp = "SYS/TEMP" // a temporary failure: try again later
	CodeSysPerm = "SYS/PERM" // a permanent failure
)

// Error is a failure shown to the client as "-ERR [Code] Text". Errors of any
// other type are logged and shown as a temporary failure with a generic text,
// so internal detail never reaches the wire.
type Error struct {
	Code string // response code without brackets; may be empty
	Text string
	// Fatal ends the session after the reply.
	Fatal bool
}

func (e *Error) Error() string {
	if e.Code == "" {
		return e.Text
	}
	return "[" + e.Code + "] " + e.Text
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
