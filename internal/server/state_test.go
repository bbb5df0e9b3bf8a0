package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/pop3client"
)

// serve keeps the UIDL store in data_dir; with on_delete keep, a message
// deleted by the client is hidden, QUIT says it was kept, and the metric
// counts it as kept rather than removed.
func TestServeDataDirAndKeptDeletes(t *testing.T) {
	f := newFixture(t)
	cfg, _ := os.ReadFile(f.config)
	dataDir := filepath.Join(t.TempDir(), "state")
	cfg = []byte(strings.Replace(string(cfg), "    tls: none\n", "    tls: none\n    on_delete: keep\n", 1) +
		"data_dir: " + dataDir + "\n")
	os.WriteFile(f.config, cfg, 0o600)
	addrs, logs := startServe(t, f.config)
	if _, err := os.Stat(filepath.Join(dataDir, "state.db")); err != nil {
		t.Fatalf("no UIDL store in data_dir: %v", err)
	}
	if strings.Contains(logs.String(), "neither data_dir nor redis") {
		t.Error("warned of an in-memory store with data_dir set")
	}

	c, err := pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}
	if err := c.Dele(1); err != nil {
		t.Fatal(err)
	}
	if reply, err := c.Cmd("QUIT"); err != nil || reply != "+OK Logging out, 1 message hidden, kept on the server." {
		t.Fatalf("QUIT: %q, %v", reply, err)
	}
	c.Close()
	c, err = pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}
	if n, _, err := c.Stat(); err != nil || n != 0 {
		t.Fatalf("STAT after the kept delete: %d, %v; want 0", n, err)
	}
	c.Quit()

	waitFor(t, func() bool {
		_, body := httpGet(t, "http://"+addrs["http"]+"/metrics")
		return strings.Contains(body, `pop3gw_deletes_applied_total{outcome="kept"} 1`)
	})
	if _, body := httpGet(t, "http://"+addrs["http"]+"/metrics"); strings.Contains(body, `outcome="removed"`) {
		t.Errorf("a kept message counted as removed:\n%s", body)
	}
}

// Without data_dir or redis, the store is in memory, and serve says what
// that costs.
func TestServeWarnsWithoutDataDir(t *testing.T) {
	f := newFixture(t)
	_, logs := startServe(t, f.config)
	if !strings.Contains(logs.String(), "neither data_dir nor redis is set") {
		t.Fatalf("no warning of the in-memory UIDL store:\n%s", logs.String())
	}
}
