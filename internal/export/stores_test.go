package export

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
	"github.com/pop3gw/gateway/upstream/jmap"
)

// The export works for every store through the seam alone: a mapped
// user's mailbox on Graph (the double of Microsoft's API) and on Cyrus
// through JMAP, opened as `gateway export -config` opens it
// (proxy.Gateway.UserSessions).

// mappedUser is the opener of the mapped user "u" of a gateway whose one
// upstream is store.
func mappedUser(t *testing.T, store proxy.Store, login string, password string, token bool) (Opener, string) {
	t.Helper()
	up := &proxy.Upstream{Name: "up", Mailbox: "INBOX", Store: store}
	u := &proxy.User{Name: "u", Upstream: "up", UpstreamUser: login}
	if token {
		up.OAuth2 = upstream.Bearer
		u.UpstreamToken = func(context.Context, bool) (string, error) { return password, nil }
	} else {
		u.UpstreamPassword = func() (string, error) { return password, nil }
	}
	gw := proxy.New(&proxy.Config{Upstreams: map[string]*proxy.Upstream{"up": up}, Users: map[string]*proxy.User{"u": u}}, cache.New(0, 0), nil)
	t.Cleanup(gw.Close)
	open, mailbox, err := gw.UserSessions("u")
	if err != nil {
		t.Fatal(err)
	}
	return Opener(open), mailbox
}

