package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// dotWriter writes a message as the body of a multi-line response (RFC 1939
// §3): line endings become CRLF (through lineEnds, as NewCRLFReader makes
// them, so the octets written before stuffing equal what NewCRLFReader
// produces), a line starting with "." gets a second one, and Close ends
// the last line if needed and writes the terminating ".".
type dotWriter struct {
	w         *bufio.Writer
	ends      lineEnds
	scratch   []byte // normalised input, when it needed changing
	lineStart bool   // the next octet starts a line
	n         int64  // octets of the message written, before stuffing
}

func newDotWriter(w *bufio.Writer) *dotWriter {
	return &dotWriter{w: w, lineStart: true}
}

func (d *dotWriter) Write(p []byte) (int, error) {
	out := d.ends.normalise(d.scratch[:0], p)
	if len(out) > 0 && len(p) > 0 && &out[0] != &p[0] {
		d.scratch = out[:0]
	}
	d.writeClean(out)
	if err := d.flushErr(); err != nil {
		return 0, err
	}
	return len(p), nil
}

var lineStartDot = []byte("\n.")

// writeClean writes p, which has CRLF line endings only, stuffing dots.
func (d *dotWriter) writeClean(p []byte) {
	for len(p) > 0 {
		if d.lineStart && p[0] == '.' {
			d.w.WriteByte('.')
		}
		i := bytes.Index(p, lineStartDot)
		if i < 0 {
			d.w.Write(p)
			d.n += int64(len(p))
			d.lineStart = p[len(p)-1] == '\n'
			return
		}
		d.w.Write(p[:i+1])
		d.n += int64(i + 1)
		d.lineStart = true
		p = p[i+1:]
	}
}

// flushErr reports a write error of the underlying buffer, if any.
func (d *dotWriter) flushErr() error {
	// bufio.Writer keeps its first error and returns it from every later
	// call; a zero-length write asks for it without writing.
	_, err := d.w.Write(nil)
	return err
}

// Close ends the message. It does not flush the underlying writer.
func (d *dotWriter) Close() error {
	if end := d.ends.end(d.scratch[:0]); len(end) > 0 {
		d.writeClean(end)
	}
	if !d.lineStart {
		// The response must end the last line before its terminator
		// (RFC 1939 §3); that CRLF is not part of the message, nor of
		// its size.
		d.w.Write(crlf)
		d.lineStart = true
	}
	d.w.WriteString(".\r\n")
	return d.flushErr()
}

// errTopDone stops a copy once TOP has sent what was asked for.
var errTopDone = errors.New("pop3: top limit reached")

// topWriter passes on the header, the blank line that ends it and then at
// most lines lines of the body (RFC 1939 §7), and returns errTopDone once
// it has passed all it will.
type topWriter struct {
	w         io.Writer
	lines     int64 // body lines still to pass
	inBody    bool
	lineStart bool
	prevCR    bool
}

// TopComplete tells whether msg, the start of a message as NewCRLFReader
// returns it, holds everything TOP sends for lines body lines: the header,
// the blank line and that many lines of the body (RFC 1939 §7).
func TopComplete(msg []byte, lines int64) bool {
	_, err := newTopWriter(io.Discard, lines).Write(msg)
	return errors.Is(err, errTopDone)
}

func newTopWriter(w io.Writer, lines int64) *topWriter {
	return &topWriter{w: w, lines: lines, lineStart: true}
}

func (t *topWriter) Write(p []byte) (int, error) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if t.inBody && t.lines <= 0 && !(t.prevCR && c == '\n') {
			if _, err := t.w.Write(p[:i]); err != nil {
				return 0, err
			}
			return i, errTopDone
		}
		switch {
		case c == '\n' && t.prevCR:
			// The LF of a CRLF: the line already ended at the CR.
		case c == '\n' || c == '\r':
			if t.inBody {
				t.lines--
			} else if t.lineStart {
				t.inBody = true // the empty line that ends the header
			}
			t.lineStart = true
		default:
			t.lineStart = false
		}
		t.prevCR = c == '\r'
	}
	if _, err := t.w.Write(p); err != nil {
		return 0, err
	}
	if t.inBody && t.lines <= 0 && !t.prevCR {
		return len(p), errTopDone
	}
	return len(p), nil
}
