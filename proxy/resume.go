package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// maxResumes bounds how often one message transfer continues on a new
// upstream connection before the client is cut off.
const maxResumes = 3

// resumingReader reads the raw octets of message i from the server. When
// the connection dies mid-message, it logs in again, checks that the
// message is the same one (its ID, the mailbox's epoch, and the size the
// store announced), and continues from the first octet not yet read
// (IMAP: BODY.PEEK[]<offset.rest>). It counts raw octets, as the server
// sent them, not the normalised ones the client gets: offsets are in the
// server's copy. Only when that fails maxResumes times does the read fail,
// and the client is cut off before the terminating line.
type resumingReader struct {
	m    *maildrop
	i    int
	ctx  context.Context // the transfer's: cancelled, it drops the connection
	cur  io.ReadCloser
	base int64 // offset in the raw message of the first octet
	size int64 // raw octets the server announced, -1 if unknown
	n    int64 // raw octets read
	left int   // resumes left
}

func newResumingReader(m *maildrop, i int, ctx context.Context, raw io.ReadCloser) *resumingReader {
	size := int64(-1)
	if sized, ok := raw.(interface{ Size() int64 }); ok {
		size = sized.Size()
	}
	return &resumingReader{m: m, i: i, ctx: ctx, cur: raw, size: size, left: maxResumes}
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		n, err := r.cur.Read(p)
		r.n += int64(n)
		if err == nil || err == io.EOF {
			return n, err
		}
		if n > 0 {
			// The reader keeps its error: the next Read sees it again.
			return n, nil
		}
		if r.ctx.Err() != nil || r.left == 0 || r.size < 0 || r.n >= r.size {
			return 0, err
		}
		r.left--
		r.m.log.Warn("upstream connection lost mid-message; resuming", "id", r.m.id(r.i),
			"offset", r.base+r.n, "err", err)
		if rerr := r.resume(); rerr != nil {
			r.m.log.Warn("resuming the message failed", "id", r.m.id(r.i), "err", rerr)
			return 0, errors.Join(err, rerr)
		}
	}
}

// errChangedSize means the server offered a different rest of the message
// than the size it announced at first.
var errChangedSize = errors.New("the message's size changed")

func (r *resumingReader) resume() error {
	r.cur.Close()
	sess, err := r.m.session(r.ctx)
	if err != nil {
		return err
	}
	rest, err := sess.Open(r.ctx, r.m.id(r.i), r.base+r.n, r.size-r.n)
	if err != nil {
		return err
	}
	left := int64(-1)
	if sized, ok := rest.(interface{ Size() int64 }); ok {
		left = sized.Size()
	}
	if left != r.size-r.n {
		rest.Close()
		return fmt.Errorf("%w: %d octets offered after %d of %d", errChangedSize, left, r.n, r.size)
	}
	r.cur = rest
	return nil
}

func (r *resumingReader) Close() error { return r.cur.Close() }
