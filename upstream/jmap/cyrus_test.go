package jmap_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/jmap"
)

// countingTransport counts the HTTP requests a store sends.
type countingTransport struct {
	n    atomic.Int64
	next http.RoundTripper
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return t.next.RoundTrip(r)
}

func newCyrusStore(t *testing.T, srv *cyrustest.Server) (*jmap.Store, *countingTransport) {
	t.Helper()
	ct := &countingTransport{next: http.DefaultTransport}
	s, err := jmap.New(jmap.Options{SessionURL: srv.JMAPURL(), HTTPClient: &http.Client{Transport: ct}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s, ct
}

func readAll(t *testing.T, sess *jmap.Session, id upstream.ID, offset, n int64) string {
	t.Helper()
	body, err := sess.Open(context.Background(), id, offset, n)
	if err != nil {
		t.Fatalf("Open %s: %v", id, err)
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("reading %s: %v", id, err)
	}
	return string(b)
}

// Against Cyrus: a listing with exact sizes, bodies whole and in part,
// changes merged, an unchanged mailbox costing one request, deletes.
func TestCyrus(t *testing.T) {
	srv := cyrustest.Start(t, map[string]string{"alice": "secret"})
	msgs := [][]byte{
		[]byte("Subject: one\r\nMessage-ID: <1@x>\r\n\r\nbody one\r\n"),
		[]byte("Subject: two\r\n\r\nbody two, longer\r\n"),
		[]byte("Subject: three\r\n\r\n.dot\r\n"),
	}
	srv.AppendDated(t, "alice", time.Unix(1_700_000_000, 0), msgs[0])
	srv.AppendDated(t, "alice", time.Unix(1_700_000_100, 0), msgs[1])
	store, requests := newCyrusStore(t, srv)
	ctx := context.Background()

	if _, err := store.Login(ctx, jmap.Credentials{Username: "alice", Password: "wrong"}, "INBOX"); !errors.Is(err, upstream.ErrAuthFailed) {
		t.Fatalf("wrong password: %v, want ErrAuthFailed", err)
	}
	sess, err := store.Login(ctx, jmap.Credentials{Username: "alice", Password: "secret"}, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	first := sess.Selected()
	if first.Messages != 2 || first.State == "" || first.Epoch == "" {
		t.Fatalf("Selected: %+v", first)
	}
	entries, err := sess.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("%d entries", len(entries))
	}
	for i, e := range entries {
		if e.Size != int64(len(msgs[i])) || e.Identity != "jmap:"+string(e.ID) || e.UIDL != string(e.ID) {
			t.Errorf("entry %d: %+v (message of %d octets)", i, e, len(msgs[i]))
		}
		if got := readAll(t, sess, e.ID, 0, -1); got != string(msgs[i]) {
			t.Errorf("message %d: %q, want %q", i, got, msgs[i])
		}
	}
	if entries[0].MessageID != "<1@x>" {
		t.Errorf("Message-ID %q", entries[0].MessageID)
	}
	if got := readAll(t, sess, entries[1].ID, 5, 3); got != string(msgs[1][5:8]) {
		t.Errorf("part: %q, want %q", got, msgs[1][5:8])
	}
	sess.Close()

	// An unchanged mailbox: one request for the login.
	before := requests.n.Load()
	sess, err = store.Login(ctx, jmap.Credentials{Username: "alice", Password: "secret"}, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if n := requests.n.Load() - before; n != 1 {
		t.Errorf("a login to an unchanged mailbox sent %d requests, want 1", n)
	}
	if sess.Selected() != first {
		t.Errorf("unchanged mailbox: %+v, was %+v", sess.Selected(), first)
	}
	sess.Close()

	// New mail and one message gone: the changes list both.
	srv.AppendDated(t, "alice", time.Unix(1_700_000_200, 0), msgs[2])
	sess, err = store.Login(ctx, jmap.Credentials{Username: "alice", Password: "secret"}, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.DeleteJournaled(ctx, []upstream.ID{entries[0].ID}, upstream.DeleteExpunge, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	ch, err := sess.Changes(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Added) != 1 || ch.Added[0].Size != int64(len(msgs[2])) || len(ch.Removed) != 1 || ch.Removed[0] != entries[0].ID {
		t.Fatalf("changes: %+v", ch)
	}
	if got := readAll(t, sess, ch.Added[0].ID, 0, -1); got != string(msgs[2]) {
		t.Errorf("new message: %q", got)
	}
	// The destroyed message is gone for Open.
	if _, err := sess.Open(ctx, entries[0].ID, 0, -1); !errors.Is(err, upstream.ErrMessageGone) {
		t.Errorf("Open of a destroyed message: %v, want ErrMessageGone", err)
	}
	if sess.Selected().Messages != 2 {
		t.Errorf("after the changes: %+v", sess.Selected())
	}
}

// imapFlags returns, per mailbox, the flags of its messages as Cyrus's
// IMAP shows them, to see what the JMAP deletes did from the other side.
func imapFlags(t *testing.T, srv *cyrustest.Server, user, pass string, mailboxes ...string) map[string][][]imap.Flag {
	t.Helper()
	c, err := imapclient.DialInsecure(srv.IMAPAddr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	out := map[string][][]imap.Flag{}
	for _, mbox := range mailboxes {
		sel, err := c.Select(mbox, nil).Wait()
		if err != nil {
			t.Fatalf("SELECT %s: %v", mbox, err)
		}
		out[mbox] = [][]imap.Flag{}
		if sel.NumMessages == 0 {
			continue
		}
		var all imap.SeqSet
		all.AddRange(1, sel.NumMessages)
		msgs, err := c.Fetch(all, &imap.FetchOptions{Flags: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			out[mbox] = append(out[mbox], m.Flags)
		}
	}
	return out
}

// The delete modes on Cyrus, seen from its IMAP: seen sets \Seen and
// keeps the message; trash moves it into the configured trash, made at
// the first delete since no Mailbox has role trash, and calls copied;
// keep changes nothing.
func TestCyrusDeleteModes(t *testing.T) {
	srv := cyrustest.Start(t, map[string]string{"bob": "secret"})
	for i := 1; i <= 3; i++ {
		srv.AppendDated(t, "bob", time.Unix(int64(1_700_000_000+i), 0), []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)))
	}
	store, _ := newCyrusStore(t, srv)
	ctx := context.Background()
	sess, err := store.Login(ctx, jmap.Credentials{Username: "bob", Password: "secret"}, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := sess.Snapshot(ctx)
	if err != nil || len(entries) != 3 {
		t.Fatalf("Snapshot: %v, %d", err, len(entries))
	}
	if err := sess.DeleteJournaled(ctx, []upstream.ID{entries[0].ID}, upstream.DeleteKeep, "", nil); err != nil {
		t.Fatal(err)
	}
	if err := sess.DeleteJournaled(ctx, []upstream.ID{entries[0].ID}, upstream.DeleteSeen, "", nil); err != nil {
		t.Fatal(err)
	}
	if tr, err := sess.FindTrash(ctx, "Bin"); err != nil || tr.Exists || tr.Mailbox != "Bin" {
		t.Fatalf("FindTrash before the first move: %+v, %v", tr, err)
	}
	copied := 0
	if err := sess.DeleteJournaled(ctx, []upstream.ID{entries[1].ID, entries[2].ID}, upstream.DeleteTrash, "Bin", func() error { copied++; return nil }); err != nil {
		t.Fatal(err)
	}
	if copied != 1 {
		t.Errorf("copied called %d times, want once", copied)
	}
	flags := imapFlags(t, srv, "bob", "secret", "INBOX", "Bin")
	if len(flags["INBOX"]) != 1 || !slices.Contains(flags["INBOX"][0], imap.FlagSeen) || len(flags["Bin"]) != 2 {
		t.Fatalf("after seen and trash: %v", flags)
	}
	if tr, err := sess.FindTrash(ctx, "Bin"); err != nil || !tr.Exists || tr.Served {
		t.Fatalf("FindTrash after the first move: %+v, %v", tr, err)
	}
	if _, err := sess.Refresh(ctx); err != nil || sess.Selected().Messages != 1 {
		t.Fatalf("Refresh: %+v, %v", sess.Selected(), err)
	}
}
