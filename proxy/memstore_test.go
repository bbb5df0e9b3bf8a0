package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/memstore"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// These tests run the POP3 rules of package proxy through the store seam,
// on the in-memory store: nothing in them is IMAP.

const (
	seamUser     = "alice"
	seamAccount  = "alice@example.com"
	seamPassword = "local secret"
)

// seamCorpus: a plain message, one with lines starting with dots, one
// with bare LF (listed by the store at its raw size) and no final line
// break.
var seamCorpus = []string{
	"Subject: one\r\nMessage-ID: <1@x>\r\n\r\nfirst\r\n",
	"Subject: two\r\nMessage-ID: <2@x>\r\n\r\n.dot\r\n..two dots\r\n.\r\nend\r\n",
	"Subject: three\nMessage-ID: <3@x>\n\nl1\nl2\nl3",
}

// seamWire is what RETR sends of each, unstuffed.
var seamWire = []string{
	seamCorpus[0],
	seamCorpus[1],
	"Subject: three\r\nMessage-ID: <3@x>\r\n\r\nl1\r\nl2\r\nl3",
}

type seamEnv struct {
	t     *testing.T
	store *memstore.Store
	gw    *proxy.Gateway
	addr  string
}

func newSeamEnv(t *testing.T, mode upstream.DeleteMode) *seamEnv {
	t.Helper()
	store := memstore.New()
	store.AddUser(seamAccount, "upstream secret")
	return newSeamEnvOn(t, mode, store, store)
}

// newSeamEnvOn is a gateway in front of upstream, a store that is, or
// wraps, store.
func newSeamEnvOn(t *testing.T, mode upstream.DeleteMode, store *memstore.Store, up proxy.Store) *seamEnv {
	t.Helper()
	hash, err := passwd.Hash(seamPassword)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &proxy.Config{
		Upstreams: map[string]*proxy.Upstream{
			"mem": {Name: "mem", Store: up, Mailbox: "INBOX", OnDelete: mode, Trash: "Trash"},
		},
		Users: map[string]*proxy.User{
			seamUser: {
				Name: seamUser, PasswordHash: hash, Upstream: "mem", UpstreamUser: seamAccount,
				UpstreamPassword: func() (string, error) { return "upstream secret", nil },
			},
		},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	gw := proxy.New(cfg, cache.New(16<<20, 1<<20), log)
	srv := &pop3.Server{Backend: gw, Logger: log}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		gw.Close()
	})
	return &seamEnv{t: t, store: store, gw: gw, addr: ln.Addr().String()}
}

func (e *seamEnv) deliver(msgs ...string) {
	for _, m := range msgs {
		e.store.Deliver(seamAccount, []byte(m))
	}
}

