package dovecottest_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
)

var logTail = func() string { return "" }

type conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &conn{t, c, bufio.NewReader(c)}
}

func (c *conn) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return l
}

func (c *conn) send(s string) {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.c, "%s\r\n", s); err != nil {
		c.t.Fatal(err)
	}
}

// multiline reads a POP3 multi-line body up to the terminating ".".
func (c *conn) multiline() string {
	c.t.Helper()
	var b strings.Builder
	for {
		l := c.line()
		if l == ".\r\n" {
			return b.String()
		}
		b.WriteString(l)
	}
}

func (c *conn) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want prefix %q\n%s", l, prefix, logTail())
	}
	return l
}

func TestStart(t *testing.T) {
	s := dovecottest.Start(t, map[string]string{"alice": "secret", "bob": "pw"})
	logTail = s.LogTail
	msgs := [][]byte{
		[]byte("Subject: first\n\nbare LF body\n.leading dot\nno final newline"),
		[]byte("Subject: second\r\n\r\nCRLF body\r\n"),
	}
	s.Deliver(t, "alice", msgs...)
	if n := s.Count(t, "alice"); n != 2 {
		t.Fatalf("Count = %d, want 2", n)
	}
	if n := s.Count(t, "bob"); n != 0 {
		t.Fatalf("Count(bob) = %d, want 0", n)
	}
	got := s.Messages(t, "alice")
	if len(got) != 2 || !bytes.Equal(got[0], msgs[0]) || !bytes.Equal(got[1], msgs[1]) {
		t.Fatalf("Messages = %q, want %q", got, msgs)
	}

	// POP3
	p := dial(t, s.POP3Addr())
	p.expect("+OK")
	p.send("USER alice")
	p.expect("+OK")
	p.send("PASS secret")
	p.expect("+OK")
	p.send("STAT")
	if l := p.expect("+OK"); !strings.HasPrefix(l, "+OK 2 ") {
		t.Fatalf("STAT: %q, want 2 messages", l)
	}
	p.send("RETR 1")
	p.expect("+OK")
	if body, want := p.multiline(), "Subject: first\r\n\r\nbare LF body\r\n..leading dot\r\nno final newline\r\n"; body != want {
		t.Errorf("RETR 1 = %q, want %q", body, want)
	}
	p.send("RETR 2")
	p.expect("+OK")
	if body, want := p.multiline(), "Subject: second\r\n\r\nCRLF body\r\n"; body != want {
		t.Errorf("RETR 2 = %q, want %q", body, want)
	}
	p.send("QUIT")
	p.expect("+OK")

	// Wrong password must fail without a long delay.
	start := time.Now()
	p = dial(t, s.POP3Addr())
	p.expect("+OK")
	p.send("USER alice")
	p.expect("+OK")
	p.send("PASS wrong")
	p.expect("-ERR")
	p.send("USER alice")
	p.expect("+OK")
	p.send("PASS secret")
	p.expect("+OK")
	p.send("QUIT")
	p.expect("+OK")
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("failed login + retry took %v", d)
	}

	// IMAP
	c := dial(t, s.IMAPAddr())
	c.expect("* OK")
	c.send("a LOGIN alice secret")
	var caps string
	for {
		l := c.line()
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				t.Fatalf("LOGIN: %q", l)
			}
			caps += l
			break
		}
		caps += l
	}
	for _, capa := range []string{"UIDPLUS", "MOVE"} {
		if !strings.Contains(caps, " "+capa) {
			t.Errorf("capability %s missing in %q", capa, caps)
		}
	}
	c.send("b SELECT INBOX")
	exists := false
	for {
		l := c.line()
		if l == "* 2 EXISTS\r\n" {
			exists = true
		}
		if strings.HasPrefix(l, "b ") {
			if !strings.HasPrefix(l, "b OK") {
				t.Fatalf("SELECT: %q", l)
			}
			break
		}
	}
	if !exists {
		t.Error("SELECT INBOX did not report 2 EXISTS")
	}
	c.send("c LOGOUT")
	c.expect("* BYE")
	c.expect("c OK")
}

func TestDeliverOrder(t *testing.T) {
	s := dovecottest.Start(t, map[string]string{"carol": "pw"})
	logTail = s.LogTail
	const n = 25
	for i := 1; i <= n; i++ {
		s.Deliver(t, "carol", fmt.Appendf(nil, "Subject: %d\n\n%d\n", i, i))
	}
	p := dial(t, s.POP3Addr())
	p.expect("+OK")
	p.send("USER carol")
	p.expect("+OK")
	p.send("PASS pw")
	p.expect("+OK")
	for i := 1; i <= n; i++ {
		p.send(fmt.Sprintf("TOP %d 0", i))
		p.expect("+OK")
		if h, want := p.multiline(), fmt.Sprintf("Subject: %d\r\n\r\n", i); h != want {
			t.Errorf("TOP %d = %q, want %q", i, h, want)
		}
	}
	p.send("DELE 1")
	p.expect("+OK")
	p.send("QUIT")
	p.expect("+OK")
	if got := s.Count(t, "carol"); got != n-1 {
		t.Errorf("Count after DELE = %d, want %d", got, n-1)
	}
}
