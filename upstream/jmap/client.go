package jmap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/internal/web"
)

// Capability URIs (RFC 8620 §2, RFC 8621 §1.3.1).
const (
	capCore = "urn:ietf:params:jmap:core"
	capMail = "urn:ietf:params:jmap:mail"
)

// Defaults of Options.
const (
	// DefaultMaxRetryAfter is the longest Retry-After the client sleeps
	// through; a longer one fails the call as temporary, since a POP3
	// client waits minutes at most.
	DefaultMaxRetryAfter = 2 * time.Minute
	// DefaultRetries is how many times a throttled (429) or unavailable
	// (503) request is sent again.
	DefaultRetries = 3
	// DefaultBackoff is the first wait when a throttled answer names no
	// Retry-After; it doubles with each retry.
	DefaultBackoff = time.Second
	// DefaultTimeout bounds the wait for a response's headers and, while
	// a blob streams, for each next octet.
	DefaultTimeout = 60 * time.Second
	// maxPage bounds the Emails listed per request, below the server's
	// maxObjectsInGet.
	maxPage = 1000
)

// Errors callers tell apart, besides upstream.ErrAuthFailed and
// upstream.ErrMessageGone.
var (
	// ErrTemporary means the server is throttling or unavailable.
	ErrTemporary = errors.New("jmap: temporarily unavailable")
	// ErrNoMailbox means the account has no mailbox of that name or role.
	ErrNoMailbox = errors.New("jmap: no such mailbox")
	// ErrCannotCalculateChanges means the server cannot list changes
	// from that state (RFC 8620 §5.6): list everything again.
	ErrCannotCalculateChanges = errors.New("jmap: cannot calculate changes")
	// ErrForeignURL means the session points its API or downloads to
	// another origin than the session URL's; credentials are not sent
	// there.
	ErrForeignURL = errors.New("jmap: URL on another origin")
)

// Error is a refused request or method call: the HTTP status, or the
// JMAP error type (RFC 8620 §3.6). The server's description is not kept:
// it is not for users, and types are what to act on.
type Error struct {
	Op     string
	Status int    // the HTTP status; 0 for a method-level error
	Type   string // the problem or method error type
	kind   error
}

func (e *Error) Error() string {
	s := "jmap: " + e.Op + ":"
	if e.Status != 0 {
		s += " HTTP " + strconv.Itoa(e.Status)
	}
	if e.Type != "" {
		s += " " + e.Type
	}
	if e.kind != nil {
		s += " (" + e.kind.Error() + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.kind }

// Options configure a Store.
type Options struct {
	// SessionURL is the JMAP session resource, or the server's base
	// URL, where /.well-known/jmap is asked for (RFC 8620 §2.2).
	SessionURL    string
	HTTPClient    *http.Client // a client of its own when nil
	MaxRetryAfter time.Duration
	Retries       int // DefaultRetries when 0; -1 for none
	Backoff       time.Duration
	Timeout       time.Duration
}

func (o *Options) defaults() error {
	u, err := url.Parse(o.SessionURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("jmap: session URL %q is not an http or https URL", o.SessionURL)
	}
	if u.Path == "" || u.Path == "/" {
		// The server's base: RFC 8620 §2.2 names the well-known URI.
		u.Path = "/.well-known/jmap"
		o.SessionURL = u.String()
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = DefaultMaxRetryAfter
	}
	switch {
	case o.Retries == 0:
		o.Retries = DefaultRetries
	case o.Retries < 0:
		o.Retries = 0
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Transport: web.Transport(nil, o.Timeout)}
	}
	return nil
}

// Credentials log in to an account: HTTP Basic with Username and
// Password (RFC 7617; app passwords), or Token as a bearer token
// (RFC 6750 §2.1) when set.
type Credentials struct {
	Username string
	Password string
	Token    string
	// Tokens, when set, is where Token came from: a token refused
	// (401, RFC 6750 §3.1 invalid_token) is replaced by a fresh one from
	// it, once per request.
	Tokens func(ctx context.Context, refresh bool) (string, error)
}

func (c Credentials) authorize(r *http.Request) {
	if c.Token != "" {
		r.Header.Set("Authorization", "Bearer "+c.Token)
		return
	}
	r.SetBasicAuth(c.Username, c.Password)
}

