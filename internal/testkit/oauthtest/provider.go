// Package oauthtest runs a fake OAuth2 authorization server for tests of
// the gateway's token handling: the authorization code grant with PKCE
// (RFC 6749 §4.1, RFC 7636), refresh (RFC 6749 §6) and the device
// authorization grant (RFC 8628). Its access tokens can be checked with
// Valid, for instance as the Bearer function of an imapmem server:
//
//	p := oauthtest.NewProvider(t)
//	imapmem.Start(addr, &imapmem.Options{
//		Bearer: func(user, tok string) bool { return p.ValidFor(user, tok) },
//	})
//
// The simulated user never sees a page: /authorize approves at once as
// AuthorizeAs, and device codes wait for ApproveDevice or DenyDevice.
package oauthtest

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// Grant types of the token endpoint, as counted by Requests.
const (
	AuthorizationCodeGrant = "authorization_code"
	RefreshTokenGrant      = "refresh_token"
	DeviceCodeGrant        = "urn:ietf:params:oauth:grant-type:device_code"
)

// Lifetimes that are not configurable.
const (
	authCodeTTL = 10 * time.Minute
	// pollSlack forgives device polls that come this fraction of
	// DeviceInterval early, for timer and scheduling jitter.
	pollSlack = 10
)

// Provider is a fake OAuth2 authorization server on a loopback port.
// Set its exported fields before the first request.
type Provider struct {
	// ClientID and ClientSecret are the one registered client, random
	// unless set. With ClientSecret "" the client is public and the token
	// endpoint checks only the client_id.
	ClientID, ClientSecret string
	// AccessTTL is the life of an access token, 1h if zero. expires_in is
	// it in whole seconds, rounded up.
	AccessTTL time.Duration
	// RotateRefreshTokens makes each refresh return a new refresh token
	// and invalidate the one used.
	RotateRefreshTokens bool
	// DeviceInterval is the least time between two polls for one device
	// code, 1s if zero; a poll that comes sooner (by more than a tenth of
	// it) gets slow_down. The interval sent to the client is it in whole
	// seconds, rounded up and at least 1, because clients such as
	// golang.org/x/oauth2 read it as seconds: a test that polls by hand
	// may set a few milliseconds while x/oauth2 still waits 1s. An
	// immediate retry with the client credentials moved from the
	// Authorization header to the form, which x/oauth2's
	// AuthStyleAutoDetect makes after every error until one style
	// succeeds, is not held against the interval.
	DeviceInterval time.Duration
	// DeviceCodeTTL is the life of a device code, 10m if zero.
	DeviceCodeTTL time.Duration
	// AuthorizeAs is the user who approves every /authorize request,
	// "user@example.com" if empty.
	AuthorizeAs string

	t   testing.TB
	srv *httptest.Server

	mu        sync.Mutex
	grants    []*grant
	access    map[string]*accessToken
	refresh   map[string]*grant // live refresh tokens
	codes     map[string]*authCode
	devices   map[string]*deviceAuth // by device code
	userCodes map[string]*deviceAuth // by normalised user code
	deviceSeq []*deviceAuth          // in issue order
	requests  map[string]int
	lastScope string
	slowDowns int
}

// grant is one user's authorisation of the client; its tokens die with it.
type grant struct {
	user, scope string
	revoked     bool
}

type accessToken struct {
	g      *grant
	expiry time.Time
}

type authCode struct {
	user, scope, clientID, redirectURI, challenge string
	expiry                                        time.Time
}

type deviceAuth struct {
	deviceCode, userCode string
	clientID, scope      string
	expiry               time.Time
	user                 string // set when approved
	approved, denied     bool
	lastPoll             time.Time
	headerAuthFailed     bool // the last poll used Basic auth and failed
}

