package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/pop3"
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

// A listing merged from the last one with messages appended shares its
// arrays, but never where another listing merged from the same one
// writes: two merges from one listing, as two logins racing would make,
// each keep their own new message, the last listing is unchanged, and
// what each is counted to weigh is what counting it whole gives.
func TestMergeAppendsInPlaceOnce(t *testing.T) {
	arrived := time.Unix(1_700_000_000, 0)
	entry := func(id, msgid string) upstream.Entry {
		return upstream.Entry{ID: upstream.ID(id), UIDL: "u-" + id, Size: 100, MessageID: msgid, InternalDate: arrived}
	}
	var old []upstream.Entry
	for i := range 40 {
		old = append(old, entry("m"+strconv.Itoa(i), "msg"+strconv.Itoa(i%7)))
	}
	state := func(s string, n int) upstream.Mailbox {
		return upstream.Mailbox{Name: "INBOX", Epoch: "e7", State: s, Messages: n}
	}
	s := newSnapshots(nil)
	// Arrays with room to append in place.
	last := &snapshot{state: state("s1", 40), entries: grown(listedEntries(old), 41), ids: grown(identities(old), 41), ext: newExtent(40)}
	last.uidls = grown(make([]string, len(old)), 41)
	last.hidden = grown(make([]bool, len(old)), 41)
	for i, e := range old {
		last.uidls[i] = e.UIDL
	}
	s.put("md", last)
	merge := func(id, msgid string) *snapshot {
		t.Helper()
		snap, changed, why := mergeChanges(last, upstream.Changes{Added: []upstream.Entry{entry(id, msgid)}}, state("s-"+id, 41), true)
		if snap == nil {
			t.Fatal(why)
		}
		for _, i := range changed {
			snap.uidls[i] = "u-" + id
		}
		s.put("md-"+id, snap)
		if want := listingBytes("md-"+id, snap); snap.bytes != want {
			t.Errorf("merged listing with %s counted %d bytes, want %d", id, snap.bytes, want)
		}
		return snap
	}
	first := merge("n1", "msg3")   // a copy of messages listed: ranked after them
	second := merge("n2", "other") // from the same listing again
	// first has the room to grow into now: a third merge from last must
	// not use it either.
	third := merge("n3", "msg3")
	for _, c := range []struct {
		snap *snapshot
		id   string
	}{{first, "n1"}, {second, "n2"}, {third, "n3"}} {
		if len(c.snap.entries) != 41 || c.snap.entries[40].ID != upstream.ID(c.id) || c.snap.uidls[40] != "u-"+c.id {
			t.Errorf("the listing merged with %s ends with %+v, UIDL %q", c.id, c.snap.entries[len(c.snap.entries)-1], c.snap.uidls[len(c.snap.uidls)-1])
		}
		if !slices.Equal(c.snap.ids[:40], last.ids) {
			t.Errorf("the listing merged with %s changed the identities of the messages listed before", c.id)
		}
	}
	if first.ids[40] != third.ids[40] || first.ids[40] == second.ids[40] {
		t.Errorf("identities of the new copies: %q, %q, %q", first.ids[40], second.ids[40], third.ids[40])
	}
	if len(last.entries) != 40 || last.entries[39].ID != "m39" || s.last("md") != last {
		t.Error("the last listing changed")
	}
	if &first.entries[0] != &last.entries[0] {
		t.Error("the first listing appended to copied the last one")
	}
	// The first merge extended last's arrays: the next one from first
	// does too, and the listings before it keep what they had.
	next, _, why := mergeChanges(first, upstream.Changes{Added: []upstream.Entry{entry("n4", "msg4")}}, state("s-n4", 42), true)
	if next == nil {
		t.Fatal(why)
	}
	if &next.entries[0] != &first.entries[0] {
		t.Error("appending to the newest listing copied it")
	}
	if first.entries[40].ID != "n1" || len(first.entries) != 41 {
		t.Errorf("the listing appended to changed: %d messages, the last %s", len(first.entries), first.entries[len(first.entries)-1].ID)
	}
}