// session is what the session resource says (RFC 8620 §2), resolved.
type session struct {
	apiURL      *url.URL
	downloadURL string // the template, absolute
	accountID   string
	state       string
	maxCalls    int
	maxGet      int
	maxSet      int
	slots       chan struct{} // maxConcurrentRequests
}

// sessionJSON is the session resource as sent.
type sessionJSON struct {
	Capabilities    map[string]json.RawMessage `json:"capabilities"`
	PrimaryAccounts map[string]string          `json:"primaryAccounts"`
	APIURL          string                     `json:"apiUrl"`
	DownloadURL     string                     `json:"downloadUrl"`
	State           string                     `json:"state"`
}

type coreCapability struct {
	MaxConcurrentRequests int `json:"maxConcurrentRequests"`
	MaxCallsInRequest     int `json:"maxCallsInRequest"`
	MaxObjectsInGet       int `json:"maxObjectsInGet"`
	MaxObjectsInSet       int `json:"maxObjectsInSet"`
}

// client is one login's way to the server: its credentials and the
// account's session.
type client struct {
	opts  *Options
	creds Credentials
	sess  *session
	// stale is set when a response names another session state: the
	// account discovers its session again at its next login.
	stale func()
}

// discover fetches the session resource (RFC 8620 §2), following the
// well-known URI's redirect (§2.2).
func discover(ctx context.Context, opts *Options, creds *Credentials) (*session, error) {
	var sj sessionJSON
	final, err := getJSON(ctx, opts, creds, "session", opts.SessionURL, &sj)
	if err != nil {
		return nil, err
	}
	var core coreCapability
	if raw, ok := sj.Capabilities[capCore]; !ok {
		return nil, &Error{Op: "session", Type: "no core capability", kind: ErrBadResponse}
	} else if err := json.Unmarshal(raw, &core); err != nil {
		return nil, &Error{Op: "session", kind: fmt.Errorf("%w: %v", ErrBadResponse, err)}
	}
	if _, ok := sj.Capabilities[capMail]; !ok {
		return nil, &Error{Op: "session", Type: "no mail capability", kind: ErrBadResponse}
	}
	account := sj.PrimaryAccounts[capMail]
	if account == "" {
		return nil, &Error{Op: "session", Type: "no primary mail account", kind: ErrBadResponse}
	}
	// apiUrl and downloadUrl may be relative to the session resource
	// (RFC 8620 §2: "URL"s are resolved as any URL in the resource).
	api, err := final.Parse(sj.APIURL)
	if err != nil || sj.APIURL == "" || !sameOrigin(api, final) {
		return nil, &Error{Op: "session", Type: "apiUrl", kind: ErrForeignURL}
	}
	// The template's braces survive url parsing as they are escaped
	// again; resolve the part before the first variable only.
	dl := sj.DownloadURL
	prefix, rest, _ := strings.Cut(dl, "{")
	base, err := final.Parse(prefix)
	if err != nil || dl == "" || !sameOrigin(base, final) || !strings.Contains(dl, "{blobId}") {
		return nil, &Error{Op: "session", Type: "downloadUrl", kind: ErrForeignURL}
	}
	if rest != "" || strings.Contains(dl, "{") {
		dl = base.String() + "{" + rest
	}
	s := &session{
		apiURL: api, downloadURL: dl, accountID: account, state: sj.State,
		maxCalls: max(core.MaxCallsInRequest, 1),
		maxGet:   max(core.MaxObjectsInGet, 1),
		maxSet:   max(core.MaxObjectsInSet, 1),
	}
	s.slots = make(chan struct{}, max(core.MaxConcurrentRequests, 1))
	return s, nil
}

func sameOrigin(a, b *url.URL) bool {
	return a.Scheme == b.Scheme && strings.EqualFold(a.Host, b.Host)
}

