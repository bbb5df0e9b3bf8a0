// Package oauth keeps the OAuth2 tokens the gateway logs in upstream with:
// it stores each account's token sealed on disk, refreshes the access token
// before it expires, persists a rotated refresh token before using it, and
// runs the first authorisation (device grant of RFC 8628, or authorization
// code with PKCE, RFC 7636, and a loopback redirect, RFC 8252 §7.3).
package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/internal/secrets"
)

// Errors that callers tell apart.
var (
	// ErrNoToken means no token has been stored for the account yet.
	ErrNoToken = errors.New("oauth: no token stored")
	// ErrRefused means the provider refused the grant (a revoked or
	// expired refresh token, a denied authorisation) or the client (a
	// changed client ID or secret): retrying cannot help.
	ErrRefused = errors.New("oauth: the provider refused the grant or the client")
)

// refreshEarly is how long before its expiry an access token is replaced,
// so a token never expires in the middle of a login.
const refreshEarly = 5 * time.Minute

// Client is the OAuth2 application registered with a provider.
type Client struct {
	Config *oauth2.Config // endpoints, client ID and secret, scopes
	// HTTP makes the requests to the provider; nil uses a client with a
	// 30-second timeout.
	HTTP *http.Client
}

func (c *Client) context(ctx context.Context) context.Context {
	h := c.HTTP
	if h == nil {
		h = defaultHTTP
	}
	return context.WithValue(ctx, oauth2.HTTPClient, h)
}

var defaultHTTP = &http.Client{Timeout: 30 * time.Second}

// Store is the sealed file holding one account's token.
type Store struct {
	Path string
	Key  *secrets.Key
	// Context binds the sealed file to its account, so a file copied to
	// another user's path does not open.
	Context string

	write func(name string, data []byte) error // secrets.WriteFile; tests replace it
}

// stored is the token file's plaintext.
type stored struct {
	AccessToken  string    `json:"access_token,omitempty"`
	TokenType    string    `json:"token_type,omitempty"`
	RefreshToken string    `json:"refresh_token"`
	Expiry       time.Time `json:"expiry,omitzero"`
	Saved        time.Time `json:"saved"`
}

// Load reads and opens the token file. A missing file is ErrNoToken.
func (s *Store) Load() (*oauth2.Token, error) {
	data, err := secrets.ReadFile(s.Path, secrets.MaxFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", ErrNoToken, s.Path)
	}
	if err != nil {
		return nil, err
	}
	plain, err := s.Key.Open(data, s.Context)
	if err != nil {
		return nil, fmt.Errorf("oauth: token file %s: %w", s.Path, err)
	}
	var st stored
	if err := json.Unmarshal(plain, &st); err != nil {
		return nil, fmt.Errorf("oauth: token file %s: malformed contents", s.Path)
	}
	if st.RefreshToken == "" && st.AccessToken == "" {
		return nil, fmt.Errorf("%w in %s", ErrNoToken, s.Path)
	}
	return &oauth2.Token{
		AccessToken:  st.AccessToken,
		TokenType:    st.TokenType,
		RefreshToken: st.RefreshToken,
		Expiry:       st.Expiry,
	}, nil
}

// Save seals the token and replaces the file atomically: a crash leaves
// the old token or the new one, never neither.
func (s *Store) Save(tok *oauth2.Token) error {
	plain, err := json.Marshal(stored{
		AccessToken:  tok.AccessToken,
		TokenType:    tok.TokenType,
		RefreshToken: tok.RefreshToken,
		Expiry:       tok.Expiry,
		Saved:        time.Now().UTC(),
	})
	if err != nil {
		return err
	}
	write := s.write
	if write == nil {
		write = secrets.WriteFile
	}
	return write(s.Path, s.Key.Seal(plain, s.Context))
}

// stat identifies a version of the token file, to notice a new
// authorisation written while the gateway runs. A save replaces the file
// by renaming a new one over it, so the file's identity changes with
// every save, even within one tick of the file system's clock.
type stat struct{ fi os.FileInfo }

func statFile(path string) stat {
	fi, err := os.Stat(path)
	if err != nil {
		return stat{}
	}
	return stat{fi}
}

func (a stat) same(b stat) bool {
	if a.fi == nil || b.fi == nil {
		return a.fi == nil && b.fi == nil
	}
	return os.SameFile(a.fi, b.fi) && a.fi.ModTime().Equal(b.fi.ModTime()) && a.fi.Size() == b.fi.Size()
}

