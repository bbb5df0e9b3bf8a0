package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/imapscript"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// scriptedEnv is a gateway whose upstream is a scripted IMAP server.
type scriptedEnv struct {
	t     *testing.T
	imap  *imapscript.Server
	cache *cache.Cache
	gw    *Gateway
	addr  string
}

// newScriptedEnv starts the gateway for the mapped user alice in front of
// a scripted server playing dialogues, one per upstream connection.
// Fetching ahead and keeping connections are off, so each dialogue is
// exactly what one session sends.
func newScriptedEnv(t *testing.T, dialogues ...string) *scriptedEnv {
	t.Helper()
	imap := imapscript.Start(t, dialogues...)
	hash, err := passwd.Hash(localPassword)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &Config{
		Upstreams: map[string]*Upstream{
			"scripted": {
				Name:           "scripted",
				Server:         upstream.Server{Address: imap.Addr(), Security: upstream.SecurityNone, Timeout: 10 * time.Second},
				Mailbox:        "INBOX",
				OnDelete:       upstream.DeleteExpunge,
				KeepConnection: -1,
			},
		},
		Users: map[string]*User{
			"alice": {
				Name:             "alice",
				PasswordHash:     hash,
				Upstream:         "scripted",
				UpstreamUser:     "alice",
				UpstreamPassword: func() (string, error) { return "secret", nil },
			},
		},
	}
	c := cache.New(64<<20, 4<<20)
	gw := New(cfg, c, testLogger())
	gw.SetPrefetch(false)
	srv := &pop3.Server{Backend: gw, Logger: testLogger()}
	return &scriptedEnv{t: t, imap: imap, cache: c, gw: gw, addr: serve(t, srv, nil)}
}

