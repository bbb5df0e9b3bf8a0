//go:build linux

package main

import (
	"bytes"
	"testing"
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
