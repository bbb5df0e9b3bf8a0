package proxy

import (
	"context"
	"errors"

	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/pop3"
)

// Credentials is a login resolved to its upstream account, for a door
// other than POP3 (the SMTP submission relay) that logs in upstream
// itself with the same users and rules.
type Credentials struct {
	Upstream *Upstream
	// Username and Password log in upstream; for an upstream with OAuth2
	// set, Token gives the access token instead (refresh: a new one,
	// because the upstream refused the last).
	Username string
	Password string
	Token    func(ctx context.Context, refresh bool) (string, error)
	// User is the mapped user's configured name; empty for a passthrough
	// login, whose credentials only the upstream checks.
	User string
}

// Forwarded tells a passthrough login.
func (c *Credentials) Forwarded() bool { return c.User == "" }

// ErrLoginRefused refuses a login, whatever the reason (unknown name,
// wrong local password), so a client cannot tell which.
var ErrLoginRefused = errors.New("proxy: login refused")

// ErrUnavailable is a login that cannot be served now, such as a mapped
// user whose upstream secret cannot be read; the details are logged.
var ErrUnavailable = errors.New("proxy: login temporarily unavailable")

// Credentials resolves a login as POP3 logins are resolved: a mapped
// user's local password is checked here and the upstream account's own
// credentials returned; any other name is a passthrough login with the
// credentials given, if passthrough is configured.
func (g *Gateway) Credentials(name, password string) (*Credentials, error) {
	acct, err := g.resolveName(name, password)
	if errors.Is(err, pop3.ErrAuthFailed) {
		return nil, ErrLoginRefused
	}
	if err != nil {
		return nil, ErrUnavailable
	}
	return &Credentials{
		Upstream: acct.upstream,
		Username: acct.username,
		Password: acct.password,
		Token:    acct.token,
		User:     acct.user,
	}, nil
}

// UserCredentials returns a mapped user's upstream credentials without
// a local password, for `gateway check`.
func (g *Gateway) UserCredentials(name string) (*Credentials, error) {
	cfg := g.config.Load()
	u := cfg.Users[username.Canonical(name)]
	if u == nil {
		return nil, errors.New("no such user")
	}
	acct, err := userAccount(u, cfg.Upstreams[u.Upstream])
	if err != nil {
		return nil, err
	}
	return &Credentials{Upstream: acct.upstream, Username: acct.username, Password: acct.password, Token: acct.token, User: acct.user}, nil
}
