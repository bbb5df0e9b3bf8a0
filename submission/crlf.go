package submission

import (
	"bytes"
	"io"
)

// lineWriter passes a message body on with every line ending made CRLF:
// a bare LF or a bare CR becomes CRLF. go-smtp's DATA reader ends the
// data only at CRLF.CRLF, but passes bare LF and bare CR through as
// data; an upstream that ends lines at a bare LF would read "\n.\n" or
// "\n.\r\n" inside such a body as the end of the message and the rest as
// a second one (SMTP smuggling, CVE-2023-51764). Repaired here, every
// line that is "." reaches the upstream dot-stuffed (RFC 5321 §4.5.2),
// so only the final terminator ends the message, whatever line endings
// the upstream accepts.
type lineWriter struct {
	w io.Writer
	// cr: the last octet written was a CR whose LF has not been seen.
	cr bool
	// repaired counts the line endings that were not CRLF.
	repaired int
	buf      []byte
}

func newLineWriter(w io.Writer) *lineWriter {
	return &lineWriter{w: w, buf: make([]byte, 0, 32*1024)}
}

// Write implements io.Writer; it reports len(p) on success, though it may
// write more octets. Runs without CR or LF go through as they are.
func (l *lineWriter) Write(p []byte) (int, error) {
	out := l.buf[:0]
	for i := 0; i < len(p); {
		if l.cr {
			l.cr = false
			if p[i] == '\n' {
				out = append(out, '\n')
				i++
				continue
			}
			// A CR not followed by LF ends a line: finish it.
			l.repaired++
			out = append(out, '\n')
		}
		j := bytes.IndexAny(p[i:], "\r\n")
		if j < 0 {
			out = append(out, p[i:]...)
			break
		}
		out = append(out, p[i:i+j]...)
		i += j
		if p[i] == '\r' {
			l.cr = true
			out = append(out, '\r')
		} else {
			l.repaired++
			out = append(out, '\r', '\n')
		}
		i++
	}
	l.buf = out[:0]
	if len(out) > 0 {
		if _, err := l.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush ends a line left open by a final bare CR.
func (l *lineWriter) Flush() error {
	if !l.cr {
		return nil
	}
	l.cr = false
	l.repaired++
	_, err := l.w.Write([]byte{'\n'})
	return err
}
