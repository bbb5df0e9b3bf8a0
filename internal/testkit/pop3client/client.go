// Package pop3client is a small POP3 client for tests and benchmarks: it
// reads replies exactly as sent, so callers can compare them byte for byte.
package pop3client

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Client is one POP3 connection.
type Client struct {
	nc net.Conn
	r  *bufio.Reader
	// Greeting is the server's first line.
	Greeting string
}

// Dial connects and reads the greeting.
func Dial(addr string) (*Client, error) {
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return New(nc)
}

// DialTLS connects with implicit TLS.
func DialTLS(addr string, config *tls.Config) (*Client, error) {
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, config)
	if err != nil {
		return nil, err
	}
	return New(nc)
}

// New reads the greeting on an open connection.
func New(nc net.Conn) (*Client, error) {
	c := &Client{nc: nc, r: bufio.NewReaderSize(nc, 64*1024)}
	line, err := c.Line()
	if err != nil {
		nc.Close()
		return nil, err
	}
	if !strings.HasPrefix(line, "+OK") {
		nc.Close()
		return nil, fmt.Errorf("pop3client: greeting %q", line)
	}
	c.Greeting = line
	return c, nil
}

// Conn is the underlying connection.
func (c *Client) Conn() net.Conn { return c.nc }

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.nc.Close() }

// SetDeadline bounds all further I/O.
func (c *Client) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// Send writes one command line.
func (c *Client) Send(line string) error {
	_, err := io.WriteString(c.nc, line+"\r\n")
	return err
}

// Line reads one reply line without its CRLF.
func (c *Client) Line() (string, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return line, err
	}
	if !strings.HasSuffix(line, "\r\n") {
		return line, fmt.Errorf("pop3client: line %q does not end in CRLF", line)
	}
	return strings.TrimSuffix(line, "\r\n"), nil
}

// Cmd sends a command and returns its first reply line.
func (c *Client) Cmd(line string) (string, error) {
	if err := c.Send(line); err != nil {
		return "", err
	}
	return c.Line()
}

// ErrReply is a -ERR reply.
type ErrReply struct{ Line string }

func (e *ErrReply) Error() string { return e.Line }

// OK sends a command and fails unless the reply is +OK.
func (c *Client) OK(line string) (string, error) {
	reply, err := c.Cmd(line)
	if err != nil {
		return reply, err
	}
	if !strings.HasPrefix(reply, "+OK") {
		return reply, &ErrReply{reply}
	}
	return reply, nil
}

// RawMulti reads the body of a multi-line reply exactly as sent, up to but
// not including the terminating ".\r\n".
func (c *Client) RawMulti() ([]byte, error) {
	var buf bytes.Buffer
	for {
		line, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			buf.Write(line)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = c.r.ReadSlice('\n')
				buf.Write(line)
			}
			if err != nil {
				return buf.Bytes(), err
			}
			continue
		}
		if err != nil {
			return buf.Bytes(), fmt.Errorf("pop3client: multi-line reply cut short: %w", err)
		}
		if string(line) == ".\r\n" {
			return buf.Bytes(), nil
		}
		buf.Write(line)
	}
}

// Unstuff removes the extra dot of dot-stuffed lines.
func Unstuff(raw []byte) []byte {
	out := make([]byte, 0, len(raw))
	lineStart := true
	for i, b := range raw {
		if lineStart && b == '.' {
			lineStart = false
			continue
		}
		out = append(out, b)
		lineStart = b == '\n' && i > 0 && raw[i-1] == '\r'
	}
	return out
}

// Multi sends a command and returns its status line and unstuffed body.
func (c *Client) Multi(line string) (string, []byte, error) {
	reply, err := c.OK(line)
	if err != nil {
		return reply, nil, err
	}
	raw, err := c.RawMulti()
	return reply, Unstuff(raw), err
}

// Login logs in with USER and PASS.
func (c *Client) Login(user, pass string) error {
	if _, err := c.OK("USER " + user); err != nil {
		return err
	}
	_, err := c.OK("PASS " + pass)
	return err
}

// Stat returns the message count and total size.
func (c *Client) Stat() (count int, size int64, err error) {
	reply, err := c.OK("STAT")
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscanf(reply, "+OK %d %d", &count, &size); err != nil {
		return 0, 0, fmt.Errorf("pop3client: STAT reply %q", reply)
	}
	return count, size, nil
}

