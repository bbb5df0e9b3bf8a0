package pop3client

import (
	"io"
	"net"
	"strings"
	"testing"
)

// serve answers a client on the other end of a pipe: the greeting, then
// reply to the first command, and checks the command was UIDL.
func serve(t *testing.T, reply string) *Client {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	go func() {
		io.WriteString(server, "+OK ready\r\n")
		buf := make([]byte, 64)
		n, _ := server.Read(buf)
		if string(buf[:n]) != "UIDL\r\n" {
			io.WriteString(server, "-ERR unexpected\r\n")
			return
		}
		io.WriteString(server, reply)
		server.Close()
	}()
	c, err := New(client)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCountUIDL(t *testing.T) {
	for _, tc := range []struct {
		name, reply string
		want        int
		err         string
	}{
		{"empty", "+OK\r\n.\r\n", 0, ""},
		{"three", "+OK\r\n1 a\r\n2 b\r\n3 c\r\n.\r\n", 3, ""},
		{"refused", "-ERR no\r\n", 0, "-ERR no"},
		{"no id", "+OK\r\n1 a\r\n2\r\n.\r\n", 1, `UIDL line "2\r\n"`},
		{"not a number", "+OK\r\nx a\r\n.\r\n", 0, "UIDL line"},
		{"bare LF", "+OK\r\n1 a\n.\r\n", 0, "UIDL line"},
		{"cut short", "+OK\r\n1 a\r\n2 b", 1, "cut short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := serve(t, tc.reply).CountUIDL()
			if n != tc.want {
				t.Errorf("counted %d lines, want %d", n, tc.want)
			}
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want one with %q", err, tc.err)
			}
		})
	}
}
