package jmap_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/jmap"
)

// double is a small JMAP server after RFC 8620/8621: one account, one
// inbox, messages in memory, and faults to order.
type double struct {
	mu       sync.Mutex
	msgs     []string // bodies, ids "M0", "M1", ...
	state    int
	requests []string // "METHOD path" of every request
	times    []time.Time
	// fail answers the next requests with these statuses, each with
	// retryAfter.
	fail       []int
	retryAfter string
	// short serves blobs that many octets short, with a Content-Length
	// that matches what is sent: a complete HTTP response, a cut blob.
	short int
	// noChanges answers Email/queryChanges with cannotCalculateChanges.
	noChanges bool
	// pageCap, when set, returns at most that many ids per Email/query,
	// whatever the limit (RFC 8620 §5.5 allows a server to).
	pageCap int
	// churn changes the state at every Email/query.
	churn bool
	// stray adds to every Email/get answer an Email that was not asked
	// for, in the inbox.
	stray bool
}

func (d *double) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.requests = append(d.requests, r.Method+" "+r.URL.Path)
	d.times = append(d.times, time.Now())
	if u, p, ok := r.BasicAuth(); (!ok || u != "alice" || p != "secret") && r.Header.Get("Authorization") != "Bearer tok-1" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if len(d.fail) > 0 {
		status := d.fail[0]
		d.fail = d.fail[1:]
		if d.retryAfter != "" {
			w.Header().Set("Retry-After", d.retryAfter)
		}
		w.WriteHeader(status)
		return
	}
	switch {
	case r.URL.Path == "/.well-known/jmap":
		http.Redirect(w, r, "/jmap/session", http.StatusMovedPermanently)
	case r.URL.Path == "/jmap/session":
		fmt.Fprint(w, `{"capabilities":{"urn:ietf:params:jmap:core":{"maxConcurrentRequests":2,"maxCallsInRequest":4,"maxObjectsInGet":2,"maxObjectsInSet":2},"urn:ietf:params:jmap:mail":{}},
			"primaryAccounts":{"urn:ietf:params:jmap:mail":"A1"},"apiUrl":"/jmap/api/","downloadUrl":"/jmap/download/{accountId}/{blobId}/{name}?type={type}","state":"s1"}`)
	case r.URL.Path == "/jmap/api/":
		d.api(w, r)
	case strings.HasPrefix(r.URL.Path, "/jmap/download/A1/B"):
		var i int
		if _, err := fmt.Sscanf(strings.TrimPrefix(r.URL.Path, "/jmap/download/A1/B"), "%d", &i); err != nil || i >= len(d.msgs) || d.msgs[i] == "" {
			http.NotFound(w, r)
			return
		}
		body := d.msgs[i][:len(d.msgs[i])-d.short]
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		io.WriteString(w, body)
	default:
		http.NotFound(w, r)
	}
}

