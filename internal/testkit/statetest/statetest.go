// Package statetest checks that a proxy.StateStore keeps the promises
// the proxy relies on. Each store's tests call Run with a way to open it.
package statetest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/proxy"
)

// Run checks the store open returns; open is called once per subtest and
// must return an empty store.
func Run(t *testing.T, open func(t *testing.T) proxy.StateStore) {
	t.Run("FirstUIDLSticks", func(t *testing.T) { firstUIDLSticks(t, open(t)) })
	t.Run("UIDLsUnique", func(t *testing.T) { uidlsUnique(t, open(t)) })
	t.Run("Hide", func(t *testing.T) { hide(t, open(t)) })
	t.Run("Adopt", func(t *testing.T) { adopt(t, open(t)) })
	t.Run("Journal", func(t *testing.T) { journal(t, open(t)) })
	t.Run("Concurrent", func(t *testing.T) { concurrent(t, open(t)) })
	t.Run("Large", func(t *testing.T) { large(t, open(t)) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// Assign is s.Assign that fails t on error.
func Assign(t *testing.T, s proxy.StateStore, maildrop string, ids, proposed []string) ([]string, []bool) {
	t.Helper()
	uidls, hidden, err := s.Assign(ctx(t), maildrop, ids, proposed)
	if err != nil {
		t.Fatalf("Assign: %v", err)
	}
	if len(uidls) != len(ids) || len(hidden) != len(ids) {
		t.Fatalf("Assign of %d ids returned %d UIDLs and %d hidden flags", len(ids), len(uidls), len(hidden))
	}
	return uidls, hidden
}

func firstUIDLSticks(t *testing.T, s proxy.StateStore) {
	got, hidden := Assign(t, s, "md", []string{"a", "b"}, []string{"ua", "ub"})
	if !slices.Equal(got, []string{"ua", "ub"}) || slices.Contains(hidden, true) {
		t.Fatalf("first Assign = %v %v, want the proposed UIDLs, none hidden", got, hidden)
	}
	// Later proposals (a new UIDVALIDITY) do not replace them.
	got, _ = Assign(t, s, "md", []string{"b", "c", "a"}, []string{"xb", "xc", "xa"})
	if want := []string{"ub", "xc", "ua"}; !slices.Equal(got, want) {
		t.Fatalf("second Assign = %v, want %v", got, want)
	}
	// Another maildrop is another namespace.
	got, _ = Assign(t, s, "other", []string{"a"}, []string{"oa"})
	if got[0] != "oa" {
		t.Fatalf("Assign in another maildrop = %v, want [oa]", got)
	}
}

func uidlsUnique(t *testing.T, s proxy.StateStore) {
	Assign(t, s, "md", []string{"a"}, []string{"u"})
	got, _ := Assign(t, s, "md", []string{"b", "c"}, []string{"u", "u-1"})
	want := []string{proxy.UIDLVariant("u", 1), proxy.UIDLVariant("u-1", 1)}
	if !slices.Equal(got, want) {
		t.Fatalf("Assign of taken UIDLs = %v, want %v", got, want)
	}
	got, _ = Assign(t, s, "md", []string{"d"}, []string{"u"})
	if want := proxy.UIDLVariant("u", 2); got[0] != want {
		t.Fatalf("third claim of u = %v, want %s", got, want)
	}
}

func hide(t *testing.T, s proxy.StateStore) {
	Assign(t, s, "md", []string{"a", "b"}, []string{"ua", "ub"})
	if err := s.Hide(ctx(t), "md", []string{"b", "never-listed"}); err != nil {
		t.Fatal(err)
	}
	_, hidden := Assign(t, s, "md", []string{"a", "b", "never-listed"}, []string{"1", "2", "3"})
	if !slices.Equal(hidden, []bool{false, true, true}) {
		t.Fatalf("hidden = %v, want [false true true]", hidden)
	}
	if _, hidden := Assign(t, s, "other", []string{"b"}, []string{"1"}); hidden[0] {
		t.Fatal("hidden in another maildrop")
	}
}

// A message first known by one identity (a digest) keeps its UIDL and
// hidden mark under another (a store id), once.
func adopt(t *testing.T, s proxy.StateStore) {
	Assign(t, s, "md", []string{"a", "b", "known"}, []string{"ua", "ub", "uk"})
	if err := s.Hide(ctx(t), "md", []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Adopt(ctx(t), "md", []string{"x", "y", "z", "known", "n"}, []string{"a", "b", "", "a", "never"}); err != nil {
		t.Fatal(err)
	}
	got, hidden := Assign(t, s, "md", []string{"x", "y", "z", "known", "n"}, []string{"px", "py", "pz", "pk", "pn"})
	if want := []string{"ua", "ub", "pz", "uk", "pn"}; !slices.Equal(got, want) {
		t.Fatalf("after Adopt, Assign = %v, want %v", got, want)
	}
	if want := []bool{false, true, false, false, false}; !slices.Equal(hidden, want) {
		t.Fatalf("after Adopt, hidden = %v, want %v", hidden, want)
	}
	// A UIDL is adopted once: another identity claiming "a" gets a UIDL
	// of its own, while "a" itself keeps its record.
	if err := s.Adopt(ctx(t), "md", []string{"w"}, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	got, _ = Assign(t, s, "md", []string{"w", "a"}, []string{"ua", "pa"})
	if want := []string{proxy.UIDLVariant("ua", 1), "ua"}; !slices.Equal(got, want) {
		t.Fatalf("second adoption of a UIDL: Assign = %v, want %v", got, want)
	}
	// Another maildrop adopts nothing of this one.
	if err := s.Adopt(ctx(t), "other", []string{"x"}, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := Assign(t, s, "other", []string{"x"}, []string{"ox"}); got[0] != "ox" {
		t.Fatalf("Adopt crossed maildrops: %v", got)
	}
}

func journal(t *testing.T, s proxy.StateStore) {
	if j, err := s.Journal(ctx(t), "md"); err != nil || j != nil {
		t.Fatalf("empty journal = %q, %v", j, err)
	}
	for _, want := range [][]byte{[]byte(`{"uids":[1,2]}`), []byte(`{"uids":[3]}`)} {
		if err := s.SetJournal(ctx(t), "md", want); err != nil {
			t.Fatal(err)
		}
		if j, err := s.Journal(ctx(t), "md"); err != nil || !bytes.Equal(j, want) {
			t.Fatalf("Journal = %q, %v; want %q", j, err, want)
		}
	}
	if j, _ := s.Journal(ctx(t), "other"); j != nil {
		t.Fatalf("another maildrop's journal = %q", j)
	}
	if err := s.SetJournal(ctx(t), "md", nil); err != nil {
		t.Fatal(err)
	}
	if j, err := s.Journal(ctx(t), "md"); err != nil || j != nil {
		t.Fatalf("cleared journal = %q, %v", j, err)
	}
}

// Replicas listing the same new messages at once agree on their UIDLs.
func concurrent(t *testing.T, s proxy.StateStore) {
	ids := []string{"a", "b", "c"}
	var wg sync.WaitGroup
	results := make([][]string, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			proposed := []string{fmt.Sprint("a", i), fmt.Sprint("b", i), fmt.Sprint("c", i)}
			uidls, _, err := s.Assign(context.Background(), "md", ids, proposed)
			if err != nil {
				t.Error(err)
			}
			results[i] = uidls
		}()
	}
	wg.Wait()
	for _, r := range results[1:] {
		if !slices.Equal(r, results[0]) {
			t.Fatalf("concurrent Assign gave %v and %v", results[0], r)
		}
	}
}

// A mailbox of many messages is recorded in one call.
func large(t *testing.T, s proxy.StateStore) {
	const n = 5000
	ids := make([]string, n)
	proposed := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("d:%032x:0", i)
		proposed[i] = fmt.Sprintf("%08x%08x", i+1, 7)
	}
	got, _ := Assign(t, s, "md", ids, proposed)
	if !slices.Equal(got, proposed) {
		t.Fatal("Assign of a large mailbox changed UIDLs")
	}
	got, _ = Assign(t, s, "md", ids, make([]string, n))
	if !slices.Equal(got, proposed) {
		t.Fatal("second Assign of a large mailbox changed UIDLs")
	}
}
