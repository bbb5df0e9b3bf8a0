// Package testenv decides what a test does when a program it needs is
// missing: skip on a developer's machine, fail in CI, where .ci/run
// installs everything, so a broken install can never pass as a skip.
package testenv

import (
	"os"
	"testing"
)

// Missing skips t with msg, or fails it when the CI variable is set.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set, so this is an error)", msg)
	}
	t.Skip(msg)
}
