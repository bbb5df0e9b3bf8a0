// Package leakcheck tells a test whether the goroutines and file
// descriptors of the process came back to what they were before: a session
// that ended after a fault must leave neither behind.
package leakcheck

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"
)

// slack is how many goroutines above the baseline are tolerated: the
// runtime and the standard library start a few of their own on first use
// (the resolver, the timer of an idle HTTP connection).
const slack = 2

// wait is how long Check lets goroutines and descriptors wind down (a
// variable for this package's own tests).
var wait = 5 * time.Second

// Baseline is the process's goroutines and open descriptors at one moment.
type Baseline struct {
	goroutines int
	fds        []string // names in /proc/self/fd; nil where there is none
}

// Take records the baseline. Take it after the servers the test keeps
// for its whole length have started, and before the sessions it checks.
//
// Goroutines that are ending as it is called (those of the sessions of an
// earlier test) would raise the baseline and hide as many leaked ones, so
// Take first waits, up to a second, for the count to stop falling.
func Take() Baseline {
	n := runtime.NumGoroutine()
	for stable, tries := 0, 0; stable < 5 && tries < 100; tries++ {
		time.Sleep(10 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m < n {
			stable = 0
		} else {
			stable++
		}
		n = m
	}
	return Baseline{goroutines: n, fds: openFDs()}
}

// Check waits up to a few seconds for the goroutines to come back to the
// baseline (give or take a small slack) and the descriptors to be those of
// the baseline, or fewer; if they do not, it fails t with a dump of every
// goroutine and the targets of the extra descriptors.
func (b Baseline) Check(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		n := runtime.NumGoroutine()
		extra := b.extraFDs()
		if n <= b.goroutines+slack && len(extra) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var dump bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&dump, 1)
			var fds []string
			for _, fd := range extra {
				target, err := os.Readlink("/proc/self/fd/" + fd)
				if err != nil {
					target = err.Error()
				}
				fds = append(fds, fd+" -> "+target)
			}
			t.Errorf("leak after %v: %d goroutines, baseline %d (slack %d); %d descriptors more than the baseline%s\n%s",
				wait, n, b.goroutines, slack, len(extra), listed(fds), dump.String())
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func listed(fds []string) string {
	if len(fds) == 0 {
		return ""
	}
	return ":\n  " + strings.Join(fds, "\n  ")
}

// extraFDs are the descriptors open now that were not at the baseline.
// Descriptor numbers are reused, so one closed and another opened under the
// same number is not seen; a leak in a loop is.
func (b Baseline) extraFDs() []string {
	if b.fds == nil {
		return nil
	}
	var extra []string
	for _, fd := range openFDs() {
		if !slices.Contains(b.fds, fd) {
			extra = append(extra, fd)
		}
	}
	return extra
}

// openFDs lists /proc/self/fd, without the descriptor that reading the
// directory opens. Without /proc (not Linux) it is nil and fds go unchecked.
func openFDs() []string {
	if runtime.GOOS != "linux" {
		return nil
	}
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil
	}
	own := fmt.Sprint(dir.Fd())
	names = slices.DeleteFunc(names, func(s string) bool { return s == own })
	if names == nil {
		names = []string{}
	}
	return names
}
