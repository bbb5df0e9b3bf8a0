//go:build linux

package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestStatusField(t *testing.T) {
	data := "Name:\tgateway\nVmHWM:\t   20000 kB\nVmRSS:\t   12345 kB\nThreads:\t7\n"
	if v, ok := statusField(data, "VmRSS"); !ok || v != 12345<<10 {
		t.Errorf("VmRSS = %d, %v", v, ok)
	}
	if v, ok := statusField(data, "Threads"); !ok || v != 7 {
		t.Errorf("Threads = %d, %v", v, ok)
	}
	if _, ok := statusField(data, "VmSwap"); ok {
		t.Error("VmSwap found")
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 5000: "5,000", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestMessages(t *testing.T) {
	for _, size := range []int{2 << 10, 30 << 10, 30 << 20} {
		msgs := messages(1, 2, size)
		for _, m := range msgs {
			if len(m) > size || len(m) < size-100 {
				t.Errorf("size %d: got %d octets", size, len(m))
			}
			if bytes.Contains(m, []byte("\r")) || !bytes.HasSuffix(m, []byte("--b--\n")) {
				t.Errorf("size %d: not an LF message ending in the closing boundary", size)
			}
		}
		if bytes.Equal(msgs[0], msgs[1]) {
			t.Errorf("size %d: two equal messages", size)
		}
		want := int64(len(msgs[0]) + bytes.Count(msgs[0], []byte("\n")) + len(msgs[1]) + bytes.Count(msgs[1], []byte("\n")))
		if got := wireSize(msgs); got != want {
			t.Errorf("wireSize = %d, want %d", got, want)
		}
	}
}

func TestTopOf(t *testing.T) {
	msg := []byte("A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n")
	for lines, want := range map[int]string{
		0: "A: 1\r\nB: 2\r\n\r\n",
		2: "A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n",
		9: string(msg),
	} {
		if got := topOf(msg, lines); string(got) != want {
			t.Errorf("topOf(%d) = %q, want %q", lines, got, want)
		}
	}
}

func TestMessageID(t *testing.T) {
	msgs := messages(9, 2, 4<<10)
	a, b := messageID(msgs[0]), messageID(msgs[1])
	if a == "" || b == "" || a == b {
		t.Errorf("Message-IDs %q and %q", a, b)
	}
	crlf := bytes.ReplaceAll(msgs[0], []byte("\n"), []byte("\r\n"))
	if got := messageID(crlf); got != a {
		t.Errorf("CRLF message: %q, want %q", got, a)
	}
}

func TestSubmissionMessage(t *testing.T) {
	m := submission(7)
	if len(m) < loadMsgSize || len(m) > loadMsgSize+100 || !strings.Contains(m, "\r\nX-Load-Seq: 7\r\n") {
		t.Errorf("submission(7): %d octets: %.200q", len(m), m)
	}
	if strings.Contains(strings.ReplaceAll(m, "\r\n", ""), "\n") {
		t.Error("a bare LF")
	}
}

// TestLoadFailures: every goal of the load workload is checked.
func TestLoadFailures(t *testing.T) {
	good := loadResult{
		sessions: 10, submitted: 5, delivered: 5, copies: 5, lorisConns: 3, lorisDrops: 3,
		rssPeak: loadBudget / 2, gorBase: 12, gorAfter: 12, fdBase: 14, fdAfter: 13,
	}
	if f := good.failures(); len(f) != 0 {
		t.Fatalf("a good run: %q", f)
	}
	// A helper goroutine the Go runtime keeps after the load is no leak.
	withRuntime := good
	withRuntime.gorAfter = good.gorBase + loadRuntimeGoroutines
	if f := withRuntime.failures(); len(f) != 0 {
		t.Fatalf("a run after which the runtime kept %d goroutines more: %q", loadRuntimeGoroutines, f)
	}
	for name, change := range map[string]func(*loadResult){
		"unexpected errors":      func(r *loadResult) { r.unexpected = 1 },
		"no session completed":   func(r *loadResult) { r.sessions = 0 },
		"over the budget":        func(r *loadResult) { r.rssPeak = loadBudget },
		"goroutines after":       func(r *loadResult) { r.gorAfter = r.gorBase + loadRuntimeGoroutines + 1 },
		"file descriptors after": func(r *loadResult) { r.fdAfter = 15 },
		"delivered":              func(r *loadResult) { r.delivered = 4 },
		"copies":                 func(r *loadResult) { r.copies = 6 },
		"slow-loris":             func(r *loadResult) { r.lorisDrops = 0 },
	} {
		r := good
		change(&r)
		if f := r.failures(); len(f) != 1 {
			t.Errorf("%s: failures %q", name, f)
		}
	}
}

func TestSettleList(t *testing.T) {
	var l settleList
	if err := l.Set("0, 1.5s,3s"); err != nil || len(l) != 3 || l[1] != 1500*time.Millisecond || l.String() != "0s,1.5s,3s" {
		t.Fatalf("Set: %v, %v", l, err)
	}
	for _, bad := range []string{"1s,1s", "-1s", "soon", ""} {
		if err := l.Set(bad); err == nil {
			t.Errorf("Set(%q) succeeded", bad)
		}
	}
	b := &bench{settles: settleList(nil).or0()}
	if got := b.changeRow("new", 200000, 0); got != "new-200k" {
		t.Errorf("one wait: row %q, want new-200k", got)
	}
	b.settles = []time.Duration{0, 1500 * time.Millisecond}
	if got := b.changeRow("drop", 10000, 1500*time.Millisecond); got != "drop-10k@1.5s" {
		t.Errorf("two waits: row %q, want drop-10k@1.5s", got)
	}
}
