package export

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer written by the progress goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestProgressBar(t *testing.T) {
	var out lockedBuffer
	p := newProgress(&out, true, time.Hour, 3, 3<<20)
	for range 3 {
		p.exported(1 << 20)
	}
	p.stop()
	s := out.String()
	for _, want := range []string{"3/3 messages", "100%", "3.0/3.0 MiB"} {
		if !strings.Contains(s, want) {
			t.Errorf("bar %q has no %q", s, want)
		}
	}
}

func TestProgressLines(t *testing.T) {
	var out lockedBuffer
	p := newProgress(&out, false, 10*time.Millisecond, 4, 4<<20)
	p.exported(1 << 20)
	p.failed()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "\n") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	p.stop()
	line, _, _ := strings.Cut(out.String(), "\n")
	if !strings.HasPrefix(line, "export: 1/4 messages, 1.0 MiB of 4.0 MiB, ") || !strings.Contains(line, "1 failed") {
		t.Errorf("progress line %q", line)
	}
}
