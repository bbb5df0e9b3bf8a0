package upstream

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzReadResponseLine feeds arbitrary server output to the reader of the
// ID exchange (before login, so from a server not yet known to be the
// right one): every line it returns is within maxIntroLine, literals
// included, and it always ends, at the end of the input at the latest.
func FuzzReadResponseLine(f *testing.F) {
	for _, s := range []string{
		"* OK [CAPABILITY IMAP4rev1 ID LITERAL+] ready\r\n",
		"* ID (\"name\" {7}\r\nDovecot)\r\na1 OK ID completed.\r\n",
		"* ID ({3+}\r\nabc {0}\r\n)\r\n",
		"* BYE {99999999999}\r\n",
		"* OK {-1}\r\n{2}\r\n\r\n\r\n",
		"no line ending",
		"\r\n\n{",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		br := bufio.NewReader(bytes.NewReader(input))
		for calls := 0; ; calls++ {
			if calls > len(input) {
				t.Fatalf("%d lines from %d octets", calls, len(input))
			}
			line, err := readResponseLine(br)
			if err != nil {
				return
			}
			if len(line) > maxIntroLine {
				t.Fatalf("a line of %d octets", len(line))
			}
		}
	})
}
