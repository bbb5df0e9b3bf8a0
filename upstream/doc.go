// Package upstream speaks IMAP to the server that holds the mail: it dials
// with or without TLS, logs in, selects one mailbox, lists its messages by
// UID and size, streams a message's raw octets and applies deletions. It
// knows nothing of POP3. A Session is the IMAP store behind the gateway's
// store seam (proxy.Session), which it meets by its methods alone.
//
// It is built on the go-imap v2 client; no command text is built by hand.
package upstream
