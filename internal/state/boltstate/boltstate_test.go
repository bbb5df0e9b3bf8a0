package boltstate

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/statetest"
	"github.com/pop3gw/gateway/proxy"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStore(t *testing.T) {
	statetest.Run(t, func(t *testing.T) proxy.StateStore {
		s := open(t, t.TempDir())
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// A restart finds what was recorded.
func TestReopen(t *testing.T) {
	dir := t.TempDir() + "/state"
	s := open(t, dir)
	statetest.Assign(t, s, "md", []string{"a", "b"}, []string{"ua", "ub"})
	ctx := context.Background()
	if err := s.Hide(ctx, "md", []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetJournal(ctx, "md", []byte("j")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data directory: %v, %v; want mode 0700", fi, err)
	}

	s = open(t, dir)
	defer s.Close()
	uidls, hidden := statetest.Assign(t, s, "md", []string{"a", "b"}, []string{"xa", "xb"})
	if !slices.Equal(uidls, []string{"ua", "ub"}) || !slices.Equal(hidden, []bool{false, true}) {
		t.Fatalf("after reopening: %v %v", uidls, hidden)
	}
	if j, _ := s.Journal(ctx, "md"); string(j) != "j" {
		t.Fatalf("journal after reopening = %q", j)
	}
}

// A second process cannot open the file while the first has it, rather
// than two gateways giving different UIDLs.
func TestOpenTwice(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second Open: %v", err)
	}
}

// killEnv makes the test binary a child that records UIDLs, says so, and
// waits to be killed.
const killEnv = "BOLTSTATE_KILL_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(killEnv); dir != "" {
		child(dir)
		return
	}
	os.Exit(m.Run())
}

func child(dir string) {
	s, err := Open(dir)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	for i := 0; ; i++ {
		id := fmt.Sprintf("id%d", i)
		uidls, _, err := s.Assign(ctx, "md", []string{id}, []string{"u" + id})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		// Only what Assign returned may have been shown to a client.
		fmt.Println("shown", id, uidls[0])
	}
}

// A process killed with SIGKILL while recording UIDLs loses none it
// returned: bbolt's commit is on disk before Assign returns. (This kills
// a process using the store, not a whole gateway.)
func TestKillDuringWrites(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	shown := map[string]string{}
	sc := bufio.NewScanner(out)
	deadline := time.Now().Add(10 * time.Second)
	for len(shown) < 50 && time.Now().Before(deadline) && sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "shown" {
			t.Fatalf("child: %s", sc.Text())
		}
		shown[f[1]] = f[2]
	}
	cmd.Process.Signal(syscall.SIGKILL)
	// Read on: lines written before the kill were shown too.
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 {
			shown[f[1]] = f[2]
		}
	}
	cmd.Wait()
	if len(shown) < 50 {
		t.Fatalf("the child recorded only %d UIDLs", len(shown))
	}

	s := open(t, dir)
	defer s.Close()
	for id, want := range shown {
		got, _ := statetest.Assign(t, s, "md", []string{id}, []string{"lost"})
		if got[0] != want {
			t.Errorf("%s: UIDL %q after the kill, %q before", id, got[0], want)
		}
	}
}

// Sizes measured for messages listed without one are found again after a
// restart; an identity never measured has none.
func TestSizesSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := open(t, dir)
	if sizes, err := s.Sizes(ctx, "md", []string{"a"}); err != nil || !slices.Equal(sizes, []int64{-1}) {
		t.Fatalf("sizes of a new maildrop: %v, %v", sizes, err)
	}
	if err := s.SetSizes(ctx, "md", []string{"a", "b"}, []int64{0, 150 << 20}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	sizes, err := s.Sizes(ctx, "md", []string{"b", "c", "a"})
	if err != nil || !slices.Equal(sizes, []int64{150 << 20, -1, 0}) {
		t.Fatalf("sizes after reopening: %v, %v", sizes, err)
	}
	if sizes, _ := s.Sizes(ctx, "other", []string{"a"}); sizes[0] != -1 {
		t.Fatal("a size is shared between maildrops")
	}
}
