package pop3

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// benchMessage is about 1 MB of typical mail: 76-column base64 lines with a
// few lines starting with dots.
var benchMessage = []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("QUJD", 19)+"\r\n.dot line\r\n", 12000))

func BenchmarkDotWriter(b *testing.B) {
	bw := bufio.NewWriterSize(io.Discard, 64<<10)
	b.SetBytes(int64(len(benchMessage)))
	for b.Loop() {
		dw := newDotWriter(bw)
		for chunk := benchMessage; len(chunk) > 0; {
			n := min(32<<10, len(chunk))
			dw.Write(chunk[:n])
			chunk = chunk[n:]
		}
		dw.Close()
	}
}

func BenchmarkCRLFReader(b *testing.B) {
	for _, input := range []struct {
		name string
		msg  []byte
	}{
		{"crlf", benchMessage},
		{"lf", bytes.ReplaceAll(benchMessage, []byte("\r\n"), []byte("\n"))},
	} {
		b.Run(input.name, func(b *testing.B) {
			b.SetBytes(int64(len(input.msg)))
			b.ReportAllocs()
			buf := make([]byte, 32<<10)
			for b.Loop() {
				r := NewCRLFReader(bytes.NewReader(input.msg))
				for {
					if _, err := r.Read(buf); err != nil {
						break
					}
				}
			}
		})
	}
}
