package submission

import (
	"bytes"
	"errors"
	"io"
	"time"
)

// go-smtp v0.26.0's DATA reader follows RFC 5321 §4.5.2 with a state
// machine that leaves its after-CR state on a second CR instead of staying
// in it. A line that ends in an even number of CRs and then LF ("a\r\r\n",
// as a device that converts line endings twice writes) therefore does not
// end a line for it: the next line's leading dot is passed on as data,
// and a "." line there, the end of the message, is not seen at all, so
// the reader waits for more octets from a client that is waiting for the
// reply. dataRepair, between that reader and the relay, follows both
// machines over what the reader passes on and does the RFC's part where
// they differ: it removes the dot of a dot-stuffed line and ends the
// message at a "." line.
//
// The end of such a message comes while the reader waits for more, with
// the octets before it in its buffer. So during DATA a read of the
// client's connection that has waited pauseAfter without an octet
// returns errPause (a temporary timeout, which keeps go-smtp's reader and
// a TLS connection intact) unless the idle timeout has passed: go-smtp's
// reader then gives up what it holds and dataRepair looks for the end.
// After the relay has answered a message it ended, go-smtp still reads to
// what it takes for the end: the next read of the connection returns
// errPause once, and that read stops (clientConn.cut).
//
// BDAT chunks are counted octets, not dot-stuffed: they are passed on as
// they are.

// pauseAfter is how long a read during DATA waits for the client before
// go-smtp's reader is made to hand over what it holds.
const pauseAfter = 250 * time.Millisecond

// errPause is what a read during DATA returns after pauseAfter without an
// octet, before the idle timeout: a net.Error that is a timeout and
// temporary.
var errPause error = pauseError{}

type pauseError struct{}

func (pauseError) Error() string   { return "submission: client paused during DATA" }
func (pauseError) Timeout() bool   { return true }
func (pauseError) Temporary() bool { return true }

// Line states: go-smtp's reader's (followed from the octets it passes on)
// and the RFC's.
const (
	lineStart = iota // at the start of a line
	afterCR          // after a CR
	inLine           // within a line
)

type dataRepair struct {
	r  io.Reader
	cc *clientConn // told when the message was ended here; may be nil
	// theirs is go-smtp's state before the next octet, ours the RFC's.
	theirs, ours int
	// dot: a line that go-smtp passes on as data began with a dot, which
	// was removed; dotCR: and a CR followed it, held until the next octet
	// says whether the line is "." CRLF.
	dot, dotCR bool
	ended      bool
	err        error
	// pending is mended octets not yet read, in out's array.
	pending, out []byte
	// mended counts the lines repaired: dots removed and ends found.
	mended int
}

func newDataRepair(r io.Reader, cc *clientConn) *dataRepair {
	return &dataRepair{r: r, cc: cc}
}

// Read implements io.Reader. It reads into p and mends from there: at
// most one octet more comes out than went in (a held CR), kept for the
// next call.
func (d *dataRepair) Read(p []byte) (int, error) {
	for {
		if len(d.pending) > 0 {
			n := copy(p, d.pending)
			d.pending = d.pending[n:]
			return n, nil
		}
		switch {
		case d.ended:
			return 0, io.EOF
		case d.err != nil:
			return 0, d.err
		case len(p) == 0:
			return 0, nil
		}
		n, err := d.r.Read(p)
		d.pending = d.mend(d.out[:0], p[:n])
		d.out = d.pending[:0]
		if d.ended && d.cc != nil {
			d.cc.cutRead()
		}
		if err != nil && !errors.Is(err, errPause) {
			d.err = err
		}
	}
}

// mend appends to out what the RFC's reader makes of in, as go-smtp's
// passed it on.
func (d *dataRepair) mend(out, in []byte) []byte {
	for i := 0; i < len(in); i++ {
		if d.theirs == inLine && d.ours == inLine && !d.dot && !d.dotCR {
			// Within a line for both, only a CR or LF changes anything.
			j := bytes.IndexAny(in[i:], "\r\n")
			if j < 0 {
				return append(out, in[i:]...)
			}
			out = append(out, in[i:i+j]...)
			i += j
		}
		c := in[i]
		theirs := d.theirs
		d.theirs = next(theirs, c, false)
		switch {
		case d.dotCR:
			d.dotCR = false
			if c == '\n' {
				// "." CRLF: the end of the message. Anything after it
				// came after the message.
				d.ended = true
				d.mended++
				return out
			}
			out = append(out, '\r')
		case d.dot:
			d.dot = false
			if c == '\r' {
				d.dotCR, d.ours = true, afterCR
				continue
			}
		case d.ours == lineStart && theirs == inLine && c == '.':
			// A line start that go-smtp missed: the dot is removed
			// (RFC 5321 §4.5.2), and may begin the end line.
			d.dot, d.ours = true, inLine
			d.mended++
			continue
		}
		out = append(out, c)
		d.ours = next(d.ours, c, true)
	}
	return out
}

// next is the line state after octet c: by the RFC, where a CR stays
// after a CR, or by go-smtp's reader, where it does not.
func next(state int, c byte, rfc bool) int {
	switch {
	case c == '\r' && (state != afterCR || rfc):
		return afterCR
	case c == '\n' && state == afterCR:
		return lineStart
	}
	return inLine
}
