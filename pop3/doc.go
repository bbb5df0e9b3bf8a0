// Package pop3 implements the server side of the Post Office Protocol,
// version 3: RFC 1939 with the extension mechanism of RFC 2449 (CAPA,
// RESP-CODES, AUTH-RESP-CODE, PIPELINING), STLS from RFC 2595, the AUTH
// command of RFC 5034 with the PLAIN and LOGIN mechanisms, and the response
// codes of RFC 3206.
//
// The package owns the wire and the session state machine. It knows nothing
// of where mail is stored: a Backend authenticates a login and hands back a
// Maildrop, which lists the messages fixed for the session, opens one for
// reading and applies deletions when the client quits.
//
// Every status line carries its response code from where it is made (ok,
// errorf, an *Error), and the Observer counts -ERR replies by that code.
// A Logger that takes LevelTrace gets the wire trace: each command and
// status line, with passwords and SASL payloads redacted.
package pop3
