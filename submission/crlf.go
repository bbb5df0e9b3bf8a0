package submission

import (
	"bytes"
	"io"
)

// lineWriter writes a message body to the upstream connection as DATA
// content (RFC 5321 §4.5.2): every line ending made CRLF, and every line
// that starts with "." given one more. A line ends at CRLF, at a bare LF
// and at a bare CR; CRs before an LF end one line with it, as a device
// that converts its CRLF line endings twice means them (CR CR LF).
//
// Line endings: go-smtp's DATA reader ends the data only at CRLF.CRLF,
// but passes bare LF and bare CR through as data; an upstream that ends
// lines at a bare LF would read "\n.\n" or "\n.\r\n" inside such a body
// as the end of the message and the rest as a second one (SMTP
// smuggling, CVE-2023-51764). Repaired here, every line that is "."
// reaches the upstream dot-stuffed, so only the final terminator ends the
// message, whatever line endings the upstream accepts.
//
// It writes to the connection itself, what it is given in one write
// (io.Copy's buffer): go-smtp's DotWriter would take the body an octet
// at a time and send it in 4 KiB writes. The last line ending is held
// back and goes through go-smtp's DotWriter in Close, so that the
// DotWriter knows the line is complete and its Close sends only the
// terminating "." line, reads the upstream's reply and carries it.
type lineWriter struct {
	w io.Writer
	// stuff: dot-stuff (for SMTP DATA; not for a Mailer, which takes
	// the message itself).
	stuff bool
	// start: nothing written yet, so the next octet begins a line.
	start bool
	// crs: the last octets seen were this many CRs, and no LF yet.
	crs int
	// held: a line ended and its CRLF is not written yet.
	held bool
	// repaired counts the line endings that were not CRLF.
	repaired int
	buf      []byte
}

// newLineWriter writes to w, building each write in buf (which it may
// grow: a body of bare LF becomes up to twice as long), dot-stuffed when
// stuff is set.
func newLineWriter(w io.Writer, buf []byte, stuff bool) *lineWriter {
	return &lineWriter{w: w, stuff: stuff, start: true, buf: buf[:0]}
}

var crlf = []byte("\r\n")

// Write implements io.Writer; it reports len(p) on success, though it may
// write more octets or fewer (a held line ending). Runs without CR or LF
// go through as they are.
func (l *lineWriter) Write(p []byte) (int, error) {
	out := l.buf[:0]
	for i := 0; i < len(p); {
		if l.crs > 0 {
			switch p[i] {
			case '\r':
				l.crs++
				i++
				continue
			case '\n':
				// CRLF; or CRs and LF, as a device that converts line
				// endings twice writes CRLF: one line ending.
				i++
				if l.crs > 1 {
					l.repaired++
				}
			default:
				// A CR not followed by LF ends a line, each of them: the
				// last one is held.
				for range l.crs - 1 {
					out = append(out, crlf...)
				}
				l.start = false
				l.repaired += l.crs
			}
			l.crs = 0
			l.held = true
			continue
		}
		// p[i] begins or continues a line.
		if l.held || l.start {
			if l.held {
				out = append(out, crlf...)
			}
			l.held, l.start = false, false
			if l.stuff && p[i] == '.' {
				out = append(out, '.') // RFC 5321 §4.5.2
			}
		}
		j := bytes.IndexAny(p[i:], "\r\n")
		if j < 0 {
			out = append(out, p[i:]...)
			break
		}
		out = append(out, p[i:i+j]...)
		i += j
		if p[i] == '\r' {
			l.crs = 1
		} else {
			l.repaired++
			l.held = true
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

// Close writes the held line ending to last: for SMTP, go-smtp's
// DotWriter for this message, whose Close then ends the message with "."
// after a complete last line, with CRLF "." after an unfinished one (or
// none at all).
func (l *lineWriter) Close(last io.Writer) error {
	// Final bare CRs end the last line and empty ones after it.
	ends := l.crs
	if l.held {
		ends++
	}
	l.repaired += l.crs
	l.crs, l.held = 0, false
	if ends == 0 {
		return nil
	}
	_, err := last.Write(bytes.Repeat(crlf, ends))
	return err
}
