package proxy

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/pop3gw/gateway/upstream"
)

// BenchmarkMergeChanges merges one new message, or one expunge as the
// IMAP store reports it (a Kept predicate), into a remembered listing of
// 200,000 messages; BenchmarkMergeChanges/full is what listing them all
// costs the gateway once the store has answered (identities and the
// listing), the reference to read the others against.
func BenchmarkMergeChanges(b *testing.B) {
	const n = 200_000
	at := time.Unix(1_700_000_000, 0)
	entries := make([]upstream.Entry, n)
	for i := range entries {
		uid := uint32(i + 1)
		entries[i] = upstream.Entry{ID: upstream.ID(strconv.Itoa(i + 1)), UIDL: upstream.DovecotUIDL(7, uid), Size: 2048, MessageID: fmt.Sprintf("<%d@example.com>", i), InternalDate: at}
	}
	state := upstream.Mailbox{Name: "INBOX", Epoch: "7", State: "s1", Messages: n}
	last := &snapshot{state: state, entries: listedEntries(entries), ids: identities(entries)}
	last.uidls = make([]string, n)
	last.hidden = make([]bool, n)
	for i, e := range entries {
		last.uidls[i] = e.UIDL
	}
	added := upstream.Entry{ID: upstream.ID(strconv.Itoa(n + 1)), UIDL: upstream.DovecotUIDL(7, n+1), Size: 2048, MessageID: "<new@example.com>", InternalDate: at}
	b.Run("full", func(b *testing.B) {
		for b.Loop() {
			_ = &snapshot{state: state, entries: listedEntries(entries), ids: identities(entries)}
		}
	})
	b.Run("one-new", func(b *testing.B) {
		ch := upstream.Changes{Added: []upstream.Entry{added}}
		next := upstream.Mailbox{Name: "INBOX", Epoch: "7", State: "s2", Messages: n + 1}
		for b.Loop() {
			if snap, _, why := mergeChanges(last, ch, next, true); snap == nil {
				b.Fatal(why)
			}
		}
	})
	b.Run("one-expunge", func(b *testing.B) {
		gone := upstream.ID(strconv.Itoa(n / 2))
		ch := upstream.Changes{Kept: func(id upstream.ID) bool { return id != gone }}
		next := upstream.Mailbox{Name: "INBOX", Epoch: "7", State: "s2", Messages: n - 1}
		for b.Loop() {
			if snap, _, why := mergeChanges(last, ch, next, true); snap == nil {
				b.Fatal(why)
			}
		}
	})
}
