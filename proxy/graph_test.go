package proxy_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"context"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
)

// These tests serve a Microsoft Graph mailbox, the double of Microsoft's
// documented API (internal/testkit/graphdouble), through the store seam:
// the POP3 rules are package proxy's, the same as for IMAP.

const graphUser = "alice@contoso.example"

type graphEnv struct {
	t      *testing.T
	double *graphdouble.Server
	box    *graphdouble.Mailbox
	gw     *proxy.Gateway
	addr   string

	mu        sync.Mutex
	token     string
	tokens    int // tokens granted
	refreshes int // refresh requests from the gateway
}

// newGraphEnv serves the double's mailbox of graphUser; the cache keeps
// bodies up to 1 MiB.
func newGraphEnv(t *testing.T, mode upstream.DeleteMode) *graphEnv {
	t.Helper()
	e := &graphEnv{t: t, double: graphdouble.New(t)}
	e.box = e.double.Mailbox(graphUser)
	e.grant()
	hash, err := passwd.Hash(seamPassword)
	if err != nil {
		t.Fatal(err)
	}
	store := graph.NewStore(graph.Options{BaseURL: e.double.URL, Backoff: 10 * time.Millisecond})
	cfg := &proxy.Config{
		Upstreams: map[string]*proxy.Upstream{
			"m365": {Name: "m365", Store: proxy.GraphStore(store), Mailbox: "INBOX", OnDelete: mode, Trash: "deleteditems", OAuth2: upstream.Bearer},
		},
		Users: map[string]*proxy.User{
			seamUser: {
				Name: seamUser, PasswordHash: hash, Upstream: "m365", UpstreamUser: graphUser,
				UpstreamToken: e.accessToken,
			},
		},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e.gw = proxy.New(cfg, cache.New(16<<20, 1<<20), log)
	srv := &pop3.Server{Backend: e.gw, Logger: log}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		e.gw.Close()
	})
	e.addr = ln.Addr().String()
	return e
}

// grant makes a new access token valid.
func (e *graphEnv) grant() {
	e.tokens++
	e.token = fmt.Sprintf("graph-token-%d", e.tokens)
	e.double.Grant(e.token, graphUser)
}

// accessToken is the user's token source: a refresh grants a new token.
func (e *graphEnv) accessToken(ctx context.Context, refresh bool) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if refresh {
		e.refreshes++
		e.grant()
	}
	return e.token, nil
}

