package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
)

// splitConn is the connection the IMAP client reads and writes through.
// The IMAP client can neither ask for FETCH items it does not know nor
// read them (one unknown item fails the whole command), so the items a
// server gives for a message's permanent identity (RFC 8474 EMAILID,
// Gmail's X-GM-MSGID) are fetched by a command of the gateway's own, on
// the same connection, while the session is idle.
//
// To keep its place in the stream, splitConn cuts everything the server
// sends into whole responses (RFC 9051 §2.2.2: a line, and the literals
// announced by {n} or {n+} at a line's end, each followed by more of the
// line). While a command of its own is under way, its tagged completion
// and the untagged FETCH responses carrying its item are read and parsed
// here; every other byte reaches the IMAP client unchanged, in order.
//
// Only responses it takes apart are held in memory, and those are small:
// a held response longer than maxHeldResponse, or announcing a literal
// that would make it longer, ends the session. Everything else streams
// through, however long its lines or literals.
type splitConn struct {
	net.Conn
	br *bufio.Reader

	// Read's state: only the IMAP client's reading goroutine calls it.
	state   splitState
	status  bool   // the current response is a status response: no literals
	literal int64  // octets of the current literal still to pass
	tail    []byte // the last octets of the current line, for {n}
	pending []byte // held octets to give the IMAP client first
	readErr error
	// untagged counts the untagged responses since the last tagged one;
	// past maxUntagged the server is flooding (see setMailboxSize).
	untagged    int64
	maxUntagged atomic.Int64

	mu     sync.Mutex
	own    *ownCommand // the command of ours under way, nil when none
	tags   uint64
	failed error // readErr, for fetchUIDs
}

type splitState int

const (
	atResponse splitState = iota // at the start of a response
	inLine                       // inside a line passed through
	inLiteral                    // inside a literal passed through
)

// maxHeldResponse bounds a response read whole for a command of ours: a
// FETCH of a UID and an id is well under 1 KiB; a flag update the server
// sends on its own, with many keywords, some KiB.
const maxHeldResponse = 256 << 10

// maxPrefix is how much of a response's first line tells what it is:
// "* 4294967295 FETCH (" and a tag fit.
const maxPrefix = 64

// maxTail is enough of a line's end to hold a literal's announcement,
// "~{18446744073709551615+}" and CRLF.
const maxTail = 32

// errSplit wraps every failure of the stream itself: the session is over.
var errSplit = errors.New("upstream: response stream")

// splitBuffer is the size of splitConn's read buffer, which every
// upstream connection holds, idle or not, beneath the IMAP client's own.
// It needs to hold only a response's first maxPrefix octets: a line
// passes through in pieces, and a literal read into a larger buffer than
// this one skips it. At 1 KiB a listing of 200,000 messages from Dovecot
// took as long as at 4 KiB (2 s), and an idle session weighs 3 KiB less.
const splitBuffer = 1 << 10

func newSplitConn(c net.Conn) *splitConn {
	s := &splitConn{Conn: c, br: bufio.NewReaderSize(c, splitBuffer)}
	s.setMailboxSize(0)
	return s
}

// Every response counts as progress to the upstream timeout, so a server
// that sends untagged responses for ever would hold a command, and the
// POP3 session waiting on it, for ever. A command's untagged responses
// are bounded instead: a listing of the whole mailbox gives one per
// message, a flag change another, and the server's notices a few more;
// beyond twice the mailbox and a margin the session ends.
const untaggedMargin = 100_000

// setMailboxSize bounds the untagged responses of one command for a
// mailbox of n messages.
func (c *splitConn) setMailboxSize(n int) {
	c.maxUntagged.Store(2*int64(n) + untaggedMargin)
}

// ownCommand is a command of ours under way.
type ownCommand struct {
	tag  string
	item string // the FETCH item wanted, upper case
	// each receives each FETCH response carrying item: the UID and the
	// item's value, as written (an atom, a number or a parenthesized
	// list's contents). It runs on the reading goroutine.
	each func(uid uint32, value []byte) error
	err  error // each's first error
	done chan error
}

// Read gives the IMAP client the server's octets, less the responses that
// belong to a command of ours.
func (c *splitConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if len(c.pending) > 0 {
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		}
		if c.readErr != nil {
			return 0, c.readErr
		}
		n, err := c.step(p)
		if err != nil {
			c.fail(err)
			if n == 0 {
				return 0, c.readErr
			}
		}
		if n > 0 {
			return n, nil
		}
	}
}

// fail records the stream's end and ends our command with it.
func (c *splitConn) fail(err error) {
	if c.readErr == nil {
		c.readErr = err
	}
	c.mu.Lock()
	own := c.own
	c.own = nil
	c.failed = c.readErr
	c.mu.Unlock()
	if own != nil {
		own.done <- fmt.Errorf("%w: %w", errSplit, err)
	}
}

