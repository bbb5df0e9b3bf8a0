package pop3

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// stuffed runs msg through the dot-stuffing writer.
func stuffed(msg []byte, chunk int) ([]byte, int64) {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	dw := newDotWriter(bw)
	for len(msg) > 0 {
		n := min(chunk, len(msg))
		dw.Write(msg[:n])
		msg = msg[n:]
	}
	dw.Close()
	bw.Flush()
	return out.Bytes(), dw.n
}

func unstuff(wire []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(wire, []byte("\r\n")) {
		if bytes.HasPrefix(line, []byte(".")) {
			line = line[1:]
		}
		out = append(out, line...)
	}
	return out
}

func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"", "a", ".", "\r", "\n", "a\r\n.\r\n", "..\n.\r\r\n", "x\ry\nz", "\r\n\r\n.", ".\r"} {
		f.Add([]byte(s), 1)
		f.Add([]byte(s), 3)
	}
	f.Fuzz(func(t *testing.T, msg []byte, chunk int) {
		if chunk <= 0 || chunk > 1<<16 {
			chunk = 7
		}
		wire, n := stuffed(msg, chunk)
		canonical, err := io.ReadAll(NewCRLFReader(iotestOneByte(msg)))
		if err != nil {
			t.Fatal(err)
		}
		if n != int64(len(canonical)) {
			t.Fatalf("counted %d octets, the CRLF reader gives %d", n, len(canonical))
		}
		if !bytes.HasSuffix(wire, []byte(".\r\n")) {
			t.Fatalf("no terminator: %q", wire)
		}
		body := wire[:len(wire)-3]
		if len(body) > 0 && !bytes.HasSuffix(body, []byte("\r\n")) {
			t.Fatalf("last line not ended: %q", wire)
		}
		for _, line := range bytes.SplitAfter(body, []byte("\r\n")) {
			if bytes.Equal(line, []byte(".\r\n")) {
				t.Fatalf("an early terminator in %q", wire)
			}
			if bytes.ContainsAny(bytes.TrimSuffix(line, []byte("\r\n")), "\r\n") {
				t.Fatalf("bare CR or LF on the wire: %q", line)
			}
		}
		// The response ends a last line left open; that CRLF is not
		// counted (RFC 1939 §11).
		want := canonical
		if len(want) > 0 && !bytes.HasSuffix(want, []byte("\r\n")) {
			want = append(want, "\r\n"...)
		}
		if got := unstuff(body); !bytes.Equal(got, want) {
			t.Fatalf("unstuffed %q, want %q", got, want)
		}
	})
}

// iotestOneByte reads one octet at a time, to cross every boundary.
func iotestOneByte(b []byte) io.Reader { return &oneByte{b} }

type oneByte struct{ b []byte }

func (r *oneByte) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

func FuzzTopWriter(f *testing.F) {
	f.Add([]byte("Subject: a\r\n\r\nb1\r\nb2\r\n"), 1)
	f.Add([]byte("Subject: a\n\nb1\nb2"), 0)
	f.Add([]byte("no blank line"), 5)
	f.Add([]byte("\r\n\r\n\r\n"), 1)
	f.Fuzz(func(t *testing.T, msg []byte, lines int) {
		if lines < 0 {
			lines = -lines
		}
		canonical, _ := io.ReadAll(NewCRLFReader(bytes.NewReader(msg)))
		var out bytes.Buffer
		tw := newTopWriter(&out, int64(lines))
		for _, b := range canonical {
			if _, err := tw.Write([]byte{b}); err != nil {
				break
			}
		}
		top := out.Bytes()
		if !bytes.HasPrefix(canonical, top) {
			t.Fatalf("TOP %q is not a prefix of %q", top, canonical)
		}
		if len(top) > 0 && !bytes.HasSuffix(top, []byte("\r\n")) && !bytes.Equal(top, canonical) {
			t.Fatalf("TOP ends inside a line: %q", top)
		}
		header, body, found := bytes.Cut(canonical, []byte("\r\n\r\n"))
		if bytes.HasPrefix(canonical, []byte("\r\n")) {
			header, body, found = nil, canonical[2:], true
		}
		if !found {
			if !bytes.Equal(top, canonical) {
				t.Fatalf("header-only message cut: %q", top)
			}
			return
		}
		_ = header
		bodyLines := countLines(top[len(canonical)-len(body):])
		want := min(lines, countLines(body))
		if bodyLines != want {
			t.Fatalf("TOP %d sent %d body lines of %q", lines, bodyLines, canonical)
		}
	})
}

// countLines counts lines, the last one with or without its CRLF.
func countLines(b []byte) int {
	n := bytes.Count(b, []byte("\r\n"))
	if len(b) > 0 && !bytes.HasSuffix(b, []byte("\r\n")) {
		n++
	}
	return n
}
