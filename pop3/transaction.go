package pop3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// message parses a message-number argument and returns its index. On a bad
// number it replies -ERR and returns ok == false (RFC 1939 §5: a message
// marked deleted may not be referred to).
func (c *conn) message(arg string) (index int, ok bool) {
	n, err := parseNumber(arg)
	if err != nil {
		c.errorf(CodeNone, "Invalid message number.")
		return 0, false
	}
	if n < 1 || n > int64(len(c.deleted)) {
		c.errorf(CodeNone, "There's no message %d.", n)
		return 0, false
	}
	if c.deleted[n-1] {
		c.errorf(CodeNone, "Message is deleted.")
		return 0, false
	}
	return int(n - 1), true
}

// parseNumber accepts decimal digits only: no sign, no spaces. Numbers too
// large for int64 are clamped, which is out of range for every use here.
func parseNumber(s string) (int64, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, errors.New("not a number")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 1<<63 - 1, nil
	}
	return n, nil
}

// args splits the arguments and checks their count.
func (c *conn) args(arg string, min, max int) ([]string, bool) {
	fields := strings.Fields(arg)
	if len(fields) < min || len(fields) > max {
		c.errorf(CodeNone, "Wrong number of arguments.")
		return nil, false
	}
	return fields, true
}

func (c *conn) stat(arg string) error {
	if _, ok := c.args(arg, 0, 0); !ok {
		return c.badCommand()
	}
	var count int
	var size int64
	for i, m := range c.msgs {
		if !c.deleted[i] {
			count++
			size += m.Size
		}
	}
	c.ok("%d %d", count, size)
	return nil
}

// list answers LIST (RFC 1939 §5): sizes.
func (c *conn) list(arg string) error {
	return c.listing(arg, func(count int) string { return fmt.Sprintf("%d messages:", count) },
		func(b []byte, m Message) []byte { return strconv.AppendInt(b, m.Size, 10) })
}

// uidl answers UIDL (RFC 1939 §7): unique-ids.
func (c *conn) uidl(arg string) error {
	return c.listing(arg, func(int) string { return "" },
		func(b []byte, m Message) []byte { return append(b, m.UIDL...) })
}

// listing answers LIST or UIDL: one message when an argument names it,
// otherwise every message not marked deleted, after the +OK line whose
// text header gives. A listing has a line per message, hundreds of
// thousands in a large mailbox: each is appended to one buffer, with no
// formatting or allocation of its own.
func (c *conn) listing(arg string, header func(count int) string, value func([]byte, Message) []byte) error {
	fields, ok := c.args(arg, 0, 1)
	if !ok {
		return c.badCommand()
	}
	msgs := c.msgs
	if len(fields) == 1 {
		if i, ok := c.message(fields[0]); ok {
			c.ok("%d %s", i+1, value(nil, msgs[i]))
		}
		return nil
	}
	count := 0
	for i := range msgs {
		if !c.deleted[i] {
			count++
		}
	}
	c.growWriter()
	c.ok(header(count))
	var line []byte
	num := []byte{'0'} // message i+1's number, counted up digit by digit
	for i, m := range msgs {
		num = nextNumber(num)
		if !c.deleted[i] {
			line = append(append(line[:0], num...), ' ')
			line = value(line, m)
			line = append(line, '\r', '\n')
			c.bw.Write(line)
		}
	}
	c.line(".")
	return nil
}

// nextNumber adds one to the decimal number d, in place unless it gains
// a digit: a listing's numbers follow each other, and counting up costs
// less than formatting each of them.
func nextNumber(d []byte) []byte {
	for i := len(d) - 1; i >= 0; i-- {
		if d[i] < '9' {
			d[i]++
			return d
		}
		d[i] = '0'
	}
	return append([]byte{'1'}, d...)
}

func (c *conn) retr(arg string) error {
	fields, ok := c.args(arg, 1, 1)
	if !ok {
		return c.badCommand()
	}
	i, ok := c.message(fields[0])
	if !ok {
		return nil
	}
	return c.send(i, -1)
}

func (c *conn) top(arg string) error {
	fields, ok := c.args(arg, 2, 2)
	if !ok {
		return c.badCommand()
	}
	i, ok := c.message(fields[0])
	if !ok {
		return nil
	}
	lines, err := parseNumber(fields[1])
	if err != nil {
		c.errorf(CodeNone, "Invalid number of lines.")
		return nil
	}
	return c.send(i, lines)
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

// send streams message i as a multi-line response: whole for RETR, or the
// header and lines body lines for TOP (lines >= 0). If the message cannot
// be read to its end, the connection is closed without the terminating
// line, so the client never takes a truncated message for a whole one.
func (c *conn) send(i int, lines int64) error {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	open := c.maildrop.Open
	if t, ok := c.maildrop.(TopOpener); ok && lines >= 0 {
		open = func(ctx context.Context, i int) (io.ReadCloser, int64, error) { return t.OpenTop(ctx, i, lines) }
	}
	r, size, err := open(ctx, i)
	if err != nil {
		return c.fail("open message", err)
	}
	c.resize(i, size)
	c.growWriter()
	if lines < 0 {
		c.ok("%d octets", c.msgs[i].Size)
	} else {
		c.ok("")
	}
	dw := newDotWriter(c.bw)
	var w io.Writer = dw
	if lines >= 0 {
		w = newTopWriter(dw, lines)
	}
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	buf := *bufp
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				if errors.Is(werr, errTopDone) {
					break
				}
				// The client went away: abandon the upstream transfer.
				cancel()
				r.Close()
				return werr
			}
		}
		if rerr == io.EOF {
			// The whole message was sent: its count is the exact size.
			c.resize(i, dw.n)
			break
		}
		if rerr != nil {
			cancel()
			r.Close()
			c.log.Error("reading message failed; closing the connection", "msg", i+1, "err", rerr)
			c.result = "upstream-error"
			return errClose
		}
	}
	if err := r.Close(); err != nil {
		c.log.Warn("closing message", "msg", i+1, "err", err)
	}
	if err := dw.Close(); err != nil {
		return err
	}
	if lines < 0 {
		c.retrieved++
	}
	c.bytesSent += dw.n
	c.srv.observer().Sent(dw.n)
	return nil
}

// resize records the exact size of message i, once the maildrop or a
// complete transfer has shown it, so that STAT and LIST from then on agree
// with what RETR sends (RFC 1939 §11). The first correction copies the
// listing, which the maildrop may share with other sessions.
func (c *conn) resize(i int, size int64) {
	if c.msgs[i].Size != size {
		c.log.Debug("listed size corrected", "msg", i+1, "listed", c.msgs[i].Size, "exact", size)
		if !c.ownMsgs {
			c.msgs, c.ownMsgs = slices.Clone(c.msgs), true
		}
		c.msgs[i].Size = size
	}
}

func (c *conn) dele(arg string) error {
	fields, ok := c.args(arg, 1, 1)
	if !ok {
		return c.badCommand()
	}
	i, ok := c.message(fields[0])
	if !ok {
		return nil
	}
	c.deleted[i] = true
	c.ok("Marked to be deleted.")
	return nil
}

func (c *conn) noop(arg string) error {
	c.ok("")
	return nil
}

func (c *conn) rset(arg string) error {
	for i := range c.deleted {
		c.deleted[i] = false
	}
	c.ok("")
	return nil
}
