package config

import (
	"strings"
	"testing"
)

func TestDataDir(t *testing.T) {
	c := mustParse(t, minimal+"data_dir: /var/lib/gateway\n")
	if c.DataDir != "/var/lib/gateway" {
		t.Fatalf("data_dir = %q", c.DataDir)
	}
	if c := mustParse(t, minimal); c.DataDir != "" {
		t.Fatalf("data_dir unset = %q, want empty (in memory)", c.DataDir)
	}
	_, err := Parse([]byte(minimal + "data_dir: var/lib/gateway\n"))
	if err == nil || !strings.Contains(withoutLines(err), `data_dir: "var/lib/gateway" is not an absolute path`) {
		t.Fatalf("relative data_dir: %v", err)
	}
}
