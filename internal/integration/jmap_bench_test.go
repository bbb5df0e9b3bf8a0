package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/jmap"
)

// BenchmarkJMAPAgainstIMAP reads one Cyrus mailbox of 200 messages
// through the gateway by JMAP and by IMAP, alternating within each
// iteration so that both meet the same machine, and reports the time of
// each and the ratio jmap/imap (messages of one size, so the n-th RETR
// costs the same whichever message each store lists n-th):
//
//   - poll: a client's re-poll of an unchanged mailbox (login, STAT,
//     UIDL, QUIT), the gateway remembering the listing;
//   - retr: a cold RETR (no cache, no fetching ahead) of a 20 KiB message.
//
// The goal: a JMAP poll costs no more than an IMAP poll (ratio <= 1).
func BenchmarkJMAPAgainstIMAP(b *testing.B) {
	const user, pass, count = "bench", "bench-pass", 200
	cy := cyrustest.Start(b, map[string]string{user: pass})
	first := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	filler := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n", 270)
	var msgs [][]byte
	for i := 0; i < count; i++ {
		msgs = append(msgs, []byte(fmt.Sprintf("Subject: %03d\r\nMessage-ID: <%03d@bench>\r\n\r\n%s", i, i, filler)))
	}
	cy.AppendDated(b, user, first, msgs...)
	store, err := jmap.New(jmap.Options{SessionURL: cy.JMAPURL(), HTTPClient: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}})
	if err != nil {
		b.Fatal(err)
	}
	ups := map[string]*proxy.Upstream{
		"imap": {Name: "imap", Server: upstream.Server{Address: cy.IMAPAddr(), Security: upstream.SecurityNone, Timeout: 30 * time.Second}, Mailbox: "INBOX", OnDelete: upstream.DeleteKeep, NoFetchAhead: true},
		"jmap": {Name: "jmap", Mailbox: "INBOX", OnDelete: upstream.DeleteKeep, NoFetchAhead: true, Store: proxy.JMAPStore(store)},
	}
	addrs := map[string]string{}
	for name, up := range ups {
		log := testLogger()
		gw := passthroughGateway(up, cache.New(0, 0), log)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &pop3.Server{Backend: gw, Logger: log}
		go srv.Serve(ln)
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
			gw.Close()
		})
		addrs[name] = ln.Addr().String()
		poll(b, addrs[name], user, pass) // the listing, remembered
	}
	order := []string{"imap", "jmap"}

	b.Run("poll", func(b *testing.B) {
		spent := map[string]time.Duration{}
		for b.Loop() {
			for _, name := range order {
				start := time.Now()
				if n := poll(b, addrs[name], user, pass); n != count {
					b.Fatalf("%s: %d messages", name, n)
				}
				spent[name] += time.Since(start)
			}
		}
		report(b, spent)
	})

	b.Run("retr", func(b *testing.B) {
		clients := map[string]*pop3client.Client{}
		for _, name := range order {
			c, err := pop3client.Dial(addrs[name])
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if err := c.Login(user, pass); err != nil {
				b.Fatal(err)
			}
			clients[name] = c
		}
		spent := map[string]time.Duration{}
		i := 0
		for b.Loop() {
			for _, name := range order {
				c := clients[name]
				c.SetDeadline(time.Now().Add(30 * time.Second))
				start := time.Now()
				body, err := c.Retr(i%count + 1)
				if err != nil || len(body) < len(filler) {
					b.Fatalf("%s: RETR %d: %d octets, %v", name, i%count+1, len(body), err)
				}
				spent[name] += time.Since(start)
			}
			i++
		}
		report(b, spent)
	})
}

// poll is a client's poll: login, STAT, UIDL, QUIT; it returns the
// number of messages listed.
func poll(b *testing.B, addr, user, pass string) int {
	c, err := pop3client.Dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.Login(user, pass); err != nil {
		b.Fatal(err)
	}
	if _, _, err := c.Stat(); err != nil {
		b.Fatal(err)
	}
	uidls, err := c.UIDL()
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		b.Fatal(err)
	}
	return len(uidls)
}

func report(b *testing.B, spent map[string]time.Duration) {
	n := float64(b.N)
	b.ReportMetric(float64(spent["imap"].Nanoseconds())/n, "imap-ns/op")
	b.ReportMetric(float64(spent["jmap"].Nanoseconds())/n, "jmap-ns/op")
	if spent["imap"] > 0 {
		b.ReportMetric(float64(spent["jmap"])/float64(spent["imap"]), "jmap/imap")
	}
}
