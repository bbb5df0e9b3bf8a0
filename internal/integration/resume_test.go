package integration

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/upstream"
)

// cutter forwards TCP to target and, when armed, cuts the connection that
// carries the given octet of the server's replies, once.
type cutter struct {
	ln       net.Listener
	target   string
	cutAfter atomic.Int64 // >0: cut after this many more octets from the server
	cuts     atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

func newCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: target}
	go c.serve()
	t.Cleanup(func() {
		ln.Close()
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, nc := range c.conns {
			nc.Close()
		}
	})
	return c
}

func (c *cutter) serve() {
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", c.target)
		if err != nil {
			client.Close()
			continue
		}
		c.mu.Lock()
		c.conns = append(c.conns, client, server)
		c.mu.Unlock()
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := client.Read(buf)
				if n > 0 {
					server.Write(buf[:n])
				}
				if err != nil {
					server.Close()
					return
				}
			}
		}()
		go func() {
			defer client.Close()
			defer server.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := server.Read(buf)
				chunk := buf[:n]
				if left := c.cutAfter.Load(); left > 0 && n > 0 {
					if int64(n) >= left {
						client.Write(chunk[:left])
						c.cutAfter.Store(0)
						c.cuts.Add(1)
						return
					}
					c.cutAfter.Add(-int64(n))
				}
				if _, werr := client.Write(chunk); werr != nil || err != nil {
					return
				}
			}
		}()
	}
}

// TestRealClientsGetWholeMessageAcrossUpstreamCut: the IMAP connection to
// Dovecot dies in the middle of a message that streams (larger than the
// cache ceiling). fetchmail and mpop still receive it whole, because the
// gateway continues on a new connection from the octet where it was cut,
// and a second keep run fetches nothing.
func TestRealClientsGetWholeMessageAcrossUpstreamCut(t *testing.T) {
	clients := []struct {
		name string
		make func(t testing.TB, addr, user, pass string) clienttest.Client
	}{
		{"fetchmail", clienttest.Fetchmail},
		{"mpop", clienttest.Mpop},
	}
	users := map[string]string{}
	for _, c := range clients {
		users[c.name] = "pw-" + c.name
	}
	dc := dovecottest.Start(t, users)
	cut := newCutter(t, dc.IMAPAddr())
	gw := startGateway(t, cut.ln.Addr().String(), upstream.DeleteKeep)

	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			var body strings.Builder
			for i := 0; body.Len() < 6<<20; i++ { // streams: over the 4 MiB ceiling
				fmt.Fprintf(&body, "line %07d of the large message for %s\n", i, c.name)
			}
			body.WriteString("the last line\n")
			large := "From: a@example.com\nSubject: large for " + c.name + "\n\n" + body.String()
			small := "From: a@example.com\nSubject: small for " + c.name + "\n\nsmall\n"
			dc.Deliver(t, c.name, []byte(large), []byte(small))
			client := c.make(t, gw, c.name, users[c.name])

			cuts := cut.cuts.Load()
			cut.cutAfter.Store(3 << 20)
			got := client.Fetch(t, true)
			if cut.cuts.Load() != cuts+1 {
				t.Fatal("the upstream connection was not cut")
			}
			if len(got) != 2 {
				t.Fatalf("%s delivered %d messages, want 2", c.name, len(got))
			}
			g := bytes.ReplaceAll(got[0], []byte("\r\n"), []byte("\n"))
			if !bytes.HasSuffix(g, []byte(body.String())) {
				t.Fatalf("%s delivered %d octets for the large message; its body is not whole", c.name, len(g))
			}
			if again := client.Fetch(t, true); len(again) != 0 {
				t.Fatalf("a second run fetched %d messages", len(again))
			}
		})
	}
}
