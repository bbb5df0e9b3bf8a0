package redisstate

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/redistest"
	"github.com/pop3gw/gateway/internal/testkit/statetest"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/proxy"
)

func TestUIDLStore(t *testing.T) {
	addr := redistest.Start(t)
	n := 0
	statetest.Run(t, func(t *testing.T) proxy.StateStore {
		// One Redis; each subtest its own prefix, so it starts empty.
		n++
		s, err := New(context.Background(), Options{Addr: addr, KeyPrefix: fmt.Sprintf("t%d:", n)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// Two replicas agree on UIDLs and on what is hidden, and a replica
// started later finds both.
func TestUIDLStoreSharedByReplicas(t *testing.T) {
	addr := redistest.Start(t)
	a := replica(t, addr, 0, nil)
	b := replica(t, addr, 0, nil)
	statetest.Assign(t, a, "md", []string{"x", "y"}, []string{"ux", "uy"})
	if err := a.Hide(context.Background(), "md", []string{"y"}); err != nil {
		t.Fatal(err)
	}
	uidls, hidden := statetest.Assign(t, b, "md", []string{"y", "x", "z"}, []string{"1", "2", "ux"})
	if want := []string{"uy", "ux", proxy.UIDLVariant("ux", 1)}; !slices.Equal(uidls, want) || !slices.Equal(hidden, []bool{true, false, false}) {
		t.Fatalf("other replica: %v %v, want %v [true false false]", uidls, hidden, want)
	}
	c := replica(t, addr, 0, nil)
	if uidls, _ := statetest.Assign(t, c, "md", []string{"z"}, []string{"9"}); uidls[0] != proxy.UIDLVariant("ux", 1) {
		t.Fatalf("later replica: %v", uidls)
	}
}

// A Redis that keeps no append-only file would forget UIDLs at a restart:
// the operator is told; one that keeps it is not warned about.
func TestCheckPersistence(t *testing.T) {
	addr := redistest.Start(t)
	var buf testenv.Buffer
	s := replica(t, addr, 0, &buf)
	s.CheckPersistence(context.Background())
	if !strings.Contains(buf.String(), "appendonly off") {
		t.Fatalf("no warning with appendonly no:\n%s", buf.String())
	}
	if err := raw(t, addr).ConfigSet(context.Background(), "appendonly", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	buf = testenv.Buffer{}
	s.CheckPersistence(context.Background())
	if strings.Contains(buf.String(), "appendonly") {
		t.Fatalf("warning with appendonly yes:\n%s", buf.String())
	}
}

// The generation moves with every write to a maildrop's UIDLs or hidden
// set, by any replica, and with nothing else: not with a listing of
// messages whose UIDLs are recorded, nor with the journal, nor with
// another maildrop's writes. It starts at a random value.
func TestGeneration(t *testing.T) {
	addr := redistest.Start(t)
	a := replica(t, addr, 0, nil)
	b := replica(t, addr, 0, nil)
	ctx := context.Background()
	gen := func() string {
		t.Helper()
		g, err := b.Generation(ctx, "md")
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	moved := func(what string, before string, want bool) string {
		t.Helper()
		now := gen()
		if (now != before) != want {
			t.Fatalf("%s: generation %s, then %s; moved: want %v", what, before, now, want)
		}
		return now
	}
	g := gen()
	statetest.Assign(t, a, "md", []string{"x", "y"}, []string{"ux", "uy"})
	g = moved("UIDLs recorded", g, true)
	// A counter starts at a random value, not where a Redis that lost its
	// data would count up to again.
	if n, err := strconv.ParseUint(g, 10, 64); err != nil || n < 1<<32 {
		t.Fatalf("first generation %q, want a random start", g)
	}
	statetest.Assign(t, a, "md", []string{"x", "y"}, []string{"ux", "uy"})
	g = moved("UIDLs asked again", g, false)
	if err := a.SetJournal(ctx, "md", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	g = moved("journal written", g, false)
	statetest.Assign(t, a, "other", []string{"x"}, []string{"ux"})
	g = moved("another maildrop written", g, false)
	if err := a.Hide(ctx, "md", []string{"y"}); err != nil {
		t.Fatal(err)
	}
	g = moved("message hidden", g, true)
	if err := a.Adopt(ctx, "md", []string{"x2"}, []string{"x"}); err != nil {
		t.Fatal(err)
	}
	g = moved("UIDL adopted", g, true)
	if err := a.Adopt(ctx, "md", []string{"x3"}, []string{"gone"}); err != nil {
		t.Fatal(err)
	}
	moved("nothing to adopt", g, false)
}