// step moves the stream on by one piece: it copies octets passed through
// into p, or takes one response for our command (0 octets).
func (c *splitConn) step(p []byte) (int, error) {
	switch c.state {
	case inLiteral:
		n, err := c.br.Read(p[:min(int64(len(p)), c.literal)])
		c.literal -= int64(n)
		if c.literal == 0 {
			c.state, c.tail = inLine, c.tail[:0]
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	case inLine:
		return c.passLine(p)
	}
	prefix, err := c.peekPrefix()
	if err != nil {
		return 0, err
	}
	kind := classify(prefix)
	switch kind {
	case kindTagged:
		c.untagged = 0
	case kindContinue:
	default:
		if c.untagged++; c.untagged > c.maxUntagged.Load() {
			return 0, fmt.Errorf("%w: more than %d untagged responses to one command", errSplit, c.maxUntagged.Load())
		}
	}
	c.mu.Lock()
	own := c.own
	c.mu.Unlock()
	if own != nil && (kind == kindFetch || kind == kindTagged && bytes.HasPrefix(prefix, []byte(own.tag+" "))) {
		return 0, c.take(own, kind)
	}
	c.state, c.status, c.tail = inLine, kind.isStatus(), c.tail[:0]
	return c.passLine(p)
}

// peekPrefix returns the start of the next response's first line: up to
// its LF, or maxPrefix octets, whichever comes first.
func (c *splitConn) peekPrefix() ([]byte, error) {
	for {
		buf, _ := c.br.Peek(c.br.Buffered())
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			return buf[:i+1], nil
		}
		if len(buf) >= maxPrefix {
			return buf[:maxPrefix], nil
		}
		if _, err := c.br.Peek(len(buf) + 1); err != nil {
			if err == io.EOF && len(buf) > 0 {
				// What there is passes; the line's end never comes.
				return buf, nil
			}
			return nil, err
		}
	}
}

// passLine copies the current line, up to its LF, into p; at the LF it
// finds the literal that may follow.
func (c *splitConn) passLine(p []byte) (int, error) {
	if _, err := c.br.Peek(1); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	buf, _ := c.br.Peek(c.br.Buffered())
	end := bytes.IndexByte(buf, '\n')
	if end >= 0 {
		buf = buf[:end+1]
	}
	n := copy(p, buf)
	c.keepTail(buf[:n])
	c.br.Discard(n)
	if end < 0 || n < len(buf) {
		return n, nil
	}
	return n, c.endOfLine()
}

// keepTail remembers the last octets of the line.
func (c *splitConn) keepTail(b []byte) {
	if len(b) >= maxTail {
		c.tail = append(c.tail[:0], b[len(b)-maxTail:]...)
		return
	}
	c.tail = append(c.tail, b...)
	if extra := len(c.tail) - maxTail; extra > 0 {
		c.tail = c.tail[:copy(c.tail, c.tail[extra:])]
	}
}

// endOfLine follows a line's LF: a literal, or the next response.
func (c *splitConn) endOfLine() error {
	n, ok := int64(0), false
	if !c.status {
		var err error
		if n, ok, err = literalAt(c.tail); err != nil {
			return err
		}
	}
	c.tail = c.tail[:0]
	switch {
	case !ok:
		c.state = atResponse
	case n == 0:
		c.state = inLine
	default:
		c.state, c.literal = inLiteral, n
	}
	return nil
}

// maxLiteralDigits keeps a literal's size within an int64.
const maxLiteralDigits = 18

// literalAt reads the announcement ("{n}", "{n+}", "~{n}") that ends a
// line (given with its CRLF or LF). A size past any real literal is an
// error: the stream cannot be followed beyond it.
func literalAt(line []byte) (int64, bool, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	rest, ok := bytes.CutSuffix(line, []byte("}"))
	if !ok {
		return 0, false, nil
	}
	open := bytes.LastIndexByte(rest, '{')
	if open < 0 {
		return 0, false, nil
	}
	digits := bytes.TrimSuffix(rest[open+1:], []byte("+"))
	if !isDigits(digits) {
		return 0, false, nil
	}
	if len(digits) > maxLiteralDigits {
		return 0, false, fmt.Errorf("a literal of %s octets announced", truncate(digits))
	}
	n, _ := strconv.ParseInt(string(digits), 10, 64)
	return n, true, nil
}

// responseKind is what the start of a response says it is.
type responseKind int

const (
	kindData     responseKind = iota // untagged data other than FETCH
	kindFetch                        // "* n FETCH"
	kindStatus                       // "* OK", "* NO", "* BAD", "* BYE", "* PREAUTH"
	kindTagged                       // "tag OK|NO|BAD"
	kindContinue                     // "+ ..."
)

// isStatus tells whether the response's line is resp-text (RFC 9051
// §7.1), which never carries a literal: a text ending in "{5}" is text.
func (k responseKind) isStatus() bool {
	return k == kindStatus || k == kindTagged || k == kindContinue
}

