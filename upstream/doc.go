// Package upstream holds the vocabulary of the gateway's store seam and
// its IMAP store.
//
// The vocabulary (store.go: ID, Mailbox, Entry, Changes, DeleteMode and
// the errors every store wraps) is what any mail store says about a
// mailbox and its messages, written for what POP3 needs and naming
// nothing of IMAP: message IDs are opaque strings, a mailbox has an epoch
// (when it changes, every ID may have changed) and an opaque state (equal
// states promise an unchanged listing). A store in a package of its own
// (JMAP, Microsoft Graph) uses it without importing the POP3 side.
//
// The IMAP store (Session) dials with or without TLS, logs in, selects one
// mailbox, lists its messages by UID and size, streams a message's raw
// octets and applies deletions. Its IDs are UIDs in decimal, its epoch the
// UIDVALIDITY and its state UIDNEXT with EXISTS; it checks its server's
// answers against what IMAP promises before it hands them on. It knows
// nothing of POP3, and is the store behind the gateway's seam
// (proxy.Session) by its methods alone.
//
// It is built on the go-imap v2 client. Command text is written by hand
// only where that client cannot say what is needed, on the same
// connection: STARTTLS and the IMAP ID that introduces the client
// (id.go), and the FETCH of the server's permanent message ids, whose
// responses are taken out of the stream before the client sees them
// (split.go, objectid.go).
package upstream
