package integration

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/internal/testkit/faultproxy"
	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/internal/testkit/leakcheck"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// The fault matrix for the IMAP store and for the POP3 door: each case
// breaks one connection at one moment, on purpose, with a fault proxy
// between the gateway and a real Dovecot or between the POP3 client and the
// gateway. Every case checks what the client saw, that the gateway's
// goroutines and descriptors come back to where they were once the session
// has ended, and what the next session sees: nothing lost (every message
// listed unless deleted by a completed QUIT), nothing twice (the same
// UIDLs, so a client that keeps them downloads nothing again), nothing
// corrupted (each message served byte for byte).
//
// A UIDVALIDITY change between sessions is TestUIDLsSurviveUIDValidityChange;
// an upstream cut mid-message read by fetchmail and mpop is
// TestRealClientsGetWholeMessageAcrossUpstreamCut.

// faultTimeout is the upstream timeout of the stall cases, and faultIdle
// the POP3 idle timeout of the stalled-client cases; the other cases keep
// generous timeouts so that a busy machine does not fail them.
const (
	faultTimeout = 500 * time.Millisecond
	faultIdle    = time.Second
)

// faultRig is one case's gateway: in front of Dovecot through the fault
// proxy up, and reached directly at addr or through the fault proxy down.
type faultRig struct {
	t          *testing.T
	dc         *dovecottest.Server
	cyrus      *cyrustest.Server // the JMAP cases' upstream
	graph      *graphdouble.Mailbox
	graphIDs   []string // the Graph cases' messages, as msgs
	user, pass string
	up, down   *faultproxy.Proxy
	addr       string
	ref        string   // a gateway straight to Dovecot, that saw no fault
	msgs       [][]byte // delivered, in UID order
	uidls      []string // UIDL of each, from a session before the fault
	base       leakcheck.Baseline
	// count is the number of messages in the mailbox, asked of the
	// upstream itself.
	count func() int
	// settle, when set, runs after a session's client has gone and
	// before the leak check: an HTTP store closes its idle keep-alive
	// connections there.
	settle func()
}

type faultRigOptions struct {
	timeout time.Duration // upstream timeout; default 30 s
	idle    time.Duration // POP3 idle timeout; default pop3's
	large   int           // size of message 4; default 1 MiB
}

func (o faultRigOptions) withDefaults() faultRigOptions {
	if o.timeout == 0 {
		o.timeout = 30 * time.Second
	}
	if o.large == 0 {
		o.large = 1 << 20
	}
	return o
}

// faultMessages are three small messages, cached once read, and one of
// large octets, over the cache's ceiling of the rig: always streamed.
func faultMessages(user string, large int) [][]byte {
	var msgs [][]byte
	for i := 1; i <= 3; i++ {
		msgs = append(msgs, fmt.Appendf(nil,
			"From: a@example.com\r\nTo: %s@example.com\r\nSubject: message %d\r\nMessage-ID: <%d.%s@example.com>\r\n\r\nbody %d\r\n.a line with a dot\r\n",
			user, i, i, user, i))
	}
	var big bytes.Buffer
	fmt.Fprintf(&big, "From: a@example.com\r\nSubject: large\r\nMessage-ID: <large.%s@example.com>\r\n\r\n", user)
	for i := 0; big.Len() < large; i++ {
		fmt.Fprintf(&big, "line %07d of the large message\r\n", i)
	}
	return append(msgs, big.Bytes())
}

func newFaultRig(t *testing.T, dc *dovecottest.Server, ref, user, pass string, opts faultRigOptions) *faultRig {
	t.Helper()
	opts = opts.withDefaults()
	r := &faultRig{t: t, dc: dc, user: user, pass: pass, ref: ref, msgs: faultMessages(user, opts.large)}
	r.count = func() int { return dc.Count(t, user) }
	dc.Deliver(t, user, r.msgs...)
	r.up = faultproxy.Start(t, dc.IMAPAddr())
	log := faultLogger(t)
	gw := passthroughGateway(&proxy.Upstream{
		Name:     "dovecot",
		Server:   upstream.Server{Address: r.up.Addr(), Security: upstream.SecurityNone, Timeout: opts.timeout},
		Mailbox:  "INBOX",
		OnDelete: upstream.DeleteExpunge,
		// No connection outlives its session: the leak check sees
		// every one closed.
		KeepConnection: -1,
	}, cache.New(64<<20, 256<<10), log)
	r.addr, _ = serve(t, &pop3.Server{Backend: gw, Logger: log, IdleTimeout: opts.idle}, gw, "127.0.0.1:0")
	r.down = faultproxy.Start(t, r.addr)
	// The baseline before any session: the reference session below has
	// to wind down too.
	r.base = leakcheck.Take()

	r.listReference()
	return r
}

