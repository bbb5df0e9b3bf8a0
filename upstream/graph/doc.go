// Package graph is a small client for the mail part of Microsoft Graph, the
// store behind Microsoft 365 mailboxes whose IMAP and POP access a tenant
// has turned off. It lists a folder, follows its delta query for cheap
// re-polls, streams a message's MIME octets and applies the delete modes;
// it knows nothing of POP3. Like the IMAP store in package upstream, it
// reports refused credentials as upstream.ErrAuthFailed and a message
// removed by someone else as upstream.ErrMessageGone.
//
// It is plain net/http and encoding/json: no Go library for Graph mail is
// small enough to earn its place. Each call is written after Microsoft's
// reference page, cited beside it. Graph cannot run outside Microsoft, so
// the tests run against a double built from the same pages
// (internal/testkit/graphdouble).
//
// Pages the client follows, all under https://learn.microsoft.com/graph/:
//
//   - api/user-list-messages: list a folder, $select, $top, @odata.nextLink
//   - paging: apply the whole @odata.nextLink URL, never build one
//   - api/message-delta and delta-query-messages: a round of delta calls
//     ending in @odata.deltaLink; "@removed" entries; 410 when the state
//     is gone (delta-query-overview, errors: syncStateNotFound)
//   - outlook-get-mime-message and api/message-get: GET .../$value
//   - outlook-immutable-id: Prefer: IdType="ImmutableId" on every request,
//     so an id survives a move to another folder of the mailbox
//   - api/message-move (destinationId "deleteditems"), api/message-delete,
//     api/message-update (isRead)
//   - api/resources/mailfolder (well-known folder names),
//     api/user-list-mailfolders ($filter on displayName)
//   - throttling and throttling-limits#outlook-service-limits: 429 with
//     Retry-After; at most 4 concurrent requests per app and mailbox
//   - json-batching: deletes go 20 to a POST /$batch; Outlook runs 4 of a
//     batch at once, so a batch takes every concurrency slot
//   - errors: the JSON error object {"error":{"code":...,"message":...}}
package graph
