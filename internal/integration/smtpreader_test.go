package integration

import (
	"bufio"
	"net"
	"strings"
	"testing"
)

// lineReader reads SMTP replies.
type lineReader struct{ r *bufio.Reader }

func newLineReader(nc net.Conn) *lineReader { return &lineReader{r: bufio.NewReader(nc)} }

// reply reads one reply, its lines joined by "\n".
func (l *lineReader) reply(t *testing.T) string {
	t.Helper()
	var lines []string
	for {
		line, err := l.r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a reply: %v (so far %q)", err, lines)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}
