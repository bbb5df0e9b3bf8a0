package pop3

import (
	"bytes"
	"io"
	"testing"
)

// TestCRLFReaderCountsTheMessageOnly: line endings become CRLF, but a
// last line without one is not given one; the response adds that CRLF,
// uncounted, so the size is the message's own (RFC 1939 §11), as Dovecot
// lists it.
func TestCRLFReaderCountsTheMessageOnly(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"a", "a"},
		{"a\r\nb", "a\r\nb"},
		{"a\nb", "a\r\nb"},
		{"a\nb\n", "a\r\nb\r\n"},
		{"a\r", "a\r\n"},
		{"a\rb", "a\r\nb"},
		{"Subject: x\n\nno newline", "Subject: x\r\n\r\nno newline"},
	} {
		for _, chunked := range []bool{false, true} {
			var r io.Reader = bytes.NewReader([]byte(tc.in))
			if chunked {
				r = iotestOneByte([]byte(tc.in))
			}
			got, err := io.ReadAll(NewCRLFReader(r))
			if err != nil || string(got) != tc.want {
				t.Errorf("%q (one octet at a time: %v) = %q, %v; want %q", tc.in, chunked, got, err, tc.want)
			}
			wire, n := stuffed([]byte(tc.in), 3)
			if n != int64(len(tc.want)) {
				t.Errorf("%q: the dot-writer counted %d octets, want %d", tc.in, n, len(tc.want))
			}
			if tc.in != "" && !bytes.HasSuffix(wire, []byte("\r\n.\r\n")) {
				t.Errorf("%q: sent %q, the last line not ended before the terminator", tc.in, wire)
			}
		}
	}
}
