package server

import (
	"bytes"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
)

// fakeCgroups writes files (slash-separated paths under root) and returns
// root.
func fakeCgroups(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupMemoryLimit(t *testing.T) {
	const v1Unlimited = "9223372036854771712\n"
	tests := []struct {
		name       string
		procCgroup string
		files      map[string]string
		want       int64 // 0: no limit
		wantFile   string
	}{
		{"v2 in its own namespace", "0::/\n",
			map[string]string{"memory.max": "536870912\n"}, 512 << 20, "memory.max"},
		{"v2 without a limit", "0::/\n",
			map[string]string{"memory.max": "max\n"}, 0, ""},
		{"v2 nested: the smallest on the path", "0::/kubepods/pod1/c1\n", map[string]string{
			"kubepods/memory.max":         "1073741824\n",
			"kubepods/pod1/memory.max":    "2147483648\n",
			"kubepods/pod1/c1/memory.max": "max\n",
		}, 1 << 30, "kubepods/memory.max"},
		{"v2 path outside the mount: the mount's root", "0::/system.slice/docker-abc.scope\n",
			map[string]string{"memory.max": "268435456\n"}, 256 << 20, "memory.max"},
		{"v1", "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n",
			map[string]string{"memory/memory.limit_in_bytes": "268435456\n"}, 256 << 20, "memory/memory.limit_in_bytes"},
		{"v1 nested, controllers joined", "5:cpuacct,memory:/a/b\n", map[string]string{
			"memory/memory.limit_in_bytes":     v1Unlimited,
			"memory/a/memory.limit_in_bytes":   "805306368\n",
			"memory/a/b/memory.limit_in_bytes": v1Unlimited,
		}, 768 << 20, "memory/a/memory.limit_in_bytes"},
		{"v1 without a limit", "4:memory:/\n",
			map[string]string{"memory/memory.limit_in_bytes": v1Unlimited}, 0, ""},
		{"hybrid: v2 mount without memory, v1 limit", "0::/\n4:memory:/\n", map[string]string{
			"unified/cgroup.procs":         "",
			"memory/memory.limit_in_bytes": "134217728\n",
		}, 128 << 20, "memory/memory.limit_in_bytes"},
		{"no cgroup files", "0::/\n", nil, 0, ""},
		{"garbage", "0::/\n", map[string]string{"memory.max": "lots\n"}, 0, ""},
		{"empty /proc/self/cgroup", "", map[string]string{"memory.max": "536870912\n"}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeCgroups(t, tt.files)
			got, file, ok := cgroupMemoryLimit([]byte(tt.procCgroup), root)
			if tt.want == 0 {
				if ok {
					t.Fatalf("limit %d from %s; want none", got, file)
				}
				return
			}
			if !ok || got != tt.want || file != filepath.Join(root, filepath.FromSlash(tt.wantFile)) {
				t.Fatalf("limit %d from %s, %v; want %d from %s", got, file, ok, tt.want, tt.wantFile)
			}
		})
	}
}

func TestLimitMemoryFromCgroup(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	root := fakeCgroups(t, map[string]string{"memory.max": "536870912\n"})

	debug.SetMemoryLimit(math.MaxInt64)
	src := limitMemory(func(string) string { return "" }, []byte("0::/\n"), root)
	if got := debug.SetMemoryLimit(-1); got != 456340275 {
		t.Errorf("GOMEMLIMIT = %d; want 85%% of 512 MiB", got)
	}
	if !strings.Contains(src, "85% of") || !strings.Contains(src, "memory.max") {
		t.Errorf("source %q does not say where the limit came from", src)
	}

	// GOMEMLIMIT set by the operator wins; the runtime has read it already.
	debug.SetMemoryLimit(math.MaxInt64)
	env := func(k string) string {
		if k == "GOMEMLIMIT" {
			return "1GiB"
		}
		return ""
	}
	if src := limitMemory(env, []byte("0::/\n"), root); src != "GOMEMLIMIT" {
		t.Errorf("source %q; want GOMEMLIMIT", src)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT changed to %d although the environment sets it", got)
	}
}

func TestInFlightBudget(t *testing.T) {
	size := func(b config.ByteSize) *config.ByteSize { return &b }
	tests := []struct {
		name        string
		cache       config.Cache
		limit       int64
		want        int64
		wantDerived bool
	}{
		{"no limit", config.Cache{Memory: 256 << 20}, math.MaxInt64, 128 << 20, true},
		{"the k8s manifest: 512 MiB", config.Cache{Memory: 256 << 20}, 456340275, (456340275 - 256<<20) / 2, true},
		{"a large limit", config.Cache{Memory: 256 << 20}, 8 << 30, 128 << 20, true},
		{"a cache larger than the limit", config.Cache{Memory: 1 << 30}, 512 << 20, 4 << 20, true},
		{"configured", config.Cache{Memory: 256 << 20, InFlight: size(32 << 20)}, 456340275, 32 << 20, false},
		{"configured 0", config.Cache{Memory: 256 << 20, InFlight: size(0)}, math.MaxInt64, 0, false},
	}
	for _, tt := range tests {
		got, derived := inFlightBudget(tt.cache, tt.limit)
		if got != tt.want || derived != tt.wantDerived {
			t.Errorf("%s: %d, %v; want %d, %v", tt.name, got, derived, tt.want, tt.wantDerived)
		}
	}
}

func TestMemoryBoundsLogged(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	debug.SetMemoryLimit(200 << 20)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	got := memoryBounds(config.Cache{Memory: 256 << 20}, "none", log)
	if got != 4<<20 {
		t.Errorf("in_flight %d; want the 4 MiB floor", got)
	}
	out := buf.String()
	for _, want := range []string{"memory bounds", "gomemlimit=200MiB", "in_flight=4MiB", "level=WARN", "lower cache.memory"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// cache.in_flight reaches the gateway: with none, a RETR streams, and the
// metrics count the refused reservation.
func TestServeInFlightBudget(t *testing.T) {
	f := newFixture(t)
	cfg, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f.config, append(cfg, []byte("cache:\n  in_flight: 0\n")...), 0o600)
	addrs, logs := startServe(t, f.config)
	c, err := pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}
	msg, err := c.Retr(1)
	if err != nil || string(msg) != "Subject: hi\r\n\r\nhello\r\n" {
		t.Fatalf("RETR 1 = %q, %v", msg, err)
	}
	c.Quit()
	if !strings.Contains(logs.String(), "msg=\"memory bounds\"") || !strings.Contains(logs.String(), "in_flight=0 in_flight_derived=false") {
		t.Errorf("the memory bounds are not logged:\n%s", logs)
	}
	_, body := httpGet(t, "http://"+addrs["http"]+"/metrics")
	for _, want := range []string{"pop3gw_memory_budget_bytes 0", "pop3gw_memory_budget_high_water_bytes 0"} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "pop3gw_memory_budget_refused_total 0\n") || !strings.Contains(body, "pop3gw_memory_budget_refused_total") {
		t.Errorf("no refused reservation counted:\n%s", body)
	}
}