// listReference takes the UIDLs as the gateway at r.ref, that saw no
// fault, lists them.
func (r *faultRig) listReference() {
	r.t.Helper()
	c := r.dial(r.ref)
	if err := c.Login(r.user, r.pass); err != nil {
		r.t.Fatal(err)
	}
	entries, err := c.UIDL()
	if err != nil {
		r.t.Fatal(err)
	}
	c.Quit()
	for _, e := range entries {
		r.uidls = append(r.uidls, e.Value)
	}
	if len(r.uidls) != len(r.msgs) {
		r.t.Fatalf("%d messages listed, %d delivered", len(r.uidls), len(r.msgs))
	}
}

func (r *faultRig) dial(addr string) *pop3client.Client {
	r.t.Helper()
	c, err := pop3client.Dial(addr)
	if err != nil {
		r.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r.t.Cleanup(func() { c.Close() })
	return c
}

// login logs in directly or, with viaDown, through the client-side proxy.
func (r *faultRig) login(viaDown bool) *pop3client.Client {
	r.t.Helper()
	addr := r.addr
	if viaDown {
		addr = r.down.Addr()
	}
	// The session before may still be letting go of the maildrop when its
	// client has seen the connection close: [IN-USE] is temporary
	// (RFC 3206), so it is asked again for a while.
	for deadline := time.Now().Add(3 * time.Second); ; {
		c := r.dial(addr)
		err := c.Login(r.user, r.pass)
		if err == nil {
			return c
		}
		c.Close()
		if !strings.Contains(err.Error(), "[IN-USE]") || time.Now().After(deadline) {
			r.t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ended closes the client's side and checks that the gateway let go of
// everything the session held.
func (r *faultRig) ended(c *pop3client.Client) {
	r.t.Helper()
	c.Close()
	if r.settle != nil {
		r.settle()
	}
	r.base.Check(r.t)
}

// next logs in again, with every fault off, and checks the listing: the
// messages numbered (from 1) in gone are no longer listed, those in maybe
// may be, every other one is, with its UIDL of before, and extra new ones
// besides. Each message listed is served byte for byte. It returns the
// client, logged in, and the listing.
func (r *faultRig) next(gone, maybe []int, extra int) (*pop3client.Client, []pop3client.Entry) {
	r.t.Helper()
	c := r.login(false)
	entries, err := c.UIDL()
	if err != nil {
		r.t.Fatal(err)
	}
	num := make(map[string]int, len(entries))
	for _, e := range entries {
		num[e.Value] = e.Num
	}
	known := 0
	for i, uidl := range r.uidls {
		n, listed := num[uidl]
		switch {
		case listed:
			known++
			body, err := c.Retr(n)
			if err != nil {
				r.t.Fatalf("next session: RETR %d (message %d): %v", n, i+1, err)
			}
			if !bytes.Equal(body, r.msgs[i]) {
				r.t.Errorf("next session: message %d served with %d octets, not as delivered (%d)", i+1, len(body), len(r.msgs[i]))
			}
			if contains(gone, i+1) {
				r.t.Errorf("next session: message %d, deleted, is listed again as %s", i+1, uidl)
			}
		case !contains(gone, i+1) && !contains(maybe, i+1):
			r.t.Errorf("next session: message %d (UIDL %s) is lost; listing %v", i+1, uidl, entries)
		}
	}
	if n := len(entries) - known; n != extra {
		r.t.Errorf("next session: %d messages with UIDLs never seen, want %d; listing %v, before %v", n, extra, entries, r.uidls)
	}
	return c, entries
}

func contains(s []int, n int) bool {
	for _, x := range s {
		if x == n {
			return true
		}
	}
	return false
}

// expectErr sends cmd and fails unless the reply starts with want.
func expectErr(t *testing.T, c *pop3client.Client, cmd, want string) {
	t.Helper()
	reply, err := c.Cmd(cmd)
	if err != nil {
		t.Fatalf("%s: %v", strings.Fields(cmd)[0], err)
	}
	if !strings.HasPrefix(reply, want) {
		t.Fatalf("%s: %q, want %q", strings.Fields(cmd)[0], reply, want)
	}
}

// expectCutRetr sends RETR n and checks that the message does not arrive
// whole (expectCut).
func expectCutRetr(t *testing.T, c *pop3client.Client, n int, whole []byte) {
	t.Helper()
	c.Send(fmt.Sprintf("RETR %d", n))
	expectCut(t, c, whole)
}

// expectCut reads the reply to a RETR sent and checks that the message
// does not arrive whole: +OK, then the connection ends before the
// terminating line, never a shortened message that looks whole.
func expectCut(t *testing.T, c *pop3client.Client, whole []byte) {
	t.Helper()
	reply, err := c.Line()
	if err != nil {
		t.Fatalf("RETR: %v before the reply", err)
	}
	if !strings.HasPrefix(reply, "+OK") {
		t.Fatalf("RETR: %q", reply)
	}
	got, err := c.RawMulti()
	if err == nil {
		t.Fatalf("RETR: a cut message (%d of %d octets) ended with the terminating line as if whole", len(got), len(whole))
	}
	if len(got) >= len(whole) {
		t.Fatalf("RETR: %d octets of %d before the end", len(got), len(whole))
	}
}

// expectClosed checks that the gateway ended the connection, with or
// without a last -ERR, and sent nothing else.
func expectClosed(t *testing.T, c *pop3client.Client) {
	t.Helper()
	for {
		line, err := c.Line()
		if err != nil {
			return
		}
		if !strings.HasPrefix(line, "-ERR") {
			t.Fatalf("%q from a session that should have ended", line)
		}
	}
}

// retrWhole checks RETR n gives the message whole.
func retrWhole(t *testing.T, c *pop3client.Client, n int, want []byte) {
	t.Helper()
	got, err := c.Retr(n)
	if err != nil {
		t.Fatalf("RETR %d: %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("RETR %d: %d octets, not the message (%d)", n, len(got), len(want))
	}
}

// imapAs is a second IMAP client of Dovecot, with INBOX selected.
func imapAs(t *testing.T, dc *dovecottest.Server, user, pass string) *imapclient.Client {
	t.Helper()
	c, _ := imapInbox(t, dc.IMAPAddr(), user, pass)
	t.Cleanup(func() { c.Close() })
	return c
}

type faultCase struct {
	name string
	opts faultRigOptions
	run  func(t *testing.T, r *faultRig)
}

// imapFaults: faults between the gateway and Dovecot.
var imapFaults = []faultCase{
	downAtLogin(),
	resetDuringListing("RFC822.SIZE"),
	// Resumed on a new connection from the octet where it was cut.
	resumedRetr(300_000),
	cutEveryRetr(300_000, 100_000),
	resetCachedRetr(true),
	// The gateway keeps a journal of the deletes a QUIT asked for and
	// finishes them before the next session lists; a gateway without
	// it (restarted, its state lost) finds the mailbox as the fault left
	// it, and deleting again works.
	quitReset("reset at QUIT before the deletes", "STORE", false, false, []int{1, 2}, nil),
	quitReset("reset at QUIT before the deletes, gateway restarted", "STORE", false, true, nil, nil),
	quitReset("reset at QUIT after STORE", "STORE", true, false, []int{1, 2}, nil),
	// Flagged \Deleted but not expunged: listed or not, never expunged
	// by anyone else's EXPUNGE (the gateway uses UID EXPUNGE).
	quitReset("reset at QUIT after STORE, gateway restarted", "STORE", true, true, nil, []int{1, 2}),
	quitReset("reset at QUIT after EXPUNGE", "EXPUNGE", true, false, []int{1, 2}, nil),
	quitReset("reset at QUIT after EXPUNGE, gateway restarted", "EXPUNGE", true, true, []int{1, 2}, nil),
	stallPastTimeout(2),
	stallMidRetr(300_000),
	mailboxChanged(func(t *testing.T, r *faultRig) {
		other := imapAs(t, r.dc, r.user, r.pass)
		fresh := []byte("From: b@example.com\r\nSubject: arrived mid-session\r\n\r\nnew\r\n")
		app := other.Append("INBOX", int64(len(fresh)), nil)
		app.Write(fresh)
		app.Close()
		if _, err := app.Wait(); err != nil {
			t.Fatal(err)
		}
		if err := other.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
			t.Fatal(err)
		}
		if err := other.Expunge().Close(); err != nil {
			t.Fatal(err)
		}
		other.Logout().Wait()
		other.Close()
	}, servedButRemoved),
}

// quitWithFault marks messages 1 and 2 deleted and arms the fault before
// QUIT. The next session, on the same gateway or, restarted, on one that
// saw nothing of it, lists those in gone no more, and those in maybe
// either way, never a half state that loses another; deleting what is
// still listed then works, and leaves exactly messages 3 and 4.
func quitWithFault(t *testing.T, r *faultRig, arm func(), restarted bool, gone, maybe []int) {
	c := r.login(false)
	for _, n := range []int{1, 2} {
		if err := c.Dele(n); err != nil {
			t.Fatal(err)
		}
	}
	arm()
	reply, err := c.Cmd("QUIT")
	if err == nil && !strings.HasPrefix(reply, "-ERR [SYS/TEMP]") {
		t.Fatalf("QUIT with the upstream reset: %q, want -ERR [SYS/TEMP] or the connection closed", reply)
	}
	if r.up.Fired() != 1 {
		t.Fatal("the fault did not fire during QUIT")
	}
	r.ended(c)
	if restarted {
		r.addr = r.ref
	}
	c, entries := r.next(gone, maybe, 0)
	for _, e := range entries {
		if e.Value == r.uidls[0] || e.Value == r.uidls[1] {
			if err := c.Dele(e.Num); err != nil {
				t.Fatalf("DELE again: %v", err)
			}
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT deleting again: %v", err)
	}
	if n := r.count(); n != 2 {
		t.Fatalf("%d messages in the mailbox after deleting 2 of 4", n)
	}
	c, _ = r.next([]int{1, 2}, nil, 0)
	c.Quit()
}

// clientFaults: faults between the POP3 client and the gateway.
var clientFaults = []faultCase{
	{"client reset mid-RETR", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(true)
		if err := c.Dele(1); err != nil {
			t.Fatal(err)
		}
		r.down.CutServerAfter(200_000)
		c.Send("RETR 4")
		got, _ := c.RawMulti()
		if len(got) >= len(r.msgs[3]) || r.down.Fired() != 1 {
			t.Fatalf("the client read %d octets of %d; the cut fired %d times", len(got), len(r.msgs[3]), r.down.Fired())
		}
		r.ended(c)
		r.nextIntact()
	}},
	{"client reset mid-AUTH", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.dial(r.down.Addr())
		c.Send("AUTH PLAIN")
		if line, err := c.Line(); err != nil || !strings.HasPrefix(line, "+") {
			t.Fatalf("AUTH PLAIN: %q, %v; want a continuation", line, err)
		}
		r.down.ResetAll()
		r.ended(c)
		r.nextIntact()
	}},
	{"client reset after DELE before QUIT", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(true)
		for _, n := range []int{1, 2, 4} {
			if err := c.Dele(n); err != nil {
				t.Fatal(err)
			}
		}
		r.down.ResetAll()
		r.ended(c)
		// RFC 1939 §6: only QUIT enters the UPDATE state.
		r.nextIntact()
		if n := r.dc.Count(t, r.user); n != len(r.msgs) {
			t.Fatalf("%d messages left of %d", n, len(r.msgs))
		}
	}},
	{"slow-drip client", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(true)
		r.down.Drip(1, 10*time.Millisecond)
		retrWhole(t, c, 2, r.msgs[1])
		if err := c.Dele(2); err != nil {
			t.Fatal(err)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		r.ended(c)
		c, _ = r.next([]int{2}, nil, 0)
		c.Quit()
	}},
	{"stalled client hits the idle timeout", faultRigOptions{idle: faultIdle}, func(t *testing.T, r *faultRig) {
		c := r.login(true)
		if err := c.Dele(1); err != nil {
			t.Fatal(err)
		}
		r.down.StallCommands(true)
		c.Send("QUIT") // never reaches the gateway
		expectClosed(t, c)
		r.ended(c)
		r.down.StallCommands(false)
		// RFC 1939 §3: an autologout deletes nothing.
		r.nextIntact()
	}},
	// The message is larger than the socket buffers between the gateway
	// and the stalled proxy can hold (4 MiB of send buffer at most here).
	{"client that stops reading hits the idle timeout", faultRigOptions{idle: faultIdle, large: 12 << 20}, func(t *testing.T, r *faultRig) {
		c := r.login(true)
		if err := c.Dele(1); err != nil {
			t.Fatal(err)
		}
		r.down.Stall(true)
		c.Send("RETR 4")
		// The gateway gives up on its blocked write and ends the session,
		// its upstream connection with it; what it wrote before arrives,
		// without the end.
		if !waitUntil(20*time.Second, func() bool { return r.up.Open() == 0 }) {
			t.Fatal("the gateway did not end the session of a client that stopped reading")
		}
		r.down.Stall(false)
		expectCut(t, c, r.msgs[3])
		r.ended(c)
		r.nextIntact()
	}},
}

func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestFaultMatrixIMAP runs imapFaults and clientFaults against one Dovecot,
// each case with its own mailbox, gateway and fault proxies.
func TestFaultMatrixIMAP(t *testing.T) {
	users := map[string]string{}
	cases := append(append([]faultCase(nil), imapFaults...), clientFaults...)
	for i := range cases {
		users[fmt.Sprintf("fault%d", i)] = fmt.Sprintf("pw-fault%d", i)
	}
	dc := dovecottest.Start(t, users)
	ref := startGatewayFor(t, &proxy.Upstream{
		Name:           "dovecot",
		Server:         upstream.Server{Address: dc.IMAPAddr(), Security: upstream.SecurityNone, Timeout: 30 * time.Second},
		Mailbox:        "INBOX",
		OnDelete:       upstream.DeleteExpunge,
		KeepConnection: -1,
	})
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			user := fmt.Sprintf("fault%d", i)
			tc.run(t, newFaultRig(t, dc, ref, user, users[user], tc.opts))
		})
	}
}
