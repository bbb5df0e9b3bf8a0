package graph_test

import (
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
)

func storeSession(t *testing.T) (*graphdouble.Server, *graphdouble.Mailbox, *graph.Session) {
	t.Helper()
	srv := graphdouble.New(t)
	srv.Grant("token-1", user)
	s := graph.NewStore(graph.Options{BaseURL: srv.URL, Backoff: 10 * time.Millisecond})
	mb := srv.Mailbox(user)
	sess, err := s.Login(ctx(t), &tokens{first: "token-1"}, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	return srv, mb, sess
}

// The store's listing: arrival order, immutable ids, no sizes, UIDLs
// that fit POP3, identities apart from IMAP's; the folder's id is the
// epoch, the delta link the state.
func TestStoreSnapshot(t *testing.T) {
	_, mb, sess := storeSession(t)
	late := mb.Add("inbox", graphdouble.Msg{MessageID: "<b@x>", Received: time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC), MIME: []byte("b")})
	early := mb.Add("inbox", graphdouble.Msg{MessageID: "<a@x>", Received: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), MIME: []byte("a")})
	entries, err := sess.Snapshot(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].ID != upstream.ID(early) || entries[1].ID != upstream.ID(late) {
		t.Fatalf("entries %+v, want %s then %s", entries, early, late)
	}
	e := entries[0]
	if e.Size != upstream.SizeUnknown || e.Identity != "graph:"+early || e.MessageID != "<a@x>" || len(e.UIDL) != 32 {
		t.Fatalf("entry %+v", e)
	}
	st := sess.Selected()
	if st.Epoch == "graph:" || st.State == "" || st.Messages != 2 {
		t.Fatalf("state %+v after the listing", st)
	}
}

// FetchEach reads up to four messages at once, hands them over one at a
// time, and skips a message gone; Open drops the octets before offset.
func TestStoreFetchEach(t *testing.T) {
	srv, mb, sess := storeSession(t)
	var ids []upstream.ID
	for i := range 10 {
		ids = append(ids, upstream.ID(mb.Add("inbox", graphdouble.Msg{MIME: []byte{byte('a' + i), '\n'}})))
	}
	mb.Remove(string(ids[3]))
	srv.Delay(50 * time.Millisecond)
	var inside atomic.Int32
	var got []upstream.ID
	err := sess.FetchEach(ctx(t), ids, func(id upstream.ID, body io.Reader) error {
		if inside.Add(1) > 1 {
			t.Error("each called concurrently")
		}
		defer inside.Add(-1)
		b, err := io.ReadAll(body)
		if i := slices.Index(ids, id); string(b) != string([]byte{byte('a' + i), '\n'}) {
			t.Errorf("message %d: %q", i, b)
		}
		got = append(got, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 9 || slices.Contains(got, ids[3]) {
		t.Fatalf("each got %v, want the 9 messages left", got)
	}
	if n := srv.MaxInFlight(user); n < 2 || n > 4 {
		t.Fatalf("%d requests at once, want 2 to 4", n)
	}
	body, err := sess.Open(ctx(t), ids[0], 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if b, _ := io.ReadAll(body); string(b) != "\n" {
		t.Fatalf("Open from offset 1: %q", b)
	}
}

// Every call is reported under the IMAP store's operation names, failed
// ones with their error.
func TestStoreObserve(t *testing.T) {
	srv := graphdouble.New(t)
	srv.Grant("token-1", user)
	mb := srv.Mailbox(user)
	id := mb.Add("inbox", graphdouble.Msg{MIME: []byte("Subject: x\r\n\r\n")})
	var ops []string
	s := graph.NewStore(graph.Options{BaseURL: srv.URL, Observe: func(op string, d time.Duration, err error) {
		if err != nil {
			op += " failed"
		}
		ops = append(ops, op)
	}})
	sess, err := s.Login(ctx(t), &tokens{first: "token-1"}, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Snapshot(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Changes(ctx(t), sess.Selected()); err != nil {
		t.Fatal(err)
	}
	body, err := sess.Open(ctx(t), upstream.ID(id), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	body.Close()
	if err := sess.DeleteJournaled(ctx(t), []upstream.ID{upstream.ID(id)}, upstream.DeleteExpunge, "", nil); err != nil {
		t.Fatal(err)
	}
	mb.Remove(id)
	if _, err := sess.Open(ctx(t), upstream.ID(id), 0, -1); err == nil {
		t.Fatal("a removed message opened")
	}
	want := []string{"select", "list", "list-changes", "fetch", "delete", "fetch failed"}
	if !slices.Equal(ops, want) {
		t.Fatalf("observed %q, want %q", ops, want)
	}
}
