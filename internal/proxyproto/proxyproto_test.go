package proxyproto

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	pires "github.com/pires/go-proxyproto"
)

// Linux routes all of 127.0.0.0/8 to the loopback interface, so a test can
// connect from a trusted (127.0.0.1) or an untrusted (127.0.0.2) source.
var (
	trustedSrc   = net.ParseIP("127.0.0.1")
	untrustedSrc = net.ParseIP("127.0.0.2")
)

func listen(t *testing.T, network, addr string, trusted []string, timeout time.Duration) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	prefixes, err := ParsePrefixes(trusted)
	if err != nil {
		t.Fatal(err)
	}
	pl := Wrap(ln, prefixes, timeout)
	t.Cleanup(func() { pl.Close() })
	return pl
}

func dialFrom(t *testing.T, src net.IP, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		if src.Equal(untrustedSrc) {
			t.Skipf("cannot connect from %s (is all of 127.0.0.0/8 on loopback?): %v", src, err)
		}
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// acceptOne accepts in the background, so that a test failing on the
// client side cannot hang on Accept.
func acceptOne(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.c.SetDeadline(time.Now().Add(10 * time.Second))
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return")
		return nil
	}
}

func writeHeader(t *testing.T, w io.Writer, version byte, cmd pires.ProtocolVersionAndCommand, src, dst *net.TCPAddr) {
	t.Helper()
	h := &pires.Header{Version: version, Command: cmd, TransportProtocol: pires.UNSPEC}
	if cmd == pires.PROXY {
		h.TransportProtocol = pires.TCPv4
		if src.IP.To4() == nil {
			h.TransportProtocol = pires.TCPv6
		}
		h.SourceAddr, h.DestinationAddr = src, dst
	}
	if _, err := h.WriteTo(w); err != nil {
		t.Fatal(err)
	}
}

func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from %s: %v", c.RemoteAddr(), err)
	}
	return line
}

func TestTrustedHeader(t *testing.T) {
	client := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40000}
	for _, version := range []byte{1, 2} {
		t.Run(map[byte]string{1: "v1", 2: "v2"}[version], func(t *testing.T) {
			ln := listen(t, "tcp", "127.0.0.1:0", []string{"127.0.0.1/32"}, 2*time.Second)
			c := dialFrom(t, trustedSrc, ln.Addr().String())
			writeHeader(t, c, version, pires.PROXY, client, ln.Addr().(*net.TCPAddr))
			io.WriteString(c, "CAPA\r\n")

			sc := acceptOne(t, ln)
			if got := sc.RemoteAddr().String(); got != client.String() {
				t.Errorf("RemoteAddr = %s, want %s", got, client)
			}
			if got := readLine(t, sc); got != "CAPA\r\n" {
				t.Errorf("read %q after the header, want CAPA", got)
			}
			if _, err := io.WriteString(sc, "+OK\r\n"); err != nil {
				t.Fatal(err)
			}
			if got := readLine(t, c); got != "+OK\r\n" {
				t.Errorf("client read %q", got)
			}
		})
	}
}

// TestTrustedLocal: the balancer's own health checks (v2 LOCAL, v1 PROXY
// UNKNOWN) keep the balancer's address and are served.
func TestTrustedLocal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version byte
		cmd     pires.ProtocolVersionAndCommand
	}{{"v2-local", 2, pires.LOCAL}, {"v1-unknown", 1, pires.PROXY}} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, "tcp", "127.0.0.1:0", []string{"127.0.0.1"}, 2*time.Second)
			c := dialFrom(t, trustedSrc, ln.Addr().String())
			if tc.version == 1 {
				io.WriteString(c, "PROXY UNKNOWN\r\n")
			} else {
				writeHeader(t, c, tc.version, tc.cmd, nil, nil)
			}
			io.WriteString(c, "QUIT\r\n")

			sc := acceptOne(t, ln)
			if got, want := sc.RemoteAddr().String(), c.LocalAddr().String(); got != want {
				t.Errorf("RemoteAddr = %s, want the balancer's %s", got, want)
			}
			if got := readLine(t, sc); got != "QUIT\r\n" {
				t.Errorf("read %q, want QUIT", got)
			}
		})
	}
}

