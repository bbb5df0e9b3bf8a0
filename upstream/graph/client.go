package graph

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/internal/web"
)

// DefaultBaseURL is Microsoft Graph's v1.0 endpoint in the global cloud.
const DefaultBaseURL = "https://graph.microsoft.com/v1.0"

// Defaults of Options.
const (
	// DefaultConcurrency is Outlook's limit of concurrent requests per app
	// and mailbox (throttling-limits#outlook-service-limits); a fifth
	// request is answered 429 "MailboxConcurrency".
	DefaultConcurrency = 4
	// DefaultMaxRetryAfter is the longest Retry-After the client sleeps
	// through. A longer one fails the call as temporary: a POP3 client
	// waits minutes at most, and Graph asking for an hour means the
	// mailbox is closed for now.
	DefaultMaxRetryAfter = 2 * time.Minute
	// DefaultRetries is how many times a throttled (429) or unavailable
	// (503, 504) request is sent again.
	DefaultRetries = 3
	// DefaultBackoff is the first wait when a throttled answer names no
	// Retry-After; it doubles with each retry (throttling: "If no
	// Retry-After header is provided ... exponential backoff").
	DefaultBackoff = time.Second
	// DefaultPageSize is the $top of listings: the page sizes allowed are
	// 1 to 1000 (user-list-messages).
	DefaultPageSize = 500
	// DefaultTimeout bounds the wait for a response's headers and, while
	// a body streams, for each next octet.
	DefaultTimeout = 60 * time.Second
	// DefaultMaxMessage bounds a message's MIME octets ($value). Exchange
	// Online accepts messages of 150 MB at most (its largest setting);
	// Graph announces no size, so a body that runs on past this is a
	// server gone wrong, not mail.
	DefaultMaxMessage = 256 << 20
)

// TokenSource hands out OAuth2 access tokens for one mailbox. With
// refresh, it must get a new token even if the one it holds looks valid:
// Graph refused it. internal/oauth.Source is one.
type TokenSource interface {
	AccessToken(ctx context.Context, refresh bool) (string, error)
}

// Options configure a Client. Only Tokens is required.
type Options struct {
	BaseURL       string // DefaultBaseURL when empty; the double's URL in tests
	Tokens        TokenSource
	HTTPClient    *http.Client // a client of its own when nil
	Concurrency   int          // DefaultConcurrency when 0
	MaxRetryAfter time.Duration
	Retries       int // DefaultRetries when 0; -1 for none
	Backoff       time.Duration
	PageSize      int
	Timeout       time.Duration
	MaxMessage    int64 // DefaultMaxMessage when 0
	// NoBatch sends each delete as a request of its own rather than in
	// JSON batches.
	NoBatch bool
	// Observe, when set, is told how long each call took until Graph's
	// answer began, and how it ended, under the operation names of the
	// IMAP store's (upstream.Server.Observe): select (the folder), list
	// (a delta round from the start, or a listing), list-changes (a delta
	// round from a link), fetch (a body), delete (moves, deletes,
	// isRead, batches).
	Observe func(op string, d time.Duration, err error)
}

// observed names each call's operation for Options.Observe.
var observed = map[string]string{
	"folder": "select", "list": "list", "delta": "list-changes", "open": "fetch",
	"move": "delete", "delete": "delete", "mark-read": "delete", "batch": "delete",
}

// Client talks to one mailbox (/me of the token's user). It is safe for
// concurrent use and never has more than Options.Concurrency requests in
// flight, a streaming body counting as one until it is closed.
type Client struct {
	base    *url.URL
	tokens  TokenSource
	http    *http.Client
	slots   chan struct{}
	opts    Options
	tokenMu sync.Mutex
	token   string
	// batchMu is held while taking every slot for a batch, so that two
	// batches never each hold some of the slots and wait for the rest.
	batchMu sync.Mutex
}

