package server

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/submission"
)

// TestRelayLogin: the relay resolves logins exactly as POP3 does (a
// mapped user by its local password, in any case; any other name passed
// through with its own password) and allows the senders of the account.
func TestRelayLogin(t *testing.T) {
	hash, err := passwd.Hash("local-pass")
	if err != nil {
		t.Fatal(err)
	}
	gw := proxy.New(&proxy.Config{
		Upstreams: map[string]*proxy.Upstream{"corp": {Name: "corp"}, "other": {Name: "other"}},
		Users: map[string]*proxy.User{"alice": {
			Name: "alice", PasswordHash: hash, Upstream: "corp", UpstreamUser: "alice@example.com",
			UpstreamPassword: func() (string, error) { return "upstream-secret", nil },
		}},
		Passthrough: &proxy.Passthrough{Upstream: "corp", Domains: map[string]string{"elsewhere.example": "other"}},
	}, cache.New(0, 0), nil)
	defer gw.Close()
	corp := &submission.Upstream{Name: "corp", Address: "127.0.0.1:9"}
	r := &relay{gateway: gw}
	r.routes.Store(&relayRoutes{
		upstreams:  map[string]*submission.Upstream{"corp": corp},
		mechanisms: map[string]string{},
		addresses:  map[string][]string{"alice": {"scanner@example.com"}},
	})
	ctx := context.Background()
	for _, name := range []string{"alice", "ALICE"} {
		acct, err := r.Login(ctx, &submission.LoginInfo{Username: name, Password: "local-pass"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if acct.Upstream != corp || acct.Username != "alice@example.com" || acct.Password != "upstream-secret" ||
			!slices.Equal(acct.Senders, []string{"alice@example.com", "scanner@example.com"}) || acct.Key != "corp/alice@example.com" {
			t.Errorf("%s: %+v", name, acct)
		}
	}
	if _, err := r.Login(ctx, &submission.LoginInfo{Username: "alice", Password: "upstream-secret"}); !errors.Is(err, submission.ErrAuthFailed) {
		t.Errorf("the upstream password as the local one: %v", err)
	}
	acct, err := r.Login(ctx, &submission.LoginInfo{Username: "Bob@Example.org", Password: "bobs-own"})
	if err != nil {
		t.Fatal(err)
	}
	if acct.Username != "Bob@Example.org" || acct.Password != "bobs-own" || !slices.Equal(acct.Senders, []string{"Bob@Example.org"}) {
		t.Errorf("passthrough: %+v", acct)
	}
	if _, err := r.Login(ctx, &submission.LoginInfo{Username: "carol@elsewhere.example", Password: "x"}); err == nil || errors.Is(err, submission.ErrAuthFailed) {
		t.Errorf("an upstream without a submission endpoint: %v, want a temporary failure", err)
	}
}
