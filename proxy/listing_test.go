package proxy

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/upstream"
)

// After messages came or went, the next session's listing is merged from
// the last one and the store's changes, and equals, byte for byte, what
// listing every message gives; the upstream was asked for the new
// messages only, and for the UIDs still there after an expunge. Copies of
// one message (no Message-ID, the same second) are told apart by rank,
// which an expunge of the first copy changes for the others.
func TestListingAfterChangeEqualsFullListing(t *testing.T) {
	for _, tc := range []struct {
		name string
		caps imap.CapSet
	}{
		{"ESEARCH", nil},
		{"plain UID SEARCH", imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}, imap.CapMove: {}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{caps: tc.caps})
			arrived := time.Unix(1_700_000_000, 0)
			copyOf := []byte("Subject: a copy\r\n\r\nthe same\r\n")
			other := func(n int) []byte {
				return fmt.Appendf(nil, "Message-ID: <%d@example.com>\r\nSubject: %d\r\n\r\nbody %d\r\n", n, n, n)
			}
			if err := e.mem.AppendAt(alice, "INBOX", arrived, other(1), copyOf, other(2), copyOf, other(3)); err != nil {
				t.Fatal(err)
			}
			poll := func() (list, uidl string) {
				t.Helper()
				c := e.login("alice", localPassword)
				multi := func(cmd string) string {
					status, body, err := c.Multi(cmd)
					if err != nil {
						t.Fatal(err)
					}
					return status + "\n" + string(body)
				}
				l, u := multi("LIST"), multi("UIDL")
				if err := c.Quit(); err != nil {
					t.Fatal(err)
				}
				return l, u
			}
			type counts struct{ sizes, full, searches int64 }
			upstreamSaw := func(f func()) counts {
				before := counts{e.proxy.sizesSent.Load(), e.proxy.fullLists.Load(), e.proxy.searches.Load()}
				f()
				return counts{e.proxy.sizesSent.Load() - before.sizes, e.proxy.fullLists.Load() - before.full, e.proxy.searches.Load() - before.searches}
			}
			check := func(step string, want counts) {
				t.Helper()
				var list, uidl string
				if got := upstreamSaw(func() { list, uidl = poll() }); got != want {
					t.Errorf("%s: the upstream sent %d sizes, %d full listings, %d searches; want %+v", step, got.sizes, got.full, got.searches, want)
				}
				e.gw.snaps.mu.Lock()
				e.gw.snaps.lru.Purge()
				e.gw.snaps.mu.Unlock()
				fullList, fullUIDL := poll()
				if list != fullList || uidl != fullUIDL {
					t.Errorf("%s: merged listing\n%s%s\nlisting every message\n%s%s", step, list, uidl, fullList, fullUIDL)
				}
			}
			poll()
			check("unchanged", counts{})
			if err := e.mem.AppendAt(alice, "INBOX", arrived, copyOf); err != nil {
				t.Fatal(err)
			}
			check("one new message", counts{sizes: 1})
			expunge := func(uid imap.UID) {
				c := upstreamClient(t, e.mem.Addr())
				if err := c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
					t.Fatal(err)
				}
				if err := c.Expunge().Close(); err != nil {
					t.Fatal(err)
				}
				c.Logout().Wait()
			}
			expunge(2) // the first copy: the later copies move up a rank
			check("one expunge", counts{searches: 1})
			expunge(1)
			if err := e.mem.AppendAt(alice, "INBOX", arrived, other(4), copyOf); err != nil {
				t.Fatal(err)
			}
			check("an expunge and two new messages", counts{sizes: 2, searches: 1})
		})
	}
}

