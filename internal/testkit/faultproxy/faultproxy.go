// Package faultproxy is a TCP proxy on loopback that a test puts between a
// client and a server to break the connection on purpose: an upstream that
// is down, a reset on a chosen command or just after it, a cut after so many
// octets, a stall, a slow drip. Faults are armed while traffic flows, from
// any goroutine. It knows no protocol: a command is a pattern of octets.
//
// A reset is a TCP RST on both sides (linger 0, then close), the way a
// crashed peer or a middlebox that drops state looks to the other end; an
// orderly end on one side is passed on as an orderly end on the other.
package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// maxPattern is the longest command pattern matched across two reads: the
// last maxPattern-1 octets of each read are kept to match against the next.
const maxPattern = 256

// Proxy forwards every connection accepted on Addr to the target.
type Proxy struct {
	ln     net.Listener
	target string

	down          atomic.Bool
	stallToClient atomic.Bool
	stallToServer atomic.Bool
	dripN         atomic.Int64
	dripEvery     atomic.Int64 // time.Duration
	accepted      atomic.Int64
	closed        atomic.Int64
	fired         atomic.Int64
	nextID        atomic.Int64

	mu         sync.Mutex
	closing    bool
	conns      map[*pair]struct{}
	resetOn    []byte // non-nil: armed, once
	resetAfter []byte // non-nil: armed, once
	cutServer  cutPlan
	cutClient  cutPlan
	stallAt    int64 // >0: Stall after this many more server->client octets
	watch      func(id int64, toServer bool, chunk []byte)
	wg         sync.WaitGroup
}

// cutPlan is a cut armed in one direction: after left more octets (counted
// over every connection), then again after then octets, times cuts in all
// (times < 0: no limit).
type cutPlan struct {
	left, then int64
	times      int
	orderly    bool // close (FIN) rather than reset
}

// pair is one proxied connection: the client's side and the target's.
type pair struct {
	id             int64
	client, server net.Conn
	once           sync.Once
	done           chan struct{}
	resetOnReply   atomic.Bool // ResetAfterCommand matched: reset at the next reply
}

// Start listens on a free loopback port and forwards to target until the
// test ends; then it resets every open connection and waits for its
// goroutines.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: make(map[*pair]struct{})}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

// Addr is the address clients dial instead of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting, resets every open connection and waits until the
// proxy's goroutines have ended. Start arranges it at the end of the test.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	p.ResetAll()
	p.wg.Wait()
}

// Down makes the target unreachable while on: new connections are accepted
// and reset at once, before a single octet, as a host with nothing
// listening answers. Connections open already are left alone.
func (p *Proxy) Down(on bool) { p.down.Store(on) }

// ResetOnCommand arms a reset, once: the next client->server data that
// contains pattern (also split across two reads) is not forwarded, and both
// sides are reset. The server never sees the command whole.
func (p *Proxy) ResetOnCommand(pattern []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetOn = checkPattern(pattern)
}

// ResetAfterCommand arms a reset, once: the next client->server data that
// contains pattern is forwarded, and when the server's reply arrives it is
// dropped and both sides are reset. The server has carried the command out;
// the client never learns it did.
func (p *Proxy) ResetAfterCommand(pattern []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetAfter = checkPattern(pattern)
}

func checkPattern(pattern []byte) []byte {
	if len(pattern) == 0 || len(pattern) > maxPattern {
		panic("faultproxy: a command pattern is 1 to 256 octets")
	}
	return bytes.Clone(pattern)
}

// CutServerAfter arms a cut, once: server->client data is forwarded for n
// more octets (on whichever connection they flow), then both sides of that
// connection are reset.
func (p *Proxy) CutServerAfter(n int64) { p.CutServerRepeatedly(n, 0, 1) }

// CutServerRepeatedly cuts server->client data after first octets and then
// again after every then octets, times cuts in all (times < 0: for ever),
// as a server that keeps dying mid-transfer does to each new connection.
func (p *Proxy) CutServerRepeatedly(first, then int64, times int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutServer = cutPlan{left: first, then: then, times: times}
}

// CloseServerAfter is CutServerAfter with an orderly close in place of the
// reset: the client reads every octet forwarded before it sees the end, as
// from a server that closes in the middle of a reply. A reset discards what
// the client had not read yet.
func (p *Proxy) CloseServerAfter(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutServer = cutPlan{left: n, times: 1, orderly: true}
}