// TestUntrustedHeaderIsData: a header from an address outside the trusted
// networks is not interpreted.
func TestUntrustedHeaderIsData(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0", []string{"127.0.0.1/32"}, 2*time.Second)
	c := dialFrom(t, untrustedSrc, ln.Addr().String())
	const forged = "PROXY TCP4 1.2.3.4 127.0.0.1 1234 110\r\n"
	io.WriteString(c, forged)

	sc := acceptOne(t, ln)
	if got, want := sc.RemoteAddr().String(), c.LocalAddr().String(); got != want {
		t.Errorf("RemoteAddr = %s, want the client's own %s", got, want)
	}
	if got := readLine(t, sc); got != forged {
		t.Errorf("read %q, want the header as data", got)
	}
}

// TestTrustedWithoutHeader: a trusted peer must send a valid header; any
// other start closes the connection with an error.
func TestTrustedWithoutHeader(t *testing.T) {
	for name, data := range map[string]string{
		"plain":     "CAPA\r\n",
		"malformed": "PROXY TCP4 not-an-address 127.0.0.1 1 2\r\nCAPA\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			ln := listen(t, "tcp", "127.0.0.1:0", []string{"127.0.0.0/8"}, 2*time.Second)
			c := dialFrom(t, trustedSrc, ln.Addr().String())
			io.WriteString(c, data)

			sc := acceptOne(t, ln)
			if got, want := sc.RemoteAddr().String(), c.LocalAddr().String(); got != want {
				t.Errorf("RemoteAddr = %s, want the peer's %s", got, want)
			}
			n, err := sc.Read(make([]byte, 64))
			if err == nil || n != 0 {
				t.Fatalf("Read = %d, %v; want an error", n, err)
			}
			if name == "plain" && !errors.Is(err, pires.ErrNoProxyProtocol) {
				t.Errorf("Read error %v, want ErrNoProxyProtocol", err)
			}
			if !strings.Contains(err.Error(), c.LocalAddr().String()) {
				t.Errorf("error %q does not name the peer", err)
			}
			if _, err := io.WriteString(sc, "+OK\r\n"); err == nil {
				t.Error("Write succeeded without a header")
			}
			assertClosed(t, c)
		})
	}
}

// assertClosed waits for the server to close c's other end.
func assertClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 64))
	if err == nil {
		t.Fatalf("client read %d bytes, want the connection closed", n)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("connection was not closed")
	}
}

// TestSilentTrustedPeer: a trusted peer that connects and sends nothing
// neither holds up Accept for other connections nor stays open past the
// header timeout.
func TestSilentTrustedPeer(t *testing.T) {
	const timeout = 200 * time.Millisecond
	ln := listen(t, "tcp", "127.0.0.1:0", []string{"127.0.0.1/32"}, timeout)
	silent := dialFrom(t, trustedSrc, ln.Addr().String())
	first := acceptOne(t, ln)

	// The first connection's header has not been read: accepting the next
	// ones (trusted with a header, and untrusted) goes on meanwhile.
	client := &net.TCPAddr{IP: net.ParseIP("198.51.100.9"), Port: 5555}
	good := dialFrom(t, trustedSrc, ln.Addr().String())
	writeHeader(t, good, 2, pires.PROXY, client, ln.Addr().(*net.TCPAddr))
	second := acceptOne(t, ln)
	other := dialFrom(t, untrustedSrc, ln.Addr().String())
	third := acceptOne(t, ln)
	if got := second.RemoteAddr().String(); got != client.String() {
		t.Errorf("second RemoteAddr = %s, want %s", got, client)
	}
	if got, want := third.RemoteAddr().String(), other.LocalAddr().String(); got != want {
		t.Errorf("third RemoteAddr = %s, want %s", got, want)
	}

	// The silent one is dropped once the timeout passes, in the goroutine
	// that looks at it.
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		first.RemoteAddr()
		_, err := first.Read(make([]byte, 1))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, pires.ErrNoProxyProtocol) {
			t.Errorf("Read error %v, want ErrNoProxyProtocol", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("header wait was not bounded by the timeout")
	}
	if d := time.Since(start); d < timeout/2 {
		t.Errorf("gave up after %v, before the %v timeout", d, timeout)
	}
	assertClosed(t, silent)
}