// NewProvider starts a provider, closed when the test ends.
func NewProvider(t testing.TB) *Provider {
	t.Helper()
	p := &Provider{
		ClientID:     "client-" + rand.Text(),
		ClientSecret: rand.Text(),
		t:            t,
		access:       make(map[string]*accessToken),
		refresh:      make(map[string]*grant),
		codes:        make(map[string]*authCode),
		devices:      make(map[string]*deviceAuth),
		userCodes:    make(map[string]*deviceAuth),
		requests:     make(map[string]int),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", p.handleToken)
	mux.HandleFunc("/authorize", p.handleAuthorize)
	mux.HandleFunc("/device", p.handleDevice)
	mux.HandleFunc("/activate", p.handleActivate)
	mux.HandleFunc("/introspect", p.handleIntrospect)
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

// URL is the provider's base URL, http://127.0.0.1:port.
func (p *Provider) URL() string { return p.srv.URL }

// TokenURL is the token endpoint, URL()+"/token".
func (p *Provider) TokenURL() string { return p.srv.URL + "/token" }

// AuthURL is the authorization endpoint, URL()+"/authorize".
func (p *Provider) AuthURL() string { return p.srv.URL + "/authorize" }

// DeviceAuthURL is the device authorization endpoint, URL()+"/device".
func (p *Provider) DeviceAuthURL() string { return p.srv.URL + "/device" }

// IntrospectionURL is the token introspection endpoint (RFC 7662),
// URL()+"/introspect", as a mail server (Dovecot's oauth2 passdb) asks
// it about the bearer tokens of XOAUTH2 and OAUTHBEARER logins.
func (p *Provider) IntrospectionURL() string { return p.srv.URL + "/introspect" }

// handleIntrospect answers RFC 7662 §2: an access token that is valid is
// active, with its user as "username"; any other is inactive.
func (p *Provider) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.requests["introspect"]++
	g := p.validLocked(r.PostForm.Get("token"))
	p.mu.Unlock()
	if g == nil {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"active": true, "username": g.user, "scope": g.scope})
}

// Endpoint describes the provider to golang.org/x/oauth2, with
// AuthStyleAutoDetect.
func (p *Provider) Endpoint() oauth2.Endpoint {
	return oauth2.Endpoint{
		AuthURL:       p.AuthURL(),
		DeviceAuthURL: p.DeviceAuthURL(),
		TokenURL:      p.TokenURL(),
	}
}

// Valid reports whether token is an access token this provider issued,
// unexpired and not revoked.
func (p *Provider) Valid(token string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.validLocked(token) != nil
}

// ValidFor is Valid for a token issued to user.
func (p *Provider) ValidFor(user, token string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.validLocked(token)
	return g != nil && g.user == user
}

func (p *Provider) validLocked(token string) *grant {
	a := p.access[token]
	if a == nil || a.g.revoked || !time.Now().Before(a.expiry) {
		return nil
	}
	return a.g
}

// IssueRefreshToken returns a refresh token as if user had authorised
// the client, with no scope.
func (p *Provider) IssueRefreshToken(user string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.newRefreshLocked(p.newGrantLocked(user, ""))
}

// Revoke invalidates a refresh token and every access token issued under
// the same authorisation. An unknown token is ignored.
func (p *Provider) Revoke(refreshToken string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if g := p.refresh[refreshToken]; g != nil {
		g.revoked = true
		delete(p.refresh, refreshToken)
	}
}

// RevokeAll invalidates every refresh and access token issued so far.
func (p *Provider) RevokeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range p.grants {
		g.revoked = true
	}
	clear(p.refresh)
}

// ExpireAccessTokens makes every access token issued so far expired, as
// if AccessTTL had passed; refresh tokens still work.
func (p *Provider) ExpireAccessTokens() {
	p.mu.Lock()
	defer p.mu.Unlock()
	past := time.Now().Add(-time.Second)
	for _, a := range p.access {
		a.expiry = past
	}
}

// Requests counts the token endpoint's requests with a grant_type, one of
// the *Grant constants, failed ones included. x/oauth2's
// AuthStyleAutoDetect sends a failing request twice (header, then form)
// until one style has succeeded for the Config.
func (p *Provider) Requests(grant string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[grant]
}

// LastScope is the scope of the last /authorize or /device request.
func (p *Provider) LastScope() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastScope
}

// ApproveDevice lets the device code of userCode (any case, with or
// without its dash) have tokens for user at its next poll.
func (p *Provider) ApproveDevice(userCode, user string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.userCodes[normaliseUserCode(userCode)]
	if d == nil {
		p.t.Errorf("oauthtest: ApproveDevice: no user code %q", userCode)
		return
	}
	d.approved, d.denied, d.user = true, false, user
}

