package graph_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
)

// tokens is a token source: the first token, then fresh ones on refresh.
type tokens struct {
	mu        sync.Mutex
	first     string
	fresh     []string
	refreshes int
}

func (t *tokens) AccessToken(ctx context.Context, refresh bool) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !refresh {
		return t.first, nil
	}
	t.refreshes++
	if len(t.fresh) == 0 {
		return t.first, nil
	}
	tok := t.fresh[0]
	t.fresh = t.fresh[1:]
	return tok, nil
}

const user = "alice@contoso.example"

// setup starts a double with alice's mailbox and a client on it.
func setup(t *testing.T, opts graph.Options) (*graphdouble.Server, *graphdouble.Mailbox, *graph.Client) {
	t.Helper()
	srv := graphdouble.New(t)
	srv.Grant("token-1", user)
	opts.BaseURL = srv.URL
	if opts.Tokens == nil {
		opts.Tokens = &tokens{first: "token-1"}
	}
	if opts.Backoff == 0 {
		opts.Backoff = 10 * time.Millisecond
	}
	c, err := graph.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return srv, srv.Mailbox(user), c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func addN(mb *graphdouble.Mailbox, folder string, n int) []string {
	var ids []string
	for i := range n {
		ids = append(ids, mb.Add(folder, graphdouble.Msg{
			MessageID: fmt.Sprintf("<m%d@example.com>", i),
			MIME:      fmt.Appendf(nil, "Message-ID: <m%d@example.com>\r\nSubject: %d\r\n\r\nbody %d\r\n", i, i, i),
		}))
	}
	return ids
}

func ids(msgs []graph.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.ID)
	}
	return out
}

