package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/memstore"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// TestSeamUnknownSizesMeasuredOnce: a store that lists no sizes (as
// Graph) gets every message read once at the first login, through the
// normalisation RETR uses, so STAT and LIST give the exact octets RETR
// sends (bare LF, no final line break, and a message larger than the
// cache ceiling among them); the RETRs that follow come from the cache,
// and the next login reads nothing again, nor the first login to a
// restarted gateway (a new cache, the same state store).
func TestSeamUnknownSizesMeasuredOnce(t *testing.T) {
	state := proxy.NewMemoryState()
	first := newSeamEnv(t, upstream.DeleteExpunge)
	first.gw.SetState(state)
	restarted := newSeamEnvOn(t, upstream.DeleteExpunge, first.store, first.store)
	restarted.gw.SetState(state)
	e := first
	e.store.UnknownSizes(true)
	large := "Subject: large\nMessage-ID: <4@x>\n\n" + strings.Repeat("a line with a bare LF\n", 80000)
	corpus := append(append([]string{}, seamCorpus...), large)
	wire := append(append([]string{}, seamWire...), strings.ReplaceAll(large, "\n", "\r\n"))
	e.deliver(corpus...)
	var total int
	var list strings.Builder
	for i, w := range wire {
		total += len(w)
		fmt.Fprintf(&list, "%d %d\r\n", i+1, len(w))
	}
	for session := range 3 {
		if session == 2 {
			e = restarted
		}
		before := e.store.Bodies()
		c := e.login()
		reply(t, c, "STAT", fmt.Sprintf("+OK 4 %d", total))
		want := 0
		if session == 0 {
			want = len(corpus)
		}
		if sent := e.store.Bodies() - before; sent != want {
			t.Fatalf("session %d: the store sent %d bodies at login, want %d", session, sent, want)
		}
		if _, body, err := c.Multi("LIST"); err != nil || string(body) != list.String() {
			t.Fatalf("LIST = %q, %v; want %q", body, err, list.String())
		}
		before = e.store.Bodies()
		for i, want := range wire {
			reply(t, c, fmt.Sprintf("LIST %d", i+1), fmt.Sprintf("+OK %d %d", i+1, len(want)))
			if body := check[[]byte](t)(c.Retr(i + 1)); string(body) != retrieved(want) {
				t.Fatalf("RETR %d: %d octets, want %d", i+1, len(body), len(want))
			}
		}
		// Only the message too large for the cache is read again, and,
		// after a restart, every message, once.
		want = 1
		if session == 2 {
			want = len(corpus)
		}
		if sent := e.store.Bodies() - before; sent != want {
			t.Fatalf("session %d: the store sent %d bodies for RETR, want %d", session, sent, want)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
	}
}

// goneWhileMeasured is a store whose listing loses a message right after
// it is made, as another client's delete between the listing and the
// first read would.
type goneWhileMeasured struct {
	store *memstore.Store
}

func (s goneWhileMeasured) Login(ctx context.Context, login proxy.StoreLogin) (proxy.Session, error) {
	sess, err := s.store.Login(ctx, login)
	if err != nil {
		return nil, err
	}
	return &expungingSession{Session: sess, store: s.store}, nil
}

type expungingSession struct {
	proxy.Session
	store *memstore.Store
}

func (s *expungingSession) Snapshot(ctx context.Context) ([]upstream.Entry, error) {
	entries, err := s.Session.Snapshot(ctx)
	if err == nil && len(entries) > 1 {
		s.store.Expunge(seamAccount, entries[1].ID)
	}
	return entries, err
}

// TestSeamMessageGoneWhileMeasuredNotListed: a message without a size
// that is gone when it is read to be measured is not listed at all.
func TestSeamMessageGoneWhileMeasuredNotListed(t *testing.T) {
	store := memstore.New()
	store.AddUser(seamAccount, "upstream secret")
	store.UnknownSizes(true)
	e := newSeamEnvOn(t, upstream.DeleteExpunge, store, goneWhileMeasured{store})
	e.deliver(seamCorpus...)
	c := e.login()
	reply(t, c, "STAT", fmt.Sprintf("+OK 2 %d", len(seamWire[0])+len(seamWire[2])))
	for i, want := range []string{seamWire[0], seamWire[2]} {
		if body := check[[]byte](t)(c.Retr(i + 1)); string(body) != retrieved(want) {
			t.Fatalf("RETR %d = %q, want %q", i+1, body, want)
		}
	}
}

// retrieved is what a client reads of a message: RETR ends a last line
// without a line break with one, uncounted.
func retrieved(wire string) string {
	if strings.HasSuffix(wire, "\r\n") {
		return wire
	}
	return wire + "\r\n"
}

// TestSeamMeasuringGoesOnAfterAFailedLogin: a first login that fails while
// measuring (the store's connection lost) keeps the sizes it found, so
// the next one, even on a restarted gateway, reads only the rest.
func TestSeamMeasuringGoesOnAfterAFailedLogin(t *testing.T) {
	state := proxy.NewMemoryState()
	first := newSeamEnv(t, upstream.DeleteExpunge)
	first.gw.SetState(state)
	restarted := newSeamEnvOn(t, upstream.DeleteExpunge, first.store, first.store)
	restarted.gw.SetState(state)
	first.store.UnknownSizes(true)
	long := "Subject: long\r\n\r\n" + strings.Repeat("line\r\n", 1000)
	first.deliver(seamCorpus[0], long, seamCorpus[1])
	first.store.CutAfter(int64(len(seamCorpus[0]) + 1)) // the second body
	c, err := pop3client.Dial(first.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(seamUser, seamPassword); err == nil || !strings.Contains(err.Error(), "[SYS/TEMP]") {
		t.Fatalf("login while the store drops: %v, want -ERR [SYS/TEMP]", err)
	}
	before := first.store.Bodies()
	c2 := restarted.login()
	reply(t, c2, "STAT", fmt.Sprintf("+OK 3 %d", len(seamWire[0])+len(long)+len(seamWire[1])))
	if sent := first.store.Bodies() - before; sent != 2 {
		t.Fatalf("the store sent %d bodies at the second login, want 2: the first was measured before the failure", sent)
	}
}