// DenyDevice makes the polls for userCode's device code get access_denied.
func (p *Provider) DenyDevice(userCode string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.userCodes[normaliseUserCode(userCode)]
	if d == nil {
		p.t.Errorf("oauthtest: DenyDevice: no user code %q", userCode)
		return
	}
	d.approved, d.denied = false, true
}

// PendingDeviceCodes lists, oldest first, the user codes of unexpired
// device codes neither approved nor denied.
func (p *Provider) PendingDeviceCodes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	var codes []string
	for _, d := range p.deviceSeq {
		if !d.approved && !d.denied && now.Before(d.expiry) && p.devices[d.deviceCode] != nil {
			codes = append(codes, d.userCode)
		}
	}
	return codes
}

func (p *Provider) newGrantLocked(user, scope string) *grant {
	g := &grant{user: user, scope: scope}
	p.grants = append(p.grants, g)
	return g
}

func (p *Provider) newRefreshLocked(g *grant) string {
	rt := "rt-" + rand.Text()
	p.refresh[rt] = g
	return rt
}

func (p *Provider) accessTTL() time.Duration {
	if p.AccessTTL > 0 {
		return p.AccessTTL
	}
	return time.Hour
}

func (p *Provider) deviceInterval() time.Duration {
	if p.DeviceInterval > 0 {
		return p.DeviceInterval
	}
	return time.Second
}

func (p *Provider) deviceCodeTTL() time.Duration {
	if p.DeviceCodeTTL > 0 {
		return p.DeviceCodeTTL
	}
	return 10 * time.Minute
}

// seconds rounds d up to whole seconds, at least 1.
func seconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}

