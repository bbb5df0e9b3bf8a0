package oauth

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/internal/secrets"
	"github.com/pop3gw/gateway/internal/testkit/oauthtest"
)

const (
	alice        = "alice@example.com"
	aliceContext = "oauth2-token:alice"
)

// newClient is the gateway's client registered with p.
func newClient(p *oauthtest.Provider, scopes ...string) *Client {
	return &Client{Config: &oauth2.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		Endpoint:     p.Endpoint(),
		Scopes:       scopes,
	}}
}

func newKey(t *testing.T) *secrets.Key {
	t.Helper()
	key, _, err := secrets.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// newStore is alice's token store in a new directory with a new key.
func newStore(t *testing.T) *Store {
	t.Helper()
	return &Store{Path: filepath.Join(t.TempDir(), "alice.token"), Key: newKey(t), Context: aliceContext}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func save(t *testing.T, s *Store, tok *oauth2.Token) {
	t.Helper()
	if err := s.Save(tok); err != nil {
		t.Fatal(err)
	}
}

func load(t *testing.T, s *Store) *oauth2.Token {
	t.Helper()
	tok, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// expired is a stored token whose access token has expired, with a
// refresh token the provider accepts.
func expired(p *oauthtest.Provider) *oauth2.Token {
	return &oauth2.Token{
		AccessToken:  "at-expired",
		TokenType:    "Bearer",
		RefreshToken: p.IssueRefreshToken(alice),
		Expiry:       time.Now().Add(-time.Minute),
	}
}

// noSecrets fails when err's text shows one of the secrets.
func noSecrets(t *testing.T, err error, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error %q reveals a secret", err)
		}
	}
}

func TestStoreRoundTrip(t *testing.T) {
	s := newStore(t)
	want := &oauth2.Token{
		AccessToken:  "at-" + strings.Repeat("A", 30),
		TokenType:    "Bearer",
		RefreshToken: "rt-" + strings.Repeat("R", 30),
		Expiry:       time.Now().Add(time.Hour).Round(0),
	}
	save(t, s, want)
	got := load(t, s)
	if got.AccessToken != want.AccessToken || got.RefreshToken != want.RefreshToken || got.TokenType != want.TokenType {
		t.Errorf("loaded %+v, want %+v", got, want)
	}
	if !got.Expiry.Equal(want.Expiry) {
		t.Errorf("expiry %v, want %v", got.Expiry, want.Expiry)
	}

	data, err := os.ReadFile(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !secrets.IsSealed(data) {
		t.Errorf("token file is not sealed: %q", data)
	}
	for _, secret := range []string{want.AccessToken, want.RefreshToken, "AAAA", "RRRR"} {
		if bytes.Contains(data, []byte(secret)) {
			t.Errorf("token file shows %q", secret)
		}
	}
	fi, err := os.Stat(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("token file mode %04o, want 0600", perm)
	}

	// A refresh token alone, as a provider may grant, loads too.
	save(t, s, &oauth2.Token{RefreshToken: "rt-only"})
	if got := load(t, s); got.RefreshToken != "rt-only" || got.AccessToken != "" || !got.Expiry.IsZero() {
		t.Errorf("loaded %+v, want only the refresh token", got)
	}
}

func TestStoreLoadMissing(t *testing.T) {
	s := newStore(t)
	_, err := s.Load()
	if !errors.Is(err, ErrNoToken) {
		t.Fatalf("Load of a missing file: %v, want ErrNoToken", err)
	}
	if !strings.Contains(err.Error(), s.Path) {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestStoreLoadEmptyToken(t *testing.T) {
	s := newStore(t)
	save(t, s, &oauth2.Token{})
	if _, err := s.Load(); !errors.Is(err, ErrNoToken) {
		t.Fatalf("Load of a token without tokens: %v, want ErrNoToken", err)
	}
}

func TestStoreLoadMalformed(t *testing.T) {
	s := newStore(t)
	if err := secrets.WriteFile(s.Path, s.Key.Seal([]byte("not json"), s.Context)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Load()
	if err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Fatalf("Load of malformed contents: %v", err)
	}
}

func TestStoreLoadWrongKeyOrContext(t *testing.T) {
	s := newStore(t)
	tok := &oauth2.Token{AccessToken: "at-secret", RefreshToken: "rt-secret"}
	save(t, s, tok)
	for name, other := range map[string]*Store{
		"wrong key":     {Path: s.Path, Key: newKey(t), Context: s.Context},
		"other account": {Path: s.Path, Key: s.Key, Context: "oauth2-token:bob"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := other.Load()
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if !errors.Is(err, secrets.ErrOpen) {
				t.Errorf("error %q does not wrap secrets.ErrOpen", err)
			}
			if errors.Is(err, ErrNoToken) {
				t.Errorf("error %q wraps ErrNoToken", err)
			}
			if msg := err.Error(); !strings.Contains(msg, s.Path) || !strings.Contains(msg, "wrong key or context") {
				t.Errorf("error %q does not name the file and the cause", err)
			}
			noSecrets(t, err, tok.AccessToken, tok.RefreshToken)
		})
	}
}

func TestStoreLoadRefusesGroupReadable(t *testing.T) {
	s := newStore(t)
	save(t, s, &oauth2.Token{RefreshToken: "rt-secret"})
	if err := os.Chmod(s.Path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := s.Load()
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Load of a mode 0644 file: %v, want a chmod 600 hint", err)
	}
	// Source reports the same.
	src := NewSource(&Client{Config: &oauth2.Config{}}, s, discardLog())
	if _, err := src.AccessToken(testContext(t), false); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("AccessToken with a mode 0644 file: %v, want a chmod 600 hint", err)
	}
}

func TestSourceNoToken(t *testing.T) {
	p := oauthtest.NewProvider(t)
	src := NewSource(newClient(p), newStore(t), discardLog())
	if _, err := src.AccessToken(testContext(t), false); !errors.Is(err, ErrNoToken) {
		t.Fatalf("AccessToken without a token file: %v, want ErrNoToken", err)
	}
}

func TestSourceUsesUnexpiredToken(t *testing.T) {
	for name, expiry := range map[string]time.Time{
		"expires in an hour": time.Now().Add(time.Hour),
		"expires in 6m":      time.Now().Add(refreshEarly + time.Minute),
		"no expiry":          {},
	} {
		t.Run(name, func(t *testing.T) {
			p := oauthtest.NewProvider(t)
			s := newStore(t)
			save(t, s, &oauth2.Token{AccessToken: "at-stored", RefreshToken: p.IssueRefreshToken(alice), Expiry: expiry})
			src := NewSource(newClient(p), s, discardLog())
			for range 3 {
				got, err := src.AccessToken(testContext(t), false)
				if err != nil {
					t.Fatal(err)
				}
				if got != "at-stored" {
					t.Fatalf("AccessToken = %q, want the stored one", got)
				}
			}
			if n := p.Requests(oauthtest.RefreshTokenGrant); n != 0 {
				t.Errorf("%d refresh requests, want none", n)
			}
		})
	}
}

func TestSourceRefreshesExpiringToken(t *testing.T) {
	for name, expiry := range map[string]time.Duration{
		"expired":       -time.Minute,
		"expires in 4m": refreshEarly - time.Minute,
	} {
		t.Run(name, func(t *testing.T) {
			p := oauthtest.NewProvider(t)
			s := newStore(t)
			old := expired(p)
			old.Expiry = time.Now().Add(expiry)
			save(t, s, old)
			src := NewSource(newClient(p), s, discardLog())
			ctx := testContext(t)

			got, err := src.AccessToken(ctx, false)
			if err != nil {
				t.Fatal(err)
			}
			if got == old.AccessToken || !p.ValidFor(alice, got) {
				t.Fatalf("AccessToken = %q, want a new valid token", got)
			}
			if n := p.Requests(oauthtest.RefreshTokenGrant); n != 1 {
				t.Errorf("%d refresh requests, want 1", n)
			}
			stored := load(t, s)
			if stored.AccessToken != got || stored.RefreshToken != old.RefreshToken {
				t.Errorf("stored %+v, want the new access token and the same refresh token", stored)
			}
			if d := time.Until(stored.Expiry); d < 50*time.Minute || d > time.Hour {
				t.Errorf("stored expiry in %v, want about 1h", d)
			}

			// The new token is used until it nears its expiry.
			again, err := src.AccessToken(ctx, false)
			if err != nil {
				t.Fatal(err)
			}
			if again != got {
				t.Errorf("second AccessToken = %q, want %q", again, got)
			}
			if n := p.Requests(oauthtest.RefreshTokenGrant); n != 1 {
				t.Errorf("%d refresh requests after the second call, want 1", n)
			}
		})
	}
}

func TestSourceForcedRefresh(t *testing.T) {
	p := oauthtest.NewProvider(t)
	s := newStore(t)
	save(t, s, &oauth2.Token{AccessToken: "at-refused-upstream", RefreshToken: p.IssueRefreshToken(alice), Expiry: time.Now().Add(time.Hour)})
	src := NewSource(newClient(p), s, discardLog())
	got, err := src.AccessToken(testContext(t), true)
	if err != nil {
		t.Fatal(err)
	}
	if got == "at-refused-upstream" || !p.ValidFor(alice, got) {
		t.Fatalf("AccessToken(refresh) = %q, want a new valid token", got)
	}
	if n := p.Requests(oauthtest.RefreshTokenGrant); n != 1 {
		t.Errorf("%d refresh requests, want 1", n)
	}
	if stored := load(t, s); stored.AccessToken != got {
		t.Errorf("stored access token %q, want %q", stored.AccessToken, got)
	}
}

func TestSourceRotation(t *testing.T) {
	p := oauthtest.NewProvider(t)
	p.RotateRefreshTokens = true
	c := newClient(p)
	s := newStore(t)
	old := expired(p)
	save(t, s, old)
	ctx := testContext(t)

	got, err := NewSource(c, s, discardLog()).AccessToken(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !p.ValidFor(alice, got) {
		t.Fatalf("AccessToken = %q, not valid", got)
	}
	stored := load(t, s)
	if stored.RefreshToken == old.RefreshToken || stored.RefreshToken == "" {
		t.Fatalf("stored refresh token %q, want the rotated one", stored.RefreshToken)
	}
	if stored.AccessToken != got {
		t.Errorf("stored access token %q, want %q", stored.AccessToken, got)
	}

	// The provider no longer takes the old refresh token.
	copied := newStore(t)
	save(t, copied, old)
	_, err = NewSource(c, copied, discardLog()).AccessToken(ctx, true)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("refresh with the rotated-out token: %v, want ErrRefused", err)
	}

	// After a restart, the saved refresh token works.
	restarted := &Store{Path: s.Path, Key: s.Key, Context: s.Context}
	again, err := NewSource(c, restarted, discardLog()).AccessToken(ctx, true)
	if err != nil {
		t.Fatalf("refresh after a restart: %v", err)
	}
	if again == got || !p.ValidFor(alice, again) {
		t.Fatalf("AccessToken after a restart = %q, want a new valid token", again)
	}
	if third := load(t, s); third.RefreshToken == stored.RefreshToken || third.AccessToken != again {
		t.Errorf("after the second refresh stored %+v, want a new refresh token and %q", third, again)
	}
}

func TestSourceRevoked(t *testing.T) {
	p := oauthtest.NewProvider(t)
	s := newStore(t)
	old := expired(p)
	save(t, s, old)
	p.Revoke(old.RefreshToken)

	_, err := NewSource(newClient(p), s, discardLog()).AccessToken(testContext(t), false)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("AccessToken with a revoked refresh token: %v, want ErrRefused", err)
	}
	if !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("error %q does not carry the provider's error code", err)
	}
	noSecrets(t, err, old.RefreshToken, p.ClientSecret)
	if stored := load(t, s); stored.RefreshToken != old.RefreshToken {
		t.Errorf("stored refresh token changed to %q", stored.RefreshToken)
	}
}

