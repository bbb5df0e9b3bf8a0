package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
	"github.com/pop3gw/gateway/internal/testkit/faultproxy"
	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/internal/testkit/leakcheck"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
	"github.com/pop3gw/gateway/upstream/jmap"
)

// The fault matrix for the HTTP stores: JMAP against a private Cyrus, and
// Graph against its double, each behind the fault proxy (faultRig, the
// same checks as for IMAP). The store keeps HTTP/1.1 connections alive
// between requests, as it does in use: a request and its body travel on
// one connection, so a reset armed on a pattern of the request (the
// Email/set or the $batch of QUIT's deletes) hits that request whichever
// pooled connection carries it. Once a session has ended, the store's
// idle connections are closed before the leak check, which then finds
// any connection a session left busy (a response body never closed).

// httpTransport is an HTTP store's transport as the wiring makes it,
// with its timeout on the headers and the TLS handshake.
func httpTransport(timeout time.Duration) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = timeout
	tr.TLSHandshakeTimeout = min(tr.TLSHandshakeTimeout, timeout)
	return tr
}

// settleHTTP waits until the rig's upstream connections are all closed,
// closing the idle ones of the transports as they become idle.
func settleHTTP(r *faultRig, trs ...*http.Transport) func() {
	return func() {
		r.t.Helper()
		closed := waitUntil(10*time.Second, func() bool {
			for _, tr := range trs {
				tr.CloseIdleConnections()
			}
			return r.up.Open() == 0
		})
		if !closed {
			r.t.Errorf("%d connections to the upstream still busy after the session", r.up.Open())
		}
	}
}

// TestFaultMatrixJMAP runs the store faults against one Cyrus, through
// its JMAP, each case with its own mailbox, gateway and fault proxy.
func TestFaultMatrixJMAP(t *testing.T) {
	users := map[string]string{}
	for i := range jmapFaults {
		users[fmt.Sprintf("fault%d", i)] = fmt.Sprintf("pw-fault%d", i)
	}
	cy := cyrustest.Start(t, users)
	refTr := httpTransport(30 * time.Second)
	refStore, err := jmap.New(jmap.Options{SessionURL: cy.JMAPURL(), HTTPClient: &http.Client{Transport: refTr}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ref := startGatewayFor(t, &proxy.Upstream{Name: "jmap", Mailbox: "INBOX", OnDelete: upstream.DeleteExpunge, Store: proxy.JMAPStore(refStore)})
	for i, tc := range jmapFaults {
		t.Run(tc.name, func(t *testing.T) {
			user := fmt.Sprintf("fault%d", i)
			tc.run(t, newJMAPFaultRig(t, cy, ref, refTr, user, users[user], tc.opts))
		})
	}
}

func newJMAPFaultRig(t *testing.T, cy *cyrustest.Server, ref string, refTr *http.Transport, user, pass string, opts faultRigOptions) *faultRig {
	t.Helper()
	opts = opts.withDefaults()
	r := &faultRig{t: t, user: user, pass: pass, ref: ref, msgs: faultMessages(user, opts.large), cyrus: cy}
	// One second apart: listed in this order, by arrival.
	first := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	for i, m := range r.msgs {
		cy.AppendDated(t, user, first.Add(time.Duration(i)*time.Second), m)
	}
	r.count = func() int { return cyrusCount(t, cy.IMAPAddr(), user, pass) }
	r.up = faultproxy.Start(t, strings.TrimPrefix(strings.TrimSuffix(cy.JMAPURL(), "/.well-known/jmap"), "http://"))
	tr := httpTransport(opts.timeout)
	store, err := jmap.New(jmap.Options{SessionURL: "http://" + r.up.Addr() + "/.well-known/jmap", HTTPClient: &http.Client{Transport: tr}, Timeout: opts.timeout})
	if err != nil {
		t.Fatal(err)
	}
	log := faultLogger(t)
	gw := passthroughGateway(&proxy.Upstream{Name: "jmap", Mailbox: "INBOX", OnDelete: upstream.DeleteExpunge, Store: proxy.JMAPStore(store)},
		cache.New(64<<20, 256<<10), log)
	r.addr, _ = serve(t, &pop3.Server{Backend: gw, Logger: log, IdleTimeout: opts.idle}, gw, "127.0.0.1:0")
	r.down = faultproxy.Start(t, r.addr)
	r.settle = settleHTTP(r, tr, refTr)
	r.referenceUIDLs(refTr)
	return r
}

// referenceUIDLs lists the mailbox through a gateway that saw no fault,
// then takes the baseline of goroutines and descriptors.
func (r *faultRig) referenceUIDLs(refTr *http.Transport) {
	r.t.Helper()
	r.listReference()
	refTr.CloseIdleConnections()
	r.base = leakcheck.Take()
}

// cyrusCount is the number of messages in user's INBOX, over IMAP.
func cyrusCount(t *testing.T, addr, user, pass string) int {
	t.Helper()
	return int(selectInbox(t, addr, user, pass).NumMessages)
}

// jmapFaults: faults between the gateway and Cyrus's JMAP.
// jmapCutAt is where in message 4's download the JMAP cases cut or
// stall it: Cyrus sends it gzipped, in about 70 KB.
const jmapCutAt = 20_000

var jmapFaults = []faultCase{
	downAtLogin(),
	downAtLaterLogin(),
	// The listing's Email/query asks from a position; the refresh
	// before it does not.
	resetDuringListing(`"position":`),
	// Resumed with a range request from the octet where it was cut.
	resumedRetr(jmapCutAt),
	cutEveryRetr(jmapCutAt, jmapCutAt/2),
	resetCachedRetr(true),
	// The delete journal finishes QUIT's deletes before the next
	// listing; a restarted gateway, without it, finds the mailbox as
	// the fault left it. Email/set destroys in one call, whole or not.
	quitReset("reset at QUIT before Email/set", `"Email/set"`, false, false, []int{1, 2}, nil),
	quitReset("reset at QUIT before Email/set, gateway restarted", `"Email/set"`, false, true, nil, nil),
	quitReset("reset at QUIT after Email/set", `"Email/set"`, true, false, []int{1, 2}, nil),
	quitReset("reset at QUIT after Email/set, gateway restarted", `"Email/set"`, true, true, []int{1, 2}, nil),
	stallPastTimeout(2),
	stallMidRetr(jmapCutAt),
	// Another mail program, over Cyrus's IMAP: one message comes,
	// message 2 goes.
	mailboxChanged(func(t *testing.T, r *faultRig) {
		cy := r.cyrus
		cy.AppendDated(t, r.user, time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC),
			[]byte("From: b@example.com\r\nSubject: arrived mid-session\r\n\r\nnew "+r.user+"\r\n"))
		expungeIMAP(t, cy.IMAPAddr(), r.user, r.pass, 2)
	}, servedButRemoved),
	{"mailbox made anew between sessions", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		// A new Mailbox id, so a new epoch: every id may have changed.
		// Cyrus's Email ids are the messages' content, so the same
		// messages stored again keep theirs, and their UIDLs.
		cy := r.cyrus
		cy.Recreate(t, r.user)
		first := time.Date(2026, 3, 3, 8, 0, 0, 0, time.UTC)
		for i, m := range r.msgs {
			cy.AppendDated(t, r.user, first.Add(time.Duration(i)*time.Second), m)
		}
		r.nextIntact()
	}},
}