type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// issueLocked answers a token request of g with a new access token and
// refreshToken.
func (p *Provider) issueLocked(g *grant, refreshToken string) tokenResponse {
	at := "at-" + rand.Text()
	ttl := p.accessTTL()
	p.access[at] = &accessToken{g: g, expiry: time.Now().Add(ttl)}
	return tokenResponse{
		AccessToken:  at,
		TokenType:    "Bearer",
		ExpiresIn:    seconds(ttl),
		RefreshToken: refreshToken,
		Scope:        g.scope,
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// oauthError is an error response of RFC 6749 §5.2.
type oauthError struct {
	status      int
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

func (e *oauthError) write(w http.ResponseWriter) { writeJSON(w, e.status, e) }

func badRequest(code, format string, args ...any) *oauthError {
	return &oauthError{status: http.StatusBadRequest, Code: code, Description: fmt.Sprintf(format, args...)}
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// client authenticates the client of a POST, by HTTP Basic (credentials
// form-encoded first, RFC 6749 §2.3.1) or by client_id and client_secret
// in the form. With needSecret false a missing secret is accepted.
func (p *Provider) client(w http.ResponseWriter, r *http.Request, needSecret bool) (id string, basic bool, e *oauthError) {
	id, secret, basic := r.BasicAuth()
	form := r.PostForm
	if basic {
		var err1, err2 error
		id, err1 = url.QueryUnescape(id)
		secret, err2 = url.QueryUnescape(secret)
		if err1 != nil || err2 != nil {
			return "", basic, badRequest("invalid_request", "malformed Basic credentials")
		}
		if form.Has("client_secret") {
			return "", basic, badRequest("invalid_request", "client authenticated twice")
		}
		if form.Has("client_id") && form.Get("client_id") != id {
			return "", basic, badRequest("invalid_request", "client_id differs from the Basic user")
		}
	} else {
		id, secret = form.Get("client_id"), form.Get("client_secret")
		needSecret = needSecret || form.Has("client_secret")
	}
	if !equal(id, p.ClientID) || (p.ClientSecret != "" && (needSecret || basic) && !equal(secret, p.ClientSecret)) {
		if basic {
			w.Header().Set("WWW-Authenticate", `Basic realm="oauthtest"`)
		}
		return "", basic, &oauthError{status: http.StatusUnauthorized, Code: "invalid_client", Description: "unknown client or wrong secret"}
	}
	return id, basic, nil
}

func parsePost(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return false
	}
	if err := r.ParseForm(); err != nil {
		badRequest("invalid_request", "%v", err).write(w)
		return false
	}
	return true
}

// handleToken is the token endpoint (RFC 6749 §3.2).
func (p *Provider) handleToken(w http.ResponseWriter, r *http.Request) {
	if !parsePost(w, r) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	grantType := r.PostForm.Get("grant_type")
	p.requests[grantType]++
	clientID, basic, e := p.client(w, r, true)
	if e != nil {
		e.write(w)
		return
	}
	var resp tokenResponse
	switch grantType {
	case RefreshTokenGrant:
		resp, e = p.refreshLocked(r.PostForm)
	case AuthorizationCodeGrant:
		resp, e = p.authCodeLocked(r.PostForm, clientID)
	case DeviceCodeGrant:
		resp, e = p.deviceCodeLocked(r.PostForm, clientID, basic)
	default:
		e = badRequest("unsupported_grant_type", "grant_type %q", grantType)
	}
	if e != nil {
		e.write(w)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// refreshLocked is RFC 6749 §6.
func (p *Provider) refreshLocked(form url.Values) (tokenResponse, *oauthError) {
	rt := form.Get("refresh_token")
	g := p.refresh[rt]
	if g == nil || g.revoked {
		return tokenResponse{}, badRequest("invalid_grant", "unknown, revoked or used refresh token")
	}
	if scope := form.Get("scope"); scope != "" {
		granted := strings.Fields(g.scope)
		for _, s := range strings.Fields(scope) {
			if !slices.Contains(granted, s) {
				return tokenResponse{}, badRequest("invalid_scope", "scope %q was not granted", s)
			}
		}
	}
	if p.RotateRefreshTokens {
		delete(p.refresh, rt)
		rt = p.newRefreshLocked(g)
	}
	return p.issueLocked(g, rt), nil
}

// authCodeLocked is RFC 6749 §4.1.3 with RFC 7636 §4.6. A code is
// consumed by any attempt that passes client authentication.
func (p *Provider) authCodeLocked(form url.Values, clientID string) (tokenResponse, *oauthError) {
	code := form.Get("code")
	c := p.codes[code]
	delete(p.codes, code)
	switch {
	case c == nil || !time.Now().Before(c.expiry):
		return tokenResponse{}, badRequest("invalid_grant", "unknown, used or expired code")
	case c.clientID != clientID:
		return tokenResponse{}, badRequest("invalid_grant", "code issued to another client")
	case form.Get("redirect_uri") != c.redirectURI:
		return tokenResponse{}, badRequest("invalid_grant", "redirect_uri differs from the authorization request's")
	}
	verifier := form.Get("code_verifier")
	if !validVerifier(verifier) {
		return tokenResponse{}, badRequest("invalid_grant", "missing or malformed code_verifier")
	}
	sum := sha256.Sum256([]byte(verifier))
	if !equal(base64.RawURLEncoding.EncodeToString(sum[:]), c.challenge) {
		return tokenResponse{}, badRequest("invalid_grant", "code_verifier does not match code_challenge")
	}
	g := p.newGrantLocked(c.user, c.scope)
	return p.issueLocked(g, p.newRefreshLocked(g)), nil
}

// validVerifier checks RFC 7636 §4.1: 43 to 128 unreserved characters.
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for _, c := range v {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.ContainsRune("-._~", c)) {
			return false
		}
	}
	return true
}

// deviceCodeLocked is RFC 8628 §3.4 and §3.5. An approved device code is
// consumed by the poll that gets its tokens.
func (p *Provider) deviceCodeLocked(form url.Values, clientID string, basic bool) (tokenResponse, *oauthError) {
	d := p.devices[form.Get("device_code")]
	if d == nil || d.clientID != clientID {
		return tokenResponse{}, badRequest("invalid_grant", "unknown or used device code")
	}
	now := time.Now()
	if !now.Before(d.expiry) {
		return tokenResponse{}, badRequest("expired_token", "device code expired")
	}
	probe := d.headerAuthFailed && !basic
	d.headerAuthFailed = false
	fail := func(e *oauthError) (tokenResponse, *oauthError) {
		d.headerAuthFailed = basic
		return tokenResponse{}, e
	}
	if !probe {
		interval := p.deviceInterval()
		early := !d.lastPoll.IsZero() && now.Sub(d.lastPoll) < interval-interval/pollSlack
		d.lastPoll = now
		if early {
			p.slowDowns++
			return fail(badRequest("slow_down", "polled sooner than every %v", interval))
		}
	}
	switch {
	case d.denied:
		return fail(badRequest("access_denied", "the user denied the request"))
	case !d.approved:
		return fail(badRequest("authorization_pending", "the user has not approved yet"))
	}
	delete(p.devices, d.deviceCode)
	g := p.newGrantLocked(d.user, d.scope)
	return p.issueLocked(g, p.newRefreshLocked(g)), nil
}

// userCodeAlphabet has no vowels, as RFC 8628 §6.1 suggests.
const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"

func normaliseUserCode(c string) string {
	return strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(c))
}

func (p *Provider) newUserCodeLocked() string {
	for {
		var b [8]byte
		for i := range b {
			n, err := rand.Int(rand.Reader, big.NewInt(int64(len(userCodeAlphabet))))
			if err != nil {
				panic(err)
			}
			b[i] = userCodeAlphabet[n.Int64()]
		}
		if p.userCodes[string(b[:])] == nil {
			return string(b[:4]) + "-" + string(b[4:])
		}
	}
}

// handleDevice is the device authorization endpoint (RFC 8628 §3.1). The
// client_secret is checked only when sent.
func (p *Provider) handleDevice(w http.ResponseWriter, r *http.Request) {
	if !parsePost(w, r) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	clientID, _, e := p.client(w, r, false)
	if e != nil {
		e.write(w)
		return
	}
	scope := r.PostForm.Get("scope")
	p.lastScope = scope
	ttl := p.deviceCodeTTL()
	d := &deviceAuth{
		deviceCode: "dc-" + rand.Text(),
		userCode:   p.newUserCodeLocked(),
		clientID:   clientID,
		scope:      scope,
		expiry:     time.Now().Add(ttl),
	}
	p.devices[d.deviceCode] = d
	p.userCodes[normaliseUserCode(d.userCode)] = d
	p.deviceSeq = append(p.deviceSeq, d)
	verify := p.srv.URL + "/activate"
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               d.deviceCode,
		"user_code":                 d.userCode,
		"verification_uri":          verify,
		"verification_uri_complete": verify + "?user_code=" + url.QueryEscape(d.userCode),
		"expires_in":                seconds(ttl),
		"interval":                  seconds(p.deviceInterval()),
	})
}

