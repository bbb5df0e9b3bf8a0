// Package testenv decides what a test does when a program it needs is
// missing: skip on a developer's machine, fail in CI, where .ci/run
// installs everything, so a broken install can never pass as a skip.
package testenv

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Missing skips t with msg, or fails it when the CI variable is set.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set, so this is an error)", msg)
	}
	t.Skip(msg)
}

// WaitFor polls cond until it holds, failing t after five seconds.
func WaitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Buffer collects output, such as log lines, written by other goroutines
// while a test reads it.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