func TestSourceWithoutRefreshToken(t *testing.T) {
	p := oauthtest.NewProvider(t)
	s := newStore(t)
	save(t, s, &oauth2.Token{AccessToken: "at-old", Expiry: time.Now().Add(-time.Minute)})
	_, err := NewSource(newClient(p), s, discardLog()).AccessToken(testContext(t), false)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("AccessToken without a refresh token: %v, want ErrRefused", err)
	}
	if n := p.Requests(oauthtest.RefreshTokenGrant); n != 0 {
		t.Errorf("%d refresh requests, want none", n)
	}
}

func TestSourceTokenEndpointDown(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "internal error", http.StatusInternalServerError)
	}))
	t.Cleanup(failing.Close)
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":"temporarily_unavailable","error_description":"try later"}`))
	}))
	t.Cleanup(unavailable.Close)

	for _, tc := range []struct {
		name, tokenURL, want string
	}{
		{"closed", closed.URL + "/token", "token request"},
		{"500", failing.URL + "/token", "HTTP 500"},
		{"503", unavailable.URL + "/token", "temporarily_unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := oauthtest.NewProvider(t)
			c := newClient(p)
			c.Config.Endpoint.TokenURL = tc.tokenURL
			s := newStore(t)
			old := expired(p)
			save(t, s, old)
			_, err := NewSource(c, s, discardLog()).AccessToken(testContext(t), false)
			if err == nil {
				t.Fatal("AccessToken succeeded")
			}
			if errors.Is(err, ErrRefused) || errors.Is(err, ErrNoToken) {
				t.Errorf("error %q asks for a new authorisation", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			noSecrets(t, err, old.RefreshToken, p.ClientSecret)
			if stored := load(t, s); stored.RefreshToken != old.RefreshToken {
				t.Errorf("stored refresh token changed to %q", stored.RefreshToken)
			}
		})
	}
}

