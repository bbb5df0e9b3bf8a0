package integration

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/internal/testkit/faultproxy"
	"github.com/pop3gw/gateway/upstream"
)

// TestRealClientsGetWholeMessageAcrossUpstreamCut: the IMAP connection to
// Dovecot dies in the middle of a message that streams (larger than the
// cache ceiling). fetchmail and mpop still receive it whole, because the
// gateway continues on a new connection from the octet where it was cut,
// and a second keep run fetches nothing.
func TestRealClientsGetWholeMessageAcrossUpstreamCut(t *testing.T) {
	clients := []struct {
		name string
		make func(t testing.TB, addr, user, pass string) clienttest.Client
	}{
		{"fetchmail", clienttest.Fetchmail},
		{"mpop", clienttest.Mpop},
	}
	users := map[string]string{}
	for _, c := range clients {
		users[c.name] = "pw-" + c.name
	}
	dc := dovecottest.Start(t, users)
	cut := faultproxy.Start(t, dc.IMAPAddr())
	gw := startGateway(t, cut.Addr(), upstream.DeleteKeep)

	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			var body strings.Builder
			for i := 0; body.Len() < 6<<20; i++ { // streams: over the 4 MiB ceiling
				fmt.Fprintf(&body, "line %07d of the large message for %s\n", i, c.name)
			}
			body.WriteString("the last line\n")
			large := "From: a@example.com\nSubject: large for " + c.name + "\n\n" + body.String()
			small := "From: a@example.com\nSubject: small for " + c.name + "\n\nsmall\n"
			dc.Deliver(t, c.name, []byte(large), []byte(small))
			client := c.make(t, gw, c.name, users[c.name])

			cuts := cut.Fired()
			cut.CutServerAfter(3 << 20)
			got := client.Fetch(t, true)
			if cut.Fired() != cuts+1 {
				t.Fatal("the upstream connection was not cut")
			}
			if len(got) != 2 {
				t.Fatalf("%s delivered %d messages, want 2", c.name, len(got))
			}
			g := bytes.ReplaceAll(got[0], []byte("\r\n"), []byte("\n"))
			if !bytes.HasSuffix(g, []byte(body.String())) {
				t.Fatalf("%s delivered %d octets for the large message; its body is not whole", c.name, len(g))
			}
			if again := client.Fetch(t, true); len(again) != 0 {
				t.Fatalf("a second run fetched %d messages", len(again))
			}
		})
	}
}
