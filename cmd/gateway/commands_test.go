package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/passwd"
)

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"version"}, nil, &out, io.Discard); code != 0 || !strings.HasPrefix(out.String(), "gateway ") {
		t.Fatalf("version: exit %d, %q", code, out.String())
	}
	if code := run([]string{"bogus"}, nil, io.Discard, io.Discard); code != 2 {
		t.Fatalf("unknown command: exit %d, want 2", code)
	}
}

func TestHashPassword(t *testing.T) {
	in := writeFile(t, "pw", "correct horse\n", 0o600)
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	if code := run([]string{"hash-password"}, f, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	hash := strings.TrimSpace(out.String())
	if ok, err := passwd.Verify(hash, "correct horse"); !ok || err != nil {
		t.Fatalf("hash %q does not verify: %v", hash, err)
	}
}

func writeFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// The command line reaches the server package: a config that does not load
// is reported with its line, and serve and check exit 1.
func TestCommandsReportConfigErrors(t *testing.T) {
	path := writeFile(t, "bad.yaml", "listen:\n  pop3: \"127.0.0.1:0\"\n  bogus: 1\n", 0o600)
	for _, cmd := range []string{"serve", "check"} {
		var stderr bytes.Buffer
		if code := run([]string{cmd, "-config", path}, nil, io.Discard, &stderr); code != 1 {
			t.Errorf("%s: exit %d, want 1", cmd, code)
		}
		if !strings.Contains(stderr.String(), "line 3") {
			t.Errorf("%s: error does not name the line: %s", cmd, stderr.String())
		}
	}
	if code := run([]string{"serve"}, nil, io.Discard, io.Discard); code != 2 {
		t.Errorf("serve without -config: exit %d, want 2", code)
	}
}
