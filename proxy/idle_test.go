package proxy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
)

// poll is one poller's session: login, UIDL, QUIT.
func (e *env) poll(user, pass string) ([]pop3client.Entry, error) {
	c := e.dial()
	defer c.Close()
	if err := c.Login(user, pass); err != nil {
		return nil, err
	}
	uidls, err := c.UIDL()
	if err != nil {
		return nil, err
	}
	return uidls, c.Quit()
}

// TestKeptConnectionIdles: a connection kept between sessions waits in
// IDLE (RFC 2177); the next session ends it, on the same connection, and
// lists what came meanwhile.
func TestKeptConnectionIdles(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("alice@example.com", corpus...)
	if uidls, err := e.poll("alice", localPassword); err != nil || len(uidls) != 3 {
		t.Fatalf("first poll: %v, %d messages", err, len(uidls))
	}
	waitFor(t, func() bool { return e.proxy.idles.Load() == 1 })
	e.deliver("alice@example.com", "Subject: new\r\n\r\nnew\r\n")
	if uidls, err := e.poll("alice", localPassword); err != nil || len(uidls) != 4 {
		t.Fatalf("poll after delivery: %v, %d messages, want 4", err, len(uidls))
	}
	if n := e.proxy.Accepted(); n != 1 {
		t.Errorf("2 polls opened %d upstream connections, want 1", n)
	}
	waitFor(t, func() bool { return e.proxy.idles.Load() == 2 })
}

// TestIdlingConnectionDroppedIsReplaced: the server drops a kept
// connection while it idles; the next login gets a new one and is served.
func TestIdlingConnectionDroppedIsReplaced(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("alice@example.com", corpus...)
	if _, err := e.poll("alice", localPassword); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.proxy.idles.Load() == 1 })
	e.proxy.ResetAll()
	e.deliver("alice@example.com", "Subject: new\r\n\r\nnew\r\n")
	uidls, err := e.poll("alice", localPassword)
	if err != nil || len(uidls) != 4 {
		t.Fatalf("poll after the drop: %v, %d messages, want 4", err, len(uidls))
	}
	if n := e.proxy.Accepted(); n != 2 {
		t.Errorf("%d upstream connections, want 2", n)
	}
}