func TestSourceConcurrentRefresh(t *testing.T) {
	p := oauthtest.NewProvider(t)
	p.RotateRefreshTokens = true
	s := newStore(t)
	old := expired(p)
	save(t, s, old)
	src := NewSource(newClient(p), s, discardLog())
	ctx := testContext(t)

	const n = 20
	var (
		wg     sync.WaitGroup
		tokens [n]string
		errs   [n]error
	)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			tokens[i], errs[i] = src.AccessToken(ctx, false)
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if tokens[i] != tokens[0] || !p.ValidFor(alice, tokens[i]) {
			t.Errorf("goroutine %d got %q, want the one valid token %q", i, tokens[i], tokens[0])
		}
	}
	if got := p.Requests(oauthtest.RefreshTokenGrant); got != 1 {
		t.Errorf("%d refresh requests, want 1", got)
	}
	if stored := load(t, s); stored.RefreshToken == old.RefreshToken || stored.AccessToken != tokens[0] {
		t.Errorf("stored %+v, want the rotated refresh token and %q", stored, tokens[0])
	}
}

func TestSourceReloadsReplacedFile(t *testing.T) {
	p := oauthtest.NewProvider(t)
	s := newStore(t)
	save(t, s, expired(p))
	src := NewSource(newClient(p), s, discardLog())
	ctx := testContext(t)

	// The source refreshes and saves the file itself...
	first, err := src.AccessToken(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !p.ValidFor(alice, first) {
		t.Fatalf("AccessToken = %q, not valid", first)
	}

	// ...then a new login replaces it while the gateway runs (the new
	// grant is bob's only to tell its tokens apart).
	login := &Store{Path: s.Path, Key: s.Key, Context: s.Context}
	bob := "bob@example.com"
	save(t, login, &oauth2.Token{AccessToken: "at-new-login", RefreshToken: p.IssueRefreshToken(bob), Expiry: time.Now().Add(time.Hour)})
	got, err := src.AccessToken(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if got != "at-new-login" {
		t.Fatalf("AccessToken after a new login = %q, want the new login's token", got)
	}

	// The new login's refresh token is the one used from now on.
	got, err = src.AccessToken(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if !p.ValidFor(bob, got) {
		t.Errorf("refreshed token %q is not the new grant's", got)
	}
	if n := p.Requests(oauthtest.RefreshTokenGrant); n != 2 {
		t.Errorf("%d refresh requests, want 2", n)
	}
}

// TestSourceKeepsTokenWhenSaveFails checks that a refreshed token is used
// even when the file cannot be replaced, and kept for the next calls.
func TestSourceKeepsTokenWhenSaveFails(t *testing.T) {
	p := oauthtest.NewProvider(t)
	p.RotateRefreshTokens = true
	s := newStore(t)
	save(t, s, expired(p))
	// The disk is full, say: every save fails from now on.
	s.write = func(string, []byte) error { return errors.New("no space left on device") }
	src := NewSource(newClient(p), s, discardLog())
	ctx := testContext(t)
	first, err := src.AccessToken(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	second, err := src.AccessToken(ctx, true)
	if err != nil {
		t.Fatalf("refresh with the rotated token kept in memory: %v", err)
	}
	if first == second || !p.ValidFor(alice, second) {
		t.Errorf("second token %q, want a new valid one", second)
	}
}

// Two processes share one token file (replicas on a shared volume) and the
// provider rotates refresh tokens: the one that refreshes second finds its
// refresh token void, and picks up the other's from the file.
func TestSourcesSharingRotatingFile(t *testing.T) {
	p := oauthtest.NewProvider(t)
	p.RotateRefreshTokens = true
	c := newClient(p)
	s := newStore(t)
	save(t, s, expired(p))
	ctx := testContext(t)

	one := NewSource(c, &Store{Path: s.Path, Key: s.Key, Context: s.Context}, discardLog())
	two := NewSource(c, &Store{Path: s.Path, Key: s.Key, Context: s.Context}, discardLog())
	if _, err := two.AccessToken(ctx, false); err != nil {
		t.Fatal(err)
	}
	// one refreshes between two's look at the file and two's refresh.
	two.beforeRefresh = func() {
		if _, err := one.AccessToken(ctx, true); err != nil {
			t.Error(err)
		}
	}
	got, err := two.AccessToken(ctx, true)
	if err != nil {
		t.Fatalf("refresh after the other process rotated the token: %v", err)
	}
	if !p.ValidFor(alice, got) {
		t.Fatalf("AccessToken = %q, not valid", got)
	}
	if p.Requests(oauthtest.RefreshTokenGrant) < 3 {
		t.Fatalf("%d refresh requests; the race was not exercised", p.Requests(oauthtest.RefreshTokenGrant))
	}
}
