package pop3

import (
	"io"
	"log/slog"
	"net"
	"testing"
)

// The large write buffer is a session's only while it sends a message or
// a listing: it is given back once all it held is sent, so an idle
// session holds the small one, and whatever either buffer held reaches
// the client in order.
func TestLargeWriterOnlyWhileSending(t *testing.T) {
	srv := &Server{Backend: &memBackend{md: &memMaildrop{msgs: sample}}, Logger: slog.New(slog.DiscardHandler)}
	client, server := net.Pipe()
	c := newConn(srv, server, nil, false, 1)
	received := make(chan string)
	go func() {
		b, _ := io.ReadAll(client)
		received <- string(b)
	}()
	c.ok("short")
	if c.bw != c.small || c.bw.Size() != smallWriteBuffer {
		t.Fatalf("a new session writes through %d octets, want the small buffer", c.bw.Size())
	}
	c.growWriter()
	if c.bw == c.small || c.bw.Size() != largeWriteBuffer {
		t.Fatalf("growWriter gave %d octets, want the large buffer", c.bw.Size())
	}
	c.line("a listing's line")
	c.shrinkWriter()
	if c.bw == c.small {
		t.Fatal("the large buffer was given back with octets in it")
	}
	if err := c.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	c.shrinkWriter()
	if c.bw != c.small {
		t.Fatal("the large buffer was kept once flushed")
	}
	c.line("after")
	if err := c.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	server.Close()
	if got, want := <-received, "+OK short\r\na listing's line\r\nafter\r\n"; got != want {
		t.Errorf("the client received %q, want %q", got, want)
	}
}