// getJSON GETs a JSON resource, following redirects on the same origin
// only, and returns the URL it was finally read from.
func getJSON(ctx context.Context, opts *Options, creds *Credentials, op, target string, v any) (*url.URL, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	for hops := 0; ; hops++ {
		resp, err := send(ctx, opts, nil, op, creds, func() (*http.Request, error) {
			r, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
			if err == nil {
				r.Header.Set("Accept", "application/json")
			}
			return r, err
		})
		if err != nil {
			return nil, err
		}
		if loc := resp.Header.Get("Location"); resp.StatusCode/100 == 3 && loc != "" {
			release(resp)
			next, err := u.Parse(loc)
			if err != nil || !sameOrigin(next, u) || hops >= 5 {
				return nil, &Error{Op: op, Status: resp.StatusCode, kind: ErrForeignURL}
			}
			u = next
			continue
		}
		defer release(resp)
		if resp.StatusCode != http.StatusOK {
			return nil, &Error{Op: op, Status: resp.StatusCode, Type: problemType(resp)}
		}
		return u, jsonIn.Decode(resp.Body, maxJSON, v)
	}
}

// send makes an HTTP exchange with the credentials, again after 429 and
// 503 within the Retry-After cap (RFC 9110 §10.2.3, §15.6.4; RFC 6585
// §4), and once with a fresh token after a 401 where the credentials have
// a token source; another 401 is upstream.ErrAuthFailed. Redirects are
// returned, not followed. slots, when not nil, is held until the response
// body is closed.
func send(ctx context.Context, opts *Options, slots chan struct{}, op string, creds *Credentials, build func() (*http.Request, error)) (*http.Response, error) {
	refreshed := false
	for attempt := 0; ; attempt++ {
		if slots != nil {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		free := func() {
			if slots != nil {
				<-slots
			}
		}
		rctx, cancel := context.WithCancel(ctx)
		req, err := build()
		if err != nil {
			cancel()
			free()
			return nil, err
		}
		req = req.WithContext(rctx)
		creds.authorize(req)
		hc := *opts.HTTPClient
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := hc.Do(req)
		if err != nil {
			cancel()
			free()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, &Error{Op: op, kind: fmt.Errorf("%w: %v", ErrTemporary, err)}
		}
		switch s := resp.StatusCode; s {
		case http.StatusUnauthorized, http.StatusForbidden:
			release(resp)
			cancel()
			free()
			if s == http.StatusUnauthorized && creds.Token != "" && creds.Tokens != nil && !refreshed {
				// The token expired or was revoked since it was handed
				// out: ask for a fresh one, once.
				refreshed = true
				tok, err := creds.Tokens(ctx, true)
				if err != nil {
					return nil, &Error{Op: op, Status: s, kind: fmt.Errorf("%w: %w", upstream.ErrAuthFailed, err)}
				}
				creds.Token = tok
				continue
			}
			return nil, &Error{Op: op, Status: s, kind: upstream.ErrAuthFailed}
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			release(resp)
			cancel()
			free()
			wait, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now())
			if !ok {
				wait = opts.Backoff << attempt
			}
			if attempt >= opts.Retries || wait > opts.MaxRetryAfter {
				e := &Error{Op: op, Status: s, kind: ErrTemporary}
				if wait > opts.MaxRetryAfter {
					return nil, fmt.Errorf("%w: Retry-After %v is longer than the %v the gateway waits", e, wait, opts.MaxRetryAfter)
				}
				return nil, e
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
			continue
		}
		resp.Body = &web.Body{Body: resp.Body, Idle: opts.Timeout, Cancel: cancel, Release: func() { cancel(); free() }}
		return resp, nil
	}
}

// release drains a little of a response and closes it.
func release(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorJSON))
	resp.Body.Close()
}

// problemType reads the type of a problem details object (RFC 7807),
// which JMAP uses for request-level errors (RFC 8620 §3.6.1).
func problemType(resp *http.Response) string {
	var p struct {
		Type string `json:"type"`
	}
	if jsonIn.Decode(resp.Body, maxErrorJSON, &p) != nil {
		return ""
	}
	return printable(p.Type, 100)
}

// printable keeps at most n printable ASCII characters of s.
func printable(s string, n int) string { return web.Printable(s, n) }

// retryAfter reads a Retry-After value (see web.RetryAfter).
func retryAfter(v string, now time.Time) (time.Duration, bool) { return web.RetryAfter(v, now) }

// invocation is one method call (RFC 8620 §3.2): name, arguments, id.
type invocation struct {
	name string
	args any
	id   string
}