// storeServes reads every message of the mailbox as the store serves it,
// on a session of its own.
func storeServes(t *testing.T, open Opener, mailbox string) [][]byte {
	t.Helper()
	ctx := testCtx(t)
	sess, err := open(ctx, mailbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	entries, err := sess.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, e := range entries {
		r, err := sess.Open(ctx, e.ID, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// sameMessages compares the exported files with the served messages, as
// multisets: the store's own ids name the files.
func sameMessages(t *testing.T, got map[string][]byte, want [][]byte, form func([]byte) []byte) {
	t.Helper()
	var g, w []string
	for _, b := range got {
		g = append(g, string(b))
	}
	for _, b := range want {
		w = append(w, string(form(b)))
	}
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Errorf("exported %d messages that differ from the %d the store serves", len(g), len(w))
		for i := range min(len(g), len(w)) {
			if g[i] != w[i] {
				t.Errorf("first difference:\n got %q\nwant %q", head([]byte(g[i])), head([]byte(w[i])))
				break
			}
		}
	}
}

// storeCorpus is a small corpus of what a careless export gets wrong;
// crlfOnly leaves out what Cyrus cannot store.
func storeCorpus(n int, crlfOnly bool) [][]byte {
	var out [][]byte
	for i := range n {
		m := fmt.Sprintf("Message-ID: <%d@export.test>\r\nSubject: message %d \xe9t\xe9\r\nFrom Someone\r\n\r\nFrom the start\r\n.\r\nline %d\r\n", i, i, i)
		switch {
		case i%5 == 1 && !crlfOnly:
			m = strings.ReplaceAll(m, "\r\n", "\n")
		case i%5 == 2:
			m = strings.TrimSuffix(m, "\r\n")
		case i%5 == 3:
			m = strings.Replace(m, "\r\n\r\n", "\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\npart\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\n"+strings.Repeat("QUJD", 5000)+"\r\n--b--\r\n", 1)
		}
		out = append(out, []byte(m))
	}
	return out
}

func readFormat(t *testing.T, dir string, format Format) (map[string][]byte, func([]byte) []byte) {
	t.Helper()
	if format == Maildir {
		got, _ := readMaildir(t, dir)
		return got, lf
	}
	return readEML(t, filepath.Join(dir, "INBOX")), func(b []byte) []byte { return b }
}

func TestExportGraph(t *testing.T) {
	double := graphdouble.New(t)
	const login, token = "bob@example.com", "graph-token"
	double.Grant(token, login)
	box := double.Mailbox(login)
	msgs := storeCorpus(13, false)
	for i, m := range msgs[:12] {
		box.Add("inbox", graphdouble.Msg{MessageID: fmt.Sprintf("<%d@export.test>", i), MIME: m})
	}
	open, mailbox := mappedUser(t, proxy.GraphStore(graph.NewStore(graph.Options{BaseURL: double.URL, Backoff: 10 * time.Millisecond})), login, token, true)
	values := func() int {
		n := 0
		for _, r := range double.Requests() {
			if strings.Contains(r, "/$value") {
				n++
			}
		}
		return n
	}
	for _, format := range []Format{EML, Maildir} {
		t.Run(string(format), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Open: open, Mailbox: mailbox, Dir: dir, Format: format}
			before := values()
			if sum := run(t, opts); sum.Exported != 12 || values()-before != 12 {
				t.Fatalf("exported %d with %d $value requests, want 12 and 12", sum.Exported, values()-before)
			}
			got, form := readFormat(t, dir, format)
			sameMessages(t, got, storeServes(t, open, mailbox), form)

			id := box.Add("inbox", graphdouble.Msg{MessageID: "<new@export.test>", MIME: msgs[12]})
			defer box.Remove(id)
			before = values()
			if sum := run(t, opts); sum.Exported != 1 || sum.Known != 12 || values()-before != 1 {
				t.Errorf("after one new message: exported %d, known %d, %d $value requests; want 1, 12, 1", sum.Exported, sum.Known, values()-before)
			}
			got, form = readFormat(t, dir, format)
			sameMessages(t, got, storeServes(t, open, mailbox), form)
			opts.Verify = true
			if sum := run(t, opts); sum.Exported != 0 || sum.Verified != 13 {
				t.Errorf("-verify: exported %d, verified %d; want 0, 13", sum.Exported, sum.Verified)
			}
		})
	}
}

// -all lists Graph's folders by path, children under their parents, and
// opens each on a session of its own: Graph has no SELECT.
func TestExportGraphAll(t *testing.T) {
	double := graphdouble.New(t)
	const login, token = "bob@example.com", "graph-token"
	double.Grant(token, login)
	box := double.Mailbox(login)
	msgs := storeCorpus(8, false)
	for _, m := range msgs[:3] {
		box.Add("inbox", graphdouble.Msg{MIME: m})
	}
	projects := box.AddFolder("Projects 2026")
	for _, m := range msgs[3:6] {
		box.Add("Projects 2026", graphdouble.Msg{MIME: m})
	}
	box.AddChildFolder(projects, "Q1")
	for _, m := range msgs[6:] {
		box.Add("Q1", graphdouble.Msg{MIME: m})
	}
	open, mailbox := mappedUser(t, proxy.GraphStore(graph.NewStore(graph.Options{BaseURL: double.URL, Backoff: 10 * time.Millisecond})), login, token, true)
	// Folder paths use "/" between a parent and its child.
	folders := map[string][]string{
		"INBOX":            {"INBOX", "cur"},
		"Projects 2026":    {"Projects 2026", ".Projects 2026/cur"},
		"Projects 2026/Q1": {"Projects 2026/Q1", ".Projects 2026.Q1/cur"},
	}
	for i, format := range []Format{EML, Maildir} {
		t.Run(string(format), func(t *testing.T) {
			dir := t.TempDir()
			if sum := run(t, Options{Open: open, Mailbox: mailbox, Dir: dir, Format: format, All: true}); sum.Exported != len(msgs) {
				t.Errorf("exported %d, want %d", sum.Exported, len(msgs))
			}
			for name, paths := range folders {
				want := storeServes(t, open, name)
				if format == Maildir {
					got, _ := readMaildir(t, filepath.Dir(filepath.Join(dir, paths[i])))
					sameMessages(t, got, want, lf)
				} else {
					sameMessages(t, readEML(t, filepath.Join(dir, paths[i])), want, func(b []byte) []byte { return b })
				}
				if len(want) == 0 {
					t.Errorf("%s serves no messages", name)
				}
			}
		})
	}
}

// countDownloads counts the JMAP blob downloads (RFC 8620 §6.2).
type countDownloads struct {
	n atomic.Int64
}

func (c *countDownloads) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/download/") {
		c.n.Add(1)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// imapServes is every message of the mailbox as the same Cyrus serves it
// over IMAP (BODY.PEEK[]).
func imapServes(t *testing.T, addr, login, password, mailbox string) [][]byte {
	t.Helper()
	c := imapLogin(t, addr, login, password)
	defer c.Close()
	imapSelect(t, c, mailbox)
	// 1:* (RFC 9051 §9: "*" is the largest number in use).
	bodies, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, b := range bodies {
		for _, sec := range b.BodySection {
			out = append(out, sec.Bytes)
		}
	}
	return out
}

func TestExportJMAPCyrus(t *testing.T) {
	const login, password = "alice", "upstream-secret"
	srv := cyrustest.Start(t, map[string]string{login: password})
	msgs := storeCorpus(11, true)
	srv.Append(t, login, msgs[:10]...)
	downloads := &countDownloads{}
	store, err := jmap.New(jmap.Options{SessionURL: srv.JMAPURL(), HTTPClient: &http.Client{Transport: downloads}})
	if err != nil {
		t.Fatal(err)
	}
	open, mailbox := mappedUser(t, proxy.JMAPStore(store), login, password, false)
	var dirs = map[Format]string{}
	for _, format := range []Format{EML, Maildir} {
		dirs[format] = t.TempDir()
		before := downloads.n.Load()
		if sum := run(t, Options{Open: open, Mailbox: mailbox, Dir: dirs[format], Format: format}); sum.Exported != 10 {
			t.Fatalf("%s: exported %d, want 10", format, sum.Exported)
		}
		if n := downloads.n.Load() - before; n != 10 {
			t.Errorf("%s: %d blob downloads, want 10", format, n)
		}
		got, form := readFormat(t, dirs[format], format)
		sameMessages(t, got, imapServes(t, srv.IMAPAddr(), login, password, "INBOX"), form)
		sameMessages(t, got, storeServes(t, open, mailbox), form)
	}
	srv.Append(t, login, msgs[10])
	for _, format := range []Format{EML, Maildir} {
		opts := Options{Open: open, Mailbox: mailbox, Dir: dirs[format], Format: format}
		before := downloads.n.Load()
		if sum := run(t, opts); sum.Exported != 1 || sum.Known != 10 || downloads.n.Load()-before != 1 {
			t.Errorf("%s after one new message: exported %d, known %d, %d downloads; want 1, 10, 1", format, sum.Exported, sum.Known, downloads.n.Load()-before)
		}
		got, form := readFormat(t, dirs[format], format)
		sameMessages(t, got, imapServes(t, srv.IMAPAddr(), login, password, "INBOX"), form)
		opts.Verify = true
		if sum := run(t, opts); sum.Exported != 0 || sum.Verified != 11 {
			t.Errorf("%s -verify: exported %d, verified %d; want 0, 11", format, sum.Exported, sum.Verified)
		}
	}

	// -all: Mailbox/get names a child of the inbox "INBOX/Work", which
	// opens on a session of its own (JMAP has no SELECT).
	c := imapLogin(t, srv.IMAPAddr(), login, password)
	defer c.Close()
	if err := c.Create("INBOX/Work", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs[:2] {
		cmd := c.Append("INBOX/Work", int64(len(m)), nil)
		cmd.Write(m)
		cmd.Close()
		if _, err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	sum := run(t, Options{Open: open, Mailbox: mailbox, Dir: dir, All: true})
	if sum.Exported != 13 || sum.Folders < 2 {
		t.Errorf("-all: %d folders, exported %d; want INBOX and INBOX/Work, 13", sum.Folders, sum.Exported)
	}
	sameMessages(t, readEML(t, filepath.Join(dir, "INBOX", "Work")), imapServes(t, srv.IMAPAddr(), login, password, "INBOX/Work"), func(b []byte) []byte { return b })
	if _, err := os.Stat(filepath.Join(dir, "INBOX")); err != nil {
		t.Error(err)
	}
}

// A mailbox the store opens by a name its list does not use (Graph's
// well-known names, JMAP's own name of the inbox) is exported under the
// name it was asked by.
func TestExportGraphWellKnownName(t *testing.T) {
	double := graphdouble.New(t)
	const login, token = "bob@example.com", "graph-token"
	double.Grant(token, login)
	box := double.Mailbox(login)
	msgs := storeCorpus(3, false)
	for _, m := range msgs {
		box.Add("archive", graphdouble.Msg{MIME: m})
	}
	open, mailbox := mappedUser(t, proxy.GraphStore(graph.NewStore(graph.Options{BaseURL: double.URL, Backoff: 10 * time.Millisecond})), login, token, true)
	dir := t.TempDir()
	if sum := run(t, Options{Open: open, Mailbox: mailbox, Folder: "archive", Dir: dir}); sum.Exported != len(msgs) {
		t.Errorf("exported %d, want %d", sum.Exported, len(msgs))
	}
	sameMessages(t, readEML(t, filepath.Join(dir, "archive")), storeServes(t, open, "archive"), func(b []byte) []byte { return b })
	if _, err := Run(testCtx(t), Options{Open: open, Mailbox: mailbox, Folder: "No Such Folder", Dir: t.TempDir()}); !errors.Is(err, ErrNoMailbox) {
		t.Errorf("an unknown folder: %v, want ErrNoMailbox", err)
	}
}