// CutClientAfter is CutServerAfter for client->server data.
func (p *Proxy) CutClientAfter(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutClient = cutPlan{left: n, times: 1}
}

// Stall holds server->client data while on (the server stops answering
// but keeps the connection open); data read meanwhile is forwarded once it
// is off, unless a side hangs up first.
func (p *Proxy) Stall(on bool) { p.stallToClient.Store(on) }

// StallServerAfter forwards n more server->client octets and then turns
// Stall on: a server that hangs in the middle of a reply.
func (p *Proxy) StallServerAfter(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n <= 0 {
		p.stallAt = 0
		p.stallToClient.Store(true)
		return
	}
	p.stallAt = n
}

// StallCommands is Stall for client->server data: a client that stops
// sending halfway.
func (p *Proxy) StallCommands(on bool) { p.stallToServer.Store(on) }

// Drip forwards at most n octets per tick of every, in both directions,
// like a very slow link; n = 0 turns it off.
func (p *Proxy) Drip(n int, every time.Duration) {
	p.dripEvery.Store(int64(every))
	p.dripN.Store(int64(n))
}

// ResetAll resets every connection open now, both sides, as a server that
// drops all its clients would.
func (p *Proxy) ResetAll() {
	for _, c := range p.openPairs() {
		c.reset()
	}
}

// CloseAll ends every connection open now in order, both sides, as a
// server that exits does: what was sent already arrives, then the end.
func (p *Proxy) CloseAll() {
	for _, c := range p.openPairs() {
		c.close()
	}
}

// openPairs is the connections open now.
func (p *Proxy) openPairs() []*pair {
	p.mu.Lock()
	defer p.mu.Unlock()
	open := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		open = append(open, c)
	}
	return open
}

// Accepted is the number of connections accepted so far, refused ones
// (Down) included.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Closed is the number of proxied connections that have ended, both
// sides closed, whether by a fault or by the client or server.
func (p *Proxy) Closed() int64 { return p.closed.Load() }

// Open is the number of proxied connections open now.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Fired is the number of armed faults that have gone off: resets on or
// after a command and cuts (not Down, Stall, Drip or ResetAll).
func (p *Proxy) Fired() int64 { return p.fired.Load() }

// Watch calls f with every chunk of data just before it is forwarded
// (data a fault stops is not shown), from the proxy's goroutines, possibly
// concurrently. A token may be split across
// two chunks; putting it together is the observer's business (WatchConns
// tells the connections apart).
func (p *Proxy) Watch(f func(toServer bool, chunk []byte)) {
	p.WatchConns(func(_ int64, toServer bool, chunk []byte) { f(toServer, chunk) })
}

// WatchConns is Watch with the number of the connection (1, 2, ... in the
// order accepted) each chunk belongs to. Chunks of one connection and
// direction come in order, never concurrently.
func (p *Proxy) WatchConns(f func(id int64, toServer bool, chunk []byte)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.watch = f
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		id := p.nextID.Add(1)
		if p.down.Load() {
			rst(client)
			continue
		}
		p.wg.Add(1)
		go p.connect(id, client)
	}
}

func (p *Proxy) connect(id int64, client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		rst(client)
		return
	}
	c := &pair{id: id, client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closing { // dialled while Close reset the others
		p.mu.Unlock()
		c.reset()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	var both sync.WaitGroup
	both.Add(2)
	go func() { defer both.Done(); p.pump(c, true) }()
	go func() { defer both.Done(); p.pump(c, false) }()
	both.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.closed.Add(1)
}

// pump copies one direction of c, applying the faults armed.
func (p *Proxy) pump(c *pair, toServer bool) {
	src, dst := c.server, c.client
	if toServer {
		src, dst = c.client, c.server
	}
	buf := make([]byte, 32<<10)
	var tail []byte // the end of the previous read, for patterns split across reads
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if toServer {
				if p.takePattern(&p.resetOn, tail, chunk) {
					p.fired.Add(1)
					c.reset()
					return
				}
				if p.takePattern(&p.resetAfter, tail, chunk) {
					c.resetOnReply.Store(true)
				}
				tail = append(tail, chunk...)
				tail = append(tail[:0], tail[max(0, len(tail)-(maxPattern-1)):]...)
			} else if c.resetOnReply.Load() {
				p.fired.Add(1)
				c.reset()
				return
			}
			chunk, cut, orderly := p.cut(toServer, chunk)
			if !toServer {
				if k := p.stallPoint(chunk); k >= 0 {
					// The octets before the stall go through now.
					if !p.forward(c, dst, toServer, chunk[:k]) {
						c.reset()
						return
					}
					chunk = chunk[k:]
					p.stallToClient.Store(true)
				}
			}
			if !p.forward(c, dst, toServer, chunk) {
				c.reset()
				return
			}
			if cut {
				p.fired.Add(1)
				if orderly {
					c.close()
				} else {
					c.reset()
				}
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				c.close()
			} else {
				// A reset (or a close by a fault) on one side is a reset
				// on the other.
				c.reset()
			}
			return
		}
	}
}