func classify(prefix []byte) responseKind {
	if len(prefix) > 0 && prefix[0] == '+' {
		return kindContinue
	}
	first, rest := token(prefix)
	if string(first) != "*" {
		return kindTagged
	}
	second, rest := token(rest)
	if len(second) > 0 && isDigits(second) {
		if third, _ := token(rest); string(bytes.ToUpper(third)) == "FETCH" {
			return kindFetch
		}
		return kindData
	}
	switch string(bytes.ToUpper(second)) {
	case "OK", "NO", "BAD", "BYE", "PREAUTH":
		return kindStatus
	}
	return kindData
}

// token splits off the first space-delimited word of a response line.
func token(b []byte) (word, rest []byte) {
	end := bytes.IndexAny(b, " \r\n[")
	if end < 0 {
		return b, nil
	}
	rest = b[end:]
	if rest[0] == ' ' {
		rest = rest[1:]
	}
	return b[:end], rest
}

func isDigits(b []byte) bool {
	for _, d := range b {
		if d < '0' || d > '9' {
			return false
		}
	}
	return len(b) > 0
}

// take reads one whole response for our command: the tagged completion,
// or a FETCH, which is ours if it carries our item and is passed through
// otherwise.
func (c *splitConn) take(own *ownCommand, kind responseKind) error {
	resp, err := c.readHeld(kind == kindTagged)
	if err != nil {
		return err
	}
	if kind == kindTagged {
		c.mu.Lock()
		c.own = nil
		c.mu.Unlock()
		err := own.err
		if status, text := statusOf(resp[len(own.tag)+1:]); status != "OK" && err == nil {
			err = fmt.Errorf("upstream: %s %s: %q", own.item, status, truncate(text))
		}
		own.done <- err
		return nil
	}
	uid, value, ok, err := parseFetch(resp, own.item)
	switch {
	case err != nil:
		// Not a FETCH anyone could read: the IMAP client judges it.
		c.pending = resp
	case !ok:
		c.pending = resp
	case uid != 0 && own.err == nil:
		own.err = own.each(uid, value)
	}
	return nil
}

// readHeld reads the next response whole, literals included, up to
// maxHeldResponse octets.
func (c *splitConn) readHeld(status bool) ([]byte, error) {
	var resp []byte
	for {
		part, err := c.br.ReadSlice('\n')
		if len(resp)+len(part) > maxHeldResponse {
			return nil, fmt.Errorf("a response of over %d octets during a command of the gateway's own", maxHeldResponse)
		}
		resp = append(resp, part...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if status {
			return resp, nil
		}
		n, ok, err := literalAt(resp[max(0, len(resp)-maxTail):])
		if err != nil {
			return nil, err
		}
		if !ok {
			return resp, nil
		}
		if n > int64(maxHeldResponse-len(resp)) {
			return nil, fmt.Errorf("a literal of %d octets announced during a command of the gateway's own", n)
		}
		start := len(resp)
		resp = append(resp, make([]byte, n)...)
		if _, err := io.ReadFull(c.br, resp[start:]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// statusOf splits "OK text" (after the tag) into the status and the text.
func statusOf(b []byte) (string, []byte) {
	b = bytes.TrimRight(b, "\r\n")
	word, rest := token(b)
	return string(bytes.ToUpper(word)), rest
}

// fetchUIDs sends "UID FETCH set (UID item)" with a tag of ours and calls
// each with every message's UID and item value, on the IMAP client's
// reading goroutine. It returns when the server completed the command,
// the stream failed, or closed is closed. The session must be idle: no
// command of the IMAP client's under way.
func (c *splitConn) fetchUIDs(set, item string, closed <-chan struct{}, each func(uid uint32, value []byte) error) error {
	c.mu.Lock()
	if c.failed != nil {
		c.mu.Unlock()
		return fmt.Errorf("%w: %w", errSplit, c.failed)
	}
	if c.own != nil {
		c.mu.Unlock()
		return errors.New("upstream: a command of the gateway's own is already under way")
	}
	c.tags++
	own := &ownCommand{tag: "G" + strconv.FormatUint(c.tags, 10), item: item, each: each, done: make(chan error, 1)}
	c.own = own
	c.mu.Unlock()
	if _, err := fmt.Fprintf(c.Conn, "%s UID FETCH %s (UID %s)\r\n", own.tag, set, item); err != nil {
		c.mu.Lock()
		if c.own == own {
			c.own = nil
		}
		c.mu.Unlock()
		return fmt.Errorf("upstream: sending FETCH %s: %w", item, err)
	}
	select {
	case err := <-own.done:
		return err
	case <-closed:
		return fmt.Errorf("upstream: FETCH %s: %w", item, net.ErrClosed)
	}
}
