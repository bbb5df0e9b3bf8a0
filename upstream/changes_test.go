package upstream_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/upstream"
)

// The IMAP store lists its changes since an earlier state as IDs the
// gateway can merge, and refuses an answer of the server's that breaks
// IMAP's promises (RFC 9051 §2.3.1.1: UIDs ascend and are never reused),
// so that the gateway lists every message instead.
func TestChanges(t *testing.T) {
	// The earlier state: UIDVALIDITY 7, UIDNEXT 5, 4 messages (UIDs 1-4).
	since := upstream.Mailbox{Name: "INBOX", Epoch: "7", State: "5/4", Messages: 4}
	for _, tc := range []struct {
		name      string
		validity  int
		next      int
		exists    int
		fetch     []int  // UIDs the server lists for UID FETCH 5:*
		search    string // its answer to UID SEARCH of the UIDs below 5
		added     []upstream.ID
		kept      []upstream.ID // nil: none went
		refused   bool
		searchHit bool
	}{
		{name: "unchanged", validity: 7, next: 5, exists: 4},
		{name: "two new", validity: 7, next: 10, exists: 6, fetch: []int{5, 9}, added: []upstream.ID{"5", "9"}},
		{name: "an expunge and a new message", validity: 7, next: 7, exists: 4, fetch: []int{6}, search: "1 3 4",
			added: []upstream.ID{"6"}, kept: []upstream.ID{"1", "3", "4"}, searchHit: true},
		{name: "all expunged", validity: 7, next: 5, exists: 0, search: "", kept: []upstream.ID{}, searchHit: true},
		{name: "the server's last message below the old UIDNEXT", validity: 7, next: 6, exists: 3, fetch: []int{4}, search: "1 2 4",
			kept: []upstream.ID{"1", "2", "4"}, searchHit: true},
		{name: "a new UID at the new UIDNEXT", validity: 7, next: 10, exists: 5, fetch: []int{10}, refused: true},
		{name: "a kept UID at the old UIDNEXT", validity: 7, next: 7, exists: 4, fetch: []int{6}, search: "1 2 5", refused: true},
		{name: "counts that differ from EXISTS", validity: 7, next: 7, exists: 4, fetch: []int{6}, search: "1 2", refused: true},
		{name: "another UIDVALIDITY", validity: 8, next: 5, exists: 4, refused: true},
		{name: "a lower UIDNEXT", validity: 7, next: 4, exists: 4, refused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			searched := false
			addr := fakeServer(t, func(cmd string) []string {
				switch {
				case strings.HasPrefix(cmd, "SELECT"):
					return []string{fmt.Sprintf("* %d EXISTS", tc.exists), fmt.Sprintf("* OK [UIDVALIDITY %d] x", tc.validity), fmt.Sprintf("* OK [UIDNEXT %d] x", tc.next)}
				case strings.HasPrefix(cmd, "UID FETCH"):
					var out []string
					for i, uid := range tc.fetch {
						out = append(out, fmt.Sprintf("* %d FETCH (UID %d RFC822.SIZE 10 FLAGS () INTERNALDATE \"01-Jan-2026 00:00:00 +0000\")", tc.exists-len(tc.fetch)+i+1, uid))
					}
					return out
				case strings.HasPrefix(cmd, "UID SEARCH"):
					searched = true
					return []string{strings.TrimSpace("* SEARCH " + tc.search)}
				}
				return nil
			})
			s := dial(t, plain(addr))
			if _, err := s.Select(testCtx(t), "INBOX"); err != nil {
				t.Fatal(err)
			}
			ch, err := s.Changes(testCtx(t), since)
			if tc.refused {
				if err == nil {
					t.Fatalf("Changes = %+v; want it refused", ch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var added []upstream.ID
			for _, e := range ch.Added {
				added = append(added, e.ID)
				if want := upstream.DovecotUIDL(7, uidOf(e.ID)); e.UIDL != want {
					t.Errorf("new message %s suggests UIDL %q, want %q", e.ID, e.UIDL, want)
				}
			}
			if !slices.Equal(added, tc.added) {
				t.Errorf("added %v, want %v", added, tc.added)
			}
			if ch.Removed != nil {
				t.Errorf("removed %v; the IMAP store tells what is kept", ch.Removed)
			}
			if (ch.Kept == nil) != (tc.kept == nil) {
				t.Fatalf("Kept set: %v; want %v", ch.Kept != nil, tc.kept != nil)
			}
			if ch.Kept != nil {
				var kept []upstream.ID
				for _, id := range []upstream.ID{"1", "2", "3", "4", "01", "+1", "x", ""} {
					if ch.Kept(id) {
						kept = append(kept, id)
					}
				}
				if !slices.Equal(kept, tc.kept) && len(kept)+len(tc.kept) > 0 {
					t.Errorf("kept %v, want %v", kept, tc.kept)
				}
			}
			if searched != tc.searchHit {
				t.Errorf("UID SEARCH sent: %v, want %v", searched, tc.searchHit)
			}
		})
	}
}