// Source hands out access tokens for one account. It is safe for
// concurrent use; refreshes are serialised, so a rotating provider never
// sees the same refresh token twice.
type Source struct {
	client *Client
	store  *Store
	log    *slog.Logger
	now    func() time.Time
	// beforeRefresh, in tests, runs just before a refresh request.
	beforeRefresh func()

	mu     sync.Mutex
	tok    *oauth2.Token
	loaded stat
}

// NewSource returns a source for the account whose token store is given.
// The file is read at the first use, and again whenever it changes.
func NewSource(c *Client, s *Store, log *slog.Logger) *Source {
	if log == nil {
		log = slog.Default()
	}
	return &Source{client: c, store: s, log: log, now: time.Now}
}

// AccessToken returns an access token valid for a few minutes at least.
// With refresh, it gets a new one even if the current one looks valid: the
// upstream refused it. The error wraps ErrNoToken or ErrRefused when a new
// authorisation is needed.
func (s *Source) AccessToken(ctx context.Context, refresh bool) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := statFile(s.store.Path); s.tok == nil || !st.same(s.loaded) {
		tok, err := s.store.Load()
		if err != nil {
			return "", err
		}
		s.tok, s.loaded = tok, st
	}
	if !refresh && s.tok.AccessToken != "" && (s.tok.Expiry.IsZero() || s.tok.Expiry.After(s.now().Add(refreshEarly))) {
		return s.tok.AccessToken, nil
	}
	if s.tok.RefreshToken == "" {
		return "", fmt.Errorf("%w: the stored token has no refresh token", ErrRefused)
	}
	if s.beforeRefresh != nil {
		s.beforeRefresh()
	}
	tok, err := s.refresh(ctx, s.tok.RefreshToken)
	if errors.Is(err, ErrRefused) {
		// Another process sharing the file (a replica, or `gateway
		// oauth2 login`) may have rotated the token meanwhile: its new
		// one is on disk.
		if st := statFile(s.store.Path); !st.same(s.loaded) {
			if fresh, lerr := s.store.Load(); lerr == nil && fresh.RefreshToken != s.tok.RefreshToken {
				s.tok, s.loaded = fresh, st
				if fresh.AccessToken != "" && fresh.Expiry.After(s.now().Add(refreshEarly)) {
					return fresh.AccessToken, nil
				}
				tok, err = s.refresh(ctx, fresh.RefreshToken)
			}
		}
	}
	if err != nil {
		return "", err
	}
	rotated := tok.RefreshToken != s.tok.RefreshToken
	s.tok = tok
	// The new token is saved before it is used: with a rotating provider
	// the old refresh token is already void, and losing the new one would
	// need a new authorisation.
	if err := s.store.Save(tok); err != nil {
		s.log.Error("saving the refreshed OAuth2 token failed; it is kept in memory until the gateway stops",
			"file", s.store.Path, "rotated", rotated, "err", err)
	} else {
		s.loaded = statFile(s.store.Path)
	}
	return tok.AccessToken, nil
}

// refresh exchanges a refresh token for a new access token (RFC 6749 §6).
func (s *Source) refresh(ctx context.Context, refreshToken string) (*oauth2.Token, error) {
	cfg := s.client.Config
	tok, err := cfg.TokenSource(s.client.context(ctx), &oauth2.Token{RefreshToken: refreshToken}).Token()
	if err != nil {
		return nil, describe(err)
	}
	if tok.AccessToken == "" {
		return nil, errors.New("oauth: the provider's token response has no access_token")
	}
	if tok.RefreshToken == "" {
		tok.RefreshToken = refreshToken
	}
	return tok, nil
}

// permanent lists the token endpoint's error codes (RFC 6749 §5.2) after
// which retrying cannot help.
var permanent = map[string]bool{
	"invalid_grant":       true,
	"invalid_client":      true,
	"unauthorized_client": true,
	"invalid_scope":       true,
}

// describe turns a token endpoint failure into an error that carries the
// provider's error code and description but never the response body,
// which could echo what was sent.
func describe(err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return fmt.Errorf("oauth: token request: %w", err)
	}
	code := printable(re.ErrorCode)
	msg := code
	if d := printable(re.ErrorDescription); d != "" {
		msg += ": " + d
	}
	status := 0
	if re.Response != nil {
		status = re.Response.StatusCode
	}
	if permanent[code] {
		return fmt.Errorf("%w (%s)", ErrRefused, msg)
	}
	if msg == "" {
		msg = "no error code"
	}
	return fmt.Errorf("oauth: token request failed with HTTP %d (%s)", status, msg)
}

// printable keeps a provider's text short and on one line.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