func count(reqs []string, prefix string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

func TestListFollowsNextLinks(t *testing.T) {
	srv, mb, c := setup(t, graph.Options{PageSize: 7})
	srv.PageSize(10)
	want := addN(mb, "inbox", 25)
	inbox, err := c.Folder(ctx(t), "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if inbox.TotalItemCount != 25 {
		t.Errorf("totalItemCount %d, want 25", inbox.TotalItemCount)
	}
	msgs, err := c.List(ctx(t), inbox.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(msgs); !slices.Equal(got, want) {
		t.Fatalf("listed %d ids %v, want the %d immutable ids %v", len(got), got, len(want), want)
	}
	if msgs[3].InternetMessageID != "<m3@example.com>" || msgs[3].ReceivedDateTime.IsZero() {
		t.Errorf("message 3 is %+v", msgs[3])
	}
	// $top 7 within the double's page size: 25 messages in 4 pages.
	if n := count(srv.Requests(), "GET /me/mailFolders/"+inbox.ID+"/messages"); n != 4 {
		t.Errorf("%d listing requests, want 4: %q", n, srv.Requests())
	}
	for _, r := range srv.Requests() {
		if strings.Contains(r, "/messages?") && !strings.Contains(r, "select=id%2CinternetMessageId%2CreceivedDateTime%2CisRead") {
			t.Errorf("listing without the $select: %s", r)
		}
	}
}

func TestFolderByDisplayName(t *testing.T) {
	_, mb, c := setup(t, graph.Options{})
	scans := mb.AddFolder("Scans 'north'")
	mb.Add("Scans 'north'", graphdouble.Msg{MIME: []byte("Subject: scan\r\n\r\n")})
	f, err := c.Folder(ctx(t), "Scans 'north'")
	if err != nil {
		t.Fatal(err)
	}
	if f.ID != scans || f.TotalItemCount != 1 {
		t.Errorf("folder %+v, want id %s with 1 message", f, scans)
	}
	msgs, err := c.List(ctx(t), f.ID)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("List: %v, %v", msgs, err)
	}
	if _, err := c.Folder(ctx(t), "Nowhere"); !errors.Is(err, graph.ErrFolderNotFound) {
		t.Errorf("unknown folder: %v, want ErrFolderNotFound", err)
	}
}

func TestDeltaRounds(t *testing.T) {
	srv, mb, c := setup(t, graph.Options{PageSize: 4})
	before := addN(mb, "inbox", 10)
	inbox, err := c.Folder(ctx(t), "inbox")
	if err != nil {
		t.Fatal(err)
	}
	first, err := c.Delta(ctx(t), inbox.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(first.Changed); !slices.Equal(got, before) || len(first.Removed) != 0 || first.Link == "" {
		t.Fatalf("first round: changed %v removed %v link %q; want every message", got, first.Removed, first.Link)
	}

	// An unchanged folder costs one request.
	n := len(srv.Requests())
	again, err := c.Delta(ctx(t), inbox.ID, first.Link)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Changed)+len(again.Removed) != 0 || again.Link == "" {
		t.Errorf("unchanged folder: %+v", again)
	}
	if d := len(srv.Requests()) - n; d != 1 {
		t.Errorf("an unchanged re-poll took %d requests, want 1", d)
	}

	// Another client deletes one, reads one; a message arrives.
	mb.Remove(before[2])
	mb.MarkRead(before[5])
	added := mb.Add("inbox", graphdouble.Msg{MessageID: "<new@example.com>", MIME: []byte("Subject: new\r\n\r\n")})
	changes, err := c.Delta(ctx(t), inbox.ID, again.Link)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(changes.Changed); !slices.Equal(got, []string{before[5], added}) {
		t.Errorf("changed %v, want %v", got, []string{before[5], added})
	}
	if !slices.Equal(changes.Removed, []string{before[2]}) {
		t.Errorf("removed %v, want %v", changes.Removed, before[2:3])
	}
	for _, m := range changes.Changed {
		if m.ID == before[5] && !m.IsRead {
			t.Errorf("the message read elsewhere is not isRead: %+v", m)
		}
	}

	// A message moved out of the folder by the client is removed from it.
	if err := c.Remove(ctx(t), []string{before[0]}, upstream.DeleteTrash, ""); err != nil {
		t.Fatal(err)
	}
	moved, err := c.Delta(ctx(t), inbox.ID, changes.Link)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(moved.Removed, []string{before[0]}) || len(moved.Changed) != 0 {
		t.Errorf("after a move to trash: %+v, want %s removed", moved, before[0])
	}

	srv.ExpireDeltaLinks()
	if _, err := c.Delta(ctx(t), inbox.ID, moved.Link); !errors.Is(err, graph.ErrDeltaExpired) {
		t.Errorf("expired delta link: %v, want ErrDeltaExpired", err)
	}
}

func TestOpenServesOctetsAsTheyAre(t *testing.T) {
	_, mb, c := setup(t, graph.Options{})
	// Bare LF, a bare CR, a dot line, no final line ending: Open changes
	// nothing; making POP3 lines is the gateway's business.
	mime := []byte("Subject: bare\nX: y\r\n\nline\r.\n.\nend")
	id := mb.Add("inbox", graphdouble.Msg{MIME: mime})
	body, err := c.Open(ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	if err := body.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, mime) {
		t.Errorf("served %q, want %q", got, mime)
	}
	if body.N() != int64(len(mime)) {
		t.Errorf("N() = %d, want %d", body.N(), len(mime))
	}
}

func TestOpenMessageDeletedAfterListing(t *testing.T) {
	_, mb, c := setup(t, graph.Options{})
	id := addN(mb, "inbox", 1)[0]
	inbox, _ := c.Folder(ctx(t), "inbox")
	if msgs, err := c.List(ctx(t), inbox.ID); err != nil || len(msgs) != 1 {
		t.Fatalf("List: %v %v", msgs, err)
	}
	mb.Remove(id)
	_, err := c.Open(ctx(t), id)
	if !errors.Is(err, upstream.ErrMessageGone) {
		t.Fatalf("Open of a deleted message: %v, want ErrMessageGone", err)
	}
	var ge *graph.Error
	if !errors.As(err, &ge) || ge.Status != http.StatusNotFound || ge.Code != "ErrorItemNotFound" {
		t.Errorf("error %#v, want 404 ErrorItemNotFound", ge)
	}
}

func TestOpenStreams150MB(t *testing.T) {
	if testing.Short() {
		t.Skip("150 MB transfer")
	}
	const size = 150 << 20
	_, mb, c := setup(t, graph.Options{})
	id := mb.AddLarge("inbox", size)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	body, err := c.Open(ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	want := graphdouble.Large(size)
	got := make([]byte, 64<<10)
	exp := make([]byte, 64<<10)
	for {
		n, err := io.ReadFull(body, got)
		if _, werr := io.ReadFull(want, exp[:n]); werr != nil {
			t.Fatalf("served more than %d octets", size)
		}
		if !bytes.Equal(got[:n], exp[:n]) {
			t.Fatalf("octets differ before offset %d", body.N())
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	body.Close()
	runtime.ReadMemStats(&after)
	if body.N() != size {
		t.Errorf("N() = %d, want %d", body.N(), size)
	}
	// Client and double together allocate a small fraction of the
	// message: nothing holds it whole.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/4 {
		t.Errorf("allocated %d MB while streaming %d MB", alloc>>20, size>>20)
	}
}

func TestExpiredTokenRefreshedOnce(t *testing.T) {
	src := &tokens{first: "token-1", fresh: []string{"token-2"}}
	srv, mb, c := setup(t, graph.Options{Tokens: src})
	srv.Grant("token-2", user)
	srv.Expire("token-1")
	addN(mb, "inbox", 3)
	f, err := c.Folder(ctx(t), "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(ctx(t), f.ID); err != nil {
		t.Fatal(err)
	}
	if src.refreshes != 1 {
		t.Errorf("%d refreshes, want 1", src.refreshes)
	}
}

func TestRefusedTokenIsAuthFailed(t *testing.T) {
	src := &tokens{first: "token-1"} // refreshing gives the same expired token
	srv, _, c := setup(t, graph.Options{Tokens: src})
	srv.Expire("token-1")
	_, err := c.Folder(ctx(t), "inbox")
	if !errors.Is(err, upstream.ErrAuthFailed) {
		t.Fatalf("err %v, want ErrAuthFailed", err)
	}
	if src.refreshes != 1 {
		t.Errorf("%d refreshes, want exactly 1", src.refreshes)
	}
	if n := len(srv.Requests()); n != 2 {
		t.Errorf("%d requests, want 2 (the refused one and one with a fresh token)", n)
	}
	if strings.Contains(err.Error(), "expired or is not yet valid") {
		t.Errorf("Graph's message reached the error: %v", err)
	}
}

func TestThrottlingHonoursRetryAfter(t *testing.T) {
	srv, mb, c := setup(t, graph.Options{})
	addN(mb, "inbox", 2)
	srv.Throttle(1, http.StatusTooManyRequests, "1")
	start := time.Now()
	f, err := c.Folder(ctx(t), "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("retried after %v, before the Retry-After of 1 s", waited)
	}
	// 503 without Retry-After: backoff, then success.
	srv.Throttle(2, http.StatusServiceUnavailable, "")
	if _, err := c.List(ctx(t), f.ID); err != nil {
		t.Fatalf("after two 503: %v", err)
	}
	if n := count(srv.Requests(), "GET /me/mailFolders/"+f.ID+"/messages"); n != 3 {
		t.Errorf("%d listing requests, want 3", n)
	}
}

func TestThrottlingGivesUp(t *testing.T) {
	srv, _, c := setup(t, graph.Options{Retries: 2})
	srv.Throttle(5, http.StatusServiceUnavailable, "0")
	_, err := c.Folder(ctx(t), "inbox")
	if !errors.Is(err, graph.ErrTemporary) {
		t.Fatalf("err %v, want ErrTemporary", err)
	}
	if n := len(srv.Requests()); n != 3 {
		t.Errorf("%d requests, want 3 (one and two retries)", n)
	}

	// A Retry-After of a year is an error at once, not a sleep.
	srv2, _, c2 := setup(t, graph.Options{})
	srv2.Throttle(1, http.StatusTooManyRequests, "31536000")
	c3, cancel := context.WithTimeout(ctx(t), 20*time.Second)
	defer cancel()
	_, err = c2.Folder(c3, "inbox")
	if !errors.Is(err, graph.ErrTemporary) || c3.Err() != nil {
		t.Fatalf("Retry-After of a year: %v (context: %v), want ErrTemporary", err, c3.Err())
	}
	if !strings.Contains(err.Error(), "Retry-After") {
		t.Errorf("the error does not say why: %v", err)
	}
}

func TestAtMostFourRequestsInFlight(t *testing.T) {
	srv, mb, c := setup(t, graph.Options{})
	ids := addN(mb, "inbox", 12)
	srv.Delay(40 * time.Millisecond)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for _, id := range ids {
		wg.Go(func() {
			body, err := c.Open(ctx(t), id)
			if err != nil {
				t.Error(err)
				failed.Add(1)
				return
			}
			io.Copy(io.Discard, body)
			body.Close()
		})
	}
	wg.Wait()
	if err := c.Remove(ctx(t), ids, upstream.DeleteSeen, ""); err != nil {
		t.Fatal(err)
	}
	if got := srv.MaxInFlight(user); got > graph.DefaultConcurrency || got < 2 {
		t.Errorf("at most %d requests in flight, want 2 to %d", got, graph.DefaultConcurrency)
	}
	if n := count(srv.Requests(), "GET /me/messages/"); n != 12 {
		t.Errorf("%d $value requests, want 12 (none refused for concurrency)", n)
	}
}

func TestRemoveModes(t *testing.T) {
	_, mb, c := setup(t, graph.Options{})
	ids := addN(mb, "inbox", 8)
	mb.AddFolder("Old mail")
	for _, tc := range []struct {
		mode       upstream.DeleteMode
		trash      string
		id         string
		wantFolder string
		wantRead   bool
	}{
		{upstream.DeleteTrash, "", ids[0], "deleteditems", false},
		{upstream.DeleteTrash, "Old mail", ids[1], "Old mail", false},
		{upstream.DeleteExpunge, "", ids[2], "recoverableitemsdeletions", false},
		{upstream.DeleteSeen, "", ids[3], "inbox", true},
		{upstream.DeleteKeep, "", ids[4], "inbox", false},
	} {
		if err := c.Remove(ctx(t), []string{tc.id}, tc.mode, tc.trash); err != nil {
			t.Fatalf("%s: %v", tc.mode, err)
		}
		// Immutable ids: the message keeps its id wherever it went.
		folder, read, ok := mb.State(tc.id)
		if !ok || folder != tc.wantFolder || read != tc.wantRead {
			t.Errorf("%s %q: message in %q read %v (found %v), want %q read %v", tc.mode, tc.trash, folder, read, ok, tc.wantFolder, tc.wantRead)
		}
	}
	// A message someone else removed already counts as done.
	mb.Remove(ids[5])
	if err := c.Remove(ctx(t), ids[5:], upstream.DeleteExpunge, ""); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[6:] {
		if folder, _, _ := mb.State(id); folder != "recoverableitemsdeletions" {
			t.Errorf("%s in %q after DELETE", id, folder)
		}
	}
	if err := c.Remove(ctx(t), ids[7:], upstream.DeleteTrash, "No such folder"); !errors.Is(err, graph.ErrFolderNotFound) {
		t.Errorf("trash into a missing folder: %v", err)
	}
}

func TestResponsesAreBounded(t *testing.T) {
	srv, _, c := setup(t, graph.Options{})
	// Well-formed for a page, and decodable if depth were not bounded.
	deep := `{"id":"AAkALgAA=","x":` + strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100) + "}"
	var mode atomic.Value
	srv.Override(func(w http.ResponseWriter, r *http.Request) bool {
		switch mode.Load() {
		case "deep":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"value":[`+deep+`]}`)
		case "huge":
			// An endless page: a value array that never closes.
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"value":[`)
			item := []byte(strings.Repeat(`{"id":"AAkALgAAxxxxxxxxxxxxxxxxxxxx="},`, 1000))
			for range 1 << 14 { // up to about 600 MB
				if _, err := w.Write(item); err != nil {
					return true
				}
			}
		case "foreign":
			io.WriteString(w, `{"value":[],"@odata.nextLink":"https://elsewhere.example/v1.0/me/messages?$skip=10"}`)
		default:
			return false
		}
		return true
	})
	for _, m := range []string{"deep", "huge"} {
		mode.Store(m)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := c.List(ctx(t), "inbox")
		runtime.ReadMemStats(&after)
		if !errors.Is(err, graph.ErrBadResponse) {
			t.Errorf("%s page: %v, want ErrBadResponse", m, err)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 128<<20 {
			t.Errorf("%s page: %d MB allocated", m, alloc>>20)
		}
	}
	mode.Store("foreign")
	if _, err := c.List(ctx(t), "inbox"); !errors.Is(err, graph.ErrForeignLink) {
		t.Errorf("nextLink to another host: %v, want ErrForeignLink", err)
	}
}

func TestCutBodiesNeverEndCleanly(t *testing.T) {
	srv, mb, c := setup(t, graph.Options{Timeout: 300 * time.Millisecond})
	id := addN(mb, "inbox", 1)[0]
	var mode atomic.Value
	srv.Override(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/$value") {
			return false
		}
		switch mode.Load() {
		case "truncated":
			// Content-Length promises more than is sent; the server
			// closes the connection after the handler.
			w.Header().Set("Content-Length", "1000")
			io.WriteString(w, "Subject: cut\r\n\r\nhalf a mess")
		case "stalled":
			io.WriteString(w, "Subject: stalled\r\n\r\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}
		return true
	})
	for _, m := range []string{"truncated", "stalled"} {
		mode.Store(m)
		body, err := c.Open(ctx(t), id)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		start := time.Now()
		_, err = io.ReadAll(body)
		body.Close()
		if err == nil {
			t.Errorf("%s body read to a clean end", m)
		}
		if m == "stalled" && time.Since(start) > 5*time.Second {
			t.Errorf("a stalled body was waited on for %v", time.Since(start))
		}
	}
	// The slots of both bodies were given back.
	srv.Override(nil)
	for range graph.DefaultConcurrency + 1 {
		body, err := c.Open(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		body.Close()
	}
}

func TestRemoveInBatches(t *testing.T) {
	srv, mb, c := setup(t, graph.Options{})
	ids := addN(mb, "inbox", 25)
	srv.ThrottleBatchItems(2, "1")
	start := time.Now()
	if err := c.Remove(ctx(t), ids, upstream.DeleteExpunge, ""); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("throttled batch requests sent again after %v, before their Retry-After of 1 s", waited)
	}
	for _, id := range ids {
		if folder, _, _ := mb.State(id); folder != "recoverableitemsdeletions" {
			t.Errorf("%s in %q", id, folder)
		}
	}
	reqs := srv.Requests()
	// 20, the 2 throttled again, then 5.
	if b, items := count(reqs, "POST /$batch"), count(reqs, "BATCH DELETE /me/messages/"); b != 3 || items != 27 {
		t.Errorf("%d batches of %d requests, want 3 of 27", b, items)
	}
	if n := count(reqs, "DELETE "); n != 0 {
		t.Errorf("%d deletes outside batches", n)
	}

	// Without batches: one request each.
	srv2, mb2, c2 := setup(t, graph.Options{NoBatch: true})
	ids2 := addN(mb2, "inbox", 5)
	if err := c2.Remove(ctx(t), ids2, upstream.DeleteSeen, ""); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids2 {
		if _, read, _ := mb2.State(id); !read {
			t.Errorf("%s not read", id)
		}
	}
	if n := count(srv2.Requests(), "PATCH /me/messages/"); n != 5 {
		t.Errorf("%d PATCH requests, want 5", n)
	}

	// A batch request throttled for a year fails at once.
	more := addN(mb, "inbox", 3)
	srv.ThrottleBatchItems(1, "31536000")
	if err := c.Remove(ctx(t), more, upstream.DeleteTrash, ""); !errors.Is(err, graph.ErrTemporary) {
		t.Errorf("a year's Retry-After in a batch: %v, want ErrTemporary", err)
	}
}

// Requests refused together for one expired token refresh it once.
func TestConcurrentRefusalsRefreshOnce(t *testing.T) {
	src := &tokens{first: "token-1", fresh: []string{"token-2", "token-3", "token-4", "token-5"}}
	srv, mb, c := setup(t, graph.Options{Tokens: src})
	for _, tok := range src.fresh {
		srv.Grant(tok, user)
	}
	ids := addN(mb, "inbox", 8)
	srv.Expire("token-1")
	srv.Delay(20 * time.Millisecond)
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			body, err := c.Open(ctx(t), id)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, body)
			body.Close()
		})
	}
	wg.Wait()
	if src.refreshes != 1 {
		t.Errorf("%d refreshes for one expired token, want 1", src.refreshes)
	}
}
