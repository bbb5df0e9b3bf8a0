package server

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/pop3gw/gateway/internal/config"
)

// A container's memory limit is a hard wall: the kernel kills the process
// that crosses it. Go's collector only knows about it through GOMEMLIMIT,
// and without it lets the heap grow to twice what is live before it
// collects. So when GOMEMLIMIT is not set, serve sets it to this share of
// the cgroup's limit, leaving the rest for the runtime's own memory, stacks
// and what the kernel counts against the cgroup besides the heap.
const memLimitShare = 0.85

// cgroupMemoryLimit returns the memory limit of the cgroup the process
// runs in, as /proc/self/cgroup (procCgroup) and the cgroup file system
// mounted at root show it: cgroup v2's memory.max, or v1's
// memory.limit_in_bytes, the smallest along the path from the process's
// cgroup up to the root of the mount. Inside a container the mount's root
// is usually the container's own cgroup, whatever path procCgroup names.
// It returns the file the limit was read from, and ok false when no limit
// is set.
func cgroupMemoryLimit(procCgroup []byte, root string) (limit int64, file string, ok bool) {
	limit = math.MaxInt64
	consider := func(mount, dir, name string) {
		for p := path.Clean("/" + dir); ; p = path.Dir(p) {
			f := filepath.Join(mount, filepath.FromSlash(p), name)
			if v, set := readLimit(f); set && v < limit {
				limit, file, ok = v, f, true
			}
			if p == "/" {
				return
			}
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(procCgroup))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path (cgroups(7))
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			consider(root, parts[2], "memory.max")
		case hasController(parts[1], "memory"):
			consider(filepath.Join(root, "memory"), parts[2], "memory.limit_in_bytes")
		}
	}
	return limit, file, ok
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// readLimit reads a cgroup memory limit file: a number of bytes, or "max"
// (v2) or a value near the largest int64 (v1, rounded down to a page) for
// no limit.
func readLimit(file string) (int64, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 || v >= math.MaxInt64/2 {
		return 0, false
	}
	return v, true
}

// LimitMemory sets GOMEMLIMIT from the cgroup of the process, as
// limitMemory does, and says where the limit came from.
func LimitMemory() string {
	procCgroup, _ := os.ReadFile("/proc/self/cgroup")
	return limitMemory(os.Getenv, procCgroup, "/sys/fs/cgroup")
}

// limitMemory sets GOMEMLIMIT to memLimitShare of the cgroup's memory
// limit, unless the environment sets it, and says where the limit in
// effect comes from.
func limitMemory(getenv func(string) string, procCgroup []byte, cgroupRoot string) string {
	if getenv("GOMEMLIMIT") != "" {
		return "GOMEMLIMIT"
	}
	limit, file, ok := cgroupMemoryLimit(procCgroup, cgroupRoot)
	if !ok {
		return "none"
	}
	debug.SetMemoryLimit(int64(float64(limit) * memLimitShare))
	return fmt.Sprintf("%.0f%% of %s (%s)", memLimitShare*100, file, config.ByteSize(limit))
}

// defaultInFlight is cache.in_flight when the file does not set it and no
// memory limit is known.
const defaultInFlight = 128 << 20

// inFlightBudget is cache.in_flight, or, when the file does not set it,
// half of what the memory limit leaves beside the cache, between 4 MiB and
// defaultInFlight, so that the cache and the budget together stay well
// within the limit.
func inFlightBudget(c config.Cache, goMemLimit int64) (n int64, derived bool) {
	if c.InFlight != nil {
		return int64(*c.InFlight), false
	}
	if goMemLimit == math.MaxInt64 {
		return defaultInFlight, true
	}
	return min(max((goMemLimit-int64(c.Memory))/2, 4<<20), defaultInFlight), true
}

// memoryBounds logs the memory limits in effect and returns the budget for
// bodies in flight and listings.
func memoryBounds(c config.Cache, limitSource string, log *slog.Logger) int64 {
	limit := debug.SetMemoryLimit(-1)
	inFlight, derived := inFlightBudget(c, limit)
	attrs := []any{"cache", config.ByteSize(c.Memory), "in_flight", config.ByteSize(inFlight), "in_flight_derived", derived}
	if limit == math.MaxInt64 {
		attrs = append(attrs, "gomemlimit", "none")
	} else {
		attrs = append(attrs, "gomemlimit", config.ByteSize(limit), "gomemlimit_from", limitSource)
	}
	log.Info("memory bounds", attrs...)
	if limit != math.MaxInt64 && int64(c.Memory)+inFlight > limit {
		log.Warn("cache.memory and cache.in_flight together exceed the memory limit; lower cache.memory",
			"cache", config.ByteSize(c.Memory), "in_flight", config.ByteSize(inFlight), "gomemlimit", config.ByteSize(limit))
	}
	return inFlight
}
