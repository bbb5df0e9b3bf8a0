package pop3

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"
)

// RFC 2449 §6.5 and §6.7: LOGIN-DELAY and EXPIRE are announced in both
// states; IMPLEMENTATION only after login (§6.9).
func TestCapaExpireLoginDelay(t *testing.T) {
	h := newHarness(t, func(s *Server) {
		s.Expire = "NEVER"
		s.LoginDelay = 300*time.Second + 700*time.Millisecond // whole seconds on the wire
	})
	c := h.dial()
	c.cmd("CAPA", "+OK Capability list follows")
	want := "CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nEXPIRE NEVER\r\nLOGIN-DELAY 300\r\nUSER\r\nSASL PLAIN LOGIN\r\n"
	if got := c.multi(); got != want {
		t.Fatalf("CAPA before login = %q, want %q", got, want)
	}
	c.login()
	c.cmd("CAPA", "+OK Capability list follows")
	want = "CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nEXPIRE NEVER\r\nLOGIN-DELAY 300\r\nIMPLEMENTATION test\r\n"
	if got := c.multi(); got != want {
		t.Fatalf("CAPA after login = %q, want %q", got, want)
	}
}

// Each listener has its own TLS settings: a connection is served with
// the settings of the listener it came in on, for implicit TLS and STLS.
func TestServeListenerTLS(t *testing.T) {
	strict := serverTLS(t)
	legacy := serverTLS(t)
	legacy.MinVersion = tls.VersionTLS10
	h := newHarness(t, func(s *Server) { s.TLSConfig = strict })
	listen := func(cfg *tls.Config, implicit bool) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go h.srv.ServeListener(ln, cfg, implicit)
		return ln.Addr().String()
	}
	// handshake runs a TLS 1.0 handshake, after STLS when stls is set,
	// and reads the greeting or asks for CAPA over it.
	handshake := func(addr string, stls bool) error {
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		if stls {
			c := &client{t: t, nc: nc, r: bufio.NewReader(nc)}
			c.expect("+OK POP3 gateway ready.")
			c.cmd("STLS", "+OK Begin TLS negotiation now.")
		}
		tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10})
		if err := tc.Handshake(); err != nil {
			return err
		}
		c := &client{t: t, nc: tc, r: bufio.NewReader(tc)}
		if !stls {
			c.expect("+OK POP3 gateway ready.")
		}
		c.cmd("CAPA", "+OK Capability list follows")
		if got := c.multi(); strings.Contains(got, "STLS") {
			t.Errorf("STLS offered over TLS: %q", got)
		}
		return nil
	}
	for _, stls := range []bool{false, true} {
		if err := handshake(listen(legacy, !stls), stls); err != nil {
			t.Errorf("TLS 1.0 on a listener that allows it (STLS %v): %v", stls, err)
		}
		if err := handshake(listen(strict, !stls), stls); err == nil {
			t.Errorf("TLS 1.0 accepted on a TLS 1.2 listener (STLS %v)", stls)
		}
	}
	if err := handshake(h.addr, true); err == nil {
		t.Error("TLS 1.0 accepted after STLS on the server's own TLS 1.2 listener")
	}

	// A cleartext listener without TLS of its own offers no STLS, though
	// the server has a TLSConfig for its other listeners.
	nc, err := net.Dial("tcp", listen(nil, false))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := &client{t: t, nc: nc, r: bufio.NewReader(nc)}
	c.expect("+OK POP3 gateway ready.")
	c.cmd("CAPA", "+OK Capability list follows")
	if got := c.multi(); strings.Contains(got, "STLS") {
		t.Errorf("STLS offered on a listener without TLS: %q", got)
	}
	c.cmd("STLS", "-ERR STLS is not available.")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := h.srv.ServeListener(ln, nil, true); err == nil {
		t.Error("implicit TLS without a TLS configuration was accepted")
	}
}
