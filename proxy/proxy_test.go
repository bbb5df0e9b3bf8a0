package proxy

import (
	"context"
	"encoding/base64"
	"fmt"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// env is a gateway in front of in-memory IMAP servers.
type env struct {
	t      *testing.T
	mem    *imapmem.Server // upstream "mem", reached through proxy
	other  *imapmem.Server // upstream "other", for domain passthrough
	proxy  *faultProxy
	cache  *cache.Cache
	gw     *Gateway
	srv    *pop3.Server
	addr   string
	config *Config
}

const localPassword = "local secret"

type envOptions struct {
	onDelete   upstream.DeleteMode
	timeout    time.Duration
	maxMessage int64
	budget     *cache.Budget // default: none
	log        *slog.Logger  // default: discard, or stderr with -v
	caps       imap.CapSet   // the upstream's capabilities; nil: imapmem's default
	refusals   RefusalCounter
}

func newEnv(t *testing.T, opts envOptions) *env {
	t.Helper()
	var memOpts *imapmem.Options
	if opts.caps != nil {
		memOpts = &imapmem.Options{Caps: opts.caps}
	}
	mem, err := imapmem.Start("127.0.0.1:0", memOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	other, err := imapmem.Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	for _, u := range []string{"alice@example.com", "bob@example.com"} {
		if err := mem.AddUser(u, "upstream-"+u); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.AddUser("carol@example.org", "carol-pass"); err != nil {
		t.Fatal(err)
	}
	if opts.onDelete == "" {
		opts.onDelete = upstream.DeleteExpunge
	}
	if opts.timeout == 0 {
		opts.timeout = 10 * time.Second
	}
	if opts.maxMessage == 0 {
		opts.maxMessage = 4 << 20
	}
	fp := newFaultProxy(t, mem.Addr())
	hash, err := passwd.Hash(localPassword)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &Config{
		Upstreams: map[string]*Upstream{
			"mem": {
				Name:     "mem",
				Server:   upstream.Server{Address: fp.Addr(), Security: upstream.SecurityNone, Timeout: opts.timeout},
				Mailbox:  "INBOX",
				OnDelete: opts.onDelete,
				// The in-memory server marks no mailbox \Trash.
				Trash: "Trash",
			},
			"other": {
				Name:     "other",
				Server:   upstream.Server{Address: other.Addr(), Security: upstream.SecurityNone, Timeout: opts.timeout},
				Mailbox:  "INBOX",
				OnDelete: upstream.DeleteExpunge,
			},
		},
		Users: map[string]*User{
			"alice": {
				Name:             "alice",
				PasswordHash:     hash,
				Upstream:         "mem",
				UpstreamUser:     "alice@example.com",
				UpstreamPassword: func() (string, error) { return "upstream-alice@example.com", nil },
			},
		},
		Passthrough: &Passthrough{Upstream: "mem", Domains: map[string]string{"example.org": "other"}},
	}
	c := cache.New(64<<20, opts.maxMessage)
	log := opts.log
	if log == nil {
		log = testLogger()
	}
	gw := New(cfg, c, log)
	if opts.budget != nil {
		gw.SetBudget(opts.budget)
	}
	if opts.refusals != nil {
		gw.SetRefusalCounter(opts.refusals)
	}
	srv := &pop3.Server{Backend: gw, Logger: log}
	addr := serve(t, srv, nil)
	return &env{t: t, mem: mem, other: other, proxy: fp, cache: c, gw: gw, srv: srv, addr: addr, config: cfg}
}

// serve runs srv on a loopback listener, wrapped by wrap when it is not
// nil, until the end of the test, and returns its address.
func serve(t *testing.T, srv *pop3.Server, wrap func(net.Listener) net.Listener) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		ln = wrap(ln)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

func (e *env) dial() *pop3client.Client {
	e.t.Helper()
	c, err := pop3client.Dial(e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) login(user, pass string) *pop3client.Client {
	e.t.Helper()
	c := e.dial()
	if err := c.Login(user, pass); err != nil {
		e.t.Fatalf("login %s: %v", user, err)
	}
	return c
}

func (e *env) deliver(user string, msgs ...string) {
	e.t.Helper()
	for _, m := range msgs {
		if err := e.mem.Append(user, "INBOX", []byte(m)); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) count(user string) int {
	e.t.Helper()
	n, err := e.mem.Count(user, "INBOX")
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func expectReply(t *testing.T, c *pop3client.Client, cmd, want string) {
	t.Helper()
	got, err := c.Cmd(cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if got != want {
		t.Fatalf("%s: got %q, want %q", cmd, got, want)
	}
}

var corpus = []string{
	"Subject: one\r\n\r\nfirst\r\n",
	"Subject: dots\r\n\r\n.\r\n..two\r\n.three\r\n",
	"Subject: three\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n",
}

func TestMappedUserSession(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("alice@example.com", corpus...)
	c := e.login("alice", localPassword)

	count, size := must2(t)(c.Stat())
	want := int64(len(corpus[0]) + len(corpus[1]) + len(corpus[2]))
	if count != 3 || size != want {
		t.Fatalf("STAT = %d %d, want 3 %d", count, size, want)
	}
	sizes := must[map[int]int64](t)(c.List())
	uidls := must[[]pop3client.Entry](t)(c.UIDL())
	for i, m := range corpus {
		if sizes[i+1] != int64(len(m)) {
			t.Errorf("LIST %d = %d, want %d", i+1, sizes[i+1], len(m))
		}
		body := must[[]byte](t)(c.Retr(i + 1))
		if string(body) != m {
			t.Errorf("RETR %d = %q, want %q", i+1, body, m)
		}
		if want := fmt.Sprintf("%08x00000001", i+1); uidls[i].Value != want {
			t.Errorf("UIDL %d = %q, want %q", i+1, uidls[i].Value, want)
		}
	}
	top := must[[]byte](t)(c.Top(3, 2))
	if string(top) != "Subject: three\r\nX: y\r\n\r\nl1\r\nl2\r\n" {
		t.Errorf("TOP 3 2 = %q", top)
	}
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.count("alice@example.com") == 2 })

	// The next session sees the remaining messages with the same UIDLs.
	c = e.login("alice", localPassword)
	uidls = must[[]pop3client.Entry](t)(c.UIDL())
	if len(uidls) != 2 || uidls[0].Value != "0000000100000001" || uidls[1].Value != "0000000300000001" {
		t.Fatalf("UIDL after delete = %+v", uidls)
	}
	body := must[[]byte](t)(c.Retr(2))
	if string(body) != corpus[2] {
		t.Fatalf("RETR 2 = %q", body)
	}
}

func must2(t *testing.T) func(int, int64, error) (int, int64) {
	return func(a int, b int64, err error) (int, int64) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

func waitFor(t *testing.T, cond func() bool) { t.Helper(); testenv.WaitFor(t, cond) }

func TestListIsFixedForTheSession(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("alice@example.com", corpus[0])
	c := e.login("alice", localPassword)
	e.deliver("alice@example.com", corpus[1])
	if n, _ := must2(t)(c.Stat()); n != 1 {
		t.Fatalf("STAT counted %d messages; mail that arrived after login must wait", n)
	}
	expectReply(t, c, "RETR 2", "-ERR There's no message 2.")
}

func TestPassthroughAndDomains(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("bob@example.com", corpus[0])
	if err := e.other.Append("carol@example.org", "INBOX", []byte(corpus[1])); err != nil {
		t.Fatal(err)
	}
	c := e.login("bob@example.com", "upstream-bob@example.com")
	if body := must[[]byte](t)(c.Retr(1)); string(body) != corpus[0] {
		t.Fatalf("bob RETR 1 = %q", body)
	}
	c = e.login("carol@example.org", "carol-pass")
	if body := must[[]byte](t)(c.Retr(1)); string(body) != corpus[1] {
		t.Fatalf("carol RETR 1 = %q (domain routing)", body)
	}
}

func TestRefusedLoginsLookAlike(t *testing.T) {
	e := newEnv(t, envOptions{})
	const refused = "-ERR [AUTH] Authentication failed."
	for _, tc := range []struct{ user, pass, why string }{
		{"alice", "wrong", "wrong local password"},
		{"alice", "upstream-alice@example.com", "upstream password is not a local password"},
		{"alice@example.com", "wrong", "upstream refuses passthrough credentials"},
		{"nobody@example.com", "x", "unknown upstream user"},
	} {
		c := e.dial()
		expectReply(t, c, "USER "+tc.user, "+OK")
		expectReply(t, c, "PASS "+tc.pass, refused)
	}
	// With no passthrough, an unknown user is refused the same way.
	cfg := *e.config
	cfg.Passthrough = nil
	e.gw.Reload(&cfg)
	c := e.dial()
	expectReply(t, c, "USER bob@example.com", "+OK")
	expectReply(t, c, "PASS upstream-bob@example.com", refused)
}

func TestMaildropInUse(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("alice@example.com", corpus[0])
	first := e.login("alice", localPassword)
	second := e.dial()
	expectReply(t, second, "USER alice", "+OK")
	expectReply(t, second, "PASS "+localPassword, "-ERR [IN-USE] Mailbox is locked by another POP3 session.")
	// The same mailbox through passthrough is the same maildrop.
	expectReply(t, second, "USER alice@example.com", "+OK")
	expectReply(t, second, "PASS upstream-alice@example.com", "-ERR [IN-USE] Mailbox is locked by another POP3 session.")
	if err := first.Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		c := e.dial()
		defer c.Close()
		return c.Login("alice", localPassword) == nil
	})
}

func TestUpstreamUnreachable(t *testing.T) {
	e := newEnv(t, envOptions{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	cfg := *e.config
	up := *cfg.Upstreams["mem"]
	up.Server.Address = dead
	cfg.Upstreams = map[string]*Upstream{"mem": &up}
	e.gw.Reload(&cfg)
	c := e.dial()
	expectReply(t, c, "USER alice", "+OK")
	expectReply(t, c, "PASS "+localPassword, "-ERR [SYS/TEMP] Temporary failure, please try again later.")
}

func TestCacheServesRepeatReads(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("alice@example.com", corpus...)
	c := e.login("alice", localPassword)
	must[[]byte](t)(c.Top(1, 0)) // its prefix is the whole message: cached
	must[[]byte](t)(c.Retr(1))
	must[[]byte](t)(c.Retr(1))
	must[[]byte](t)(c.Retr(2)) // fetched ahead, with 3
	must[[]byte](t)(c.Top(2, 1))
	c.Quit()
	// Two fetch commands: message 1 for TOP, then 2 and 3 fetched ahead.
	waitFor(t, func() bool { return e.proxy.fetches.Load() == 2 })
	// Another session of the same account shares the cache.
	c = e.login("alice", localPassword)
	must[[]byte](t)(c.Retr(2))
	must[[]byte](t)(c.Retr(3))
	c.Quit()
	if n := e.proxy.fetches.Load(); n != 2 {
		t.Fatalf("%d upstream fetch commands, want 2", n)
	}
	if st := e.cache.Stats(); st.Entries != 3 {
		t.Fatalf("cache holds %d messages, want 3", st.Entries)
	}
}

func TestFetchAheadAndKeepingCanBeTurnedOff(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.config.Upstreams["mem"].NoFetchAhead = true
	e.config.Upstreams["mem"].KeepConnection = -1
	e.deliver("alice@example.com", corpus...)
	for i := 1; i <= 2; i++ {
		c := e.login("alice", localPassword)
		must[[]byte](t)(c.Retr(i))
		c.Quit()
	}
	if n := e.proxy.fetches.Load(); n != 2 {
		t.Fatalf("%d upstream body fetches, want 2: one per RETR", n)
	}
	waitFor(t, func() bool { return e.proxy.Closed() == 2 })
	if n := e.gw.pool.len(); n != 0 {
		t.Fatalf("%d connections kept", n)
	}
}

func TestWrongUpstreamSizeIsCorrected(t *testing.T) {
	e := newEnv(t, envOptions{})
	// Stored with bare LF, the server counts 3 octets fewer than POP3
	// sends. The CRLF that ends the last line on the wire is not counted.
	raw := "Subject: lf\n\nline 1\nline 2"
	exact := "Subject: lf\r\n\r\nline 1\r\nline 2"
	e.deliver("alice@example.com", raw)
	c := e.login("alice", localPassword)
	if _, size := must2(t)(c.Stat()); size != int64(len(raw)) {
		t.Fatalf("STAT size %d, want the upstream's %d before the message is read", size, len(raw))
	}
	// RETR announces the octets it sends.
	expectReply(t, c, "RETR 1", fmt.Sprintf("+OK %d octets", len(exact)))
	body := must[[]byte](t)(c.RawMulti())
	if string(body) != exact+"\r\n" {
		t.Fatalf("RETR = %q", body)
	}
	// From now on this session lists them too.
	expectReply(t, c, "LIST 1", fmt.Sprintf("+OK 1 %d", len(exact)))
	c.Quit()
	// And so does the next one, from the start.
	c = e.login("alice", localPassword)
	if _, size := must2(t)(c.Stat()); size != int64(len(exact)) {
		t.Fatalf("next session STAT size %d, want %d", size, len(exact))
	}
}

// hasSizes tells whether the cache records an exact size for any message
// of the upstream user's INBOX on "mem", in the epoch last listed.
func (e *env) hasSizes(user string) bool {
	e.t.Helper()
	last := e.gw.snaps.last("mem/" + user + "\x00INBOX")
	if last == nil {
		e.t.Fatalf("no listing remembered for %s", user)
	}
	return e.cache.HasSizes(cache.Key{Account: "mem/" + user, Mailbox: "INBOX", Epoch: last.state.Epoch})
}

// TestRightUpstreamSizeIsNotRecorded: a message read whole whose size the
// server lists right leaves no size in the cache, so the logins after it
// look up no size per message; one listed wrong does.
func TestRightUpstreamSizeIsNotRecorded(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("alice@example.com", corpus[0], corpus[1])
	c := e.login("alice", localPassword)
	must[[]byte](t)(c.Retr(1))
	must[[]byte](t)(c.Top(2, 0))
	c.Quit()
	if e.hasSizes("alice@example.com") {
		t.Fatal("sizes the server lists right were recorded")
	}
	e.deliver("alice@example.com", "Subject: lf\n\nbare LF")
	c = e.login("alice", localPassword)
	must[[]byte](t)(c.Retr(3))
	c.Quit()
	if !e.hasSizes("alice@example.com") {
		t.Fatal("the exact size of a message listed wrong was not recorded")
	}
}

func TestDeleteModes(t *testing.T) {
	for _, mode := range []upstream.DeleteMode{upstream.DeleteExpunge, upstream.DeleteTrash, upstream.DeleteSeen, upstream.DeleteKeep} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t, envOptions{onDelete: mode})
			e.deliver("alice@example.com", corpus...)
			c := e.login("alice", localPassword)
			c.Dele(1)
			c.Dele(3)
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
			wantInbox, wantTrash := 3, 0
			switch mode {
			case upstream.DeleteExpunge:
				wantInbox = 1
			case upstream.DeleteTrash:
				wantInbox, wantTrash = 1, 2
			}
			waitFor(t, func() bool { return e.count("alice@example.com") == wantInbox })
			if n, _ := e.mem.Count("alice@example.com", "Trash"); n != wantTrash {
				t.Fatalf("Trash holds %d, want %d", n, wantTrash)
			}
			// RSET before QUIT deletes nothing.
			c = e.login("alice", localPassword)
			c.Dele(1)
			c.OK("RSET")
			c.Quit()
			time.Sleep(50 * time.Millisecond)
			if n := e.count("alice@example.com"); n != wantInbox {
				t.Fatalf("RSET lost a message: %d left", n)
			}
		})
	}
}

func TestClientVanishesMidRetr(t *testing.T) {
	e := newEnv(t, envOptions{maxMessage: 1 << 20})
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 20<<10) // 20 MB
	e.deliver("alice@example.com", big, corpus[0])
	c := e.login("alice", localPassword)
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	c.Send("RETR 1")
	if reply, _ := c.Line(); !strings.HasPrefix(reply, "+OK") {
		t.Fatalf("RETR 1: %q", reply)
	}
	buf := make([]byte, 64<<10)
	io.ReadFull(c.Conn(), buf)
	c.Close()
	// The gateway abandons the transfer: the upstream connection closes
	// long before the whole message has crossed it, and nothing is deleted.
	waitFor(t, func() bool { return e.proxy.Closed() >= 1 })
	if n := e.proxy.toClient.Load(); n >= int64(len(big)) {
		t.Fatalf("the upstream sent all %d octets after the client left", n)
	}
	if n := e.count("alice@example.com"); n != 2 {
		t.Fatalf("%d messages left, want 2", n)
	}
	// The maildrop is free again.
	waitFor(t, func() bool {
		c := e.dial()
		defer c.Close()
		return c.Login("alice", localPassword) == nil
	})
}

// TestUpstreamDropsMidMessage: when the upstream connection dies in the
// middle of a message, the gateway logs in again and continues with
// BODY.PEEK[]<offset> from the first octet it had not read, so the client
// gets the whole message byte for byte, whether it was being read whole
// before the reply or streamed. The message here is stored with bare LF:
// offsets count the server's octets, not the CRLF ones sent.
func TestUpstreamDropsMidMessage(t *testing.T) {
	e := newEnv(t, envOptions{maxMessage: 200_000})
	// Fetched ahead, a cut batch is retried message by message
	// (TestFetchAheadCutByUpstream); this is about a single fetch.
	e.gw.SetPrefetch(false)
	small := "Subject: cut\n\n" + strings.Repeat("line of text\n", 10000)
	large := "Subject: cut\n\n" + strings.Repeat("line of text\n", 50000)
	crlf := func(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }
	e.deliver("alice@example.com", small, large)

	c := e.login("alice", localPassword)
	e.proxy.CutServerAfter(50_000)
	if body := must[[]byte](t)(c.Retr(1)); string(body) != crlf(small) {
		t.Fatalf("RETR 1 after a cut: %d octets, want %d", len(body), len(crlf(small)))
	}
	// Streamed, and cut twice: the resumed transfer is cut again.
	e.proxy.CutServerRepeatedly(300_000, 200_000, 2)
	c.Send("RETR 2")
	if reply, _ := c.Line(); !strings.HasPrefix(reply, "+OK ") {
		t.Fatalf("RETR 2 reply %q", reply)
	}
	body, err := c.RawMulti()
	if err != nil {
		t.Fatalf("RETR 2 after two cuts: %v after %d octets", err, len(body))
	}
	if string(pop3client.Unstuff(body)) != crlf(large) {
		t.Fatalf("RETR 2 after two cuts: %d octets, not the message", len(body))
	}
	if n := e.proxy.Accepted(); n != 4 {
		t.Fatalf("%d upstream connections, want 4: one and one per cut", n)
	}
	c.Dele(1)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if n := e.count("alice@example.com"); n != 1 {
		t.Fatalf("%d messages left, want 1", n)
	}
}

// TestUpstreamDropsMidMessageEveryTime: when every new connection dies
// too, the gateway gives up after a few tries, and the client sees the
// connection close before the terminating line, never a shortened message
// that looks whole, and the message stays.
func TestUpstreamDropsMidMessageEveryTime(t *testing.T) {
	e := newEnv(t, envOptions{maxMessage: 200_000})
	e.gw.SetPrefetch(false)
	large := "Subject: cut\r\n\r\n" + strings.Repeat("line of text\r\n", 50000)
	e.deliver("alice@example.com", large)
	c := e.login("alice", localPassword)
	e.proxy.CutServerRepeatedly(300_000, 100_000, -1)
	c.Send("RETR 1")
	if reply, _ := c.Line(); reply != fmt.Sprintf("+OK %d octets", len(large)) {
		t.Fatalf("RETR reply %q", reply)
	}
	got, err := c.RawMulti()
	if err == nil {
		t.Fatalf("a cut message was terminated as if whole (%d octets)", len(got))
	}
	if len(got) >= len(large) {
		t.Fatalf("got %d octets of %d", len(got), len(large))
	}
	if n := e.proxy.Accepted(); n != 1+maxResumes {
		t.Fatalf("%d upstream connections, want %d", n, 1+maxResumes)
	}
	if n := e.count("alice@example.com"); n != 1 {
		t.Fatalf("%d messages left, want 1", n)
	}
}

func TestUpstreamStallsTimesOut(t *testing.T) {
	e := newEnv(t, envOptions{timeout: 300 * time.Millisecond})
	e.gw.SetPrefetch(false)
	e.deliver("alice@example.com", corpus...)
	c := e.login("alice", localPassword)
	// Idle longer than the timeout between commands is fine.
	time.Sleep(500 * time.Millisecond)
	must[[]byte](t)(c.Retr(1))
	e.proxy.Stall(true)
	start := time.Now()
	expectReply(t, c, "RETR 2", "-ERR [SYS/TEMP] Temporary failure, please try again later.")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	if _, err := c.Line(); err == nil {
		t.Fatal("session went on after the upstream timed out")
	}
}

func TestMessageExpungedByAnotherClient(t *testing.T) {
	e := newEnv(t, envOptions{onDelete: upstream.DeleteExpunge})
	e.deliver("alice@example.com", corpus...)
	c := e.login("alice", localPassword)
	// Another IMAP client removes message 2 during the POP3 session.
	sess := must[*upstream.Session](t)(upstream.Dial(context.Background(), &upstream.Server{Address: e.mem.Addr(), Security: upstream.SecurityNone}))
	defer sess.Close()
	if err := sess.Login(context.Background(), "alice@example.com", "upstream-alice@example.com"); err != nil {
		t.Fatal(err)
	}
	must[*upstream.Mailbox](t)(sess.Select(context.Background(), "INBOX"))
	if err := sess.Delete(context.Background(), []uint32{2}, upstream.DeleteExpunge, ""); err != nil {
		t.Fatal(err)
	}
	expectReply(t, c, "RETR 2", "-ERR Message was removed by another client.")
	if body := must[[]byte](t)(c.Retr(3)); string(body) != corpus[2] {
		t.Fatalf("RETR 3 = %q", body)
	}
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// TestNoSecretInLogs captures every log line, at debug level, of sessions
// with refused and accepted logins of each kind, and finds no secret.
func TestNoSecretInLogs(t *testing.T) {
	var logs testenv.Buffer
	e := newEnv(t, envOptions{log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	e.deliver("alice@example.com", corpus[0])
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	secrets := []string{localPassword, "upstream-alice@example.com", "upstream-bob@example.com", "wrong-guess-1", "wrong-guess-2"}
	for _, script := range [][]string{
		{"USER alice", "PASS wrong-guess-1", "USER alice", "PASS " + localPassword, "RETR 1", "QUIT"},
		{"AUTH PLAIN " + b64("\x00alice\x00wrong-guess-2"), "AUTH PLAIN " + b64("\x00alice\x00"+localPassword), "QUIT"},
		{"AUTH LOGIN", b64("bob@example.com"), b64("upstream-bob@example.com"), "QUIT"},
		{"USER bob@example.com", "PASS wrong-guess-1", "QUIT"},
	} {
		c := e.dial()
		for _, line := range script {
			if _, err := c.Cmd(line); err != nil {
				t.Fatal(err)
			}
			if line == "RETR 1" {
				c.RawMulti()
			}
		}
	}
	time.Sleep(100 * time.Millisecond)
	out := logs.String()
	if !strings.Contains(out, "logged in") || !strings.Contains(out, "login refused") {
		t.Fatalf("the logs miss the logins:\n%s", out)
	}
	for _, s := range secrets {
		for _, form := range []string{s, b64(s), b64("\x00alice\x00" + s)} {
			if strings.Contains(out, form) {
				t.Fatalf("secret %q appears in the logs:\n%s", s, out)
			}
		}
	}
}

// TestTopOfLargeMessage: TOP of a message too large to cache stops the
// transfer early instead of reading the whole message, and the session
// goes on over a new upstream connection.
func TestTopOfLargeMessage(t *testing.T) {
	e := newEnv(t, envOptions{maxMessage: 1 << 20})
	big := "Subject: big\r\n\r\n" + strings.Repeat("a line of the big message\r\n", 800_000) // 21 MB
	e.deliver("alice@example.com", big, corpus[2])
	c := e.login("alice", localPassword)
	top := must[[]byte](t)(c.Top(1, 2))
	if want := "Subject: big\r\n\r\na line of the big message\r\na line of the big message\r\n"; string(top) != want {
		t.Fatalf("TOP 1 2 = %q", top)
	}
	if body := must[[]byte](t)(c.Retr(2)); string(body) != corpus[2] {
		t.Fatalf("RETR 2 after TOP = %q", body)
	}
	c.Dele(2)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if n := e.proxy.toClient.Load(); n > int64(len(big))/2 {
		t.Fatalf("%d octets came from the upstream for a TOP of a %d-octet message", n, len(big))
	}
	waitFor(t, func() bool { return e.count("alice@example.com") == 1 })
}

// TestPollingReusesConnectionAndListing: a client that logs in again soon
// gets the same upstream connection, and an unchanged mailbox is not
// listed again; a change is seen at once.
func TestPollingReusesConnectionAndListing(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("bob@example.com", corpus...)
	poll := func(pass string) ([]pop3client.Entry, error) {
		c := e.dial()
		defer c.Close()
		if err := c.Login("bob@example.com", pass); err != nil {
			return nil, err
		}
		uidls, err := c.UIDL()
		if err != nil {
			return nil, err
		}
		return uidls, c.Quit()
	}
	for i := 0; i < 5; i++ {
		uidls, err := poll("upstream-bob@example.com")
		if err != nil || len(uidls) != 3 {
			t.Fatalf("poll %d: %v, %d messages", i, err, len(uidls))
		}
	}
	if n := e.proxy.Accepted(); n != 1 {
		t.Errorf("5 polls opened %d upstream connections, want 1", n)
	}
	if n := e.proxy.listings.Load(); n != 1 {
		t.Errorf("5 polls listed the mailbox %d times, want 1", n)
	}

	// A pooled connection is never handed to other credentials.
	if _, err := poll("wrong-password"); err == nil {
		t.Fatal("a wrong password was accepted while a connection was pooled")
	}

	// New mail and another client's expunge are seen by the next poll.
	e.deliver("bob@example.com", "Subject: new\r\n\r\nnew\r\n")
	uidls, err := poll("upstream-bob@example.com")
	if err != nil || len(uidls) != 4 {
		t.Fatalf("after delivery: %v, %d messages, want 4", err, len(uidls))
	}
	sess := must[*upstream.Session](t)(upstream.Dial(context.Background(), &upstream.Server{Address: e.mem.Addr(), Security: upstream.SecurityNone}))
	defer sess.Close()
	if err := sess.Login(context.Background(), "bob@example.com", "upstream-bob@example.com"); err != nil {
		t.Fatal(err)
	}
	must[*upstream.Mailbox](t)(sess.Select(context.Background(), "INBOX"))
	if err := sess.Delete(context.Background(), []uint32{1, 4}, upstream.DeleteExpunge, ""); err != nil {
		t.Fatal(err)
	}
	uidls, err = poll("upstream-bob@example.com")
	if err != nil || len(uidls) != 2 || uidls[0].Value != "0000000200000001" || uidls[1].Value != "0000000300000001" {
		t.Fatalf("after expunge: %v, %+v", err, uidls)
	}
}

func TestReloadDropsPooledConnections(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.login("alice", localPassword)
	c.Quit()
	waitFor(t, func() bool { return e.gw.pool.len() == 1 })
	e.gw.Reload(e.config)
	if n := e.gw.pool.len(); n != 0 {
		t.Fatalf("%d pooled connections after reload", n)
	}
}

func TestPooledConnectionExpires(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.gw.SetPool(100*time.Millisecond, 10)
	c := e.login("alice", localPassword)
	c.Quit()
	waitFor(t, func() bool { return e.gw.pool.len() == 1 })
	waitFor(t, func() bool { return e.gw.pool.len() == 0 && e.proxy.Closed() == 1 })
}

// TestFetchAheadCutByUpstream: the upstream drops the connection while a
// batch is being fetched ahead; later messages are still served whole,
// over a new connection, and nothing is deleted.
func TestFetchAheadCutByUpstream(t *testing.T) {
	e := newEnv(t, envOptions{})
	var msgs []string
	for i := 0; i < 10; i++ {
		msgs = append(msgs, fmt.Sprintf("Subject: %d\r\n\r\n%s", i, strings.Repeat("body line\r\n", 2000)))
	}
	e.deliver("alice@example.com", msgs...)
	c := e.login("alice", localPassword)
	e.proxy.CutServerAfter(60_000) // inside the batch that follows RETR 1
	for i, m := range msgs {
		body, err := c.Retr(i + 1)
		if err != nil {
			t.Fatalf("RETR %d: %v", i+1, err)
		}
		if string(body) != m {
			t.Fatalf("RETR %d: %d octets, want %d", i+1, len(body), len(m))
		}
	}
	c.Quit()
	if n := e.count("alice@example.com"); n != 10 {
		t.Fatalf("%d messages left, want 10", n)
	}
}

// TestNoReuseAcrossReload: a session that outlives a reload hands its
// connection to the pool, but no login under the new configuration gets it.
func TestNoReuseAcrossReload(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.login("alice", localPassword)
	cfg := *e.config
	cfg.Upstreams = map[string]*Upstream{}
	for name, up := range e.config.Upstreams {
		copied := *up
		cfg.Upstreams[name] = &copied
	}
	e.gw.Reload(&cfg)
	c.Quit()
	waitFor(t, func() bool { return e.gw.pool.len() == 1 })
	c = e.login("alice", localPassword)
	c.Quit()
	if n := e.proxy.Accepted(); n != 2 {
		t.Fatalf("%d upstream connections, want 2: none reused across the reload", n)
	}
}

// TestTopFetchesOnlyAPrefix: TOP reads a prefix of the message that holds
// the lines asked for, BODY.PEEK[]<0.n>, growing it when it does not, and
// fetches nothing ahead: a client scanning the headers of a mailbox does
// not download it.
func TestTopFetchesOnlyAPrefix(t *testing.T) {
	e := newEnv(t, envOptions{})
	const count = 20
	var msgs []string
	for i := 0; i < count; i++ {
		msgs = append(msgs, fmt.Sprintf("Subject: %d\r\n\r\n%s", i, strings.Repeat("a body line\r\n", 25_000))) // 325 kB
	}
	e.deliver("alice@example.com", msgs...)
	c := e.login("alice", localPassword)
	for i := range msgs {
		top := must[[]byte](t)(c.Top(i+1, 2))
		if want := fmt.Sprintf("Subject: %d\r\n\r\na body line\r\na body line\r\n", i); string(top) != want {
			t.Fatalf("TOP %d 2 = %q", i+1, top)
		}
	}
	if n := e.proxy.toClient.Load(); n > count*64<<10 {
		t.Fatalf("%d octets came from the upstream for TOP of %d messages", n, count)
	}
	if n := e.proxy.fetches.Load(); n != count {
		t.Fatalf("%d body fetches for %d TOP commands", n, count)
	}
	// More lines than the first prefix holds: it grows.
	top := must[[]byte](t)(c.Top(1, 20_000))
	if want := msgs[0][:len("Subject: 0\r\n\r\n")+20_000*len("a body line\r\n")]; string(top) != want {
		t.Fatalf("TOP 1 20000: %d octets, want %d", len(top), len(want))
	}
	// The whole message: RETR serves it from the cache afterwards.
	top = must[[]byte](t)(c.Top(2, 1_000_000))
	if string(top) != msgs[1] {
		t.Fatalf("TOP 2 1000000: %d octets, want %d", len(top), len(msgs[1]))
	}
	hits := e.cache.Stats().Hits
	if body := must[[]byte](t)(c.Retr(2)); string(body) != msgs[1] {
		t.Fatalf("RETR 2 after TOP: %d octets", len(body))
	}
	if e.cache.Stats().Hits == hits {
		t.Fatalf("RETR after a whole TOP was not served from the cache")
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}
