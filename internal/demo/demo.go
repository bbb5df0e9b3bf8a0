// Package demo is the upstream of `gateway demo`: go-imap's in-memory IMAP
// server (imapmemserver) on a loopback port, holding one user with a
// handful of sample messages. The mail lives in memory, so every start
// serves the same messages.
package demo

import (
	"bytes"
	"encoding/base64"
	"io"
	"log"
	"net"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// The demo account, on the IMAP server and through the gateway.
const (
	User     = "demo"
	Password = "demo"
)

// Mailbox is a running in-memory IMAP server holding the sample mail.
type Mailbox struct {
	srv  *imapserver.Server
	ln   net.Listener
	done chan struct{}
}

// Start serves the sample mail over IMAP on a free loopback port, without
// TLS.
func Start() (*Mailbox, error) {
	mem := imapmemserver.New()
	u := imapmemserver.NewUser(User, Password)
	if err := u.Create("INBOX", nil); err != nil {
		return nil, err
	}
	for _, m := range Messages() {
		if _, err := u.Append("INBOX", literal{bytes.NewReader(m)}, &imap.AppendOptions{}); err != nil {
			return nil, err
		}
	}
	mem.AddUser(u)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true, // loopback only
		Logger:       log.New(io.Discard, "", 0),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m := &Mailbox{srv: srv, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		srv.Serve(ln)
	}()
	return m, nil
}

// Addr is the IMAP server's address.
func (m *Mailbox) Addr() string { return m.ln.Addr().String() }

// Close stops the server and waits until it has stopped.
func (m *Mailbox) Close() error {
	err := m.srv.Close()
	<-m.done
	return err
}

type literal struct{ *bytes.Reader }

func (l literal) Size() int64 { return l.Reader.Size() }

// Messages are the sample mail: plain text, lines starting with dots,
// UTF-8 headers and body, and an attachment.
func Messages() [][]byte {
	date := "Date: Mon, 2 Nov 2026 09:00:00 +0000\r\n"
	attachment := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("gateway demo attachment\n", 40)))
	var wrapped strings.Builder
	for len(attachment) > 76 {
		wrapped.WriteString(attachment[:76] + "\r\n")
		attachment = attachment[76:]
	}
	wrapped.WriteString(attachment + "\r\n")
	return [][]byte{
		[]byte("From: Demo Sender <sender@example.com>\r\nTo: demo@example.com\r\nSubject: Welcome to the POP3 gateway\r\n" + date +
			"Message-ID: <demo-1@example.com>\r\n\r\nThis message was read from an IMAP mailbox and served over POP3.\r\n"),
		[]byte("From: sender@example.com\r\nTo: demo@example.com\r\nSubject: Lines that start with dots\r\n" + date +
			"Message-ID: <demo-2@example.com>\r\n\r\nThe next line is a single dot:\r\n.\r\n..and this one starts with two.\r\n.\r\nPOP3 dot-stuffs them on the wire; clients remove the extra dot.\r\n"),
		[]byte("From: =?UTF-8?Q?Ren=C3=A9e_Dupr=C3=A9?= <renee@example.com>\r\nTo: demo@example.com\r\nSubject: =?UTF-8?B?R3LDvMOfZSBhdXMgWsO8cmljaCDwn5iK?=\r\n" + date +
			"Message-ID: <demo-3@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Zürich, 東京 and Kraków. 😊\r\n"),
		[]byte("From: sender@example.com\r\nTo: demo@example.com\r\nSubject: A message with an attachment\r\n" + date +
			"Message-ID: <demo-4@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" +
			"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThe attachment is a small text file.\r\n" +
			"--b1\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
			wrapped.String() + "--b1--\r\n"),
	}
}
