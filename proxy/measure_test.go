package proxy

import (
	"testing"

	"github.com/pop3gw/gateway/upstream"
)

// Sizes measured at login go with the remembered listing, into a copy of
// it, and only while that listing is the one remembered.
func TestMeasuredSizesRemembered(t *testing.T) {
	s := newSnapshots(nil)
	snap := &snapshot{
		state:   upstream.Mailbox{Epoch: "e", State: "s1", Messages: 2},
		entries: []listedEntry{{ID: "a", Size: upstream.SizeUnknown}, {ID: "b", Size: 7}},
		ids:     []string{"ia", "ib"},
	}
	s.put("md", snap)
	s.sized("md", snap, map[upstream.ID]int64{"a": 42, "b": 9})
	got := s.last("md")
	if got == snap || got.entries[0].Size != 42 || got.entries[1].Size != 7 {
		t.Fatalf("remembered entries %+v, want a copy with a's size 42 and b's 7 (known already)", got.entries)
	}
	if snap.entries[0].Size != upstream.SizeUnknown {
		t.Fatal("the remembered listing was changed in place")
	}
	s.sized("md", snap, map[upstream.ID]int64{"a": 1})
	if s.last("md").entries[0].Size != 42 {
		t.Fatal("sizes for a listing no longer remembered were recorded")
	}
}