func TestIPv6(t *testing.T) {
	client := &net.TCPAddr{IP: net.ParseIP("2001:db8::42"), Port: 6000}
	t.Run("trusted", func(t *testing.T) {
		ln := listen(t, "tcp6", "[::1]:0", []string{"::1"}, 2*time.Second)
		c := dialFrom(t, net.IPv6loopback, ln.Addr().String())
		writeHeader(t, c, 2, pires.PROXY, client, ln.Addr().(*net.TCPAddr))
		sc := acceptOne(t, ln)
		if got := sc.RemoteAddr().String(); got != client.String() {
			t.Errorf("RemoteAddr = %s, want %s", got, client)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		ln := listen(t, "tcp6", "[::1]:0", []string{"2001:db8::/32", "127.0.0.1"}, 2*time.Second)
		c := dialFrom(t, net.IPv6loopback, ln.Addr().String())
		io.WriteString(c, "PROXY TCP6 2001:db8::42 ::1 6000 110\r\n")
		sc := acceptOne(t, ln)
		if got, want := sc.RemoteAddr().String(), c.LocalAddr().String(); got != want {
			t.Errorf("RemoteAddr = %s, want %s", got, want)
		}
		if got := readLine(t, sc); !strings.HasPrefix(got, "PROXY TCP6") {
			t.Errorf("read %q, want the header as data", got)
		}
	})
}

func TestIsTrusted(t *testing.T) {
	prefixes, err := ParsePrefixes([]string{"10.0.0.0/8", "2001:db8::/32", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{
		"10.1.2.3":            true,
		"::ffff:10.1.2.3":     true, // an IPv4 peer on a dual-stack socket
		"11.0.0.1":            false,
		"2001:db8:1::5":       true,
		"2001:db9::5":         false,
		"::1":                 true,
		"::2":                 false,
		"fe80::1%lo":          false,
		"2001:db8::9%eth0":    true,
		"::ffff:192.168.0.1":  false,
		"not-an-ip-at-all!!!": false,
	} {
		ip, zone, _ := strings.Cut(addr, "%")
		got := isTrusted(prefixes, &net.TCPAddr{IP: net.ParseIP(ip), Zone: zone, Port: 1})
		if got != want {
			t.Errorf("isTrusted(%s) = %v, want %v", addr, got, want)
		}
	}
	if isTrusted(prefixes, &net.UnixAddr{Name: "/run/sock", Net: "unix"}) {
		t.Error("a Unix socket peer is trusted")
	}
	if isTrusted(prefixes, nil) {
		t.Error("a nil address is trusted")
	}
}

func TestParsePrefixes(t *testing.T) {
	got, err := ParsePrefixes([]string{
		"10.0.0.0/8", " 192.168.1.7 ", "192.168.1.77/24", "2001:db8::/32", "::1",
		"::ffff:10.0.0.0/104", "0.0.0.0/0",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"10.0.0.0/8", "192.168.1.7/32", "192.168.1.0/24", "2001:db8::/32", "::1/128",
		"10.0.0.0/8", "0.0.0.0/0",
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("entry %d = %s, want %s", i, got[i], want[i])
		}
	}
	if got, err := ParsePrefixes(nil); err != nil || len(got) != 0 {
		t.Errorf("ParsePrefixes(nil) = %v, %v", got, err)
	}

	for _, bad := range []string{"10.0.0.0/33", "10.0.0", "example.com", "", "fe80::1%eth0", "::ffff:10.0.0.0/8", "2001:db8::/129", "10.0.0.1/"} {
		_, err := ParsePrefixes([]string{"127.0.0.1", bad})
		if err == nil {
			t.Errorf("ParsePrefixes accepted %q", bad)
			continue
		}
		if !strings.Contains(err.Error(), `"`+bad+`"`) {
			t.Errorf("error %q does not name %q", err, bad)
		}
	}
}
