package submission

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// upstreamWire is what the relay writes to the upstream for a message
// whose DATA octets (after go-smtp's own un-stuffing) are data: the line
// writer's writes to the connection, then the last line ending and the
// terminator through go-smtp's client, whose writer is textproto's
// DotWriter, buffered until its Close.
func upstreamWire(t testing.TB, data []byte) []byte {
	var wire bytes.Buffer
	bw := bufio.NewWriter(&wire)
	dw := textproto.NewWriter(bw).DotWriter()
	lw := newLineWriter(&wire, nil, true)
	// Written in pieces, so a CR and its LF may fall in two writes.
	for len(data) > 0 {
		n := min(len(data), 7)
		if _, err := lw.Write(data[:n]); err != nil {
			t.Fatal(err)
		}
		data = data[n:]
	}
	if err := lw.Close(dw); err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	return wire.Bytes()
}

// referenceWire is what the upstream must see for data: every CRLF, bare
// CR and bare LF made CRLF, then dot-stuffed and terminated by
// textproto's DotWriter, an octet at a time.
func referenceWire(data []byte) []byte {
	var wire bytes.Buffer
	bw := bufio.NewWriter(&wire)
	dw := textproto.NewWriter(bw).DotWriter()
	dw.Write(crlfLines(data))
	dw.Close()
	bw.Flush()
	return wire.Bytes()
}

// crlfLines is data with its line endings made CRLF as the relay makes
// them: CRLF stays, CRs before an LF end one line with it, and every
// other CR, and every bare LF, ends a line.
func crlfLines(data []byte) []byte {
	var out []byte
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case '\r':
			j := i
			for j < len(data) && data[j] == '\r' {
				j++
			}
			if j < len(data) && data[j] == '\n' {
				out = append(out, "\r\n"...)
				i = j
				continue
			}
			out = append(out, bytes.Repeat([]byte("\r\n"), j-i)...)
			i = j - 1
		case '\n':
			out = append(out, "\r\n"...)
		default:
			out = append(out, data[i])
		}
	}
	return out
}

// FuzzLineWriter: whatever octets a client's message holds, the upstream
// sees one message. Read by the most lenient rules an upstream may apply
// (a line ends at CRLF, at a bare LF or at a bare CR), the first line
// that is "." is the final one; and every line ending on the wire is
// CRLF.
func FuzzLineWriter(f *testing.F) {
	for _, seed := range []string{
		"Subject: x\r\n\r\nbody\r\n",
		"a\n.\nMAIL FROM:<x>\n",
		"a\r.\rb",
		"a\r\n.\nb",
		"a\n.\r\nb",
		"a\r.\r\nb",
		".\r\n",
		"\r",
		"\n",
		"..\r\n.\r",
		"line\r\r\n.\r\r\n",
		"",
		".",
		"..",
		"a\r\n.b\r\n..\r\n",
		".\r\n.\n.\r.",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		wire := upstreamWire(t, data)
		if want := referenceWire(data); !bytes.Equal(wire, want) {
			t.Fatalf("wire %q, want %q", wire, want)
		}
		if !bytes.HasSuffix(wire, []byte("\r\n.\r\n")) && !bytes.Equal(wire, []byte(".\r\n")) {
			t.Fatalf("wire %q does not end with the terminator", wire)
		}
		if bytes.Contains(bytes.ReplaceAll(wire, []byte("\r\n"), nil), []byte{'\n'}) ||
			bytes.Contains(bytes.ReplaceAll(wire, []byte("\r\n"), nil), []byte{'\r'}) {
			t.Fatalf("bare CR or LF on the wire: %q", wire)
		}
		// Lenient reading: split at CRLF, LF or CR.
		start := 0
		for i := 0; i < len(wire); i++ {
			if wire[i] != '\r' && wire[i] != '\n' {
				continue
			}
			line := wire[start:i]
			end := i + 1
			if wire[i] == '\r' && i+1 < len(wire) && wire[i+1] == '\n' {
				end = i + 2
			}
			if string(line) == "." && end != len(wire) {
				t.Fatalf("a lenient upstream ends the message at octet %d of %d: %q", i, len(wire), wire)
			}
			start = end
			i = end - 1
		}
	})
}