// handleActivate stands for the page where a user would enter the code.
func (p *Provider) handleActivate(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "oauthtest: device codes are approved with Provider.ApproveDevice")
}

// handleAuthorize is the authorization endpoint (RFC 6749 §4.1.1): the
// user AuthorizeAs approves at once. PKCE with S256 is required.
func (p *Provider) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	p.mu.Lock()
	defer p.mu.Unlock()
	// Without a valid client and redirect_uri there is nowhere safe to
	// send the user (RFC 6749 §4.1.2.1).
	if q.Get("client_id") != p.ClientID {
		http.Error(w, "oauthtest: unknown client_id", http.StatusBadRequest)
		return
	}
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || !redirect.IsAbs() || redirect.Fragment != "" {
		http.Error(w, "oauthtest: missing or invalid redirect_uri", http.StatusBadRequest)
		return
	}
	scope := q.Get("scope")
	p.lastScope = scope
	back := redirect.Query()
	if state := q.Get("state"); state != "" {
		back.Set("state", state)
	}
	switch {
	case q.Get("response_type") != "code":
		back.Set("error", "unsupported_response_type")
	case q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256":
		back.Set("error", "invalid_request")
		back.Set("error_description", "PKCE with code_challenge_method S256 is required")
	default:
		code := "code-" + rand.Text()
		user := p.AuthorizeAs
		if user == "" {
			user = "user@example.com"
		}
		p.codes[code] = &authCode{
			user:        user,
			scope:       scope,
			clientID:    p.ClientID,
			redirectURI: q.Get("redirect_uri"),
			challenge:   q.Get("code_challenge"),
			expiry:      time.Now().Add(authCodeTTL),
		}
		back.Set("code", code)
	}
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}
