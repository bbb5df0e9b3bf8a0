package jmap

import (
	"errors"

	"github.com/pop3gw/gateway/upstream/internal/web"
)

// Bounds on what the client reads of a JSON response. A page of listing
// (maxPage Emails with the few properties asked for) is well under a MiB,
// and no answer the client reads nests deeper than a few levels; anything
// larger or deeper is refused before it is decoded, so a broken or
// hostile server cannot make the gateway hold gigabytes or recurse
// without end (encoding/json itself allows 10,000 levels).
const (
	maxJSON      = 16 << 20
	maxErrorJSON = 64 << 10
	maxDepth     = 32
)

// ErrBadResponse means the server answered with something the client does
// not read: too large, too deep, or not the JSON the RFCs describe.
var ErrBadResponse = errors.New("jmap: unreadable response")

// jsonIn reads the server's JSON within the bounds above.
var jsonIn = web.JSONBounds{MaxDepth: maxDepth, Bad: ErrBadResponse}