func (d *double) api(w http.ResponseWriter, r *http.Request) {
	var req struct {
		MethodCalls [][3]json.RawMessage `json:"methodCalls"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	var ids []string
	for i, m := range d.msgs {
		if m != "" {
			ids = append(ids, fmt.Sprintf("M%d", i))
		}
	}
	state := fmt.Sprint(d.state)
	var out []any
	var queried []string
	for _, call := range req.MethodCalls {
		var name, id string
		var args map[string]any
		json.Unmarshal(call[0], &name)
		json.Unmarshal(call[1], &args)
		json.Unmarshal(call[2], &id)
		var res any
		switch name {
		case "Mailbox/get":
			res = map[string]any{"list": []any{map[string]any{"id": "INBOX1", "name": "Inbox", "parentId": nil, "role": "inbox"}}, "notFound": []string{}}
		case "Email/query":
			pos, _ := args["position"].(float64)
			page := ids[min(int(pos), len(ids)):]
			if l, ok := args["limit"].(float64); ok && int(l) < len(page) {
				page = page[:int(l)]
			}
			if d.pageCap > 0 && len(page) > d.pageCap {
				page = page[:d.pageCap]
			}
			if d.churn {
				d.state++
				state = fmt.Sprint(d.state)
			}
			queried = page
			res = map[string]any{"queryState": state, "canCalculateChanges": true, "position": pos, "ids": page, "total": len(ids)}
		case "Email/queryChanges":
			if d.noChanges {
				out = append(out, []any{"error", map[string]any{"type": "cannotCalculateChanges"}, id})
				continue
			}
			res = map[string]any{"oldQueryState": args["sinceQueryState"], "newQueryState": state, "removed": []string{}, "added": []any{}, "total": len(ids)}
		case "Email/get":
			var list []any
			want, _ := args["ids"].([]any)
			if _, ok := args["#ids"]; ok {
				for _, id := range queried {
					want = append(want, id)
				}
			}
			if len(want) > 2 { // maxObjectsInGet
				out = append(out, []any{"error", map[string]any{"type": "requestTooLarge"}, id})
				continue
			}
			for _, w := range want {
				var i int
				fmt.Sscanf(w.(string), "M%d", &i)
				list = append(list, map[string]any{"id": w, "blobId": fmt.Sprintf("B%d", i), "size": len(d.msgs[i]), "receivedAt": time.Unix(int64(1e9+i), 0).UTC().Format(time.RFC3339), "messageId": nil, "mailboxIds": map[string]bool{"INBOX1": true}})
			}
			if d.stray {
				list = append(list, map[string]any{"id": "M99", "blobId": "B0", "size": len(d.msgs[0]), "receivedAt": time.Unix(1e9, 0).UTC().Format(time.RFC3339), "messageId": nil, "mailboxIds": map[string]bool{"INBOX1": true}})
			}
			res = map[string]any{"state": state, "list": list, "notFound": []string{}}
		default:
			out = append(out, []any{"error", map[string]any{"type": "unknownMethod"}, id})
			continue
		}
		out = append(out, []any{name, res, id})
	}
	json.NewEncoder(w).Encode(map[string]any{"methodResponses": out, "sessionState": "s1"})
}

func startDouble(t *testing.T, d *double, opts jmap.Options) *jmap.Store {
	t.Helper()
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	opts.SessionURL = srv.URL // the base: /.well-known/jmap is asked for
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	s, err := jmap.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var alice = jmap.Credentials{Username: "alice", Password: "secret"}

// 401 is refused credentials, at discovery and at the API.
func TestDoubleUnauthorized(t *testing.T) {
	d := &double{msgs: []string{"a\r\n"}}
	s := startDouble(t, d, jmap.Options{})
	if _, err := s.Login(context.Background(), jmap.Credentials{Username: "alice", Password: "wrong"}, "INBOX"); !errors.Is(err, upstream.ErrAuthFailed) {
		t.Fatalf("wrong password at discovery: %v", err)
	}
	if _, err := s.Login(context.Background(), alice, "INBOX"); err != nil {
		t.Fatal(err)
	}
	// The session is known now: the API call itself answers 401.
	if _, err := s.Login(context.Background(), jmap.Credentials{Username: "alice", Password: "wrong"}, "INBOX"); !errors.Is(err, upstream.ErrAuthFailed) {
		t.Fatalf("wrong password at the API: %v", err)
	}
}

// 429 and 503 are sent again after their Retry-After; one longer than the
// cap fails at once as temporary.
func TestDoubleRetryAfter(t *testing.T) {
	d := &double{msgs: []string{"a\r\n"}, fail: []int{429, 503}, retryAfter: "1"}
	s := startDouble(t, d, jmap.Options{MaxRetryAfter: 5 * time.Second})
	if _, err := s.Login(context.Background(), alice, "INBOX"); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	if len(d.times) < 3 || d.times[1].Sub(d.times[0]) < time.Second || d.times[2].Sub(d.times[1]) < time.Second {
		t.Errorf("retries at %v: not after the Retry-After of 1s", d.times)
	}
	d.fail, d.retryAfter = []int{503}, "3600"
	d.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		_, err := s.Login(context.Background(), alice, "INBOX")
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, jmap.ErrTemporary) {
			t.Fatalf("Retry-After past the cap: %v, want ErrTemporary", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a Retry-After of an hour was waited for")
	}
}

// A blob shorter than its listed size is an error at its end, never a
// whole message; one that is gone is ErrMessageGone.
func TestDoubleTruncatedBlob(t *testing.T) {
	d := &double{msgs: []string{"Subject: x\r\n\r\nbody\r\n", "b\r\n"}, short: 3}
	s := startDouble(t, d, jmap.Options{})
	ctx := context.Background()
	sess, err := s.Login(ctx, alice, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := sess.Snapshot(ctx)
	if err != nil || len(entries) != 2 {
		t.Fatalf("Snapshot: %v, %+v", err, entries)
	}
	body, err := sess.Open(ctx, entries[0].ID, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if !errors.Is(err, jmap.ErrTruncated) {
		t.Fatalf("read %q, %v; want ErrTruncated", got, err)
	}
	d.mu.Lock()
	d.short = 0
	d.msgs[1] = ""
	d.mu.Unlock()
	if _, err := sess.Open(ctx, entries[1].ID, 0, -1); !errors.Is(err, upstream.ErrMessageGone) {
		t.Fatalf("Open of a destroyed message: %v", err)
	}
}

// cannotCalculateChanges is ErrCannotCalculateChanges, for the gateway to
// list everything; the listing pages by maxObjectsInGet.
func TestDoubleCannotCalculateChanges(t *testing.T) {
	d := &double{msgs: []string{"a\r\n", "b\r\n", "c\r\n"}}
	s := startDouble(t, d, jmap.Options{})
	ctx := context.Background()
	sess, err := s.Login(ctx, alice, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	before := sess.Selected()
	d.mu.Lock()
	d.state++
	d.msgs = append(d.msgs, "d\r\n")
	d.noChanges = true
	d.mu.Unlock()
	if _, err := sess.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Changes(ctx, before); !errors.Is(err, jmap.ErrCannotCalculateChanges) {
		t.Fatalf("Changes: %v, want ErrCannotCalculateChanges", err)
	}
	entries, err := sess.Snapshot(ctx)
	if err != nil || len(entries) != 4 {
		t.Fatalf("Snapshot: %v, %d entries", err, len(entries))
	}
	// A server returning fewer ids than asked for: the total ends the
	// listing, not a short page.
	d.mu.Lock()
	d.pageCap = 1
	d.mu.Unlock()
	if entries, err := sess.Snapshot(ctx); err != nil || len(entries) != 4 {
		t.Fatalf("Snapshot by pages of one: %v, %d entries", err, len(entries))
	}
	// A mailbox that changes between every two pages is never listed
	// from pages of different states.
	d.mu.Lock()
	d.churn = true
	d.mu.Unlock()
	if entries, err := sess.Snapshot(ctx); !errors.Is(err, jmap.ErrTemporary) {
		t.Fatalf("Snapshot of a churning mailbox: %v, %d entries; want ErrTemporary", err, len(entries))
	}
}

// A bearer token logs in as a password does, a refused one is replaced
// from the token source once; at most
// maxConcurrentRequests (2 here) requests are in flight, a body being
// read counting as one until it is closed.
func TestDoubleBearerAndConcurrency(t *testing.T) {
	d := &double{msgs: []string{"a\r\n", "b\r\n", "c\r\n"}}
	s := startDouble(t, d, jmap.Options{})
	ctx := context.Background()
	if _, err := s.Login(ctx, jmap.Credentials{Username: "alice", Token: "tok-2"}, "INBOX"); !errors.Is(err, upstream.ErrAuthFailed) {
		t.Fatalf("a refused token: %v", err)
	}
	// An expired token is replaced from the token source, once.
	var asked []bool
	tokens := func(ctx context.Context, refresh bool) (string, error) {
		asked = append(asked, refresh)
		return "tok-1", nil
	}
	sess, err := s.Login(ctx, jmap.Credentials{Username: "alice", Token: "tok-expired", Tokens: tokens}, "INBOX")
	if err != nil || len(asked) != 1 || !asked[0] {
		t.Fatalf("login with an expired token: %v; token source asked %v, want once for a fresh one", err, asked)
	}
	entries, err := sess.Snapshot(ctx)
	if err != nil || len(entries) != 3 {
		t.Fatalf("Snapshot: %v, %d", err, len(entries))
	}
	var open []io.ReadCloser
	for _, e := range entries[:2] {
		body, err := sess.Open(ctx, e.ID, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, body)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := sess.Open(short, entries[2].ID, 0, -1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third request with two bodies open: %v, want it to wait", err)
	}
	open[0].Close()
	body, err := sess.Open(ctx, entries[2].ID, 0, -1)
	if err != nil {
		t.Fatalf("after a body was closed: %v", err)
	}
	body.Close()
	open[1].Close()
}

// An Email/get answer with an Email that was not asked for is refused
// whole: in a listing (it would be listed, and perhaps destroyed at
// QUIT), among the changes, and when a message is opened, where it says
// nothing of whether the message asked for is gone.
func TestDoubleEmailNotAskedFor(t *testing.T) {
	d := &double{msgs: []string{"a\r\n", "b\r\n"}}
	s := startDouble(t, d, jmap.Options{})
	ctx := context.Background()
	sess, err := s.Login(ctx, alice, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := sess.Snapshot(ctx)
	if err != nil || len(entries) != 2 {
		t.Fatalf("Snapshot: %v, %d entries", err, len(entries))
	}
	before := sess.Selected()
	d.mu.Lock()
	d.stray = true
	d.state++
	d.msgs = append(d.msgs, "c\r\n")
	d.mu.Unlock()
	if _, err := sess.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Changes(ctx, before); !errors.Is(err, jmap.ErrBadResponse) {
		t.Errorf("Changes: %v, want ErrBadResponse", err)
	}
	if got, err := sess.Snapshot(ctx); !errors.Is(err, jmap.ErrBadResponse) {
		t.Errorf("Snapshot: %v, %d entries; want ErrBadResponse", err, len(got))
	}
	if _, err := sess.Open(ctx, entries[0].ID, 0, -1); !errors.Is(err, jmap.ErrBadResponse) || errors.Is(err, upstream.ErrMessageGone) {
		t.Errorf("Open: %v, want ErrBadResponse", err)
	}
}
