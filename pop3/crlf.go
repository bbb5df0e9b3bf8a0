package pop3

import (
	"bytes"
	"io"
	"sync"
)

// NewCRLFReader returns a reader of r's octets in the form POP3 sends a
// message: each bare CR and each bare LF becomes CRLF. The count of octets
// it returns is the size STAT and LIST must report (RFC 1939 §11). A last
// line without a line ending keeps it that way: the CRLF that ends it on
// the wire belongs to the multi-line response, not to the message, as in
// Dovecot's pop3d and in the IMAP server's RFC822.SIZE.
func NewCRLFReader(r io.Reader) io.Reader {
	return &crlfReader{r: r, lineStart: true}
}

type crlfReader struct {
	r         io.Reader
	in        []byte
	out       []byte // normalised octets not yet returned
	buf       []byte // backing store of out
	bufs      *crlfBuffer
	lineStart bool
	pendingCR bool
	err       error
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
				c.bufs, c.in, c.buf, c.out = nil, nil, nil, nil
			}
			return 0, c.err
		}
		c.fill()
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

func (c *crlfReader) fill() {
	if c.bufs == nil {
		c.bufs = crlfBuffers.Get().(*crlfBuffer)
		c.in, c.buf = c.bufs.in, c.bufs.out
	}
	n, err := c.r.Read(c.in)
	buf := c.buf[:0]
	p := c.in[:n]
	if c.pendingCR && len(p) > 0 {
		c.pendingCR = false
		buf = append(buf, crlf...)
		c.lineStart = true
		if p[0] == '\n' {
			p = p[1:]
		}
	}
	clean := p
	if len(clean) > 0 && clean[len(clean)-1] == '\r' {
		clean = clean[:len(clean)-1]
	}
	if len(clean) > 0 && crlfClean(clean) {
		buf = append(buf, clean...)
		c.lineStart = clean[len(clean)-1] == '\n'
		p = p[len(clean):]
	}
	for len(p) > 0 {
		if c.pendingCR {
			c.pendingCR = false
			buf = append(buf, crlf...)
			c.lineStart = true
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		i := bytes.IndexAny(p, "\r\n")
		if i < 0 {
			buf = append(buf, p...)
			c.lineStart = false
			break
		}
		buf = append(buf, p[:i]...)
		if i > 0 {
			c.lineStart = false
		}
		if p[i] == '\n' {
			buf = append(buf, crlf...)
			c.lineStart = true
		} else {
			c.pendingCR = true
		}
		p = p[i+1:]
	}
	if err != nil {
		if err == io.EOF && c.pendingCR {
			buf = append(buf, crlf...)
			c.pendingCR = false
			c.lineStart = true
		}
		c.err = err
	}
	c.out = buf
}