func (i invocation) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{i.name, i.args, i.id})
}

// ref is a back-reference to an earlier call's result (RFC 8620 §3.7).
type ref struct {
	ResultOf string `json:"resultOf"`
	Name     string `json:"name"`
	Path     string `json:"path"`
}

// result is one method response (RFC 8620 §3.3).
type result struct {
	name string
	args json.RawMessage
	id   string
}

func (r *result) UnmarshalJSON(data []byte) error {
	var parts []json.RawMessage
	if err := json.Unmarshal(data, &parts); err != nil {
		return err
	}
	if len(parts) != 3 {
		return fmt.Errorf("an invocation of %d parts", len(parts))
	}
	if err := json.Unmarshal(parts[0], &r.name); err != nil {
		return err
	}
	if err := json.Unmarshal(parts[2], &r.id); err != nil {
		return err
	}
	r.args = parts[1]
	return nil
}

// response is the body of an API response (RFC 8620 §3.4).
type response struct {
	MethodResponses []result `json:"methodResponses"`
	SessionState    string   `json:"sessionState"`
}

// methodError is a method-level error's arguments (RFC 8620 §3.6.2).
type methodError struct {
	Type string `json:"type"`
}

// call sends the method calls in one request (RFC 8620 §3.3) and decodes
// each call's response into the matching out value; a call answered with
// an error is an *Error of that type. Calls beyond maxCallsInRequest are
// the caller's to split.
func (c *client) call(ctx context.Context, op string, calls []invocation, out ...any) error {
	if len(calls) > c.sess.maxCalls {
		return fmt.Errorf("jmap: %s: %d calls in one request, more than the server's maxCallsInRequest %d", op, len(calls), c.sess.maxCalls)
	}
	body, err := json.Marshal(map[string]any{"using": []string{capCore, capMail}, "methodCalls": calls})
	if err != nil {
		return err
	}
	resp, err := send(ctx, c.opts, c.sess.slots, op, &c.creds, func() (*http.Request, error) {
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, c.sess.apiURL.String(), bytes.NewReader(body))
		if err == nil {
			r.Header.Set("Content-Type", "application/json")
			r.Header.Set("Accept", "application/json")
		}
		return r, err
	})
	if err != nil {
		return err
	}
	defer release(resp)
	if resp.StatusCode != http.StatusOK {
		e := &Error{Op: op, Status: resp.StatusCode, Type: problemType(resp)}
		if resp.StatusCode >= 500 {
			e.kind = ErrTemporary
		}
		return e
	}
	var r response
	if err := jsonIn.Decode(resp.Body, maxJSON, &r); err != nil {
		return &Error{Op: op, kind: err}
	}
	if r.SessionState != "" && r.SessionState != c.sess.state && c.stale != nil {
		c.stale()
	}
	return r.into(op, calls, out)
}

// into decodes the responses to calls into out, in order.
func (r *response) into(op string, calls []invocation, out []any) error {
	for i, call := range calls {
		var got *result
		for j := range r.MethodResponses {
			if r.MethodResponses[j].id == call.id {
				got = &r.MethodResponses[j]
				break
			}
		}
		if got == nil {
			return &Error{Op: op, Type: "no response to " + call.name, kind: ErrBadResponse}
		}
		if got.name == "error" {
			var me methodError
			json.Unmarshal(got.args, &me)
			e := &Error{Op: op + " " + call.name, Type: printable(me.Type, 64)}
			switch me.Type {
			case "cannotCalculateChanges", "tooManyChanges":
				e.kind = ErrCannotCalculateChanges
			case "serverUnavailable":
				e.kind = ErrTemporary
			}
			return e
		}
		if got.name != call.name {
			return &Error{Op: op, Type: "response " + printable(got.name, 64) + " to " + call.name, kind: ErrBadResponse}
		}
		if i < len(out) && out[i] != nil {
			if err := json.Unmarshal(got.args, out[i]); err != nil {
				return &Error{Op: op + " " + call.name, kind: fmt.Errorf("%w: %v", ErrBadResponse, err)}
			}
		}
	}
	return nil
}

