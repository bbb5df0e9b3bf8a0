package integration

import (
	"encoding/base64"
	"strings"
)

// trickyMessage is one message of the comparison corpus, stored in the
// maildir byte for byte as given.
type trickyMessage struct {
	name string
	raw  string
}

func trickyCorpus() []trickyMessage {
	long998 := strings.Repeat("a", 1200)
	long8k := strings.Repeat("b", 9000)
	attachment := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("0123456789abcdef", 1<<16))) // 1 MiB
	var wrapped strings.Builder
	for len(attachment) > 76 {
		wrapped.WriteString(attachment[:76] + "\n")
		attachment = attachment[76:]
	}
	wrapped.WriteString(attachment + "\n")
	hdr := func(subject string) string {
		return "From: sender@example.com\nTo: rcpt@example.com\nSubject: " + subject + "\nDate: Mon, 2 Nov 2026 09:00:00 +0000\n"
	}
	return []trickyMessage{
		{"plain", hdr("plain") + "\nHello.\n"},
		{"dot-only lines", hdr("dots") + "\n.\nbetween\n.\n"},
		{"lines starting with dots", hdr("leading dots") + "\n..two\n.one\n...three\n. space\n"},
		{"8-bit and UTF-8 headers", "From: =?UTF-8?Q?Ren=C3=A9e?= <r@example.com>\nSubject: Gr\xc3\xbc\xc3\x9fe \xe6\x9d\xb1\xe4\xba\xac\nX-Latin1: caf\xe9\nTo: x@example.com\n\nK\xf6rper \xc3\xa4\n"},
		{"line over 998 octets", hdr("long") + "\n" + long998 + "\nend\n"},
		{"line over 8192 octets", hdr("very long") + "\n" + long8k + "\nend\n"},
		{"no final newline", hdr("no newline") + "\nlast line without newline"},
		{"headers only", hdr("headers only")},
		{"headers only, no final newline", "Subject: h\nX-A: b"},
		{"empty body", hdr("empty body") + "\n"},
		{"CRLF stored", "Subject: crlf\r\nX: y\r\n\r\nbody\r\n.\r\n"},
		{"mixed CRLF and LF", "Subject: mixed\r\nX: y\n\r\nline1\nline2\r\n"},
		{"MB-sized attachment", hdr("attachment") + "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nsee attached\n--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + wrapped.String() + "--b--\n"},
		{"many short lines", hdr("lines") + "\n" + strings.Repeat("x\n", 5000)},
		{"trailing blank lines", hdr("blank tail") + "\nbody\n\n\n"},
	}
}
