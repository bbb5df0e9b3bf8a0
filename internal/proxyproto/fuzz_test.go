package proxyproto

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	pires "github.com/pires/go-proxyproto"
)

// pipeListener accepts the connections handed to it, each seen as coming
// from balancer.
type pipeListener struct{ conns chan net.Conn }

var balancer = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}

type fromBalancer struct{ net.Conn }

func (fromBalancer) RemoteAddr() net.Addr { return balancer }

func (l pipeListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l pipeListener) Close() error   { return nil }
func (l pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 110} }

// FuzzTrustedHeader sends arbitrary bytes from a trusted balancer. Without
// a header the PROXY protocol accepts, the connection must yield nothing
// and an error; with one, it must yield exactly the bytes behind the
// header, claim to be proxied, and keep the balancer's address for a LOCAL
// header.
func FuzzTrustedHeader(f *testing.F) {
	client := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 50000}
	client6 := &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 50000}
	for _, h := range []*pires.Header{
		{Version: 1, Command: pires.PROXY, TransportProtocol: pires.TCPv4, SourceAddr: client, DestinationAddr: balancer},
		{Version: 2, Command: pires.PROXY, TransportProtocol: pires.TCPv4, SourceAddr: client, DestinationAddr: balancer},
		{Version: 2, Command: pires.PROXY, TransportProtocol: pires.TCPv6, SourceAddr: client6, DestinationAddr: client6},
		{Version: 2, Command: pires.LOCAL, TransportProtocol: pires.UNSPEC},
	} {
		var b bytes.Buffer
		h.WriteTo(&b)
		f.Add(append(b.Bytes(), "CAPA\r\n"...))
	}
	f.Add([]byte("PROXY UNKNOWN\r\nCAPA\r\n"))
	f.Add([]byte("PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"))
	f.Add([]byte("CAPA\r\n"))
	f.Add([]byte(""))
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

	f.Fuzz(func(t *testing.T, input []byte) {
		conns := make(chan net.Conn, 1)
		ln := Wrap(pipeListener{conns}, trusted, time.Second)
		a, b := net.Pipe()
		conns <- fromBalancer{b}
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			a.Write(input)
			a.Close()
		}()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		got, readErr := io.ReadAll(c)

		r := bytes.NewReader(input)
		br := bufio.NewReader(r)
		header, headerErr := pires.Read(br)
		if headerErr != nil {
			if len(got) > 0 || readErr == nil {
				t.Fatalf("no valid header (%v), yet the connection gave %q, %v", headerErr, got, readErr)
			}
			return
		}
		rest := input[len(input)-r.Len()-br.Buffered():]
		if readErr != nil || !bytes.Equal(got, rest) {
			t.Fatalf("after a valid header the connection gave %q, %v; want %q", got, readErr, rest)
		}
		if p, ok := c.(interface{ Proxied() bool }); !ok || !p.Proxied() {
			t.Fatal("a connection with a header is not marked proxied")
		}
		if header.Command.IsLocal() && c.RemoteAddr().String() != balancer.String() {
			t.Fatalf("a LOCAL header gave the address %v", c.RemoteAddr())
		}
	})
}
