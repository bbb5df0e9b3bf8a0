package proxy

import (
	"crypto/hmac"
	"sync"
)

// holders remembers, for each maildrop a session of this process holds,
// the credentials that session logged in with, as a keyed digest. A
// forwarded login has no local password hash: the upstream login is its
// password check, which costs a connection, a login and a SELECT. When the
// maildrop is held with the very credentials the upstream accepted for the
// holder, [IN-USE] (RFC 3206) is the answer whatever the upstream would
// say, so it is given at once. Any other password still goes to the
// upstream, counted, exactly as before: a guess learns nothing new. A
// password the upstream revoked since the holder logged in gets [IN-USE]
// rather than [AUTH] while that session lasts, as the pool lets it reuse
// a kept connection for a while.
type holders struct {
	// digest is the keyed digest of a login's credentials, the pool's.
	digest func(*account) []byte

	mu      sync.Mutex
	entries map[string]*holder
}

type holder struct {
	upstream *Upstream // the configuration it logged in with
	digest   []byte
}

func newHolders(digest func(*account) []byte) *holders {
	return &holders{digest: digest, entries: make(map[string]*holder)}
}

// hold records that the session holding maildrop logged in as acct; the
// returned func forgets it, once, and only this session's record.
func (h *holders) hold(maildrop string, acct *account) (forget func()) {
	e := &holder{upstream: acct.upstream, digest: h.digest(acct)}
	h.mu.Lock()
	h.entries[maildrop] = e
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.entries[maildrop] == e {
			delete(h.entries, maildrop)
		}
	}
}

// heldWith reports whether a session of this process holds maildrop,
// logged in with acct's credentials under the same configuration.
func (h *holders) heldWith(maildrop string, acct *account) bool {
	d := h.digest(acct)
	h.mu.Lock()
	e := h.entries[maildrop]
	h.mu.Unlock()
	return e != nil && e.upstream == acct.upstream && hmac.Equal(e.digest, d)
}