// A login that lists every message as the store lists them reads the POP3
// listing remembered with the maildrop's instead of building its own: the
// one made when the mailbox was listed, grown in place when messages
// came. A session that leaves a message out (one hidden by a delete that
// keeps mail) builds its own, and so does every login after.
func TestLoginsShareThePOP3Listing(t *testing.T) {
	e := newEnv(t, envOptions{onDelete: upstream.DeleteKeep})
	msg := func(n int) []byte {
		return fmt.Appendf(nil, "Message-ID: <%d@example.com>\r\nSubject: %d\r\n\r\nbody %d\r\n", n, n, n)
	}
	if err := e.mem.AppendAt(alice, "INBOX", time.Unix(1_700_000_000, 0), msg(1), msg(2), msg(3)); err != nil {
		t.Fatal(err)
	}
	remembered := func() *snapshot {
		t.Helper()
		e.gw.snaps.mu.Lock()
		defer e.gw.snaps.mu.Unlock()
		if e.gw.snaps.lru.Len() != 1 {
			t.Fatalf("%d listings remembered, want 1", e.gw.snaps.lru.Len())
		}
		_, snap, _ := e.gw.snaps.lru.GetOldest()
		return snap
	}
	// session logs in and returns the listing it was handed, after
	// deleting the messages at the indices given.
	session := func(dele ...int) []pop3.Message {
		t.Helper()
		md, err := e.gw.Login(context.Background(), &pop3.LoginInfo{
			Username: "alice", Key: "alice", Password: localPassword, Method: "USER",
			Remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1110},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer md.Close()
		msgs := md.Messages()
		if len(dele) > 0 {
			if _, err := md.Commit(context.Background(), dele); err != nil {
				t.Fatal(err)
			}
		}
		return msgs
	}
	sameArray := func(a, b []pop3.Message) bool { return len(a) > 0 && len(b) > 0 && &a[0] == &b[0] }

	first := session()
	if snap := remembered(); len(first) != 3 || !sameArray(first, snap.listing) {
		t.Fatalf("first login: %d messages, remembered listing %v; want the 3 read from it", len(first), snap.listing)
	}
	if again := session(); !sameArray(again, first) || len(again) != 3 {
		t.Error("a login to the unchanged mailbox built a listing of its own")
	}
	if err := e.mem.AppendAt(alice, "INBOX", time.Unix(1_700_000_100, 0), msg(4)); err != nil {
		t.Fatal(err)
	}
	grown := session(1) // and deletes message 2, which stays upstream
	if len(grown) != 4 || !sameArray(grown, first) {
		t.Fatalf("login after a new message: %d messages, in the first listing's array: %v; want 4, true", len(grown), sameArray(grown, first))
	}
	if !slices.Equal(grown[:3], first) || grown[3].UIDL == "" || grown[3].UIDL == first[2].UIDL {
		t.Errorf("the grown listing %v does not extend %v", grown, first)
	}
	if len(first) != 3 {
		t.Error("the listing handed out before changed")
	}
	hidden := session()
	want := []pop3.Message{grown[0], grown[2], grown[3]}
	if !slices.Equal(hidden, want) {
		t.Errorf("after a delete that keeps mail: %v, want %v", hidden, want)
	}
	if sameArray(hidden, grown) || remembered().listing != nil {
		t.Error("a listing without the hidden message shares the remembered one's array")
	}
}

// A listing whose POP3 listing would take it past the bound on one
// listing is remembered without the POP3 listing, rather than not at all:
// the next login builds its own, but lists only what changed.
func TestListingRememberedWithoutPOP3ListingOverBound(t *testing.T) {
	var entries []upstream.Entry
	for i := range 1000 {
		entries = append(entries, upstream.Entry{ID: upstream.ID(strconv.Itoa(i + 1)), UIDL: fmt.Sprintf("%016x", i+1), Size: 100})
	}
	snap := &snapshot{
		state:   upstream.Mailbox{Name: "INBOX", Epoch: "e1", State: "s1", Messages: len(entries)},
		entries: listedEntries(entries), ids: identities(entries), ext: newExtent(len(entries)),
		uidls: make([]string, len(entries)), hidden: make([]bool, len(entries)),
	}
	for i, e := range entries {
		snap.uidls[i] = e.UIDL
	}
	snap.listing = pop3Listing(snap.entries, snap.uidls, snap.hidden)
	with := listingBytes("md", snap)
	without := with - pop3Bytes(snap)
	// The bound on one listing is a quarter of the budget: room for the
	// listing without its POP3 listing only.
	s := newSnapshots(cache.NewBudget(4 * (without + pop3Bytes(snap)/2)))
	s.put("md", snap)
	got := s.last("md")
	if got != snap {
		t.Fatal("the listing was not remembered")
	}
	if got.listing != nil || got.bytes != without || s.bytes != without {
		t.Errorf("remembered with a POP3 listing of %d messages, %d bytes counted (snapshots: %d); want none, %d", len(got.listing), got.bytes, s.bytes, without)
	}
	// With room for both, both are kept.
	snap2 := *snap
	snap2.listing = pop3Listing(snap.entries, snap.uidls, snap.hidden)
	s = newSnapshots(cache.NewBudget(4 * with))
	s.put("md", &snap2)
	if got := s.last("md"); got == nil || len(got.listing) != len(entries) || got.bytes != with {
		t.Errorf("with room for it: remembered %v", got != nil)
	}
}

// A UIDL the state store gave back as the store suggested it is one
// string in memory, and a listing counts it once.
func TestListingCountsSharedUIDLsOnce(t *testing.T) {
	entries := listedEntries([]upstream.Entry{{ID: "1", UIDL: "00000001000000aa", Size: 10}, {ID: "2", UIDL: "00000002000000aa", Size: 20}})
	snap := &snapshot{entries: entries, ids: []string{"a", "b"}, hidden: make([]bool, 2)}
	snap.uidls = []string{entries[0].UIDL, entries[1].UIDL}
	shared := messagesBytes(snap, 0)
	snap.uidls = []string{strings.Clone(entries[0].UIDL), "another UIDL"}
	if own := messagesBytes(snap, 0); own != shared+int64(len(entries[0].UIDL)+len("another UIDL")) {
		t.Errorf("UIDLs of their own weigh %d bytes, the store's %d: want the difference to be their length", own, shared)
	}
}
