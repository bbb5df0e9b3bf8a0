package pop3

import (
	"bytes"
	"io"
	"sync"
)

// lineEnds puts a message into the form POP3 sends it: each bare CR and
// each bare LF becomes CRLF (RFC 1939 §3). It is the one place line
// endings are normalised: NewCRLFReader, whose count of octets is the size
// STAT and LIST report (RFC 1939 §11), and the dot-stuffing writer both
// run their input through it, so the two always agree.
type lineEnds struct {
	pendingCR bool // a CR ended the last input; its LF may start the next
}

var (
	crlf = []byte("\r\n")
	lf   = []byte{'\n'}
	cr   = []byte{'\r'}
)

// normalise returns p in CRLF form, appended to dst, or p itself (a
// prefix of it) when p needs no change, as mail from an IMAP server almost
// always does. A CR at the end of p is held back until the next call, or
// end, shows whether an LF follows it.
func (s *lineEnds) normalise(dst, p []byte) []byte {
	if !s.pendingCR {
		clean := p
		if len(clean) > 0 && clean[len(clean)-1] == '\r' {
			clean = clean[:len(clean)-1]
		}
		if crlfClean(clean) {
			s.pendingCR = len(clean) < len(p)
			return clean
		}
	}
	for len(p) > 0 {
		if s.pendingCR {
			s.pendingCR = false
			dst = append(dst, crlf...)
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		i := bytes.IndexAny(p, "\r\n")
		if i < 0 {
			return append(dst, p...)
		}
		dst = append(dst, p[:i]...)
		if p[i] == '\n' {
			dst = append(dst, crlf...)
		} else {
			s.pendingCR = true
		}
		p = p[i+1:]
	}
	return dst
}

// end appends to dst what the input's end decides: the line ending of a
// CR held back. A last line without a line ending keeps it that way: the
// CRLF that ends it on the wire belongs to the multi-line response, not to
// the message, as in Dovecot's pop3d and in the IMAP server's RFC822.SIZE.
func (s *lineEnds) end(dst []byte) []byte {
	if s.pendingCR {
		s.pendingCR = false
		dst = append(dst, crlf...)
	}
	return dst
}

// crlfClean reports whether every CR and LF in p belongs to a CRLF pair.
func crlfClean(p []byte) bool {
	pairs := bytes.Count(p, crlf)
	return pairs == bytes.Count(p, lf) && pairs == bytes.Count(p, cr)
}

// NewCRLFReader returns a reader of r's octets in the form POP3 sends a
// message (see lineEnds). The count of octets it returns is the size STAT
// and LIST must report (RFC 1939 §11).
func NewCRLFReader(r io.Reader) io.Reader {
	return &crlfReader{r: r}
}

type crlfReader struct {
	r    io.Reader
	ends lineEnds
	out  []byte // normalised octets not yet returned
	bufs *crlfBuffer
	err  error
}

// crlfBuffers holds the input and output buffers of finished readers; a
// message is read through a fresh reader each time.
var crlfBuffers = sync.Pool{New: func() any {
	return &crlfBuffer{in: make([]byte, crlfChunk), out: make([]byte, 0, 2*crlfChunk+4)}
}}

const crlfChunk = 32 * 1024

type crlfBuffer struct{ in, out []byte }

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			if c.bufs != nil {
				crlfBuffers.Put(c.bufs)
				c.bufs, c.out = nil, nil
			}
			return 0, c.err
		}
		c.fill()
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// fill reads the next chunk; out may alias the input buffer, which is read
// into again only once out is empty.
func (c *crlfReader) fill() {
	if c.bufs == nil {
		c.bufs = crlfBuffers.Get().(*crlfBuffer)
	}
	n, err := c.r.Read(c.bufs.in)
	c.out = c.ends.normalise(c.bufs.out[:0], c.bufs.in[:n])
	if err != nil {
		if err == io.EOF {
			c.out = c.ends.end(c.out)
		}
		c.err = err
	}
}