// TestServerWithoutIdle: the exact dialogue with a server that
// does not offer IDLE: the kept connection waits silently, and the next
// session asks for the mailbox's state with NOOP and STATUS, not a second
// SELECT, and for what is new.
func TestServerWithoutIdle(t *testing.T) {
	e := newScriptedEnv(t, loginAndList(100, 100)+`
		C: {tag} NOOP
		S: * 3 EXISTS
		S: {tag} OK noop
		`+statusOf(3, 4)+`
		`+statusOf(3, 4)+`
		C: {tag} UID FETCH 3:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
		S: * 3 FETCH (UID 3 FLAGS () RFC822.SIZE 120)
		S: {tag} OK fetched
	`)
	e.gw.config.Load().Upstreams["scripted"].KeepConnection = time.Minute
	e.gw.pool.waitAfter = 0 // the wait starts before QUIT is answered
	t.Cleanup(e.gw.Close)   // logs out of the kept connection, ending the dialogue
	for i, want := range []int{2, 3} {
		c := e.login()
		if n, _ := must2(t)(c.Stat()); n != want {
			t.Fatalf("session %d: STAT counted %d messages, want %d", i+1, n, want)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.imap.Accepted(); n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
}

// TestKeptConnectionSyncsDeliveryWhileIdle: Dovecot applies a delivery
// to a mailbox a kept connection idles on when it happens (the message
// leaves the maildir's new/ with no client command), and the next session
// lists it.
func TestKeptConnectionSyncsDeliveryWhileIdle(t *testing.T) {
	dc := dovecottest.Start(t, map[string]string{"idler": "pass"})
	dc.Deliver(t, "idler", []byte("Subject: 1\r\n\r\none\r\n"), []byte("Subject: 2\r\n\r\ntwo\r\n"))
	_, addr := serveDovecot(t, dc.IMAPAddr(), cache.New(1<<20, 1<<20), cache.NewBudget(8<<20))
	poll := func() []pop3client.Entry {
		t.Helper()
		c, err := pop3client.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if err := c.Login("idler", "pass"); err != nil {
			t.Fatal(err)
		}
		uidls := must[[]pop3client.Entry](t)(c.UIDL())
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		return uidls
	}
	if n := len(poll()); n != 2 {
		t.Fatalf("first session: %d messages, want 2", n)
	}
	newDir := filepath.Join(dc.Maildir("idler"), "new")
	if left := must[[]os.DirEntry](t)(os.ReadDir(newDir)); len(left) != 0 {
		t.Fatalf("%d messages left in new/ after a session", len(left))
	}
	dc.Deliver(t, "idler", []byte("Subject: 3\r\n\r\nthree\r\n"))
	waitFor(t, func() bool {
		left, err := os.ReadDir(newDir)
		return err == nil && len(left) == 0
	})
	uidls := poll()
	if len(uidls) != 3 || uidls[2].Value[:8] != "00000003" {
		t.Fatalf("second session: %+v, want 3 messages, the last with UID 3", uidls)
	}
}

// TestServerEndsIdle: a server that ends IDLE on its own before the next
// login answers that login's DONE as a bad command, which the IMAP client
// takes for a broken connection; the login is then served on a new one.
func TestServerEndsIdle(t *testing.T) {
	e := newScriptedEnv(t, withIdle(loginAndList(100))+`
		C: {tag} IDLE
		S: + idling
		S: {tag} OK IDLE ended by the server
		C: DONE
		C: {tag} NOOP
		C: {tag} STATUS INBOX (UIDNEXT MESSAGES UIDVALIDITY)
		S: DONE BAD no command
	`, withIdle(loginAndSelect(1))+`
		C: {tag} IDLE
		S: + idling
		C: DONE
		S: {tag} OK idle done
	`)
	e.gw.config.Load().Upstreams["scripted"].KeepConnection = time.Minute
	e.gw.pool.waitAfter = 0 // the wait starts before QUIT is answered
	t.Cleanup(e.gw.Close)   // ends the second connection's IDLE and logs out
	for i := range 2 {
		c := e.login()
		if n, _ := must2(t)(c.Stat()); n != 1 {
			t.Fatalf("session %d: STAT counted %d messages, want 1", i+1, n)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.imap.Accepted(); n != 2 {
		t.Errorf("%d upstream connections, want 2", n)
	}
}

// TestRefreshSeesBalancedChange: another client's expunge and a delivery
// told only at the login's NOOP leave the message count as it was, and a
// STATUS answered from the view before the NOOP (as Dovecot answers the
// STATUS sent with it) also has the old UIDNEXT: the second STATUS, asked
// after the NOOP, has the new one, and the next session lists the
// mailbox as it now is, not as it was.
func TestRefreshSeesBalancedChange(t *testing.T) {
	for _, idle := range []bool{false, true} {
		t.Run(fmt.Sprintf("idle=%v", idle), func(t *testing.T) {
			dialogue := loginAndList(100, 200)
			stop := ""
			if idle {
				dialogue = withIdle(dialogue) + `
					C: {tag} IDLE
					S: + idling
				`
				stop = "C: DONE\nS: {tag} OK idle done\n"
			}
			dialogue += stop + `
				C: {tag} NOOP
				S: * 1 EXPUNGE
				S: * 2 EXISTS
				S: {tag} OK noop
				` + statusOf(2, 3) + `
				` + statusOf(2, 4) + `
				C: {tag} UID FETCH 3:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
				S: * 2 FETCH (UID 3 FLAGS () RFC822.SIZE 300)
				S: {tag} OK fetched
				C: {tag} UID SEARCH UID 1:2
				S: * SEARCH 2
				S: {tag} OK searched
			`
			if idle {
				dialogue += `
					C: {tag} IDLE
					S: + idling
					C: DONE
					S: {tag} OK idle done
				`
			}
			e := newScriptedEnv(t, dialogue)
			e.gw.config.Load().Upstreams["scripted"].KeepConnection = time.Minute
			e.gw.pool.waitAfter = 0
			t.Cleanup(e.gw.Close)
			for i, want := range []string{"1 100\r\n2 200\r\n", "1 200\r\n2 300\r\n"} {
				c := e.login()
				_, list, err := c.Multi("LIST")
				if err != nil {
					t.Fatal(err)
				}
				if string(list) != want {
					t.Fatalf("session %d: LIST gave %q, want %q", i+1, list, want)
				}
				if err := c.Quit(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// statusOf is a STATUS of INBOX and the server's answer, in a dialogue.
func statusOf(messages, uidNext int) string {
	return fmt.Sprintf(`
		C: {tag} STATUS INBOX (UIDNEXT MESSAGES UIDVALIDITY)
		S: * STATUS INBOX (MESSAGES %d UIDNEXT %d UIDVALIDITY 1)
		S: {tag} OK status
	`, messages, uidNext)
}

// withIdle makes a scripted server offer IDLE.
func withIdle(dialogue string) string {
	return strings.ReplaceAll(dialogue, "UIDPLUS]", "UIDPLUS IDLE]")
}

// TestRefreshAfterIdle: after IDLE, the next login asks for the state with
// NOOP and STATUS, sent with DONE, instead of selecting the mailbox again; an
// answer that disagrees with the EXISTS and EXPUNGE responses the server
// sent while idling is not taken, and the mailbox is selected again.
func TestRefreshAfterIdle(t *testing.T) {
	const newFetch = `
		C: {tag} UID FETCH 2:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
		S: * 2 FETCH (UID 2 FLAGS () RFC822.SIZE 120)
		S: {tag} OK fetched
		C: {tag} IDLE
		S: + idling
		C: DONE
		S: {tag} OK idle done
	`
	for _, tc := range []struct {
		name, dialogue string
		want           []int // STAT of each session; nil: 1, then 2
	}{
		{"status", withIdle(loginAndList(100)) + `
			C: {tag} IDLE
			S: + idling
			S: * 2 EXISTS
			C: DONE
			S: {tag} OK idle done
			C: {tag} NOOP
			S: {tag} OK noop
			` + statusOf(2, 3) + `
		` + newFetch, nil},
		// A server may tell of another client's expunge only when asked
		// (Dovecot, on a STATUS of the selected mailbox, answers from the
		// connection's own view): the NOOP before STATUS makes it tell.
		// Dovecot also answers the STATUS sent with the NOOP before the
		// NOOP's sync ends, from the view before it: after a change told
		// at the NOOP, STATUS is asked again.
		{"expunge told at NOOP", withIdle(loginAndList(100, 100)) + `
			C: {tag} IDLE
			S: + idling
			C: DONE
			S: {tag} OK idle done
			C: {tag} NOOP
			S: * 2 EXPUNGE
			S: {tag} OK noop
			` + statusOf(2, 3) + `
			` + statusOf(1, 3) + `
			C: {tag} UID SEARCH UID 1:2
			S: * SEARCH 1
			S: {tag} OK searched
			C: {tag} IDLE
			S: + idling
			C: DONE
			S: {tag} OK idle done
		`, []int{2, 1}},
		// RFC 3501 §6.3.10: a client should not ask STATUS of the
		// selected mailbox; a server that refuses it has it selected
		// again.
		{"status refused", withIdle(loginAndList(100)) + `
			C: {tag} IDLE
			S: + idling
			C: DONE
			S: {tag} OK idle done
			C: {tag} NOOP
			S: {tag} OK noop
			C: {tag} STATUS INBOX (UIDNEXT MESSAGES UIDVALIDITY)
			S: {tag} NO not of the selected mailbox
			C: {tag} SELECT INBOX
			S: * 2 EXISTS
			S: * OK [UIDVALIDITY 1] ok
			S: * OK [UIDNEXT 3] ok
			S: {tag} OK [READ-WRITE] selected
		` + newFetch, nil},
		{"status disagrees", withIdle(loginAndList(100)) + `
			C: {tag} IDLE
			S: + idling
			C: DONE
			S: {tag} OK idle done
			C: {tag} NOOP
			S: {tag} OK noop
			` + statusOf(2, 3) + `
			C: {tag} SELECT INBOX
			S: * 2 EXISTS
			S: * OK [UIDVALIDITY 1] ok
			S: * OK [UIDNEXT 3] ok
			S: {tag} OK [READ-WRITE] selected
		` + newFetch, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newScriptedEnv(t, tc.dialogue)
			e.gw.config.Load().Upstreams["scripted"].KeepConnection = time.Minute
			e.gw.pool.waitAfter = 0
			t.Cleanup(e.gw.Close)
			want := tc.want
			if want == nil {
				want = []int{1, 2}
			}
			for i, want := range want {
				c := e.login()
				if n, _ := must2(t)(c.Stat()); n != want {
					t.Fatalf("session %d: STAT counted %d messages, want %d", i+1, n, want)
				}
				if err := c.Quit(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