// TestFaultMatrixGraph runs the store faults against the Graph double,
// each case with its own mailbox, gateway and fault proxy.
func TestFaultMatrixGraph(t *testing.T) {
	double := graphdouble.New(t)
	var users []string
	for i := range graphFaults {
		users = append(users, fmt.Sprintf("fault%d", i))
	}
	refTr := httpTransport(30 * time.Second)
	ref := graphFaultGateway(t, double.URL, refTr, 30*time.Second, users, cache.New(64<<20, 4<<20), 0)
	for i, tc := range graphFaults {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newGraphFaultRig(t, double, ref, refTr, users[i], tc.opts))
		})
	}
}

// graphFaultGateway serves the Graph mailbox of each user@contoso.example
// to POP3 user user, password pw-user, with the token tok-user.
func graphFaultGateway(t *testing.T, base string, tr *http.Transport, timeout time.Duration, users []string, c *cache.Cache, idle time.Duration) string {
	t.Helper()
	store := graph.NewStore(graph.Options{BaseURL: base, HTTPClient: &http.Client{Transport: tr}, Timeout: timeout, Backoff: 10 * time.Millisecond})
	cfg := &proxy.Config{
		Upstreams: map[string]*proxy.Upstream{
			"m365": {Name: "m365", Store: proxy.GraphStore(store), Mailbox: "INBOX", OnDelete: upstream.DeleteExpunge, OAuth2: upstream.Bearer},
		},
		Users: map[string]*proxy.User{},
	}
	for _, u := range users {
		hash, err := bcrypt.GenerateFromPassword([]byte("pw-"+u), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		tok := "tok-" + u
		cfg.Users[u] = &proxy.User{
			Name: u, PasswordHash: string(hash), Upstream: "m365", UpstreamUser: u + "@contoso.example",
			UpstreamToken: func(context.Context, bool) (string, error) { return tok, nil },
		}
	}
	log := faultLogger(t)
	gw := proxy.New(cfg, c, log)
	addr, _ := serve(t, &pop3.Server{Backend: gw, Logger: log, IdleTimeout: idle}, gw, "127.0.0.1:0")
	return addr
}

func newGraphFaultRig(t *testing.T, double *graphdouble.Server, ref string, refTr *http.Transport, user string, opts faultRigOptions) *faultRig {
	t.Helper()
	opts = opts.withDefaults()
	r := &faultRig{t: t, user: user, pass: "pw-" + user, ref: ref, msgs: faultMessages(user, opts.large)}
	box := double.Mailbox(user + "@contoso.example")
	double.Grant("tok-"+user, user+"@contoso.example")
	var ids []string
	for _, m := range r.msgs {
		ids = append(ids, box.Add("inbox", graphdouble.Msg{MIME: m}))
	}
	r.graph, r.graphIDs = box, ids
	r.count = func() int {
		n := 0
		for _, id := range ids {
			if folder, _, ok := box.State(id); ok && folder == "inbox" {
				n++
			}
		}
		return n
	}
	host := strings.TrimSuffix(strings.TrimPrefix(double.URL, "http://"), "/v1.0")
	r.up = faultproxy.Start(t, host)
	tr := httpTransport(opts.timeout)
	r.addr = graphFaultGateway(t, "http://"+r.up.Addr()+"/v1.0", tr, opts.timeout, []string{user}, cache.New(64<<20, 256<<10), opts.idle)
	r.down = faultproxy.Start(t, r.addr)
	r.settle = settleHTTP(r, tr, refTr)
	r.referenceUIDLs(refTr)
	return r
}

// graphFaults: faults between the gateway and the Graph double. Graph
// gives no sizes: each message is read at the first login to measure it,
// and those under the cache's ceiling (messages 1 to 3) are served from
// the cache from then on; message 4 streams at each RETR. A $value has no
// size and no ranges, so a cut transfer cannot be resumed: the client is
// cut off before the terminating line.
var graphFaults = []faultCase{
	downAtLogin(),
	downAtLaterLogin(),
	// net/http sends a GET again, once, on a new connection when a
	// kept-alive one fails before an answer: the login goes through.
	{"reset during the listing", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		graphLoginThroughReset(t, r, func() { r.up.ResetOnCommand([]byte("/messages/delta")) })
	}},
	{"reset after the listing was sent", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		graphLoginThroughReset(t, r, func() { r.up.ResetAfterCommand([]byte("/messages/delta")) })
	}},
	{"reset while measuring at login", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		graphLoginThroughReset(t, r, func() { r.up.ResetOnCommand([]byte("/$value")) })
	}},
	{"cut mid-listing", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		// Once an answer has begun, nothing is sent again: the
		// delta round's answer is cut after its first 200 octets.
		var armed atomic.Bool
		r.up.Watch(func(toServer bool, chunk []byte) {
			if toServer && bytes.Contains(chunk, []byte("/messages/delta")) && !armed.Swap(true) {
				r.up.CutServerAfter(200)
			}
		})
		c := expectLoginRefused(t, r)
		if r.up.Fired() != 1 {
			t.Fatal("the listing was not cut")
		}
		r.up.WatchConns(nil)
		r.ended(c)
		r.nextIntact()
	}},
	{"reset during RETR streamed", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(false)
		if err := c.Dele(1); err != nil {
			t.Fatal(err)
		}
		r.up.CutServerAfter(300_000)
		expectCutRetr(t, c, 4, r.msgs[3])
		if r.up.Fired() != 1 {
			t.Fatal("the transfer was not cut")
		}
		r.ended(c)
		r.nextIntact()
	}},
	resetCachedRetr(false),
	// QUIT's deletes go in one JSON batch; the journal finishes them as
	// for JMAP.
	quitReset("reset at QUIT before the batch", "/$batch", false, false, []int{1, 2}, nil),
	quitReset("reset at QUIT before the batch, gateway restarted", "/$batch", false, true, nil, nil),
	quitReset("reset at QUIT after the batch", "/$batch", true, false, []int{1, 2}, nil),
	quitReset("reset at QUIT after the batch, gateway restarted", "/$batch", true, true, []int{1, 2}, nil),
	stallPastTimeout(4),
	stallMidRetr(300_000),
	mailboxChanged(func(t *testing.T, r *faultRig) {
		r.graph.Remove(r.graphIDs[1])
		r.graph.Add("inbox", graphdouble.Msg{MIME: []byte("From: b@example.com\r\nSubject: arrived mid-session\r\n\r\nnew\r\n")})
	}, func(t *testing.T, r *faultRig, c *pop3client.Client) {
		// Message 2 was read whole at login to measure it: the session
		// serves it as it was (RFC 1939 §4: the maildrop is fixed).
		retrWhole(t, c, 2, r.msgs[1])
		// Message 4 is read at RETR, and is still there.
		retrWhole(t, c, 4, r.msgs[3])
	}),
}

// downAtLaterLogin takes the upstream down after a first session: the
// store knows the account by now (JMAP: its session resource and mailbox
// id; Graph: the sizes it measured), and still refuses the login.
func downAtLaterLogin() faultCase {
	return faultCase{"upstream down at a later login", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(false)
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		r.up.Down(true)
		r.up.ResetAll()
		c = expectLoginRefused(t, r)
		r.ended(c)
		r.up.Down(false)
		r.nextIntact()
	}}
}

// graphLoginThroughReset arms a reset and logs in: whether the login
// went through or was refused with [SYS/TEMP], the next session finds
// everything.
func graphLoginThroughReset(t *testing.T, r *faultRig, arm func()) {
	arm()
	c := r.dial(r.addr)
	if _, err := c.OK("USER " + r.user); err != nil {
		t.Fatal(err)
	}
	reply, err := c.Cmd("PASS " + r.pass)
	t.Logf("PASS: %q %v", reply, err)
	if r.up.Fired() != 1 {
		t.Fatal("the reset did not fire")
	}
	r.ended(c)
	r.nextIntact()
}
