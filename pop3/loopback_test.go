package pop3

import (
	"bufio"
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/proxyproto"
)

// TestProxyHeaderLoopbackIsNotLocal: a PROXY header claiming 127.0.0.1
// does not earn the loopback exemption; the balancer is on the network.
func TestProxyHeaderLoopbackIsNotLocal(t *testing.T) {
	h := newHarness(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	go h.srv.Serve(proxyproto.Wrap(ln, trusted, 2*time.Second))

	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write([]byte("PROXY TCP4 127.0.0.1 127.0.0.1 40000 110\r\n")); err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, nc: nc, r: bufio.NewReader(nc)}
	c.expect("+OK POP3 gateway ready.")
	c.cmd("CAPA", "+OK Capability list follows")
	if got := c.multi(); strings.Contains(got, "USER") || strings.Contains(got, "SASL") {
		t.Fatalf("CAPA for a client behind a balancer = %q", got)
	}
	c.cmd("USER alice", errPlaintext)
	c.cmd("AUTH PLAIN", errPlaintext)
	if len(h.be.logins) != 0 {
		t.Fatal("credentials reached the backend")
	}

	// The same client connecting directly is local.
	d := h.dial()
	d.cmd("USER alice", "+OK")
}

// TestRequireTLSOnLoopback: the loopback exemption can be turned off;
// STLS then lets the client log in.
func TestRequireTLSOnLoopback(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.TLSConfig = serverTLS(t); s.RequireTLSOnLoopback = true })
	c := h.dial()
	c.cmd("CAPA", "+OK Capability list follows")
	if got := c.multi(); strings.Contains(got, "USER") || !strings.Contains(got, "STLS") {
		t.Fatalf("CAPA on loopback without TLS = %q", got)
	}
	c.cmd("USER alice", errPlaintext)
	c.cmd("STLS", "+OK Begin TLS negotiation now.")
	tc := tls.Client(c.nc, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c = &client{t: t, nc: tc, r: bufio.NewReader(tc)}
	c.login()
}
