// Package web holds what the stores that speak HTTP and JSON (JMAP,
// Microsoft Graph) need alike: JSON read within bounds, Retry-After, error
// text made safe for logs, and response bodies that hold a concurrency
// slot and are cut when they stall.
package web

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Decode reads at most limit octets of JSON from r into v. Anything
// larger, or nested deeper than maxDepth, is refused before it is
// decoded, so a broken or hostile server cannot make the gateway hold
// gigabytes or recurse without end (encoding/json itself allows 10,000
// levels). Every refusal wraps bad.
func Decode(r io.Reader, limit int64, maxDepth int, v any, bad error) error {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return err
	}
	return DecodeBytes(data, limit, maxDepth, v, bad)
}

// DecodeBytes is Decode on octets already read.
func DecodeBytes(data []byte, limit int64, maxDepth int, v any, bad error) error {
	if int64(len(data)) > limit {
		return fmt.Errorf("%w: more than %d octets", bad, limit)
	}
	if d := Depth(data, maxDepth); d > maxDepth {
		return fmt.Errorf("%w: nested more than %d levels deep", bad, maxDepth)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %v", bad, err)
	}
	return nil
}

// JSONBounds are a store's bounds on the JSON it reads: nested at most
// MaxDepth levels, every refusal wrapping Bad (the store's sentinel).
type JSONBounds struct {
	MaxDepth int
	Bad      error
}

// Decode is Decode within b.
func (b JSONBounds) Decode(r io.Reader, limit int64, v any) error {
	return Decode(r, limit, b.MaxDepth, v, b.Bad)
}

// DecodeBytes is DecodeBytes within b.
func (b JSONBounds) DecodeBytes(data []byte, limit int64, v any) error {
	return DecodeBytes(data, limit, b.MaxDepth, v, b.Bad)
}

// Depth is Depth, counted to b.MaxDepth.
func (b JSONBounds) Depth(data []byte) int { return Depth(data, b.MaxDepth) }

// Depth is the deepest nesting of objects and arrays in data, counted
// without decoding: brackets inside strings do not count. It stops
// counting once past limit. Malformed JSON is left for json.Unmarshal to
// refuse.
func Depth(data []byte, limit int) int {
	deepest, level := 0, 0
	inString, escaped := false, false
	for _, c := range data {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			level++
			if level > deepest {
				deepest = level
				if deepest > limit {
					return deepest
				}
			}
		case c == '}' || c == ']':
			level--
		}
	}
	return deepest
}

// Transport is the HTTP transport of a store whose server must answer
// within timeout: connecting, the TLS handshake and the wait for a
// response's headers are each bounded by it (and by the standard
// transport's own, shorter, bounds), as the IMAP store bounds each wait
// for its server. A body's octets are bounded by Body.
func Transport(tlsConfig *tls.Config, timeout time.Duration) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	if timeout <= 0 {
		return tr
	}
	tr.ResponseHeaderTimeout = timeout
	tr.TLSHandshakeTimeout = min(tr.TLSHandshakeTimeout, timeout)
	dialer := &net.Dialer{Timeout: min(30*time.Second, timeout), KeepAlive: 30 * time.Second}
	tr.DialContext = dialer.DialContext
	return tr
}

// RetryAfter reads a Retry-After value: seconds, or an HTTP date (RFC 9110
// §10.2.3). A wait beyond a year is read as a year; the caller decides
// what it is willing to wait.
func RetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		n = min(n, int64(365*24*time.Hour/time.Second))
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// Printable keeps at most n printable ASCII characters of s: what a
// server says goes into errors and logs only so.
func Printable(s string, n int) string {
	out := make([]byte, 0, min(len(s), n))
	for i := 0; i < len(s) && len(out) < n; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			out = append(out, c)
		}
	}
	return string(out)
}

// Body is a response body that holds a concurrency slot until it is
// closed, and is cut (Cancel) when a read waits longer than Idle, as the
// IMAP store's watchdog cuts a silent connection.
type Body struct {
	Body    io.ReadCloser
	Idle    time.Duration
	Cancel  func()
	Release func()

	once  sync.Once
	timer *time.Timer
	n     int64
}

func (b *Body) Read(p []byte) (int, error) {
	if b.timer == nil {
		b.timer = time.AfterFunc(b.Idle, b.Cancel)
	} else {
		b.timer.Reset(b.Idle)
	}
	n, err := b.Body.Read(p)
	b.timer.Stop()
	b.n += int64(n)
	return n, err
}

// N is the count of octets read so far.
func (b *Body) N() int64 { return b.n }

// Close closes the body and gives its slot back, once.
func (b *Body) Close() error {
	err := b.Body.Close()
	b.once.Do(func() {
		if b.timer != nil {
			b.timer.Stop()
		}
		b.Release()
	})
	return err
}
