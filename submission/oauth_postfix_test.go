package submission

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/internal/testkit/oauthtest"
	"github.com/pop3gw/gateway/internal/testkit/postfix"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// TestOAuthBearerRefreshAgainstPostfix: real Postfix with Dovecot's
// oauth2 passdb refuses an expired token by OAUTHBEARER's error challenge
// (RFC 7628 §3.2.2); the relay acknowledges it, takes the 535 that
// follows as a refusal and logs in with a refreshed token.
func TestOAuthBearerRefreshAgainstPostfix(t *testing.T) {
	p := oauthtest.NewProvider(t)
	pf, err := postfix.Start(postfix.Options{IntrospectionURL: p.IntrospectionURL()})
	switch {
	case errors.Is(err, postfix.ErrNotInstalled), errors.Is(err, postfix.ErrNotRoot):
		testenv.Missing(t, err.Error())
	case err != nil:
		t.Fatal(err)
	}
	t.Cleanup(pf.Stop)
	cfg := &oauth2.Config{ClientID: p.ClientID, ClientSecret: p.ClientSecret, Endpoint: p.Endpoint()}
	tok, err := cfg.TokenSource(context.Background(), &oauth2.Token{RefreshToken: p.IssueRefreshToken("carol@example.com")}).Token()
	if err != nil {
		t.Fatal(err)
	}
	var refreshed []bool
	acct := &Account{
		Upstream: &Upstream{Name: "postfix", Address: pf.Addr(), Security: SecurityNone, Timeout: 10 * time.Second},
		Username: "carol@example.com",
		Token: func(_ context.Context, refresh bool) (string, error) {
			refreshed = append(refreshed, refresh)
			if !refresh {
				return "expired-token", nil
			}
			return tok.AccessToken, nil
		},
		Mechanism: OAuthBearer,
	}
	uc, err := dial(context.Background(), acct)
	if err != nil {
		t.Fatalf("dial: %v\n%s", err, pf.Log())
	}
	uc.Quit()
	uc.Close()
	if len(refreshed) != 2 || !refreshed[1] {
		t.Fatalf("tokens asked for with refresh %v, want [false true]", refreshed)
	}
}
