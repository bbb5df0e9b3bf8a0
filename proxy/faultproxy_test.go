package proxy

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/faultproxy"
)

// faultProxy is the test kit's fault proxy between the gateway and the
// upstream IMAP server, with counters of the IMAP traffic it forwards.
type faultProxy struct {
	*faultproxy.Proxy

	fetches   atomic.Int64 // BODY.PEEK[] requests seen
	listings  atomic.Int64 // RFC822.SIZE requests seen
	fullLists atomic.Int64 // listings of every message (FETCH 1:*) seen
	searches  atomic.Int64 // UID SEARCH requests seen
	idles     atomic.Int64 // IDLE commands seen
	sizesSent atomic.Int64 // RFC822.SIZE items the server sent
	toClient  atomic.Int64 // octets forwarded from the server

	mu       sync.Mutex
	counters map[streamKey]*tokenCounter
}

// streamKey is one direction of one proxied connection.
type streamKey struct {
	conn     int64
	toServer bool
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	p := &faultProxy{Proxy: faultproxy.Start(t, target), counters: make(map[streamKey]*tokenCounter)}
	p.WatchConns(p.count)
	return p
}

// count is called by the kit for one direction of one connection at a
// time, in order.
func (p *faultProxy) count(conn int64, toServer bool, chunk []byte) {
	p.mu.Lock()
	tc := p.counters[streamKey{conn, toServer}]
	if tc == nil {
		tc = &tokenCounter{}
		p.counters[streamKey{conn, toServer}] = tc
	}
	p.mu.Unlock()
	if !toServer {
		p.toClient.Add(int64(len(chunk)))
		p.sizesSent.Add(tc.count(chunk, "RFC822.SIZE ")[0])
		return
	}
	n := tc.count(chunk, "BODY.PEEK[]", "RFC822.SIZE", " FETCH 1:* ", "UID SEARCH", " IDLE\r\n")
	p.fetches.Add(n[0])
	p.listings.Add(n[1])
	p.fullLists.Add(n[2])
	p.searches.Add(n[3])
	p.idles.Add(n[4])
}

// tokenCounter counts tokens in a stream read in chunks, including one
// split across two chunks.
type tokenCounter struct{ tail []byte }

// maxToken is the longest token counted.
const maxToken = 16

// count counts each token in chunk, with those that began in the chunk
// before (but not those wholly in it, counted then).
func (c *tokenCounter) count(chunk []byte, tokens ...string) []int64 {
	n := make([]int64, len(tokens))
	for i, token := range tokens {
		keep := min(len(c.tail), len(token)-1)
		data := append(bytes.Clone(c.tail[len(c.tail)-keep:]), chunk...)
		n[i] = int64(bytes.Count(data, []byte(token)))
	}
	c.tail = append(c.tail, chunk...)
	c.tail = bytes.Clone(c.tail[max(0, len(c.tail)-(maxToken-1)):])
	return n
}
