package leakcheck

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeT records what Check reports instead of failing the test.
type fakeT struct {
	testing.TB
	errors []string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}

func shortWait(t *testing.T) {
	old := wait
	wait = 300 * time.Millisecond
	t.Cleanup(func() { wait = old })
}

func TestCleanPasses(t *testing.T) {
	shortWait(t)
	b := Take()
	// Goroutines and a file that end before Check are no leak.
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait() // gone before the next test takes its baseline
	for range 5 {
		wg.Go(func() { <-done })
	}
	f, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	close(done)
	f.Close()
	var ft fakeT
	b.Check(&ft)
	if len(ft.errors) != 0 {
		t.Fatalf("clean process reported: %s", ft.errors)
	}
}

func TestLeakedGoroutineFails(t *testing.T) {
	shortWait(t)
	b := Take()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait() // gone before the next test takes its baseline
	defer close(stop)
	for range slack + 1 {
		wg.Go(func() { leakyWorker(stop) })
	}
	var ft fakeT
	b.Check(&ft)
	if len(ft.errors) != 1 {
		t.Fatalf("%d goroutines leaked, Check reported %d errors", slack+1, len(ft.errors))
	}
	if !strings.Contains(ft.errors[0], "leakyWorker") {
		t.Fatalf("the report has no goroutine dump naming the leaked function:\n%s", ft.errors[0])
	}
}

func leakyWorker(stop chan struct{}) { <-stop }

func TestLeakedFDFails(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("descriptors are read from /proc/self/fd, Linux only")
	}
	shortWait(t)
	path := filepath.Join(t.TempDir(), "left-open")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b := Take()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ft fakeT
	b.Check(&ft)
	if len(ft.errors) != 1 {
		t.Fatalf("a file left open, Check reported %d errors", len(ft.errors))
	}
	if !strings.Contains(ft.errors[0], path) {
		t.Fatalf("the report does not name the file left open:\n%s", ft.errors[0])
	}
}
