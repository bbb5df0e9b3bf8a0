// Package upstream speaks IMAP to the server that holds the mail: it dials
// with or without TLS, logs in, selects one mailbox, lists its messages by
// UID and size, streams a message's raw octets and applies deletions. It
// knows nothing of POP3. A Session is the IMAP store behind the gateway's
// store seam (proxy.Session), which it meets by its methods alone.
//
// It is built on the go-imap v2 client. Command text is written by hand
// only where that client cannot say what is needed, on the same
// connection: STARTTLS and the IMAP ID that introduces the client
// (id.go), and the FETCH of the server's permanent message ids, whose
// responses are taken out of the stream before the client sees them
// (split.go, objectid.go).
package upstream
