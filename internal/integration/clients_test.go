package integration

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/upstream"
)

// TestRealClients runs fetchmail, mpop, getmail and curl against the
// gateway in front of Dovecot's IMAP server: in keep mode a second run
// fetches nothing new, and in delete mode the mailbox is empty afterwards.
func TestRealClients(t *testing.T) {
	clients := []struct {
		name string
		make func(t testing.TB, addr, user, pass string) clienttest.Client
	}{
		{"fetchmail", clienttest.Fetchmail},
		{"mpop", clienttest.Mpop},
		{"getmail", clienttest.Getmail},
		{"curl", clienttest.Curl},
	}
	users := map[string]string{}
	for _, c := range clients {
		users[c.name] = "pw " + c.name + ";x"
	}
	dc := dovecottest.Start(t, users)
	gw := startGateway(t, dc.IMAPAddr(), upstream.DeleteExpunge)

	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			var msgs [][]byte
			for i := 1; i <= 3; i++ {
				msgs = append(msgs, []byte(fmt.Sprintf(
					"From: a@example.com\nTo: %s@example.com\nSubject: message %d for %s\nMessage-ID: <%d.%s@example.com>\n\nbody %d\n.\n..dotted\n",
					c.name, i, c.name, i, c.name, i)))
			}
			dc.Deliver(t, c.name, msgs...)
			client := c.make(t, gw, c.name, users[c.name])

			got := client.Fetch(t, true)
			checkMessages(t, "first keep run", got, msgs)
			if n := dc.Count(t, c.name); n != 3 {
				t.Fatalf("keep mode left %d messages upstream, want 3", n)
			}
			again := client.Fetch(t, true)
			if client.RemembersUIDL() && len(again) != 0 {
				t.Fatalf("second keep run fetched %d messages again; UIDLs must be stable", len(again))
			}
			got = client.Fetch(t, false)
			checkMessages(t, "delete run", got, msgs)
			if n := dc.Count(t, c.name); n != 0 {
				t.Fatalf("delete mode left %d messages upstream", n)
			}
		})
	}
}

// checkMessages matches fetched messages to the delivered ones by their
// Subject and body, since clients rewrite line endings and add headers.
func checkMessages(t *testing.T, run string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: fetched %d messages, want %d", run, len(got), len(want))
	}
	for i, w := range want {
		subject := w[bytes.Index(w, []byte("Subject: ")):]
		subject = subject[:bytes.IndexByte(subject, '\n')]
		g := bytes.ReplaceAll(got[i], []byte("\r\n"), []byte("\n"))
		if !bytes.Contains(g, subject) {
			t.Errorf("%s: message %d lacks %q:\n%s", run, i+1, subject, g)
		}
		if !bytes.Contains(g, []byte("\n.\n..dotted\n")) {
			t.Errorf("%s: message %d lost its dot lines:\n%q", run, i+1, g)
		}
	}
}
