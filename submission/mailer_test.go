package submission

import (
	"errors"
	"strings"
	"testing"
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