func (e *graphEnv) login() *pop3client.Client {
	e.t.Helper()
	c, err := pop3client.Dial(e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	e.t.Cleanup(func() { c.Close() })
	if err := c.Login(seamUser, seamPassword); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *graphEnv) add(mime string) string {
	return e.box.Add("inbox", graphdouble.Msg{MIME: []byte(mime)})
}

// requests returns the double's requests since n of them, by kind:
// "folder", "list" (a delta round from the start), "delta" (from a
// link), "value" (a message body) or the request itself.
func (e *graphEnv) requests(since int) (kinds []string, n int) {
	all := e.double.Requests()
	for _, r := range all[since:] {
		switch {
		case strings.Contains(r, "/$value"):
			kinds = append(kinds, "value")
		case strings.Contains(r, "deltatoken"):
			kinds = append(kinds, "delta")
		case strings.Contains(r, "/messages/delta"):
			kinds = append(kinds, "list")
		case strings.HasPrefix(r, "GET /me/mailFolders/") && !strings.Contains(r, "/messages"):
			kinds = append(kinds, "folder")
		default:
			kinds = append(kinds, r)
		}
	}
	return kinds, len(all)
}

func countOf(kinds []string, kind string) int {
	n := 0
	for _, k := range kinds {
		if k == kind {
			n++
		}
	}
	return n
}

// TestGraphSession: a Graph mailbox served over POP3. Graph gives no
// sizes: each message is read once at the first login, and STAT and LIST
// give the exact octets RETR sends (bare LF made CRLF, no final line
// break); the RETRs cost no request. An unchanged mailbox costs a folder
// lookup and one delta request at the next login; a new message, and one
// another client read, cost that delta round and the new body; UIDLs stay.
func TestGraphSession(t *testing.T) {
	e := newGraphEnv(t, upstream.DeleteExpunge)
	for _, m := range seamCorpus {
		e.add(m)
	}
	total := len(seamWire[0]) + len(seamWire[1]) + len(seamWire[2])
	c := e.login()
	reply(t, c, "STAT", fmt.Sprintf("+OK 3 %d", total))
	kinds, n := e.requests(0)
	if countOf(kinds, "value") != 3 {
		t.Fatalf("first login: requests %v, want each body read once", kinds)
	}
	uidls := uidlValues(t, c)
	for _, u := range uidls {
		if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(u) {
			t.Fatalf("UIDL %q is not the digest of a Graph id", u)
		}
	}
	for i, want := range seamWire {
		reply(t, c, fmt.Sprintf("LIST %d", i+1), fmt.Sprintf("+OK %d %d", i+1, len(want)))
		if body := check[[]byte](t)(c.Retr(i + 1)); string(body) != retrieved(want) {
			t.Fatalf("RETR %d = %q, want %q", i+1, body, want)
		}
	}
	if kinds, n = e.requests(n); len(kinds) != 0 {
		t.Fatalf("RETR made requests %v; the bodies read at login are in the cache", kinds)
	}
	check[string](t)(c.OK("QUIT"))

	c = e.login()
	reply(t, c, "STAT", fmt.Sprintf("+OK 3 %d", total))
	if got := uidlValues(t, c); !slices.Equal(got, uidls) {
		t.Fatalf("UIDLs %v, then %v", uidls, got)
	}
	check[string](t)(c.OK("QUIT"))
	if kinds, n = e.requests(n); !slices.Equal(kinds, []string{"folder", "delta"}) {
		t.Fatalf("unchanged mailbox: requests %v, want a folder lookup and one delta request", kinds)
	}

	e.box.Add("inbox", graphdouble.Msg{MIME: []byte("Subject: four\r\n\r\nnew\r\n")})
	first := e.box.Add("inbox", graphdouble.Msg{MIME: []byte("Subject: five\r\n\r\nnew too\r\n")})
	e.box.Remove(first)
	c = e.login()
	reply(t, c, "STAT", fmt.Sprintf("+OK 4 %d", total+len("Subject: four\r\n\r\nnew\r\n")))
	if got := uidlValues(t, c); !slices.Equal(got[:3], uidls) {
		t.Fatalf("UIDLs %v, then %v", uidls, got)
	}
	check[string](t)(c.OK("QUIT"))
	if kinds, _ = e.requests(n); countOf(kinds, "list") != 0 || countOf(kinds, "value") != 1 {
		t.Fatalf("one new message: requests %v, want the changes and one body", kinds)
	}
}

// TestGraphChangedMessagesStayListed: messages another client read (a
// change a delta round reports like an arrival) keep their place and
// UIDL, without listing the folder again.
func TestGraphChangedMessagesStayListed(t *testing.T) {
	e := newGraphEnv(t, upstream.DeleteExpunge)
	var ids []string
	for _, m := range seamCorpus {
		ids = append(ids, e.add(m))
	}
	c := e.login()
	uidls := uidlValues(t, c)
	check[string](t)(c.OK("QUIT"))
	_, n := e.requests(0)
	e.box.MarkRead(ids[0])
	e.box.Remove(ids[1])
	c = e.login()
	if got := uidlValues(t, c); !slices.Equal(got, []string{uidls[0], uidls[2]}) {
		t.Fatalf("UIDLs %v after one was read and one removed, want %v", got, []string{uidls[0], uidls[2]})
	}
	check[string](t)(c.OK("QUIT"))
	if kinds, _ := e.requests(n); !slices.Equal(kinds, []string{"folder", "delta"}) {
		t.Fatalf("requests %v, want a folder lookup and one delta request", kinds)
	}
}

// TestGraphDeltaExpired: a delta link Graph forgot makes the next login
// list the folder again, with the same UIDLs.
func TestGraphDeltaExpired(t *testing.T) {
	e := newGraphEnv(t, upstream.DeleteExpunge)
	for _, m := range seamCorpus {
		e.add(m)
	}
	c := e.login()
	uidls := uidlValues(t, c)
	check[string](t)(c.OK("QUIT"))
	e.double.ExpireDeltaLinks()
	c = e.login()
	if got := uidlValues(t, c); !slices.Equal(got, uidls) {
		t.Fatalf("UIDLs %v, then %v", uidls, got)
	}
	check[string](t)(c.OK("QUIT"))
}

// TestGraphDeleteModes: DELE takes effect at QUIT only, in the
// upstream's mode; a message deleted is never listed again.
func TestGraphDeleteModes(t *testing.T) {
	for _, tc := range []struct {
		mode   upstream.DeleteMode
		folder string
		read   bool
	}{
		{upstream.DeleteTrash, "deleteditems", false},
		{upstream.DeleteExpunge, "recoverableitemsdeletions", false},
		{upstream.DeleteSeen, "inbox", true},
		{upstream.DeleteKeep, "inbox", false},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			e := newGraphEnv(t, tc.mode)
			var ids []string
			for _, m := range seamCorpus {
				ids = append(ids, e.add(m))
			}
			c := e.login()
			check[string](t)(c.OK("DELE 1"))
			check[string](t)(c.OK("DELE 3"))
			if f, _, _ := e.box.State(ids[0]); f != "inbox" {
				t.Fatalf("a message marked with DELE is in %s before QUIT", f)
			}
			c.Close() // no QUIT: nothing deleted
			c = e.login()
			reply(t, c, "STAT", fmt.Sprintf("+OK 3 %d", len(seamWire[0])+len(seamWire[1])+len(seamWire[2])))
			check[string](t)(c.OK("DELE 1"))
			check[string](t)(c.OK("DELE 3"))
			check[string](t)(c.OK("QUIT"))
			for _, i := range []int{0, 2} {
				if f, read, ok := e.box.State(ids[i]); !ok || f != tc.folder || read != tc.read {
					t.Errorf("message %d: in %q, read %v, there %v; want in %s, read %v", i+1, f, read, ok, tc.folder, tc.read)
				}
			}
			c = e.login()
			reply(t, c, "STAT", fmt.Sprintf("+OK 1 %d", len(seamWire[1])))
			check[string](t)(c.OK("QUIT"))
		})
	}
}

