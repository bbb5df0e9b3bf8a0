package durable

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSync(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "m.eml")
	if err := os.WriteFile(file, []byte("Subject: x\r\n\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, file} {
		if err := Sync(p); err != nil {
			t.Errorf("Sync(%s): %v", p, err)
		}
	}
	if err := Sync(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Errorf("Sync of a missing path: %v, want not-exist", err)
	}
}
