package proxy_test

import (
	"context"
	"slices"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/memstore"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// listAllStore is a store that cannot list its changes: its sessions
// have the seam's methods only.
type listAllStore struct{ store *memstore.Store }

func (s listAllStore) Login(ctx context.Context, login proxy.StoreLogin) (proxy.Session, error) {
	sess, err := s.store.Login(ctx, login)
	if err != nil {
		return nil, err
	}
	return struct{ proxy.Session }{sess}, nil
}

// Through the seam, a store that lists its changes is asked for those
// only after messages came or went, and the listing equals, byte for
// byte, what a gateway in front of a store that lists everything, sharing
// the state store, gives; that store is asked for every message each
// time the mailbox changed.
// With store ids (copies of one message sharing one, as with Cyrus's
// EMAILID), the same holds.
func TestSeamListingAfterChange(t *testing.T) {
	for _, ids := range []bool{false, true} {
		name := "digests"
		if ids {
			name = "store ids"
		}
		t.Run(name, func(t *testing.T) { seamListingAfterChange(t, ids) })
	}
}

func seamListingAfterChange(t *testing.T, identities bool) {
	changing := memstore.New()
	changing.AddUser(seamAccount, "upstream secret")
	listing := memstore.New()
	listing.AddUser(seamAccount, "upstream secret")
	if identities {
		changing.GiveIdentities()
		listing.GiveIdentities()
	}
	state := proxy.NewMemoryState()
	merged := newSeamEnvOn(t, upstream.DeleteExpunge, changing, changing)
	merged.gw.SetState(state)
	full := newSeamEnvOn(t, upstream.DeleteExpunge, listing, listAllStore{listing})
	full.gw.SetState(state)
	deliver := func(msgs ...string) {
		merged.deliver(msgs...)
		full.deliver(msgs...)
	}
	poll := func(e *seamEnv) string {
		c := e.login()
		out, err := c.Cmd("STAT")
		if err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"LIST", "UIDL"} {
			status, body, err := c.Multi(cmd)
			if err != nil {
				t.Fatal(err)
			}
			out += "\n" + status + "\n" + string(body)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	step := func(name string, wantAll, wantChanges int) {
		t.Helper()
		got, want := poll(merged), poll(full)
		if got != want {
			t.Errorf("%s: merged listing\n%s\nlisting every message\n%s", name, got, want)
		}
		if all, changes := changing.Listings(); all != wantAll || changes != wantChanges {
			t.Errorf("%s: the store listed every message %d times and its changes %d times; want %d and %d", name, all, changes, wantAll, wantChanges)
		}
	}
	copyOf := "Subject: a copy\r\n\r\nthe same\r\n"
	deliver(seamCorpus...)
	deliver(copyOf, copyOf)
	step("first login", 1, 0)
	step("unchanged", 1, 0)
	deliver(copyOf)
	step("one new message", 1, 1)
	// Both stores give the same deliveries the same IDs.
	ids := merged.store.IDs(seamAccount)
	if !slices.Equal(ids, full.store.IDs(seamAccount)) {
		t.Fatalf("the stores' IDs differ: %v and %v", ids, full.store.IDs(seamAccount))
	}
	merged.store.Expunge(seamAccount, ids[3])
	full.store.Expunge(seamAccount, ids[3])
	step("one expunge", 1, 2)
	merged.store.Expunge(seamAccount, ids[0])
	full.store.Expunge(seamAccount, ids[0])
	deliver("Subject: four\r\nMessage-ID: <4@x>\r\n\r\nfour\r\n")
	step("an expunge and a new message", 1, 3)
	merged.store.Renumber(seamAccount)
	full.store.Renumber(seamAccount)
	step("a new epoch", 2, 3)
	// All logins but the one to an unchanged mailbox.
	if all, _ := listing.Listings(); all != 5 {
		t.Errorf("the store without changes listed every message %d times in 6 logins; want 5", all)
	}
}
