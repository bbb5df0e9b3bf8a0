package pop3

import (
	"encoding/base64"
	"fmt"
	"io"
	"strings"
)

// ok sends a positive status line, "+OK" and the text when there is one
// (RFC 1939 §3). The format is written as it is when there are no args.
func (c *conn) ok(format string, args ...any) {
	c.status("+OK", CodeNone, format, args)
}

// errorf sends a negative status line with its response code (RFC 2449
// §8, RFC 3206), "-ERR [CODE] text", or "-ERR text" for CodeNone, and
// counts it by that code. The format is written as it is when there are
// no args.
func (c *conn) errorf(code Code, format string, args ...any) {
	c.srv.observer().ErrorReply(code)
	c.status("-ERR", code, format, args)
}

// replyError sends e as a negative status line.
func (c *conn) replyError(e *Error) {
	c.errorf(e.Code, e.Text)
}

// challenge sends a SASL continuation request, "+ " and the base64
// challenge (RFC 5034 §4).
func (c *conn) challenge(data []byte) {
	line := "+ " + base64.StdEncoding.EncodeToString(data)
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	if c.tracing {
		c.traceLine("send", line)
	}
}

// line sends one line of a multi-line response, before dot-stuffing:
// callers send only lines that cannot start with ".", and "." itself as
// the terminator (RFC 1939 §3). The format is written as it is when there
// are no args.
func (c *conn) line(format string, args ...any) {
	if len(args) > 0 {
		fmt.Fprintf(c.bw, format, args...)
	} else {
		c.bw.WriteString(format)
	}
	c.bw.WriteString("\r\n")
}

// status writes a status line; write errors surface at the next flush.
func (c *conn) status(indicator string, code Code, format string, args []any) {
	if c.tracing {
		var b strings.Builder
		writeStatus(&b, indicator, code, format, args)
		line := b.String()
		c.bw.WriteString(line)
		c.bw.WriteString("\r\n")
		c.traceLine("send", line)
		return
	}
	writeStatus(c.bw, indicator, code, format, args)
	c.bw.WriteString("\r\n")
}

// statusWriter is where writeStatus writes: the connection's buffer, or a
// string for the wire trace.
type statusWriter interface {
	io.Writer
	io.StringWriter
}

func writeStatus(w statusWriter, indicator string, code Code, format string, args []any) {
	w.WriteString(indicator)
	if code != CodeNone {
		w.WriteString(" [")
		w.WriteString(string(code))
		w.WriteString("]")
	}
	if format == "" {
		return
	}
	w.WriteString(" ")
	if len(args) > 0 {
		fmt.Fprintf(w, format, args...)
	} else {
		w.WriteString(format)
	}
}