// mergeChanges trusts a store's changes only when they add up, and gives
// every message the identity listing them all gives. The store's own
// checks (IMAP: new UIDs between the old and the new UIDNEXT) are the
// store's: see upstream's TestChangesRefused.
func TestMergeChanges(t *testing.T) {
	arrived := time.Unix(1_700_000_000, 0)
	entry := func(id, msgid string) upstream.Entry {
		return upstream.Entry{ID: upstream.ID(id), UIDL: "u-" + id, Size: 100, MessageID: msgid, InternalDate: arrived}
	}
	// m1 to m6; "a" three times, "b" twice.
	old := []upstream.Entry{entry("m1", "a"), entry("m2", "b"), entry("m3", "a"), entry("m4", "c"), entry("m5", "a"), entry("m6", "b")}
	state := func(s string, n int) upstream.Mailbox {
		return upstream.Mailbox{Name: "INBOX", Epoch: "e7", State: s, Messages: n}
	}
	last := &snapshot{state: state("s1", 6), entries: listedEntries(old), ids: identities(old)}
	last.uidls = make([]string, len(old))
	last.hidden = make([]bool, len(old))
	for i, e := range old {
		last.uidls[i] = e.UIDL
	}
	kept := func(ids ...string) func(upstream.ID) bool {
		return func(id upstream.ID) bool { return slices.Contains(ids, string(id)) }
	}
	added := func(es ...upstream.Entry) []upstream.Entry { return es }
	for _, tc := range []struct {
		name    string
		ch      upstream.Changes
		state   upstream.Mailbox
		want    []string // IDs merged; nil: refused
		changed []int
	}{
		{"one new", upstream.Changes{Added: added(entry("m8", "a"))}, state("s2", 7), []string{"m1", "m2", "m3", "m4", "m5", "m6", "m8"}, []int{6}},
		{"first copy removed", upstream.Changes{Removed: []upstream.ID{"m1"}}, state("s2", 5), []string{"m2", "m3", "m4", "m5", "m6"}, []int{1, 3}},
		{"first copy not kept", upstream.Changes{Kept: kept("m2", "m3", "m4", "m5", "m6")}, state("s2", 5), []string{"m2", "m3", "m4", "m5", "m6"}, []int{1, 3}},
		{"expunges and new", upstream.Changes{Added: added(entry("m7", "b"), entry("m9", "d")), Kept: kept("m1", "m3", "m4", "m5")}, state("s2", 6), []string{"m1", "m3", "m4", "m5", "m7", "m9"}, []int{4, 5}},
		{"removed and kept", upstream.Changes{Removed: []upstream.ID{"m2"}, Kept: kept("m1", "m2", "m3", "m4", "m5")}, state("s2", 4), []string{"m1", "m3", "m4", "m5"}, nil},
		{"removed and listed again", upstream.Changes{Removed: []upstream.ID{"m4"}, Added: added(entry("m4", "c"))}, state("s2", 6), []string{"m1", "m2", "m3", "m5", "m6", "m4"}, []int{5}},
		{"count short of the mailbox's", upstream.Changes{Added: added(entry("m7", "d"))}, state("s2", 8), nil, nil},
		{"a removal the count does not show", upstream.Changes{Kept: kept("m1", "m2", "m3", "m4", "m5")}, state("s2", 6), nil, nil},
		{"a removed ID the last listing lacks", upstream.Changes{Removed: []upstream.ID{"m0", "m1"}}, state("s2", 5), nil, nil},
		{"a new ID already listed", upstream.Changes{Added: added(entry("m3", "d"))}, state("s2", 7), nil, nil},
		{"a new ID twice", upstream.Changes{Added: added(entry("m7", "d"), entry("m7", "e"))}, state("s2", 8), nil, nil},
		{"a new message without ID", upstream.Changes{Added: added(entry("", "d"))}, state("s2", 7), nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap, changed, why := mergeChanges(last, tc.ch, tc.state, true)
			if tc.want == nil {
				if snap != nil {
					t.Fatalf("merged %d messages; want the changes refused", len(snap.entries))
				}
				return
			}
			if snap == nil {
				t.Fatalf("refused: %s", why)
			}
			var ids []string
			for _, e := range snap.entries {
				ids = append(ids, string(e.ID))
			}
			if !slices.Equal(ids, tc.want) {
				t.Fatalf("IDs %v, want %v", ids, tc.want)
			}
			byID := map[upstream.ID]upstream.Entry{}
			for _, e := range append(slices.Clone(old), tc.ch.Added...) {
				byID[e.ID] = e
			}
			var merged []upstream.Entry
			for _, e := range snap.entries {
				merged = append(merged, byID[e.ID])
			}
			if want := identities(merged); !slices.Equal(snap.ids, want) {
				t.Errorf("identities\n%v\nwant\n%v", snap.ids, want)
			}
			if !slices.Equal(changed, tc.changed) {
				t.Errorf("changed %v, want %v", changed, tc.changed)
			}
			for i, e := range snap.entries {
				if !slices.Contains(changed, i) && snap.uidls[i] != e.UIDL {
					t.Errorf("message %s kept UIDL %q, want %q", e.ID, snap.uidls[i], e.UIDL)
				}
			}
			if snap.state != tc.state || len(snap.uidls) != len(snap.entries) || len(snap.hidden) != len(snap.entries) {
				t.Errorf("state %+v, %d UIDLs, %d hidden for %d messages", snap.state, len(snap.uidls), len(snap.hidden), len(snap.entries))
			}
		})
	}
}
