package server

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/pop3gw/gateway/"

// TestArchitecture checks the package diagram of the README's Architecture
// section on the dependencies `go list -deps` reports: arrows point only
// down. The doors know nothing of the stores and the stores nothing of the
// doors, cache uses nothing, shared state never reaches up into the wiring,
// and no production package depends on a test kit.
func TestArchitecture(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the packages with")
	}
	cmd := exec.Command(goBin, "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// deps: package -> the module's packages it depends on, directly or
	// not, without tests (module prefix removed).
	deps := make(map[string][]string)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, ok := strings.CutPrefix(fields[0], module)
		if !ok {
			continue
		}
		deps[pkg] = nil
		for _, d := range fields[1:] {
			if d, ok := strings.CutPrefix(d, module); ok {
				deps[pkg] = append(deps[pkg], d)
			}
		}
	}
	for _, pkg := range []string{"pop3", "upstream", "proxy", "cache", "submission", "internal/export", "internal/server", "cmd/gateway"} {
		if _, ok := deps[pkg]; !ok {
			t.Fatalf("go list does not report %s", pkg)
		}
	}
	under := func(pkg, tree string) bool { return pkg == tree || strings.HasPrefix(pkg, tree+"/") }

	// allowed: the only packages of the module that pkg may depend on.
	allowed := map[string][]string{
		"cache":      {},
		"pop3":       {},
		"upstream":   {},
		"submission": {}, // the SMTP door knows nothing of POP3, IMAP or the gateway
		// A kit that runs a real server knows nothing of the gateway.
		"internal/testkit/cyrus":    {"internal/testkit/freeport"},
		"internal/testkit/freeport": {},
		// The fault kit sits between any client and any server, of
		// any protocol, and is used by every package's tests.
		"internal/testkit/faultproxy": {},
		"internal/testkit/leakcheck":  {},
	}
	for pkg, ok := range allowed {
		for _, d := range deps[pkg] {
			if !slices.Contains(ok, d) {
				t.Errorf("%s depends on %s; it may use only %q of the gateway", pkg, d, ok)
			}
		}
	}

	// forbidden: trees that pkg (or every package under it) must not
	// depend on. Stores in packages under upstream (JMAP, Graph) speak
	// the seam's vocabulary in upstream and are wired from above: they
	// reach neither the POP3 side nor the wiring, nor the configuration.
	forbidden := []struct{ pkg, tree string }{
		{"upstream", "pop3"},
		{"upstream", "proxy"},
		{"upstream", "internal/server"},
		{"upstream", "internal/config"},
		{"upstream", "internal/state"},
		{"pop3", "proxy"},
		{"pop3", "upstream"},
		{"proxy", "internal/server"},
		{"proxy", "submission"},
		{"proxy", "internal/state"},
		{"proxy", "internal/config"},
		{"internal/state", "internal/server"},
		{"internal/state", "internal/config"},
		{"internal/config", "proxy"},
		{"internal/config", "internal/server"},
		// The export reaches stores through the store seam, like the
		// POP3 door, and takes its settings as plain values.
		{"internal/export", "internal/server"},
		{"internal/export", "internal/config"},
		{"proxy", "internal/export"},
	}
	for _, f := range forbidden {
		for pkg, ds := range deps {
			if !under(pkg, f.pkg) {
				continue
			}
			for _, d := range ds {
				if under(d, f.tree) {
					t.Errorf("%s depends on %s: arrows from %s must not reach %s", pkg, d, f.pkg, f.tree)
				}
			}
		}
	}

	// A store beside IMAP lives in a package under upstream (Graph:
	// upstream/graph) and uses nothing of the gateway but the stores'
	// shared vocabulary in package upstream and what the stores share
	// under upstream/internal, which uses nothing of the gateway at all.
	stores := 0
	for pkg, ds := range deps {
		if strings.HasPrefix(pkg, "upstream/internal/") {
			if len(ds) > 0 {
				t.Errorf("%s depends on %v; what stores share uses nothing of the gateway", pkg, ds)
			}
			continue
		}
		if !strings.HasPrefix(pkg, "upstream/") {
			continue
		}
		stores++
		for _, d := range ds {
			if d != "upstream" && !strings.HasPrefix(d, "upstream/internal/") {
				t.Errorf("%s depends on %s; a store may use only upstream of the gateway", pkg, d)
			}
		}
	}
	if stores == 0 {
		t.Error("go list reports no store under upstream/")
	}

	// Test kits are for tests (and the benchmark command) only.
	for pkg, ds := range deps {
		if under(pkg, "internal/testkit") || under(pkg, "cmd/pop3bench") {
			continue
		}
		for _, d := range ds {
			if under(d, "internal/testkit") {
				t.Errorf("%s depends on the test kit %s", pkg, d)
			}
		}
	}
}