// New returns a client for the mailbox whose tokens are given.
func New(opts Options) (*Client, error) {
	if opts.Tokens == nil {
		return nil, errors.New("graph: no token source")
	}
	if opts.BaseURL == "" {
		opts.BaseURL = DefaultBaseURL
	}
	base, err := url.Parse(strings.TrimSuffix(opts.BaseURL, "/"))
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, fmt.Errorf("graph: base URL %q is not an http or https URL", opts.BaseURL)
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.MaxRetryAfter <= 0 {
		opts.MaxRetryAfter = DefaultMaxRetryAfter
	}
	switch {
	case opts.Retries == 0:
		opts.Retries = DefaultRetries
	case opts.Retries < 0:
		opts.Retries = 0
	}
	if opts.Backoff <= 0 {
		opts.Backoff = DefaultBackoff
	}
	if opts.PageSize <= 0 || opts.PageSize > 1000 {
		opts.PageSize = DefaultPageSize
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxMessage <= 0 {
		opts.MaxMessage = DefaultMaxMessage
	}
	hc := opts.HTTPClient
	if hc == nil {
		tr := web.Transport(nil, opts.Timeout)
		tr.MaxIdleConnsPerHost = opts.Concurrency
		hc = &http.Client{Transport: tr}
	}
	return &Client{base: base, tokens: opts.Tokens, http: hc, slots: make(chan struct{}, opts.Concurrency), opts: opts}, nil
}

// Errors callers tell apart, besides upstream.ErrAuthFailed and
// upstream.ErrMessageGone.
var (
	// ErrFolderNotFound means the mailbox has no folder of that name.
	ErrFolderNotFound = errors.New("graph: no such folder")
	// ErrDeltaExpired means Graph no longer knows the state a delta link
	// stands for (410, syncStateNotFound): list the folder again.
	ErrDeltaExpired = errors.New("graph: delta state expired; list again")
	// ErrTemporary means Graph is throttling or unavailable: try later.
	ErrTemporary = errors.New("graph: temporarily unavailable")
	// ErrForeignLink means a paging or delta link points away from the
	// base URL; it is not followed, so the token goes nowhere else.
	ErrForeignLink = errors.New("graph: link to another host")
)

// Error is a refused request: its HTTP status and Graph's error code
// (errors: the "code" of the error object). The server's message is not
// kept: it is not for users, and codes, not messages, are what to act on.
type Error struct {
	Op     string // what the client was doing: list, delta, open, move, ...
	Status int
	Code   string
	// RetryAfter is the wait a throttled answer asked for, 0 when none.
	RetryAfter time.Duration
	kind       error // a sentinel of this package or of upstream, or nil
}

func (e *Error) Error() string {
	s := fmt.Sprintf("graph: %s: HTTP %d", e.Op, e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.kind != nil {
		s += " (" + e.kind.Error() + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.kind }

// request is one call: its method, path below the base URL (or a whole
// link Graph gave), body, and what a 404 means for it.
type request struct {
	op       string
	method   string
	path     string // "/me/..." with its query, or an absolute link
	body     any    // sent as JSON when not nil
	notFound error  // the kind of a 404
	// text, when not nil, is sent as the body with Content-Type
	// text/plain instead of body (outlook-send-mime-message).
	text []byte
	// once: a throttled answer is returned, not waited out and sent
	// again, for a caller that has someone to pass the wait on to.
	once bool
}

// do sends the request, with a fresh token once after a 401 and again
// after throttling, and returns a response with a 2xx status whose body
// the caller must close; the concurrency slot it holds is given back then.
func (c *Client) do(ctx context.Context, req request) (resp *http.Response, err error) {
	if obs := c.opts.Observe; obs != nil {
		defer func(start time.Time) {
			if op, ok := observed[req.op]; ok {
				obs(op, time.Since(start), err)
			}
		}(time.Now())
	}
	target, err := c.resolve(req.path)
	if err != nil {
		return nil, &Error{Op: req.op, kind: err}
	}
	var body []byte
	if req.body != nil {
		if body, err = jsonBody(req.body); err != nil {
			return nil, err
		}
	}
	contentType := "application/json"
	if req.text != nil {
		body, contentType = req.text, "text/plain"
	}
	refreshed := false
	for attempt := 0; ; attempt++ {
		token, err := c.accessToken(ctx, "")
		if err != nil {
			return nil, err
		}
		resp, err := c.send(ctx, req.method, target, body, contentType, token)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode/100 == 2 {
			return resp, nil
		}
		code := errorCode(resp)
		c.release(resp)
		switch s := resp.StatusCode; {
		case s == http.StatusUnauthorized && !refreshed:
			// The token expired or was revoked since it was handed out:
			// ask for a fresh one, once (errors: 401).
			refreshed = true
			if _, err := c.accessToken(ctx, token); err != nil {
				return nil, err
			}
			attempt--
			continue
		case s == http.StatusUnauthorized:
			return nil, &Error{Op: req.op, Status: s, Code: code, kind: upstream.ErrAuthFailed}
		case s == http.StatusNotFound && req.notFound != nil:
			return nil, &Error{Op: req.op, Status: s, Code: code, kind: req.notFound}
		case s == http.StatusGone || code == "syncStateNotFound" || code == "resyncRequired":
			return nil, &Error{Op: req.op, Status: s, Code: code, kind: ErrDeltaExpired}
		case s == http.StatusTooManyRequests || s == http.StatusServiceUnavailable || s == http.StatusGatewayTimeout:
			wait, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now())
			if !ok {
				wait = c.opts.Backoff << attempt
			}
			if req.once || attempt >= c.opts.Retries || wait > c.opts.MaxRetryAfter {
				e := &Error{Op: req.op, Status: s, Code: code, kind: ErrTemporary}
				if ok {
					e.RetryAfter = wait
				}
				if req.once {
					return nil, e
				}
				if wait > c.opts.MaxRetryAfter {
					return nil, fmt.Errorf("%w: Retry-After %v is longer than the %v the gateway waits", e, wait, c.opts.MaxRetryAfter)
				}
				return nil, e
			}
			// throttling: wait the Retry-After, then send again.
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
			continue
		case s >= 500:
			return nil, &Error{Op: req.op, Status: s, Code: code, kind: ErrTemporary}
		default:
			return nil, &Error{Op: req.op, Status: s, Code: code}
		}
	}
}

// send makes one HTTP exchange within a concurrency slot; the slot stays
// taken until the response body is closed.
func (c *Client) send(ctx context.Context, method string, target *url.URL, body []byte, contentType, token string) (*http.Response, error) {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(ctx)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	hr, err := http.NewRequestWithContext(ctx, method, target.String(), rd)
	if err != nil {
		cancel()
		<-c.slots
		return nil, err
	}
	hr.Header.Set("Authorization", "Bearer "+token)
	// outlook-immutable-id: the header applies to the request it is on
	// only, so every request carries it; ids then survive moves between
	// folders of the mailbox.
	hr.Header.Set("Prefer", `IdType="ImmutableId"`)
	hr.Header.Set("Accept", "application/json")
	if body != nil {
		hr.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(hr)
	if err != nil {
		cancel()
		<-c.slots
		if ctx.Err() == nil {
			return nil, fmt.Errorf("%w: %v", ErrTemporary, err)
		}
		return nil, err
	}
	resp.Body = &web.Body{Body: resp.Body, Release: func() { cancel(); <-c.slots }, Idle: c.opts.Timeout, Cancel: cancel}
	return resp, nil
}

// release drains a little of a response and closes it.
func (c *Client) release(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorJSON))
	resp.Body.Close()
}

// accessToken returns the token to send. Given the token Graph refused, it
// returns a new one: from the source, unless a concurrent request has
// already replaced that token.
func (c *Client) accessToken(ctx context.Context, refused string) (string, error) {
	c.tokenMu.Lock()
	defer c.tokenMu.Unlock()
	if c.token != "" && (refused == "" || refused != c.token) {
		return c.token, nil
	}
	tok, err := c.tokens.AccessToken(ctx, refused != "")
	if err != nil {
		return "", fmt.Errorf("%w: %w", upstream.ErrAuthFailed, err)
	}
	c.token = tok
	return tok, nil
}

// resolve turns a path below the base URL, or a link Graph returned, into
// the URL to ask. Links must stay on the base URL's scheme and host: the
// bearer token is sent with them.
func (c *Client) resolve(p string) (*url.URL, error) {
	if strings.HasPrefix(p, "/") {
		return url.Parse(c.base.String() + p)
	}
	u, err := url.Parse(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	if u.Scheme != c.base.Scheme || u.Host != c.base.Host {
		return nil, ErrForeignLink
	}
	return u, nil
}

// retryAfter reads a Retry-After value (see web.RetryAfter).
func retryAfter(v string, now time.Time) (time.Duration, bool) { return web.RetryAfter(v, now) }

// errorCode reads Graph's error code from a refused response (errors:
// {"error":{"code":...}}), "" when there is none.
func errorCode(resp *http.Response) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if jsonIn.Decode(resp.Body, maxErrorJSON, &e) != nil {
		return ""
	}
	return printable(e.Error.Code, 64)
}

// printable keeps at most n printable ASCII characters of s.
func printable(s string, n int) string { return web.Printable(s, n) }
