// Package jmap is a small client for JMAP mail stores (RFC 8620, the core
// protocol; RFC 8621, mail), and the gateway's store on top of it: the
// mailbox a POP3 client sees, listed, read and changed over HTTP. It
// knows nothing of POP3; package proxy joins it to the POP3 side through
// the store seam, and it speaks the seam's vocabulary (upstream.ID,
// Mailbox, Entry, Changes and the errors a store wraps).
//
// It is plain net/http and encoding/json: no Go JMAP library is served by
// the module registry, and the gateway needs only a few calls, each
// written beside the section it follows:
//
//   - RFC 8620 §2: the session resource, found at /.well-known/jmap
//     (§2.2, a redirect is followed); apiUrl and downloadUrl may be
//     relative to it; its core capability's limits (maxCallsInRequest,
//     maxObjectsInGet, maxObjectsInSet, maxConcurrentRequests) are kept.
//   - RFC 8620 §3: one POST of method calls, back-references between them
//     (§3.7), method-level errors (§3.6.2) and request-level problems
//     (§3.6.1); a response's sessionState tells a stale session (§3.4).
//   - RFC 8620 §6.2: blob download through the downloadUrl template.
//   - RFC 8621 §2: Mailbox/get and Mailbox/query, role inbox and trash.
//   - RFC 8621 §4.4, §4.5 (RFC 8620 §5.5, §5.6): Email/query with
//     Email/get in one request; Email/queryChanges for what came and went.
//   - RFC 8621 §4.6 (RFC 8620 §5.3): Email/set for the delete modes.
//
// Which changes call: Email state (and Email/changes, RFC 8620 §5.2)
// covers the whole account, and a message moved out of the mailbox is an
// "updated" Email there, as is one whose keywords changed: telling a
// message that left the mailbox from one that was only read would need
// the listing the gateway keeps, not the store. Email/queryChanges
// (RFC 8620 §5.6) on the query that lists the mailbox answers exactly
// what was added to and removed from the mailbox's results, moves
// included, so the store's state is the query's queryState and its
// changes are the query's.
//
// Logins reuse the session resource and the mailbox's id found by an
// earlier login of the same account, so re-polling a mailbox that did not
// change costs one small request: the mailbox and its query's state.
package jmap
