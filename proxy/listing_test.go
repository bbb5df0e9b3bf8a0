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
// every message the identity listing them all gives.
func TestMergeChanges(t *testing.T) {
	arrived := time.Unix(1_700_000_000, 0)
	entry := func(uid uint32, id string) upstream.Entry {
		return upstream.Entry{UID: uid, Size: 100, MessageID: id, InternalDate: arrived}
	}
	// UIDs 1 to 6; "a" three times, "b" twice.
	old := []upstream.Entry{entry(1, "a"), entry(2, "b"), entry(3, "a"), entry(4, "c"), entry(5, "a"), entry(6, "b")}
	state := func(next, n uint32) upstream.Mailbox {
		return upstream.Mailbox{Name: "INBOX", UIDValidity: 7, UIDNext: next, Messages: n}
	}
	last := &snapshot{state: state(7, 6), entries: listedEntries(old), ids: identities(old)}
	last.uidls = make([]string, len(old))
	last.hidden = make([]bool, len(old))
	for i, e := range old {
		last.uidls[i] = uidl(7, e.UID)
	}
	ranges := func(rs ...uint32) []upstream.UIDRange {
		var out []upstream.UIDRange
		for i := 0; i < len(rs); i += 2 {
			out = append(out, upstream.UIDRange{First: rs[i], Last: rs[i+1]})
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		ch      upstream.Changes
		state   upstream.Mailbox
		want    []uint32 // UIDs merged; nil: refused
		changed []int
	}{
		{"one new", upstream.Changes{Added: []upstream.Entry{entry(8, "a")}}, state(9, 7), []uint32{1, 2, 3, 4, 5, 6, 8}, []int{6}},
		{"first copy expunged", upstream.Changes{Present: ranges(2, 6)}, state(7, 5), []uint32{2, 3, 4, 5, 6}, []int{1, 3}},
		{"expunges and new", upstream.Changes{Added: []upstream.Entry{entry(7, "b"), entry(9, "d")}, Present: ranges(1, 1, 3, 5)}, state(10, 6), []uint32{1, 3, 4, 5, 7, 9}, []int{4, 5}},
		{"count short of EXISTS", upstream.Changes{Added: []upstream.Entry{entry(7, "d")}}, state(9, 8), nil, nil},
		{"expunge the count does not show", upstream.Changes{Present: ranges(1, 5)}, state(7, 6), nil, nil},
		{"new UID below the old UIDNEXT", upstream.Changes{Added: []upstream.Entry{entry(6, "d")}}, state(9, 7), nil, nil},
		{"new UID at the new UIDNEXT", upstream.Changes{Added: []upstream.Entry{entry(9, "d")}}, state(9, 7), nil, nil},
		{"new UIDs not increasing", upstream.Changes{Added: []upstream.Entry{entry(8, "d"), entry(7, "e")}}, state(9, 8), nil, nil},
		{"a UID the last listing lacks", upstream.Changes{Present: ranges(0, 0, 2, 6)}, state(7, 6), nil, nil},
		{"a range past the old UIDNEXT", upstream.Changes{Present: ranges(2, 7)}, state(8, 6), nil, nil},
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
			var uids []uint32
			for _, e := range snap.entries {
				uids = append(uids, e.UID)
			}
			if !slices.Equal(uids, tc.want) {
				t.Fatalf("UIDs %v, want %v", uids, tc.want)
			}
			byUID := map[uint32]upstream.Entry{}
			for _, e := range append(slices.Clone(old), tc.ch.Added...) {
				byUID[e.UID] = e
			}
			var merged []upstream.Entry
			for _, e := range snap.entries {
				merged = append(merged, byUID[e.UID])
			}
			if want := identities(merged); !slices.Equal(snap.ids, want) {
				t.Errorf("identities\n%v\nwant\n%v", snap.ids, want)
			}
			if !slices.Equal(changed, tc.changed) {
				t.Errorf("changed %v, want %v", changed, tc.changed)
			}
			for i, e := range snap.entries {
				if !slices.Contains(changed, i) && snap.uidls[i] != uidl(7, e.UID) {
					t.Errorf("message %d kept UIDL %q, want %q", e.UID, snap.uidls[i], uidl(7, e.UID))
				}
			}
			if snap.state != tc.state || len(snap.uidls) != len(snap.entries) || len(snap.hidden) != len(snap.entries) {
				t.Errorf("state %+v, %d UIDLs, %d hidden for %d messages", snap.state, len(snap.uidls), len(snap.hidden), len(snap.entries))
			}
		})
	}
}
