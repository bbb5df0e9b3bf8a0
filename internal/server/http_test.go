package server

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// withHTTPTimeouts sets small HTTP timeouts for one test.
func withHTTPTimeouts(t *testing.T, d time.Duration) {
	old := httpTimeouts
	httpTimeouts.readHeader, httpTimeouts.read, httpTimeouts.write, httpTimeouts.idle = d, d, d, d
	t.Cleanup(func() { httpTimeouts = old })
}

// closedWithin reports whether the server closes nc within d, while send,
// if set, keeps writing to it.
func closedWithin(nc net.Conn, d time.Duration, send func() error) bool {
	result := make(chan error, 1)
	go func() {
		nc.SetReadDeadline(time.Now().Add(d))
		_, err := io.Copy(io.Discard, nc)
		result <- err
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-result:
			// EOF (nil here) or a reset: closed; a timeout: still open.
			ne, ok := err.(net.Error)
			return !(ok && ne.Timeout())
		case <-tick.C:
			if send != nil {
				send()
			}
		}
	}
}

// A client trickling its request headers, or keeping an idle connection
// open, is cut off by the HTTP server's timeouts.
func TestHTTPTimeouts(t *testing.T) {
	withHTTPTimeouts(t, 300*time.Millisecond)
	f := newFixture(t)
	addrs, _ := startServe(t, f.config)

	t.Run("slow headers", func(t *testing.T) {
		nc, err := net.Dial("tcp", addrs["http"])
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
		n := 0
		trickle := func() error {
			n++
			_, err := io.WriteString(nc, "X-Slow-"+strings.Repeat("a", n%7)+": 1\r\n")
			return err
		}
		if !closedWithin(nc, 5*time.Second, trickle) {
			t.Fatal("a client sending one header line every 100ms was still connected after 5s")
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		nc, err := net.Dial("tcp", addrs["http"])
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(nc)
		if status, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(status, "HTTP/1.1 200") {
			t.Fatalf("status line %q, %v", status, err)
		}
		if !closedWithin(nc, 5*time.Second, nil) {
			t.Fatal("an idle keep-alive connection was still open after 5s")
		}
	})
}