// takePattern reports whether the armed pattern *slot occurs in tail+chunk
// ending inside chunk (an occurrence wholly in tail was forwarded before the
// pattern was armed), and disarms it if so.
func (p *Proxy) takePattern(slot *[]byte, tail, chunk []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pat := *slot
	if pat == nil {
		return false
	}
	keep := min(len(tail), len(pat)-1)
	data := append(bytes.Clone(tail[len(tail)-keep:]), chunk...)
	if !bytes.Contains(data, pat) {
		return false
	}
	*slot = nil
	return true
}

// cut shortens chunk to what an armed cut lets through and reports
// whether the connection is to be cut after it, and whether orderly.
func (p *Proxy) cut(toServer bool, chunk []byte) (_ []byte, cut, orderly bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	plan := &p.cutServer
	if toServer {
		plan = &p.cutClient
	}
	if plan.left <= 0 || plan.times == 0 {
		return chunk, false, false
	}
	if int64(len(chunk)) < plan.left {
		plan.left -= int64(len(chunk))
		return chunk, false, false
	}
	chunk = chunk[:plan.left]
	if plan.times > 0 {
		plan.times--
	}
	plan.left = plan.then
	if plan.times == 0 {
		plan.left = 0
	}
	return chunk, true, plan.orderly
}

// stallPoint is where in server->client chunk an armed StallServerAfter
// falls; -1 if not in chunk.
func (p *Proxy) stallPoint(chunk []byte) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stallAt <= 0 {
		return -1
	}
	if int64(len(chunk)) < p.stallAt {
		p.stallAt -= int64(len(chunk))
		return -1
	}
	k := int(p.stallAt)
	p.stallAt = 0
	return k
}

// forward writes chunk to dst, held while stalled and in drips when
// dripping, and shows what went through to the observer. It reports false
// when the connection ended meanwhile.
func (p *Proxy) forward(c *pair, dst net.Conn, toServer bool, chunk []byte) bool {
	for len(chunk) > 0 {
		if !p.hold(c, toServer) {
			return false
		}
		piece := chunk
		if n := p.dripN.Load(); n > 0 {
			piece = piece[:min(int64(len(piece)), n)]
			select {
			case <-c.done:
				return false
			case <-time.After(time.Duration(p.dripEvery.Load())):
			}
		}
		// The observer sees the data before the peer can answer it, so a
		// counter read after the reply includes it.
		p.mu.Lock()
		watch := p.watch
		p.mu.Unlock()
		if watch != nil {
			watch(c.id, toServer, piece)
		}
		if _, err := dst.Write(piece); err != nil {
			return false
		}
		chunk = chunk[len(piece):]
	}
	return true
}

// hold waits while the direction is stalled; false if the connection ends
// meanwhile.
func (p *Proxy) hold(c *pair, toServer bool) bool {
	stalled := &p.stallToClient
	if toServer {
		stalled = &p.stallToServer
	}
	for stalled.Load() {
		select {
		case <-c.done:
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}

// reset sends RST to both sides.
func (c *pair) reset() {
	c.once.Do(func() {
		rst(c.client)
		rst(c.server)
		close(c.done)
	})
}

// close ends both sides in order: data written already still arrives.
func (c *pair) close() {
	c.once.Do(func() {
		c.client.Close()
		c.server.Close()
		close(c.done)
	})
}

// rst closes conn with a TCP RST rather than a FIN.
func rst(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}
