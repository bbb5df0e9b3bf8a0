package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// TestExportUsageErrors: a bad flag value is one line naming it, and exit
// status 2, before anything is contacted or written.
func TestExportUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-config", "x.yaml", "-user", "alice", "-to", dir, "-since", "31/12/2024"}, `-since "31/12/2024" is not a date`},
		{[]string{"-config", "x.yaml", "-user", "alice", "-to", dir, "-format", "pst"}, `-format "pst"`},
		{[]string{"-config", "x.yaml", "-user", "alice", "-to", dir, "-all", "-mailbox", "Work"}, "exclude each other"},
		{[]string{"-config", "x.yaml", "-user", "alice", "-to", dir, "-limit-rate", "fast"}, `-limit-rate "fast"`},
		{[]string{"-config", "x.yaml", "-user", "alice"}, "-to DIR is required"},
		{[]string{"-to", dir}, "-provider NAME -login ADDRESS"},
	} {
		var stderr bytes.Buffer
		code := run(append([]string{"export"}, c.args...), nil, io.Discard, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), c.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("export %q: exit %d, %q; want 2 and one line with %q", c.args, code, stderr.String(), c.want)
		}
	}
}
