package oauth

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// DeviceLogin runs the device authorization grant (RFC 8628): it asks the
// provider for a user code, tells the operator where to enter it, and
// polls until the user has approved, denied, or the code expired.
func (c *Client) DeviceLogin(ctx context.Context, out io.Writer) (*oauth2.Token, error) {
	ctx = c.context(ctx)
	da, err := c.Config.DeviceAuth(ctx)
	if err != nil {
		return nil, describe(err)
	}
	fmt.Fprintf(out, "Open %s in a browser, on any device, and enter the code %s\n", da.VerificationURI, da.UserCode)
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(out, "(or open %s)\n", da.VerificationURIComplete)
	}
	if !da.Expiry.IsZero() {
		fmt.Fprintf(out, "The code expires at %s. Waiting for approval...\n", da.Expiry.Format(time.Kitchen))
	}
	tok, err := c.Config.DeviceAccessToken(ctx, da)
	if err != nil {
		return nil, describe(err)
	}
	return tok, checkGrant(tok)
}

// CodeLogin runs the authorization code grant with PKCE (RFC 7636) and a
// loopback redirect (RFC 8252 §7.3). It prints the URL to open. The
// browser is sent back to a listener on the loopback address of
// Config.RedirectURL (default: 127.0.0.1 on a free port). When the browser
// runs on another machine than the gateway, that redirect fails to load;
// the operator then pastes the address from the browser's address bar
// into in, which works as well.
func (c *Client) CodeLogin(ctx context.Context, in io.Reader, out io.Writer) (*oauth2.Token, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := *c.Config
	listenAddr := "127.0.0.1:0"
	path := "/"
	if cfg.RedirectURL != "" {
		u, err := url.Parse(cfg.RedirectURL)
		if err != nil {
			return nil, fmt.Errorf("oauth: redirect URL: %w", err)
		}
		listenAddr, path = u.Host, u.Path
		if path == "" {
			path = "/"
		}
		if u.Port() == "" {
			listenAddr += ":80"
		}
	}
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return nil, fmt.Errorf("oauth: listening for the redirect: %w", err)
	}
	defer ln.Close()
	if cfg.RedirectURL == "" {
		cfg.RedirectURL = "http://" + ln.Addr().String() + path
	}

	state := randomString()
	verifier := oauth2.GenerateVerifier()
	// access_type=offline and prompt=consent make Google return a refresh
	// token every time; other providers ignore or accept them.
	authURL := cfg.AuthCodeURL(state, oauth2.AccessTypeOffline, oauth2.ApprovalForce, oauth2.S256ChallengeOption(verifier))
	fmt.Fprintf(out, "Open this address in a browser and sign in as the account's owner:\n\n%s\n\n", authURL)
	fmt.Fprintf(out, "If the browser then shows an error page for %s (it runs on another machine), copy that page's address from the address bar and paste it here.\n", cfg.RedirectURL)

	results := make(chan callback, 2)
	srv := &http.Server{
		Handler:           redirectHandler(path, state, results),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(ln)
	defer func() {
		// Let the browser receive the page the handler is writing: Close
		// alone could cut its connection before the response is sent.
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		srv.Close()
	}()
	go readPasted(ctx, in, state, results)

	var cb callback
	select {
	case cb = <-results:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if cb.err != nil {
		return nil, cb.err
	}
	tok, err := cfg.Exchange(c.context(ctx), cb.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, describe(err)
	}
	return tok, checkGrant(tok)
}

// checkGrant makes sure a new grant can be kept: without a refresh token
// the gateway would need a new authorisation within the hour.
func checkGrant(tok *oauth2.Token) error {
	if tok.RefreshToken == "" {
		return errors.New("oauth: the provider granted no refresh token; check that the scopes allow offline access (Microsoft: offline_access)")
	}
	return nil
}

type callback struct {
	code string
	err  error
}

// parseCallback reads the redirect's query (RFC 6749 §4.1.2): the code, or
// the error the provider sent, and the state, which must match.
func parseCallback(q url.Values, state string) callback {
	if q.Get("state") != state {
		return callback{err: errors.New("oauth: the redirect's state does not match this login; start again")}
	}
	if e := q.Get("error"); e != "" {
		msg := printable(e)
		if d := printable(q.Get("error_description")); d != "" {
			msg += ": " + d
		}
		return callback{err: fmt.Errorf("oauth: authorisation refused (%s)", msg)}
	}
	code := q.Get("code")
	if code == "" {
		return callback{err: errors.New("oauth: the redirect carries no code")}
	}
	return callback{code: code}
}

func redirectHandler(path, state string, results chan<- callback) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path || r.URL.Query().Get("state") == "" {
			http.NotFound(w, r)
			return
		}
		cb := parseCallback(r.URL.Query(), state)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if cb.err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "<p>%s</p>", html.EscapeString(cb.err.Error()))
		} else {
			fmt.Fprint(w, "<p>The gateway received the authorisation. You can close this window.</p>")
		}
		select {
		case results <- cb:
		default:
		}
	})
}

// readPasted takes the redirect address pasted by the operator.
func readPasted(ctx context.Context, in io.Reader, state string, results chan<- callback) {
	if in == nil {
		return
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() && ctx.Err() == nil {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		u, err := url.Parse(line)
		if err != nil || u.Query().Get("state") == "" {
			continue // not a redirect address; keep waiting
		}
		select {
		case results <- parseCallback(u.Query(), state):
		default:
		}
		return
	}
}

func randomString() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