// Entry is one line of a LIST or UIDL listing.
type Entry struct {
	Num   int
	Value string
}

func (c *Client) listing(cmd string) ([]Entry, error) {
	if _, err := c.OK(cmd); err != nil {
		return nil, err
	}
	raw, err := c.RawMulti()
	if err != nil {
		return nil, err
	}
	// One string holds the whole listing and the values are slices of
	// it, as a client of a large mailbox would keep them: 200,000 UIDL
	// lines cost two allocations, not one per line.
	body := string(raw)
	out := make([]Entry, 0, strings.Count(body, "\n"))
	for body != "" {
		line, rest, ok := strings.Cut(body, "\r\n")
		if !ok {
			return out, fmt.Errorf("pop3client: %s line %q without CRLF", cmd, line)
		}
		body = rest
		line = strings.TrimPrefix(line, ".") // dot-stuffed
		if line == "" {
			continue
		}
		num, value, _ := strings.Cut(line, " ")
		n, ok := atoi(num)
		if !ok {
			return out, fmt.Errorf("pop3client: %s line %q", cmd, line)
		}
		out = append(out, Entry{n, value})
	}
	return out, nil
}

// atoi parses a message number.
func atoi(s string) (int, bool) {
	if s == "" || len(s) > 9 {
		return 0, false
	}
	n := 0
	for _, d := range []byte(s) {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int(d-'0')
	}
	return n, true
}

// List returns the sizes by message number.
func (c *Client) List() (map[int]int64, error) {
	entries, err := c.listing("LIST")
	if err != nil {
		return nil, err
	}
	sizes := make(map[int]int64, len(entries))
	for _, e := range entries {
		n, err := strconv.ParseInt(e.Value, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("pop3client: LIST size %q", e.Value)
		}
		sizes[e.Num] = n
	}
	return sizes, nil
}

// UIDL returns the unique-ids in message order.
func (c *Client) UIDL() ([]Entry, error) { return c.listing("UIDL") }

// CountUIDL sends UIDL and reads the listing to its end without keeping
// it, checking each line's form ("n unique-id"), and returns how many
// lines it had. A benchmark that only needs the count uses it, so that
// the client's own work (building 200,000 entries) is not timed as the
// server's.
func (c *Client) CountUIDL() (int, error) {
	if _, err := c.OK("UIDL"); err != nil {
		return 0, err
	}
	n := 0
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return n, fmt.Errorf("pop3client: UIDL listing cut short: %w", err)
		}
		if string(line) == ".\r\n" {
			return n, nil
		}
		num, value, ok := bytes.Cut(bytes.TrimSuffix(line, []byte("\r\n")), []byte(" "))
		if _, numeric := atoi(string(num)); !ok || !numeric || len(value) == 0 || len(line) < 2 || line[len(line)-2] != '\r' {
			return n, fmt.Errorf("pop3client: UIDL line %q", line)
		}
		n++
	}
}

// Retr returns message n, unstuffed.
func (c *Client) Retr(n int) ([]byte, error) {
	_, body, err := c.Multi(fmt.Sprintf("RETR %d", n))
	return body, err
}

// Top returns the header and lines body lines of message n, unstuffed.
func (c *Client) Top(n, lines int) ([]byte, error) {
	_, body, err := c.Multi(fmt.Sprintf("TOP %d %d", n, lines))
	return body, err
}

// Dele marks message n deleted.
func (c *Client) Dele(n int) error {
	_, err := c.OK(fmt.Sprintf("DELE %d", n))
	return err
}

// Quit ends the session, applying deletes, and closes the connection.
func (c *Client) Quit() error {
	defer c.nc.Close()
	_, err := c.OK("QUIT")
	return err
}

// DiscardMulti reads a multi-line reply to its end without keeping it and
// returns the number of octets after unstuffing, CRLFs included.
func (c *Client) DiscardMulti() (int64, error) {
	var n int64
	lineStart := true
	for {
		chunk, err := c.r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return n, fmt.Errorf("pop3client: multi-line reply cut short: %w", err)
		}
		if lineStart && string(chunk) == ".\r\n" {
			return n, nil
		}
		if lineStart && len(chunk) > 0 && chunk[0] == '.' {
			n--
		}
		n += int64(len(chunk))
		lineStart = err == nil
	}
}