// download streams a blob (RFC 8620 §6.2): whole when n < 0, otherwise at
// most n octets from offset. The server may ignore the Range header
// (RFC 9110 §14.2): the octets before offset are then read and dropped.
// want is the blob's size as listed: a whole body that ends short, or
// runs past it, is an error, never a whole message.
func (c *client) download(ctx context.Context, blobID string, want, offset, n int64) (io.ReadCloser, error) {
	target := c.sess.downloadURL
	for k, v := range map[string]string{"{accountId}": c.sess.accountID, "{blobId}": blobID, "{name}": "message.eml", "{type}": "message/rfc822"} {
		target = strings.ReplaceAll(target, k, url.PathEscape(v))
	}
	u, err := c.sess.apiURL.Parse(target)
	if err != nil || !sameOrigin(u, c.sess.apiURL) {
		return nil, &Error{Op: "download", kind: ErrForeignURL}
	}
	resp, err := send(ctx, c.opts, c.sess.slots, "download", &c.creds, func() (*http.Request, error) {
		r, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err == nil {
			if offset > 0 || n >= 0 {
				rng := "bytes=" + strconv.FormatInt(offset, 10) + "-"
				if n >= 0 {
					rng += strconv.FormatInt(offset+max(n, 1)-1, 10)
				}
				r.Header.Set("Range", rng)
			}
		}
		return r, err
	})
	if err != nil {
		return nil, err
	}
	end := want
	if n >= 0 {
		end = min(want, offset+n)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if offset > 0 {
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				resp.Body.Close()
				return nil, &Error{Op: "download", kind: fmt.Errorf("%w: %v", ErrTemporary, err)}
			}
		}
	case http.StatusPartialContent:
		if !rangeFrom(resp.Header.Get("Content-Range"), offset) {
			resp.Body.Close()
			return nil, &Error{Op: "download", Status: resp.StatusCode, Type: "Content-Range", kind: ErrBadResponse}
		}
	case http.StatusRequestedRangeNotSatisfiable:
		release(resp)
		return io.NopCloser(bytes.NewReader(nil)), nil
	case http.StatusNotFound:
		release(resp)
		return nil, &Error{Op: "download", Status: resp.StatusCode, kind: upstream.ErrMessageGone}
	default:
		release(resp)
		e := &Error{Op: "download", Status: resp.StatusCode}
		if resp.StatusCode >= 500 {
			e.kind = ErrTemporary
		}
		return nil, e
	}
	return &blob{body: resp.Body, left: max(end-offset, 0), size: max(end-offset, 0), whole: n < 0 || offset+n >= want}, nil
}

// rangeFrom tells whether a Content-Range (RFC 9110 §14.4) starts at
// offset.
func rangeFrom(v string, offset int64) bool {
	v, ok := strings.CutPrefix(v, "bytes ")
	first, _, ok2 := strings.Cut(v, "-")
	n, err := strconv.ParseInt(first, 10, 64)
	return ok && ok2 && err == nil && n == offset
}

// blob is a downloaded message: exactly size octets, or an error.
type blob struct {
	body io.ReadCloser
	left int64
	size int64
	// whole is set when the blob's end is asked for: octets past the
	// listed size then mean the listing was wrong about it.
	whole bool
}

// ErrTruncated means a blob ended before the size the listing gave.
var ErrTruncated = errors.New("jmap: blob shorter than its listed size")

func (b *blob) Read(p []byte) (int, error) {
	if b.left <= 0 {
		if b.whole {
			var one [1]byte
			if n, _ := io.ReadFull(b.body, one[:]); n > 0 {
				return 0, fmt.Errorf("%w: the blob is longer than its listed size", ErrBadResponse)
			}
			b.whole = false
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.body.Read(p)
	b.left -= int64(n)
	if err == io.EOF && b.left > 0 {
		return n, fmt.Errorf("%w: %d octets missing", ErrTruncated, b.left)
	}
	if err == io.EOF {
		err = nil
	}
	if err != nil && !errors.Is(err, ErrTruncated) {
		err = fmt.Errorf("%w: %v", ErrTruncated, err)
	}
	return n, err
}

// Size is the octets the blob holds: the proxy compares it with the
// listed size.
func (b *blob) Size() int64 { return b.size }

func (b *blob) Close() error { return b.body.Close() }
