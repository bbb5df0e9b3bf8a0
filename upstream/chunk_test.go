package upstream

import (
	"slices"
	"testing"

	"github.com/emersion/go-imap/v2"
)

func TestChunkUIDSet(t *testing.T) {
	var scattered imap.UIDSet
	for uid := imap.UID(2); uid <= 40000; uid += 2 {
		scattered.AddNum(uid)
	}
	var unsorted imap.UIDSet
	unsorted.AddNum(9, 3, 4, 5, 1, 10)
	for _, tt := range []struct {
		name   string
		set    imap.UIDSet
		chunks int // 0: any number above 1
	}{
		{"one", imap.UIDSetNum(7), 1},
		{"one range", imap.UIDSet{{Start: 1, Stop: 4_000_000}}, 1},
		{"unsorted", unsorted, 1},
		{"overlapping ranges", imap.UIDSet{{Start: 5, Stop: 9}, {Start: 1, Stop: 6}, {Start: 10, Stop: 12}}, 1},
		{"20,000 scattered UIDs", scattered, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			chunks := chunkUIDSet(tt.set)
			if tt.chunks > 0 && len(chunks) != tt.chunks || tt.chunks == 0 && len(chunks) < 2 {
				t.Fatalf("%d chunks: %v", len(chunks), chunks)
			}
			var union imap.UIDSet
			for _, c := range chunks {
				if n := len(c.String()); n > maxSetOctets {
					t.Errorf("a chunk of %d octets, over %d", n, maxSetOctets)
				}
				union = append(union, c...)
			}
			want, _ := tt.set.Nums()
			got, _ := union.Nums()
			slices.Sort(want)
			slices.Sort(got)
			if want = slices.Compact(want); !slices.Equal(got, want) {
				t.Fatalf("chunks hold %d UIDs, want the %d of the set", len(got), len(want))
			}
		})
	}
	if got := chunkUIDSet(unsorted)[0].String(); got != "1,3:5,9:10" {
		t.Errorf("unsorted set sent as %q, want 1,3:5,9:10", got)
	}
}
