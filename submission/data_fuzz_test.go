package submission

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// FuzzDataReader sends arbitrary octets as a message's DATA to the relay
// (go-smtp's server with the relay's session, over loopback, in front of
// an upstream), ended by the one terminator RFC 5321 §4.1.1.4 defines,
// CRLF "." CRLF, which the octets themselves never hold: a sender that
// keeps to the RFC sees one message. The relay must see one too: it
// answers the final dot once, runs nothing hidden in the message as a
// command (QUIT is answered next), and the upstream receives at most one
// message, with CRLF line endings only: the message a reader keeping to
// the RFC takes from the octets (rfcMessage).
func FuzzDataReader(f *testing.F) {
	for _, seed := range []string{
		"Subject: x\r\n\r\nbody",
		"a\n.\nMAIL FROM:<ceo@example.com>\nRCPT TO:<v@example.org>\nDATA\nevil\n.\n",
		"a\r.\rRSET\r",
		"a\r\n.\nQUIT\r\n",
		"a\n.\r\nNOOP\r\n",
		"..\r\n.x\r\n",
		"\r",
		"\n",
		"line\r\r\n.\r\r\nRSET",
		"line\r",
		"a\r\r\n..b\r\r\n.x",
		"a\r\r\r\r\n.\r\r\n",
		strings.Repeat("x", 1200) + "\r\n.\nNOOP",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if bytes.Contains(append(append([]byte("\r\n"), data...), "\r\n"...), []byte("\r\n.\r\n")) {
			t.Skip("the octets end the message themselves")
		}
		if dotBareCR(append(data, "\r\n.\r\n"...)) {
			// go-smtp v0.26.0's DATA reader drops the CR of a line that
			// begins with a dot and a bare CR, and after ".\r\r\n" takes
			// the next line for the middle of one: the relay cannot see
			// what it dropped, nor tell ".\r\r\n" from an empty line.
			// A known defect of the library (see dataRepair).
			t.Skip("a line that begins with a dot and a bare CR")
		}
		up := newFakeUpstream(t, nil)
		h := newRelay(t, up, nil)
		c := h.dial()
		c.nc.SetDeadline(time.Now().Add(10 * time.Second))
		c.login()
		c.cmd("MAIL FROM:<alice@example.com>", "250 ")
		c.cmd("RCPT TO:<b@example.org>", "250 ")
		c.cmd("DATA", "354 ")
		c.nc.Write(append(data, "\r\n.\r\n"...))
		final := c.reply()
		if !strings.HasPrefix(final, "250 ") && !strings.HasPrefix(final, "5") && !strings.HasPrefix(final, "4") {
			t.Fatalf("reply %q to the final dot", final)
		}
		if longLine(data) {
			// A line longer than go-smtp's limit (MaxLineLength) is
			// refused for good, and go-smtp closes the connection at the
			// next command.
			if !strings.HasPrefix(final, "554 5.6.0") {
				t.Fatalf("reply %q to a message with a line over 2000 octets", final)
			}
			c.cmd("QUIT", "500 ")
		} else {
			c.cmd("QUIT", "221 ")
		}
		msgs := up.delivered()
		if len(msgs) > 1 {
			t.Fatalf("%d messages reached the upstream from one DATA: %q", len(msgs), data)
		}
		if strings.HasPrefix(final, "250 ") && len(msgs) != 1 {
			t.Fatalf("250 after the final dot, %d messages upstream", len(msgs))
		}
		for _, m := range msgs {
			bare := bytes.ReplaceAll(m.body, []byte("\r\n"), nil)
			if bytes.ContainsAny(bare, "\r\n") {
				t.Fatalf("a bare CR or LF reached the upstream: %q", m.body)
			}
			if want := rfcMessage(append(data, "\r\n.\r\n"...)); !bytes.Equal(m.body, want) {
				t.Fatalf("the upstream got %q of %q, want %q", m.body, data, want)
			}
		}
	})
}

// longLine tells whether data, followed by the end of the data, has a
// line of more than 2000 octets, LF included, counting from the line
// DATA began.
func longLine(data []byte) bool {
	for line := range bytes.SplitSeq(append(data, "\r\n.\r\n"...), []byte("\n")) {
		if len(line)+1 > 2000 {
			return true
		}
	}
	return false
}

// dotBareCR tells whether a line of stream (after an LF, or the first)
// begins with a dot and a CR that is not part of CRLF.
func dotBareCR(stream []byte) bool {
	stream = append([]byte("\n"), stream...)
	for i := 0; i+3 < len(stream); i++ {
		if stream[i] == '\n' && stream[i+1] == '.' && stream[i+2] == '\r' && stream[i+3] != '\n' {
			return true
		}
	}
	return false
}

// rfcMessage is the message that a reader keeping to RFC 5321 §4.5.2
// takes from the octets after DATA's 354, up to the first "." line, with
// each line's first dot removed, and its line endings made CRLF as the
// relay makes them (crlfLines).
func rfcMessage(stream []byte) []byte {
	var msg []byte
	for {
		line, rest, _ := bytes.Cut(stream, []byte("\r\n"))
		stream = rest
		if string(line) == "." {
			break
		}
		line = bytes.TrimPrefix(line, []byte("."))
		msg = append(append(msg, line...), "\r\n"...)
	}
	return crlfLines(msg)
}