func (e *scriptedEnv) login() *pop3client.Client {
	e.t.Helper()
	c, err := pop3client.Dial(e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	e.t.Cleanup(func() { c.Close() })
	if err := c.Login("alice", localPassword); err != nil {
		e.t.Fatalf("login: %v", err)
	}
	return c
}

// loginAndList is the start of every scripted session: greeting, login,
// SELECT and the listing, here of messages with the given sizes, UIDs 1
// to n, UIDVALIDITY 1.
func loginAndList(sizes ...int) string {
	var b strings.Builder
	b.WriteString(loginAndSelect(len(sizes)))
	if len(sizes) > 0 {
		b.WriteString(`C: {tag} FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])` + "\n")
		for i, size := range sizes {
			fmt.Fprintf(&b, "S: * %d FETCH (UID %d FLAGS () RFC822.SIZE %d)\n", i+1, i+1, size)
		}
		b.WriteString("S: {tag} OK fetched\n")
	}
	return b.String()
}

// loginAndSelect is loginAndList for a mailbox of n messages whose
// listing the gateway remembers from an earlier session.
func loginAndSelect(n int) string {
	return fmt.Sprintf(`
		S: * OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS] ready
		C: {tag} AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==
		S: {tag} OK [CAPABILITY IMAP4rev1 UIDPLUS] logged in
		C: {tag} SELECT INBOX
		S: * %d EXISTS
		S: * OK [UIDVALIDITY 1] ok
		S: * OK [UIDNEXT %d] ok
		S: {tag} OK [READ-WRITE] selected
	`, n, n+1)
}

// message187 is 187 octets with CRLF line endings and no final line
// break; message189 is the same with one.
var (
	message187 = "Subject: no final line break\r\nFrom: a@example.com\r\n\r\n" +
		strings.Repeat("0123456789", 12) + "\r\nthe end, 187"
	message189 = message187 + "\r\n"
)

// fetchReply is a FETCH response carrying message as BODY[].
func fetchReply(seq, uid int, message string) string {
	return fmt.Sprintf("S: * %d FETCH (UID %d BODY[] {%d}\nS: %s)\n", seq, uid, len(message),
		strings.ReplaceAll(message, "\r\n", "\nS: "))
}

const noBodyReply = "-ERR [SYS/TEMP] The server did not send this message; please try again later."

// TestNilBodyIsATemporaryFailure: a server that answers a body fetch with
// NIL (Exchange does, for a message it cannot convert) or with an empty
// literal has not given the message. RETR says so with [SYS/TEMP];
// nothing is cached or recorded as 0 octets: the listing keeps the
// server's size, and the next RETR asks the server again.
func TestNilBodyIsATemporaryFailure(t *testing.T) {
	for _, nobody := range []string{"NIL", `""`, "{0}\nS: "} {
		t.Run(nobody, func(t *testing.T) {
			e := newScriptedEnv(t, loginAndList(189)+`
				C: {tag} UID FETCH 1 (UID BODY.PEEK[])
				S: * 1 FETCH (UID 1 BODY[] `+nobody+`)
				S: {tag} OK fetched
				C: {tag} UID FETCH 1 (UID BODY.PEEK[])
				`+fetchReply(1, 1, message189)+`
				S: {tag} OK fetched
			`)
			c := e.login()
			expectReply(t, c, "RETR 1", noBodyReply)
			expectReply(t, c, "LIST 1", "+OK 1 189")
			if n := e.cache.Stats().Entries; n != 0 {
				t.Errorf("%d messages cached", n)
			}
			expectReply(t, c, "RETR 1", "+OK 189 octets")
			if body := must[[]byte](t)(c.RawMulti()); string(body) != message189 {
				t.Fatalf("RETR 1 = %q", body)
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEmptyBodyFetchedAheadIsNotCached: a message the server sends empty
// in a batch fetched ahead is not cached as 0 octets; RETR fetches it
// alone, never in a second batch, and serves it, or says [SYS/TEMP].
func TestEmptyBodyFetchedAheadIsNotCached(t *testing.T) {
	e := newScriptedEnv(t, loginAndList(189, 189)+`
		C: {tag} UID FETCH 1:2 (UID BODY.PEEK[])
		`+fetchReply(1, 1, message189)+`
		S: * 2 FETCH (UID 2 BODY[] "")
		S: {tag} OK fetched
		# RETR 2: alone, never in another batch.
		C: {tag} UID FETCH 2 (UID BODY.PEEK[])
		S: * 2 FETCH (UID 2 BODY[] NIL)
		S: {tag} OK fetched
	`)
	e.gw.SetPrefetch(true)
	c := e.login()
	if body := must[[]byte](t)(c.Retr(1)); string(body) != message189 {
		t.Fatalf("RETR 1 = %q", body)
	}
	expectReply(t, c, "RETR 2", noBodyReply)
	expectReply(t, c, "LIST 2", "+OK 2 189")
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// TestFlagUpdateBeforeBody: a flag update the server sends on its own for
// the message being fetched, before the body, does not make RETR report
// the message removed. The gateway keeps reading for the body, and says
// "removed" only when a search shows the UID is gone.
func TestFlagUpdateBeforeBody(t *testing.T) {
	fetch := "C: {tag} UID FETCH 1 (UID BODY.PEEK[])\n"
	for _, tc := range []struct {
		name, script, reply string
	}{
		{"with UID", `
			S: * 1 FETCH (UID 1 FLAGS (\Seen))
			` + fetchReply(1, 1, message189) + `
			S: {tag} OK fetched
		`, "+OK 189 octets"},
		{"without UID", `
			S: * 1 FETCH (FLAGS (\Seen))
			` + fetchReply(1, 1, message189) + `
			S: {tag} OK fetched
		`, "+OK 189 octets"},
		{"then gone", `
			S: * 1 FETCH (UID 1 FLAGS (\Deleted))
			S: {tag} OK fetched
			C: {tag} UID SEARCH UID 1
			S: * SEARCH
			S: {tag} OK searched
		`, "-ERR Message was removed by another client."},
		{"no body but still there", `
			S: * 1 FETCH (UID 1 FLAGS (\Seen))
			S: {tag} OK fetched
			C: {tag} UID SEARCH UID 1
			S: * SEARCH 1
			S: {tag} OK searched
		`, noBodyReply},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newScriptedEnv(t, loginAndList(189)+fetch+tc.script)
			c := e.login()
			expectReply(t, c, "RETR 1", tc.reply)
			if strings.HasPrefix(tc.reply, "+OK") {
				if body := must[[]byte](t)(c.RawMulti()); string(body) != message189 {
					t.Fatalf("RETR 1 = %q", body)
				}
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNoFinalLineBreakKeepsItsSize: a message whose last line has no line
// break is 187 octets for the server and for POP3 (RFC 1939 §11): RETR
// ends the last line with a CRLF before the terminator, but that CRLF is
// not counted. The listing does not change after RETR, in this session or
// the next.
func TestNoFinalLineBreakKeepsItsSize(t *testing.T) {
	if len(message187) != 187 {
		t.Fatalf("message187 is %d octets", len(message187))
	}
	e := newScriptedEnv(t, loginAndList(187)+`
		C: {tag} UID FETCH 1 (UID BODY.PEEK[])
		`+fetchReply(1, 1, message187)+`
		S: {tag} OK fetched
	`, loginAndSelect(1))
	c := e.login()
	expectReply(t, c, "LIST 1", "+OK 1 187")
	expectReply(t, c, "RETR 1", "+OK 187 octets")
	if body := must[[]byte](t)(c.RawMulti()); string(body) != message187+"\r\n" {
		t.Fatalf("RETR 1 = %q", body)
	}
	expectReply(t, c, "LIST 1", "+OK 1 187")
	expectReply(t, c, "STAT", "+OK 1 187")
	// From the cache this time.
	expectReply(t, c, "RETR 1", "+OK 187 octets")
	must[[]byte](t)(c.RawMulti())
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	c = e.login()
	expectReply(t, c, "LIST 1", "+OK 1 187")
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// TestTopReadsAPrefix: TOP asks for the start of the raw message, and a
// NIL answer is [SYS/TEMP] for TOP as for RETR.
func TestTopReadsAPrefix(t *testing.T) {
	e := newScriptedEnv(t, loginAndList(189, 189)+`
		C: {tag} UID FETCH 1 (UID BODY.PEEK[]<0.32768>)
		S: * 1 FETCH (UID 1 BODY[]<0> NIL)
		S: {tag} OK fetched
		C: {tag} UID FETCH 2 (UID BODY.PEEK[]<0.32768>)
		`+strings.Replace(fetchReply(2, 2, message189), "BODY[]", "BODY[]<0>", 1)+`
		S: {tag} OK fetched
	`)
	c := e.login()
	expectReply(t, c, "TOP 1 0", noBodyReply)
	if top := must[[]byte](t)(c.Top(2, 1)); string(top) != message189[:strings.Index(message189, "\r\n\r\n")+4]+strings.Repeat("0123456789", 12)+"\r\n" {
		t.Fatalf("TOP 2 1 = %q", top)
	}
	// The prefix was the whole message: RETR needs no fetch.
	if body := must[[]byte](t)(c.Retr(2)); string(body) != message189 {
		t.Fatalf("RETR 2 = %q", body)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}