func (e *seamEnv) login() *pop3client.Client {
	e.t.Helper()
	c, err := pop3client.Dial(e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	e.t.Cleanup(func() { c.Close() })
	if err := c.Login(seamUser, seamPassword); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func check[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func reply(t *testing.T, c *pop3client.Client, cmd, want string) {
	t.Helper()
	got, err := c.Cmd(cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if got != want {
		t.Fatalf("%s = %q, want %q", cmd, got, want)
	}
}

func uidlValues(t *testing.T, c *pop3client.Client) []string {
	t.Helper()
	var out []string
	for _, e := range check[[]pop3client.Entry](t)(c.UIDL()) {
		out = append(out, e.Value)
	}
	return out
}

// TestSeamSession: every command of a session over the in-memory store;
// bodies in POP3 form; a size the store got wrong is corrected by the RETR
// that finds it, for the rest of the session and the next one.
func TestSeamSession(t *testing.T) {
	e := newSeamEnv(t, upstream.DeleteExpunge)
	e.deliver(seamCorpus...)
	c := e.login()
	raw := int64(len(seamCorpus[0]) + len(seamCorpus[1]) + len(seamCorpus[2]))
	reply(t, c, "STAT", fmt.Sprintf("+OK 3 %d", raw))
	// The store's suggestions: its IDs, which are not numbers.
	var ids []string
	for _, id := range e.store.IDs(seamAccount) {
		ids = append(ids, string(id))
	}
	if got := uidlValues(t, c); !slices.Equal(got, ids) || len(ids) != 3 || !strings.HasPrefix(ids[0], "m-") {
		t.Fatalf("UIDL = %v, want the store's IDs %v", got, ids)
	}
	for i, want := range seamWire[:2] {
		if body := check[[]byte](t)(c.Retr(i + 1)); string(body) != want {
			t.Fatalf("RETR %d = %q, want %q", i+1, body, want)
		}
	}
	top := check[[]byte](t)(c.Top(3, 1))
	if string(top) != "Subject: three\r\nMessage-ID: <3@x>\r\n\r\nl1\r\n" {
		t.Fatalf("TOP 3 1 = %q", top)
	}
	exact := len(seamWire[2])
	reply(t, c, "RETR 3", fmt.Sprintf("+OK %d octets", exact))
	if body := check[[]byte](t)(c.RawMulti()); string(pop3client.Unstuff(body)) != seamWire[2]+"\r\n" {
		t.Fatalf("RETR 3 = %q", body)
	}
	reply(t, c, "LIST 3", fmt.Sprintf("+OK 3 %d", exact))
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	c = e.login()
	want := int64(len(seamWire[0]) + len(seamWire[1]) + exact)
	reply(t, c, "STAT", fmt.Sprintf("+OK 3 %d", want))
}

// TestSeamListingFixedAtLogin: mail that arrives during a session waits
// for the next one (RFC 1939 §4).
func TestSeamListingFixedAtLogin(t *testing.T) {
	e := newSeamEnv(t, upstream.DeleteExpunge)
	e.deliver(seamCorpus[0])
	c := e.login()
	e.deliver(seamCorpus[1])
	reply(t, c, "STAT", fmt.Sprintf("+OK 1 %d", len(seamCorpus[0])))
	reply(t, c, "RETR 2", "-ERR There's no message 2.")
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	c = e.login()
	reply(t, c, "STAT", fmt.Sprintf("+OK 2 %d", len(seamCorpus[0])+len(seamCorpus[1])))
}

// TestSeamDeletesOnlyAtQuit: DELE marks, RSET unmarks, a session that ends
// without QUIT deletes nothing, QUIT applies the marks (RFC 1939 §6).
func TestSeamDeletesOnlyAtQuit(t *testing.T) {
	e := newSeamEnv(t, upstream.DeleteExpunge)
	e.deliver(seamCorpus...)
	c := e.login()
	if err := c.Dele(1); err != nil {
		t.Fatal(err)
	}
	reply(t, c, "RETR 1", "-ERR Message is deleted.")
	reply(t, c, "RSET", "+OK")
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitUntil(t, func() bool { return e.store.Logins() == 1 && e.store.Count(seamAccount) == 3 })

	c = e.login()
	all := uidlValues(t, c)
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	reply(t, c, "QUIT", "+OK Logging out, messages deleted.")
	if n := e.store.Count(seamAccount); n != 2 {
		t.Fatalf("%d messages in the store after QUIT, want 2", n)
	}
	c = e.login()
	if got := uidlValues(t, c); !slices.Equal(got, []string{all[0], all[2]}) {
		t.Fatalf("UIDL after QUIT = %v, want %v", got, []string{all[0], all[2]})
	}
}

// TestSeamKeepModesHide: in the modes that keep mail, a deleted message
// stays in the store but is never listed again.
func TestSeamKeepModesHide(t *testing.T) {
	for _, mode := range []upstream.DeleteMode{upstream.DeleteSeen, upstream.DeleteKeep} {
		t.Run(string(mode), func(t *testing.T) {
			e := newSeamEnv(t, mode)
			e.deliver(seamCorpus...)
			c := e.login()
			all := uidlValues(t, c)
			if err := c.Dele(1); err != nil {
				t.Fatal(err)
			}
			reply(t, c, "QUIT", "+OK Logging out, 1 message hidden, kept on the server.")
			if n := e.store.Count(seamAccount); n != 3 {
				t.Fatalf("%d messages in the store, want all 3 kept", n)
			}
			if seen, want := e.store.Seen(seamAccount), map[upstream.DeleteMode]int{upstream.DeleteSeen: 1}[mode]; seen != want {
				t.Fatalf("%d messages marked seen, want %d", seen, want)
			}
			c = e.login()
			if got := uidlValues(t, c); !slices.Equal(got, all[1:]) {
				t.Fatalf("UIDL after QUIT = %v, want %v", got, all[1:])
			}
		})
	}
}

// TestSeamUIDLsSurviveRenumbering: a store that numbers its messages
// anew (a new UIDVALIDITY) changes no UIDL.
func TestSeamUIDLsSurviveRenumbering(t *testing.T) {
	e := newSeamEnv(t, upstream.DeleteExpunge)
	e.deliver(seamCorpus...)
	c := e.login()
	before := uidlValues(t, c)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	e.store.Renumber(seamAccount)
	e.deliver("Subject: four\r\nMessage-ID: <4@x>\r\n\r\nnew\r\n")
	c = e.login()
	after := uidlValues(t, c)
	if len(after) != 4 || !slices.Equal(after[:3], before) {
		t.Fatalf("UIDL after renumbering = %v, want %v and one new", after, before)
	}
	if slices.Contains(before, after[3]) {
		t.Fatalf("the new message got an old UIDL: %v", after)
	}
}

// TestSeamInterruptedDeletesFinished: deletes the store did not finish at
// QUIT are journaled and finished by the next login, in each mode that
// removes mail; the message is never listed again.
func TestSeamInterruptedDeletesFinished(t *testing.T) {
	for _, mode := range []upstream.DeleteMode{upstream.DeleteExpunge, upstream.DeleteTrash} {
		t.Run(string(mode), func(t *testing.T) {
			e := newSeamEnv(t, mode)
			e.gw.SetPool(0, 0)
			e.deliver(seamCorpus...)
			c := e.login()
			all := uidlValues(t, c)
			if err := c.Dele(1); err != nil {
				t.Fatal(err)
			}
			e.store.FailDeletes(1)
			if got, err := c.Cmd("QUIT"); err == nil && !strings.HasPrefix(got, "-ERR") {
				t.Fatalf("QUIT with the delete failing = %q, want -ERR", got)
			}
			if n := e.store.Count(seamAccount); n != 3 {
				t.Fatalf("%d messages in the store, want 3: the delete failed", n)
			}
			c = e.login()
			if got := uidlValues(t, c); !slices.Equal(got, all[1:]) {
				t.Fatalf("UIDL after the failed QUIT = %v, want %v", got, all[1:])
			}
			if n := e.store.Count(seamAccount); n != 2 {
				t.Fatalf("%d messages in the store, want 2: the next login finishes the delete", n)
			}
			if mode == upstream.DeleteTrash && e.store.Trash(seamAccount) != 1 {
				t.Fatalf("%d messages in the trash, want 1", e.store.Trash(seamAccount))
			}
		})
	}
}

// TestSeamFetchAheadServesFromCache: after the first RETR, the following
// messages come through the cache; a second session reads them all
// without the store.
func TestSeamFetchAheadServesFromCache(t *testing.T) {
	e := newSeamEnv(t, upstream.DeleteExpunge)
	var msgs []string
	for i := range 20 {
		msgs = append(msgs, fmt.Sprintf("Subject: %d\r\n\r\n%s", i, strings.Repeat("line\r\n", i+1)))
	}
	e.deliver(msgs...)
	for session := range 2 {
		before := e.store.Bodies()
		c := e.login()
		for i, want := range msgs {
			if body := check[[]byte](t)(c.Retr(i + 1)); string(body) != want {
				t.Fatalf("RETR %d = %q, want %q", i+1, body, want)
			}
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		sent := e.store.Bodies() - before
		if session == 0 && sent != len(msgs) {
			t.Fatalf("the store sent %d bodies for %d messages, want each once", sent, len(msgs))
		}
		if session == 1 && sent != 0 {
			t.Fatalf("the store sent %d bodies in the second session, want none: the cache has them", sent)
		}
	}
}

// TestSeamResumesAfterLostConnection: a body cut off mid-message
// continues on a new session from the first octet not yet read; the
// client gets it whole.
func TestSeamResumesAfterLostConnection(t *testing.T) {
	e := newSeamEnv(t, upstream.DeleteExpunge)
	e.gw.SetPrefetch(false)
	msg := "Subject: long\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 8000)
	e.deliver(msg)
	c := e.login()
	e.store.CutAfter(50000)
	if body := check[[]byte](t)(c.Retr(1)); string(body) != msg {
		t.Fatalf("RETR 1: %d octets, want the %d of the message", len(body), len(msg))
	}
	if n := e.store.Logins(); n != 2 {
		t.Fatalf("%d logins to the store, want 2: one to resume", n)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSeamUIDLsFollowStoreIdentity: a gateway that starts to get
// permanent ids from a store (a gateway upgraded to ask for RFC 8474
// EMAILID, restarted on the same state) changes no UIDL and unhides
// nothing: each message adopts the UIDL recorded under its digest. From
// then on the id alone names it, so a rebuild that renumbers the messages
// and changes their arrival times, and with them every digest, still
// changes no UIDL.
func TestSeamUIDLsFollowStoreIdentity(t *testing.T) {
	state := proxy.NewMemoryState()
	e := newSeamEnv(t, upstream.DeleteKeep)
	e.gw.SetState(state)
	e.deliver(seamCorpus...)
	c := e.login()
	before := uidlValues(t, c)
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	want := []string{before[0], before[2]}

	e.store.GiveIdentities()
	e = newSeamEnvOn(t, upstream.DeleteKeep, e.store, e.store)
	e.gw.SetState(state)
	c = e.login()
	if got := uidlValues(t, c); !slices.Equal(got, want) {
		t.Fatalf("UIDL once the store gives ids = %v, want %v", got, want)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}

	e.store.Renumber(seamAccount)
	e.store.Redate(seamAccount)
	e.deliver("Subject: four\r\nMessage-ID: <4@x>\r\n\r\nnew\r\n")
	c = e.login()
	after := uidlValues(t, c)
	if len(after) != 3 || !slices.Equal(after[:2], want) {
		t.Fatalf("UIDL after a rebuild = %v, want %v and one new", after, want)
	}
	if slices.Contains(before, after[2]) {
		t.Fatalf("the new message got an old UIDL: %v", after)
	}
}
