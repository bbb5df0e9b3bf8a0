// Package proxyproto accepts the PROXY protocol (v1 and v2) on the
// gateway's listeners, from trusted load balancers only.
package proxyproto

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	pires "github.com/pires/go-proxyproto"
)

// DefaultHeaderTimeout bounds how long a connection from a trusted
// balancer may take to send its PROXY header when no timeout is given.
const DefaultHeaderTimeout = 5 * time.Second

// ParsePrefixes parses networks given as CIDR prefixes ("10.0.0.0/8",
// "2001:db8::/32") or bare addresses ("10.0.0.1", "::1"), which stand for
// themselves alone (/32 or /128). IPv4-mapped IPv6 entries are turned into
// the IPv4 network they describe, since connections are matched by their
// unmapped address. An error names the first bad entry.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		entry := strings.TrimSpace(s)
		var p netip.Prefix
		if strings.Contains(entry, "/") {
			var err error
			p, err = netip.ParsePrefix(entry)
			if err != nil {
				return nil, fmt.Errorf("trusted network %q: not a CIDR prefix or address", s)
			}
		} else {
			a, err := netip.ParseAddr(entry)
			if err != nil {
				return nil, fmt.Errorf("trusted network %q: not a CIDR prefix or address", s)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("trusted network %q: addresses with a zone are not supported", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if a := p.Addr(); a.Is4In6() {
			if p.Bits() < 96 {
				return nil, fmt.Errorf("trusted network %q: IPv4-mapped prefix shorter than /96", s)
			}
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ProxyProtocol wraps ln so that connections from the trusted networks
// must start with a PROXY protocol header (version 1 or 2), whose source
// address then becomes the connection's RemoteAddr. Connections from any
// other address are passed through untouched: no header is looked for, so
// one sent by an untrusted client is just data, which the POP3 server
// rejects as an unknown command.
//
// headerTimeout bounds the wait for the header; zero or less means
// DefaultHeaderTimeout (waiting without a bound is never wanted).
//
// How this relies on github.com/pires/go-proxyproto (v0.15):
//
//   - The policy is chosen per connection by Listener.ConnPolicy from the
//     peer's address: REQUIRE for trusted peers, SKIP for the rest. SKIP
//     makes Accept return the raw connection. The policy function never
//     fails, because an error from it would be returned by Accept and end
//     the server's accept loop.
//   - Accept does no I/O: it wraps the connection, and the header is read
//     on the first Read, Write, RemoteAddr or LocalAddr, that is in the
//     session's own goroutine, under a read deadline of headerTimeout. A
//     balancer that connects and sends nothing holds up only its own
//     connection.
//   - When a trusted peer sends no valid header (other data, a malformed
//     header, or nothing before the timeout), the library reports the error
//     from every Read and Write but RemoteAddr falls back to the peer's own
//     address. So that such a connection is never served as if it came
//     from the balancer, the connection is closed as soon as the header is
//     found missing; Read and Write return the error naming the peer.
//   - A version 2 LOCAL command (the balancer's own health check) and a
//     version 1 "PROXY UNKNOWN" carry no client address: the connection
//     keeps the balancer's address and is served.
func Wrap(ln net.Listener, trusted []netip.Prefix, headerTimeout time.Duration) net.Listener {
	if headerTimeout <= 0 {
		headerTimeout = DefaultHeaderTimeout
	}
	trusted = append([]netip.Prefix(nil), trusted...)
	pl := &pires.Listener{
		Listener: ln,
		ConnPolicy: func(o pires.ConnPolicyOptions) (pires.Policy, error) {
			if isTrusted(trusted, o.Upstream) {
				return pires.REQUIRE, nil
			}
			return pires.SKIP, nil
		},
		ReadHeaderTimeout: headerTimeout,
	}
	return &proxyListener{pl}
}

// isTrusted tells whether addr, a connection's peer, lies in one of the
// trusted networks. Addresses that are not IP addresses are not trusted.
func isTrusted(trusted []netip.Prefix, addr net.Addr) bool {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if addr == nil {
			return false
		}
		ap, err := netip.ParseAddrPort(addr.String())
		if err != nil {
			return false
		}
		ip = ap.Addr()
	}
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap().WithZone("")
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// proxyListener hands out connections from trusted peers wrapped so that
// a missing header closes them.
type proxyListener struct {
	*pires.Listener
}

func (l *proxyListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if pc, ok := nc.(*pires.Conn); ok {
		return &trustedConn{pc: pc}, nil
	}
	return nc, nil
}

// trustedConn is a connection from a trusted balancer. The library reads
// the header at most once, on the first use of the connection; check then
// looks at the outcome and closes the connection if there is no header.
type trustedConn struct {
	pc    *pires.Conn
	once  sync.Once
	valid bool
	err   error
}

// check reads the header if that has not happened yet and tells whether it
// was valid. With the REQUIRE policy the library keeps a header exactly
// when it was read and accepted (a LOCAL one too), so a nil header means
// the connection has none: it is closed, and err says why.
func (c *trustedConn) check() error {
	c.once.Do(func() {
		if c.pc.ProxyHeader() != nil {
			c.valid = true
			return
		}
		// The library caches the header error and returns it from every
		// Read, without touching the connection again; a zero-length read
		// fetches it.
		_, err := c.pc.Read(nil)
		if err == nil {
			err = pires.ErrNoProxyProtocol
		}
		c.err = fmt.Errorf("listener: no valid PROXY header from trusted peer %s: %w", c.pc.Raw().RemoteAddr(), err)
		c.pc.Close()
	})
	if !c.valid {
		return c.err
	}
	return nil
}

func (c *trustedConn) Read(b []byte) (int, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	return c.pc.Read(b)
}

func (c *trustedConn) Write(b []byte) (int, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	return c.pc.Write(b)
}

func (c *trustedConn) Close() error { return c.pc.Close() }

// Proxied tells that RemoteAddr is what a balancer claims, not the peer:
// an address such as 127.0.0.1 in a header does not make a client local.
// The pop3 server looks for this method.
func (c *trustedConn) Proxied() bool { return true }

// RemoteAddr is the client's address from the header, or the balancer's
// own for a LOCAL or UNKNOWN header. Without a valid header it is the
// peer's address too, but the connection is closed by then.
func (c *trustedConn) RemoteAddr() net.Addr {
	c.check()
	return c.pc.RemoteAddr()
}

func (c *trustedConn) LocalAddr() net.Addr {
	c.check()
	return c.pc.LocalAddr()
}

func (c *trustedConn) SetDeadline(t time.Time) error      { return c.pc.SetDeadline(t) }
func (c *trustedConn) SetReadDeadline(t time.Time) error  { return c.pc.SetReadDeadline(t) }
func (c *trustedConn) SetWriteDeadline(t time.Time) error { return c.pc.SetWriteDeadline(t) }
