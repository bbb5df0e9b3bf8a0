package submission

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReconcile: the recipient headers are made to agree with the
// envelope for a Mailer that sends to the headers' recipients.
func TestReconcile(t *testing.T) {
	for _, tc := range []struct {
		name     string
		msg      string
		envelope []string
		want     string
		err      error
	}{
		{name: "agree", msg: "To: A <a@x.example>\r\nCc: b@x.example\r\n\r\nbody\r\n", envelope: []string{"a@x.example", "B@X.example"},
			want: "To: A <a@x.example>\r\nCc: b@x.example\r\n\r\nbody\r\n"},
		{name: "envelope-only recipients added", msg: "To: a@x.example\r\n\r\nbody\r\n", envelope: []string{"a@x.example", "c@y.example", "d@y.example"},
			want: "Bcc: c@y.example,\r\n d@y.example\r\nTo: a@x.example\r\n\r\nbody\r\n"},
		{name: "existing Bcc replaced, folded", msg: "To: a@x.example\r\nBcc: e@y.example,\r\n\tf@y.example\r\nSubject: s\r\n\r\nBcc: in the body\r\n", envelope: []string{"a@x.example", "e@y.example", "f@y.example", "g@y.example"},
			want: "Bcc: e@y.example,\r\n f@y.example,\r\n g@y.example\r\nTo: a@x.example\r\nSubject: s\r\n\r\nBcc: in the body\r\n"},
		{name: "group syntax", msg: "To: undisclosed-recipients:;\r\n\r\nbody\r\n", envelope: []string{"a@x.example"},
			want: "Bcc: a@x.example\r\nTo: undisclosed-recipients:;\r\n\r\nbody\r\n"},
		{name: "no headers", msg: "\r\nbody\r\n", envelope: []string{"a@x.example"},
			want: "Bcc: a@x.example\r\n\r\nbody\r\n"},
		{name: "header recipient not in the envelope", msg: "To: a@x.example, z@evil.example\r\n\r\nbody\r\n", envelope: []string{"a@x.example"},
			err: errHeaderRecipient},
		{name: "Bcc recipient not in the envelope", msg: "To: a@x.example\r\nBcc: z@evil.example\r\n\r\nbody\r\n", envelope: []string{"a@x.example"},
			err: errHeaderRecipient},
		{name: "unreadable recipients", msg: "To: a@x.example\r\nCc: <<<\r\n\r\nbody\r\n", envelope: []string{"a@x.example"},
			err: errRecipientHeaders},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := reconcile([]byte(tc.msg), tc.envelope)
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err == nil && string(got) != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestMailerReply: an API's refusal becomes the SMTP reply RFC 5321
// §4.2.1 asks for: temporary ones 4yz, permanent ones 5yz.
func TestMailerReply(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		text string
	}{
		{&MailerRefusal{Status: 429, Code: "ApplicationThrottled", Temporary: true, RetryAfter: 1500e6}, 451, "wait 2 seconds"},
		{&MailerRefusal{Status: 503, Temporary: true}, 451, "try again later"},
		{&MailerRefusal{Status: 401, Code: "InvalidAuthenticationToken"}, 451, "try again later"},
		{errors.New("connection reset"), 451, "nothing was sent"},
		{&MailerRefusal{Status: 404, Code: "ErrorItemNotFound"}, 451, "try again later"},
		{&MailerRefusal{Status: 403, Code: "ErrorSendAsDenied"}, 554, "(ErrorSendAsDenied)"},
		{&MailerRefusal{Status: 400, Code: "ErrorInvalidRecipients"}, 550, "(ErrorInvalidRecipients)"},
		{&MailerRefusal{Status: 413}, 552, "limit 100 octets"},
	} {
		r := mailerReply(tc.err, 100)
		if r.Code != tc.code || !strings.Contains(r.Message, tc.text) {
			t.Errorf("%v: %d %s, want %d with %q", tc.err, r.Code, r.Message, tc.code, tc.text)
		}
	}
}

// fakeMailer records what it is given.
type fakeMailer struct {
	limit int64
	mu    sync.Mutex
	sent  [][]byte
}

func (m *fakeMailer) MaxSize() int64 { return m.limit }

func (m *fakeMailer) Send(_ context.Context, msg []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, bytes.Clone(msg))
	return nil
}

// TestMailerSizeBound: without a SIZE in EHLO, DATA is still read no
// further than the Mailer's limit, refused with 552 naming it, and nothing
// is sent; the session goes on.
func TestMailerSizeBound(t *testing.T) {
	m := &fakeMailer{limit: 100}
	h := newRelay(t, newFakeUpstream(t, nil), func(s *Server) {
		s.Backend = backendFunc(func(_ context.Context, l *LoginInfo) (*Account, error) {
			return &Account{Key: "api/alice", Upstream: &Upstream{Name: "api"}, Senders: []string{"alice@example.com"}, Mailer: m}, nil
		})
	})
	c := h.dial()
	c.login()
	if got := c.send("alice@example.com", []string{"b@example.com"}, "To: b@example.com\r\n\r\n"+strings.Repeat("x", 200)); !strings.HasPrefix(got, "552 5.3.4 ") || !strings.Contains(got, "limit 100 octets") {
		t.Fatalf("over the limit: %q", got)
	}
	if got := c.send("alice@example.com", []string{"b@example.com"}, "To: b@example.com\r\n\r\nsmall"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("within the limit: %q", got)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sent) != 1 || string(m.sent[0]) != "To: b@example.com\r\n\r\nsmall\r\n" {
		t.Fatalf("sent %q", m.sent)
	}
}

// TestMailerSlowAndStalledDevices: through a Mailer too, the idle timeout
// bounds each silence in DATA, not the whole message: a device that sends
// its message in pieces over several idle timeouts has it sent once; one
// that stops halfway is told 451 (never a 5xx, never connection details)
// and nothing is sent.
func TestMailerSlowAndStalledDevices(t *testing.T) {
	const idle = 300 * time.Millisecond
	m := &fakeMailer{limit: 1 << 20}
	h := newRelay(t, newFakeUpstream(t, nil), func(s *Server) {
		s.IdleTimeout = idle
		s.Backend = backendFunc(func(_ context.Context, l *LoginInfo) (*Account, error) {
			return &Account{Key: "api/alice", Upstream: &Upstream{Name: "api"}, Senders: []string{"alice@example.com"}, Mailer: m}, nil
		})
	})
	body := "To: b@example.com\r\nSubject: slow\r\n\r\n" + strings.Repeat("a line of the slow message\r\n", 10)
	c := h.dial()
	c.login()
	c.cmd("MAIL FROM:<alice@example.com>", "250 ")
	c.cmd("RCPT TO:<b@example.com>", "250 ")
	c.cmd("DATA", "354 ")
	c.drip(body, idle)

	c = h.dial()
	c.login()
	c.cmd("MAIL FROM:<alice@example.com>", "250 ")
	c.cmd("RCPT TO:<b@example.com>", "250 ")
	c.cmd("DATA", "354 ")
	io.WriteString(c.nc, body[:len(body)/2])
	if got := c.reply(); !strings.HasPrefix(got, "451 4.4.2 ") || strings.Contains(got, "127.0.0.1") {
		t.Fatalf("stalled device: %q, want 451 4.4.2 without connection details", got)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sent) != 1 || !strings.Contains(string(m.sent[0]), "Subject: slow") {
		t.Fatalf("sent %d messages, want the slow one once", len(m.sent))
	}
}
