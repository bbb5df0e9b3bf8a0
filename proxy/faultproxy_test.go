package proxy

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultProxy sits between the gateway and the upstream IMAP server. It
// counts body fetches and, when armed, cuts or stalls the server's side,
// or cuts the connection instead of forwarding a command.
type faultProxy struct {
	ln     net.Listener
	target string

	fetches   atomic.Int64           // BODY.PEEK[] requests seen
	listings  atomic.Int64           // RFC822.SIZE requests seen
	fullLists atomic.Int64           // listings of every message (FETCH 1:*) seen
	searches  atomic.Int64           // UID SEARCH requests seen
	idles     atomic.Int64           // IDLE commands seen
	sizesSent atomic.Int64           // RFC822.SIZE items the server sent
	accepted  atomic.Int64           // connections from the gateway
	toClient  atomic.Int64           // octets forwarded from the server
	cutAfter  atomic.Int64           // >0: close both sides after this many more octets
	recut     atomic.Int64           // >0: after a cut, cut again after this many octets
	maxCuts   atomic.Int64           // >0: at most this many cuts since limitCuts; 0: no limit
	cuts      atomic.Int64           // cuts since limitCuts
	stall     atomic.Bool            // stop forwarding from the server
	closedUps atomic.Int64           // server connections closed
	cutAt     atomic.Pointer[[]byte] // non-nil: cut instead of forwarding a command containing it, once
	cutDone   atomic.Bool            // a command was cut

	mu    sync.Mutex
	conns []net.Conn
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

func (p *faultProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		done := make(chan struct{})
		go p.upstream(client, server, done)
		go p.downstream(client, server, done)
	}
}

// upstream copies the gateway's commands to the server, counting fetches.
func (p *faultProxy) upstream(client, server net.Conn, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 32*1024)
	for {
		n, err := client.Read(buf)
		if pat := p.cutAt.Load(); n > 0 && pat != nil && bytes.Contains(buf[:n], *pat) {
			p.cutAt.Store(nil)
			p.cutDone.Store(true)
			client.Close()
			server.Close()
			return
		}
		if n > 0 {
			p.fetches.Add(int64(bytes.Count(buf[:n], []byte("BODY.PEEK[]"))))
			p.listings.Add(int64(bytes.Count(buf[:n], []byte("RFC822.SIZE"))))
			p.fullLists.Add(int64(bytes.Count(buf[:n], []byte(" FETCH 1:* "))))
			p.searches.Add(int64(bytes.Count(buf[:n], []byte("UID SEARCH"))))
			p.idles.Add(int64(bytes.Count(buf[:n], []byte(" IDLE\r\n"))))
			server.Write(buf[:n])
		}
		if err != nil {
			server.Close()
			return
		}
	}
}

// downstream copies the server's replies to the gateway, applying faults.
func (p *faultProxy) downstream(client, server net.Conn, done chan struct{}) {
	defer p.closedUps.Add(1)
	defer client.Close()
	defer server.Close()
	buf := make([]byte, 32*1024)
	var sizes tokenCounter
	for {
		n, err := server.Read(buf)
		p.sizesSent.Add(sizes.count(buf[:n], []byte("RFC822.SIZE ")))
		for p.stall.Load() {
			// Hold the data until the gateway gives up and hangs up.
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		if n > 0 {
			chunk := buf[:n]
			if left := p.cutAfter.Load(); left > 0 {
				if int64(len(chunk)) >= left {
					client.Write(chunk[:left])
					p.cutAfter.Store(p.nextCut()) // one cut, then new connections pass, unless recut
					return
				}
				p.cutAfter.Add(-int64(len(chunk)))
			}
			if _, werr := client.Write(chunk); werr != nil {
				return
			}
			p.toClient.Add(int64(n))
		}
		if err != nil {
			return
		}
	}
}

// cutAll closes every connection open now, both sides, as a server
// that drops its clients would.
func (p *faultProxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// nextCut is cutAfter for the connection after a cut: recut, unless that
// cut was the last limitCuts allows.
func (p *faultProxy) nextCut() int64 {
	n := p.cuts.Add(1)
	if m := p.maxCuts.Load(); m > 0 && n >= m {
		return 0
	}
	return p.recut.Load()
}

// limitCuts lets the proxy cut at most n more times, whatever recut says.
func (p *faultProxy) limitCuts(n int64) {
	p.cuts.Store(0)
	p.maxCuts.Store(n)
}

// cutAtCommand arms the proxy to cut the connection instead of
// forwarding the next command that contains pattern.
func (p *faultProxy) cutAtCommand(pattern string) {
	b := []byte(pattern)
	p.cutAt.Store(&b)
}

// tokenCounter counts a token in a stream read in chunks, including one
// split across two chunks.
type tokenCounter struct{ tail []byte }

func (c *tokenCounter) count(chunk, token []byte) int64 {
	data := append(c.tail, chunk...)
	n := bytes.Count(data, token)
	keep := min(len(token)-1, len(data))
	c.tail = append(c.tail[:0:0], data[len(data)-keep:]...)
	return int64(n)
}
