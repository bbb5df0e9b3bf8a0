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
}

func newDataRepair(r io.Reader, cc *clientConn) *dataRepair {
	return &dataRepair{r: r, cc: cc}
}

// Read implements io.Reader. It reads into p and, where the two readers
// part, mends from there through out: at most one octet more comes out
// than went in (a held CR), kept for the next call.
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
		if err != nil && !errors.Is(err, errPause) {
			d.err = err
		}
		if d.inStep(p[:n]) {
			// As nearly always: what go-smtp passed on is what the RFC's
			// reader takes.
			if n > 0 {
				return n, nil
			}
			continue
		}
		d.pending = d.mend(d.out[:0], p[:n])
		d.out = d.pending[:0]
		if d.ended && d.cc != nil {
			d.cc.cutRead()
		}
	}
}

// crcr is where go-smtp's reader may part from the RFC's.
var crcr = []byte("\r\r")

// inStep tells whether the two readers agree on all of in, and if so
// moves both past it. They agree from the middle of a line on, and part
// only at a CR after a CR.
func (d *dataRepair) inStep(in []byte) bool {
	if !d.agree() {
		return false
	}
	if len(in) > 0 && (in[0] == '\r' && d.ours == afterCR || bytes.Contains(in, crcr)) {
		return false
	}
	d.pass(in)
	return true
}

// pass moves both readers past in, on which they agree.
func (d *dataRepair) pass(in []byte) {
	if len(in) == 0 {
		return
	}
	// Where the line stands matters again only after a CR.
	d.theirs, d.ours = inLine, inLine
	if in[len(in)-1] == '\r' {
		d.theirs, d.ours = afterCR, afterCR
	}
}

// agree tells whether the two readers are in the same state, with
// nothing held.
func (d *dataRepair) agree() bool { return d.theirs == d.ours && !d.dot && !d.dotCR }

// mend appends to out what the RFC's reader makes of in, as go-smtp's
// passed it on.
func (d *dataRepair) mend(out, in []byte) []byte {
	for i := 0; i < len(in); i++ {
		if d.agree() && (d.ours != afterCR || in[i] != '\r') {
			// In step up to the next CR after a CR (see inStep).
			k := bytes.Index(in[i:], crcr)
			if k < 0 {
				d.pass(in[i:])
				return append(out, in[i:]...)
			}
			if k > 0 {
				out = append(out, in[i:i+k]...)
				i += k
				d.theirs, d.ours = inLine, inLine
			}
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
