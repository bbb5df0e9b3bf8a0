package upstream_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/upstream"
)

func TestLoginOAuth2(t *testing.T) {
	const good = "good-access-token"
	mem := startMem(t, &imapmem.Options{Bearer: func(u, tok string) bool { return u == user && tok == good }})
	ctx := testCtx(t)
	for _, mech := range []string{upstream.XOAuth2, upstream.OAuthBearer} {
		t.Run(mech, func(t *testing.T) {
			s, err := upstream.Dial(ctx, &upstream.Server{Address: mem.Addr(), Security: upstream.SecurityNone})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			// A refused token ends the exchange cleanly (the client answers
			// the error challenge), so the same connection can try again.
			err = s.LoginOAuth2(ctx, mech, user, "expired-token")
			if !errors.Is(err, upstream.ErrAuthFailed) || strings.Contains(err.Error(), "expired-token") {
				t.Fatalf("bad token: %v", err)
			}
			if err := s.LoginOAuth2(ctx, mech, user, good); err != nil {
				t.Fatalf("good token after a refused one: %v", err)
			}
			if _, err := s.Select(ctx, "INBOX"); err != nil {
				t.Fatal(err)
			}
			if ok, _ := mem.BearerLoginsWith(mech); ok != 1 {
				t.Fatalf("%d %s logins at the server", ok, mech)
			}
		})
	}
	s, err := upstream.Dial(ctx, &upstream.Server{Address: mem.Addr(), Security: upstream.SecurityNone})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.LoginOAuth2(ctx, "CRAM-MD5", user, good); err == nil {
		t.Fatal("an unknown mechanism was accepted")
	}
}
