package proxy

import (
	"context"
	"fmt"

	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/upstream"
)

// What `gateway export` needs of the POP3 rules: the same account
// resolution and login (stored passwords, OAuth2 tokens refreshed once when
// refused) and the same message identities as the UIDL store, so that an
// export and a POP3 client agree on which message is which.

// Identities names each message of a listing as the UIDL store does: by
// what survives a change of epoch (see identities).
func Identities(entries []upstream.Entry) []string { return identities(entries) }

// ProposedUIDL is the unique-id the gateway gives a message it lists for
// the first time (see proposedUIDL).
func ProposedUIDL(e upstream.Entry) string { return proposedUIDL(listedEntryOf(e)) }

// UserSessions returns a function that logs in to the upstream account of
// the named mapped user as a POP3 login of that user would, with the
// user's stored password or OAuth2 token, and opens mailbox ("" for the
// upstream's configured one); and the upstream's configured mailbox.
func (g *Gateway) UserSessions(name string) (open func(ctx context.Context, mailbox string) (Session, error), mailbox string, err error) {
	cfg := g.config.Load()
	u := cfg.Users[username.Canonical(name)]
	if u == nil {
		return nil, "", fmt.Errorf("no user %q in the config", name)
	}
	acct, err := userAccount(u, cfg.Upstreams[u.Upstream])
	if err != nil {
		return nil, "", fmt.Errorf("user %s: %w", name, err)
	}
	open = func(ctx context.Context, mailbox string) (Session, error) {
		a := *acct
		if mailbox != "" && mailbox != acct.upstream.Mailbox {
			up := *acct.upstream
			up.Mailbox = mailbox
			a.upstream = &up
		}
		return g.open(ctx, &a)
	}
	return open, acct.upstream.Mailbox, nil
}