// TestGraphMessageGoneBeforeRetr: a message another client deletes
// between LIST and RETR gets -ERR, and the session goes on.
func TestGraphMessageGoneBeforeRetr(t *testing.T) {
	e := newGraphEnv(t, upstream.DeleteExpunge)
	// Larger than the cache ceiling, so RETR asks Graph for it again.
	large := "Subject: large\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 80000)
	e.add(seamCorpus[0])
	id := e.add(large)
	e.add(seamCorpus[1])
	c := e.login()
	reply(t, c, "LIST 2", fmt.Sprintf("+OK 2 %d", len(large)))
	e.box.Remove(id)
	reply(t, c, "RETR 2", "-ERR Message was removed by another client.")
	if body := check[[]byte](t)(c.Retr(3)); string(body) != seamWire[1] {
		t.Fatalf("RETR 3 = %q", body)
	}
	check[string](t)(c.OK("DELE 2"))
	check[string](t)(c.OK("QUIT"))
	c = e.login()
	reply(t, c, "STAT", fmt.Sprintf("+OK 2 %d", len(seamWire[0])+len(seamWire[1])))
}

// TestGraphExpiredTokenMidSession: Graph refusing the access token in the
// middle of a session gets one fresh token, and the RETR succeeds.
func TestGraphExpiredTokenMidSession(t *testing.T) {
	e := newGraphEnv(t, upstream.DeleteExpunge)
	large := "Subject: large\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 80000)
	e.add(large)
	c := e.login()
	e.mu.Lock()
	e.double.Expire(e.token)
	e.mu.Unlock()
	if body := check[[]byte](t)(c.Retr(1)); string(body) != large {
		t.Fatalf("RETR 1: %d octets, want %d", len(body), len(large))
	}
	check[string](t)(c.OK("QUIT"))
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.refreshes != 1 {
		t.Fatalf("%d token refreshes, want 1", e.refreshes)
	}
}

// TestGraphRefusedTokenRefreshedOnce: a token Graph keeps refusing is
// refreshed once at login, then the client gets -ERR [AUTH].
func TestGraphRefusedTokenRefreshedOnce(t *testing.T) {
	e := newGraphEnv(t, upstream.DeleteExpunge)
	e.add(seamCorpus[0])
	e.double.Override(func(w http.ResponseWriter, r *http.Request) bool {
		// Every token is refused, fresh ones too.
		w.Header().Set("WWW-Authenticate", "Bearer")
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	c, err := pop3client.Dial(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(seamUser, seamPassword); err == nil || !strings.Contains(err.Error(), "[AUTH]") {
		t.Fatalf("login with refused tokens: %v, want -ERR [AUTH]", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.refreshes != 1 {
		t.Fatalf("%d token refreshes, want 1", e.refreshes)
	}
}

// TestGraphThrottledListing: 429 with Retry-After while the mailbox is
// listed and measured is waited out; the login succeeds.
func TestGraphThrottledListing(t *testing.T) {
	e := newGraphEnv(t, upstream.DeleteExpunge)
	for _, m := range seamCorpus {
		e.add(m)
	}
	e.double.Throttle(2, 429, "1")
	start := time.Now()
	c := e.login()
	reply(t, c, "STAT", fmt.Sprintf("+OK 3 %d", len(seamWire[0])+len(seamWire[1])+len(seamWire[2])))
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("logged in after %v: the Retry-After of 1 s was not waited", waited)
	}
	check[string](t)(c.OK("QUIT"))
}

// TestGraph150MB: a 150 MB message is listed with its exact size and
// streamed, at login and at RETR, without being held whole.
func TestGraph150MB(t *testing.T) {
	if testing.Short() {
		t.Skip("150 MB transfer, twice")
	}
	const size = 150 << 20
	e := newGraphEnv(t, upstream.DeleteExpunge)
	e.box.AddLarge("inbox", size)
	var tail [2]byte
	for r, buf := graphdouble.Large(size), make([]byte, 1<<20); ; {
		n, err := r.Read(buf)
		if n >= 2 {
			copy(tail[:], buf[n-2:n])
		}
		if err != nil {
			break
		}
	}
	sent := int64(size)
	if string(tail[:]) != "\r\n" {
		sent += 2 // RETR ends the last line, uncounted
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c := e.login()
	reply(t, c, "LIST 1", fmt.Sprintf("+OK 1 %d", size))
	check[string](t)(c.OK("RETR 1"))
	if n := check[int64](t)(c.DiscardMulti()); n != sent {
		t.Fatalf("RETR sent %d octets, want %d", n, sent)
	}
	runtime.ReadMemStats(&after)
	check[string](t)(c.OK("QUIT"))
	// Two transfers of 150 MB through double, gateway and client allocate
	// a small part of one: nothing holds the message whole.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/2 {
		t.Errorf("allocated %d MB while reading %d MB twice", alloc>>20, size>>20)
	}
}
