package submission

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// upstreamWire is what the relay writes to the upstream for a message
// whose DATA octets (after go-smtp's own un-stuffing) are data: the line
// writer, then go-smtp's client, whose writer is textproto's DotWriter.
func upstreamWire(t testing.TB, data []byte) []byte {
	var wire bytes.Buffer
	bw := bufio.NewWriter(&wire)
	dw := textproto.NewWriter(bw).DotWriter()
	lw := newLineWriter(dw)
	// Written in pieces, so a CR and its LF may fall in two writes.
	for len(data) > 0 {
		n := min(len(data), 7)
		if _, err := lw.Write(data[:n]); err != nil {
			t.Fatal(err)
		}
		data = data[n:]
	}
	if err := lw.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	return wire.Bytes()
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
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		wire := upstreamWire(t, data)
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
