package submission

import (
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// doubledCRCases are DATA octets, the terminator included, with lines
// ending in CR CR LF (a device converting line endings twice), and the
// message a reader that keeps to RFC 5321 §4.5.2 takes from them, line
// endings made CRLF as the relay makes them (CRs and LF: one line ending).
var doubledCRCases = []struct{ name, data, want string }{
	{"the end after CR CR LF", "a\r\r\n.\r\n", "a\r\n"},
	{"a stuffed dot after CR CR LF", "a\r\r\n..b\r\n.\r\n", "a\r\n.b\r\n"},
	{"a dot and a bare CR after CR CR LF", "a\r\r\n.\rb\r\n.\r\n", "a\r\n\r\nb\r\n"},
	{"a dot line ending CR CR LF", "a\r\r\n.\r\r\nb\r\n.\r\n", "a\r\n\r\nb\r\n"},
	{"four CRs", "a\r\r\r\r\n.\r\n", "a\r\n"},
	{"three CRs, which go-smtp reads right", "a\r\r\r\n..b\r\n.\r\n", "a\r\n.b\r\n"},
	{"every line", "Subject: x\r\r\n\r\r\n..\r\r\nbody\r\r\n.\r\n", "Subject: x\r\n\r\n.\r\nbody\r\n"},
}

// TestDoubledCRLineEndings: a message whose lines end in CR CR LF is read
// as the RFC says, through go-smtp's DATA reader, which misreads the line
// after such an ending: its dot-stuffing is undone, and a "." line there
// ends the message, answered within a second or so instead of after the
// idle timeout. The connection goes on with the next transaction, over
// plain TCP and over STARTTLS.
func TestDoubledCRLineEndings(t *testing.T) {
	for _, viaTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", viaTLS), func(t *testing.T) {
			up := newFakeUpstream(t, nil)
			h := newRelay(t, up, func(s *Server) {
				s.TLSConfig = testenv.ServerTLS(t, "127.0.0.1")
				s.IdleTimeout = time.Minute
			})
			c := h.dial()
			if viaTLS {
				c.cmd("EHLO device.example", "250-")
				c.cmd("STARTTLS", "220 ")
				tc := tls.Client(c.nc, &tls.Config{InsecureSkipVerify: true})
				c.nc, c.r = tc, newReader(tc)
			}
			c.login()
			for i, tc := range doubledCRCases {
				c.nc.SetDeadline(time.Now().Add(10 * time.Second))
				start := time.Now()
				if reply := c.send("alice@example.com", []string{"b@example.org"}, tc.data[:len(tc.data)-len("\r\n.\r\n")]); reply[:4] != "250 " {
					t.Fatalf("%s: reply %q", tc.name, reply)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("%s: answered after %v", tc.name, d)
				}
				msgs := up.delivered()
				if len(msgs) != i+1 {
					t.Fatalf("%s: %d messages upstream, want %d", tc.name, len(msgs), i+1)
				}
				if got := string(msgs[i].body); got != tc.want {
					t.Errorf("%s: upstream got %q, want %q", tc.name, got, tc.want)
				}
			}
			c.cmd("QUIT", "221 ")
		})
	}
}

// TestBDATNotMended: BDAT chunks are counted octets, not dot-stuffed: a
// "." line after CR CR LF in one is message text, not its end.
func TestBDATNotMended(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	c.envelope("alice@example.com", "b@example.org")
	chunk := "a\r\r\n.\r\n..b\r\n"
	fmt.Fprintf(c.nc, "BDAT %d LAST\r\n", len(chunk))
	io.WriteString(c.nc, chunk)
	c.expect("250 ")
	msgs := up.delivered()
	if len(msgs) != 1 {
		t.Fatalf("%d messages upstream, want 1", len(msgs))
	}
	if got := string(msgs[0].body); got != "a\r\n.\r\n..b\r\n" {
		t.Fatalf("upstream got %q", got)
	}
	c.cmd("QUIT", "221 ")
}

// TestDoubledCREndAfterUpstreamLost: when the upstream drops early in a
// message whose last line ends in CR CR LF, the relay reads the rest and
// finds its end itself, so the device hears 451 at the end of its message,
// not after the idle timeout.
func TestDoubledCREndAfterUpstreamLost(t *testing.T) {
	up := newFakeUpstream(t, func(f *fakeUpstream) { f.dropAfter = 1000 })
	h := newRelay(t, up, func(s *Server) { s.IdleTimeout = time.Minute })
	c := h.dial()
	c.login()
	c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	c.envelope("alice@example.com", "b@example.org")
	c.cmd("DATA", "354 ")
	lines := strings.Repeat("0123456789abcdef\r\r\n", 1<<12)
	io.WriteString(c.nc, lines)
	// The upstream is gone by now, and the relay has stopped writing.
	time.Sleep(time.Second)
	io.WriteString(c.nc, lines+".\r\n")
	c.expect("451 ")
	if n := len(up.delivered()); n != 0 {
		t.Fatalf("%d messages upstream", n)
	}
	c.cmd("QUIT", "221 ")
}
