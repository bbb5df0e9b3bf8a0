package proxy

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/pop3"
)

const inUse = "-ERR [IN-USE] Mailbox is locked by another POP3 session."

// TestCaseVariantOfMappedUserIsThatUser: a mapped name typed in another
// case is that user, checked against its local hash and never forwarded,
// so the upstream password does not open it through passthrough.
func TestCaseVariantOfMappedUserIsThatUser(t *testing.T) {
	e := newEnv(t, envOptions{})
	// An upstream that ignores case, as Dovecot and the big providers do,
	// knows the account under both spellings.
	if err := e.mem.AddUser("Bob@Example.com", "upstream-bob@example.com"); err != nil {
		t.Fatal(err)
	}
	cfg := *e.config
	cfg.Users = map[string]*User{"alice": cfg.Users["alice"], "bob@example.com": {
		Name:             "bob@example.com",
		PasswordHash:     must[string](t)(passwd.Hash(localPassword)),
		Upstream:         "mem",
		UpstreamUser:     "bob@example.com",
		UpstreamPassword: func() (string, error) { return "upstream-bob@example.com", nil },
	}}
	e.gw.Reload(&cfg)
	c := e.dial()
	expectReply(t, c, "USER Bob@Example.com", "+OK")
	expectReply(t, c, "PASS upstream-bob@example.com", "-ERR [AUTH] Authentication failed.")
	c.Close()
	e.login("ALICE", localPassword).Quit()
	e.login("Bob@Example.COM", localPassword).Quit()
}

// TestCaseVariantsShareOneMaildrop: "u2" and "U2" are one maildrop, for a
// mapped user and through passthrough alike.
func TestCaseVariantsShareOneMaildrop(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.login("alice", localPassword)
	c := e.dial()
	expectReply(t, c, "USER ALICE", "+OK")
	expectReply(t, c, "PASS "+localPassword, inUse)

	if err := e.mem.AddUser("BOB@example.com", "upstream-bob@example.com"); err != nil {
		t.Fatal(err)
	}
	e.login("bob@example.com", "upstream-bob@example.com")
	expectReply(t, c, "USER BOB@example.com", "+OK")
	expectReply(t, c, "PASS upstream-bob@example.com", inUse)
}

// TestAccountKeysFoldCase: the lock, pool, listing and cache keys of an
// account are the same for every spelling of its name.
func TestAccountKeysFoldCase(t *testing.T) {
	e := newEnv(t, envOptions{})
	up := e.config.Upstreams["mem"]
	a := &account{upstream: up, username: "u2@Example.org", password: "p"}
	b := &account{upstream: up, username: "U2@example.ORG", password: "p"}
	if a.key() != b.key() || a.maildrop() != b.maildrop() {
		t.Errorf("keys differ: %q/%q, %q/%q", a.key(), b.key(), a.maildrop(), b.maildrop())
	}
	if !equalBytes(e.gw.pool.digest(a), e.gw.pool.digest(b)) {
		t.Error("pool digests differ for the same credentials")
	}
	for _, login := range []string{"Alice", "ALICE", "alice"} {
		acct, err := e.gw.resolve(&pop3.LoginInfo{Username: login, Password: localPassword})
		if err != nil || acct.username != "alice@example.com" {
			t.Errorf("resolve(%q) = %v, %v; want the mapped user alice", login, acct, err)
		}
	}
}

func equalBytes(a, b []byte) bool { return string(a) == string(b) }

// listen serves the gateway of e on another POP3 server with a login
// guard, as internal/server wires it.
func (e *env) listen(g pop3.LoginGuard, configure ...func(*pop3.Server)) string {
	e.t.Helper()
	srv := &pop3.Server{Backend: e.gw, Logger: testLogger(), Guard: g, MaxAuthFailures: 100}
	for _, f := range configure {
		f(srv)
	}
	return serve(e.t, srv, nil)
}

func dialAt(t *testing.T, addr string) *pop3client.Client {
	t.Helper()
	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// TestPassthroughChecksCredentialsBeforeInUse: a wrong password for a
// forwarded account in use is refused as [AUTH] and counted, never told
// [IN-USE]; it touches neither the open session nor, after it, the
// connection pooled for the owner.
func TestPassthroughChecksCredentialsBeforeInUse(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("bob@example.com", corpus...)
	g := &countingGuard{}
	addr := e.listen(g)
	const user, pass = "bob@example.com", "upstream-bob@example.com"

	victim := e.login(user, pass)
	attacker := dialAt(t, addr)
	expectReply(t, attacker, "USER "+user, "+OK")
	expectReply(t, attacker, "PASS wrong", "-ERR [AUTH] Authentication failed.")
	if g.failed.Load() != 1 {
		t.Error("the wrong password was not counted as a failed login")
	}
	// The right credentials, checked, find the maildrop busy.
	expectReply(t, attacker, "USER "+user, "+OK")
	expectReply(t, attacker, "PASS "+pass, inUse)
	if body := must[[]byte](t)(victim.Retr(1)); string(body) != corpus[0] {
		t.Fatalf("victim's RETR after the attempts = %q", body)
	}
	if err := victim.Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.gw.pool.len() == 1 })

	expectReply(t, attacker, "USER "+user, "+OK")
	expectReply(t, attacker, "PASS wrong", "-ERR [AUTH] Authentication failed.")
	opened := e.proxy.Accepted()
	c := e.login(user, pass)
	if n := e.proxy.Accepted(); n != opened {
		t.Errorf("the owner's next login opened %d new upstream connections: the wrong password cost it the pooled one", n-opened)
	}
	if uidls := must[[]pop3client.Entry](t)(c.UIDL()); len(uidls) != len(corpus) {
		t.Fatalf("owner sees %d messages, want %d", len(uidls), len(corpus))
	}
}

// TestInUseWithHolderCredentialsAsksNoUpstream: a passthrough login to a
// maildrop held with the same credentials is told [IN-USE] without an
// upstream connection, however often it tries; another password still
// goes to the upstream and is counted; once the holder quits, the same
// credentials log in.
func TestInUseWithHolderCredentialsAsksNoUpstream(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("bob@example.com", corpus...)
	g := &countingGuard{}
	addr := e.listen(g)
	const user, pass = "bob@example.com", "upstream-bob@example.com"

	holder := e.login(user, pass)
	opened := e.proxy.Accepted()
	other := dialAt(t, addr)
	for range 3 {
		expectReply(t, other, "USER "+user, "+OK")
		expectReply(t, other, "PASS "+pass, inUse)
	}
	if n := e.proxy.Accepted() - opened; n != 0 {
		t.Errorf("[IN-USE] for the holder's own credentials opened %d upstream connections", n)
	}
	expectReply(t, other, "USER "+user, "+OK")
	expectReply(t, other, "PASS wrong", "-ERR [AUTH] Authentication failed.")
	if g.failed.Load() != 1 {
		t.Error("a wrong password while the maildrop is held was not counted")
	}
	if err := holder.Quit(); err != nil {
		t.Fatal(err)
	}
	expectReply(t, other, "USER "+user, "+OK")
	expectReply(t, other, "PASS "+pass, "+OK Logged in.")
}

// countingGuard counts failed logins and never delays.
type countingGuard struct{ failed atomic.Int32 }

func (g *countingGuard) Reserve(context.Context, string, string) time.Duration { return 0 }
func (g *countingGuard) Failed(context.Context, string, string)                { g.failed.Add(1) }
func (g *countingGuard) Succeeded(context.Context, string, string)             {}

// TestRefusedNamesOnlyAtDebug: people type passwords into the name field,
// so a name that did not log in is never logged at Info or above.
func TestRefusedNamesOnlyAtDebug(t *testing.T) {
	var logs testenv.Buffer
	e := newEnv(t, envOptions{log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	const typed = "Tr0ub4dor-typed-as-name"
	for _, name := range []string{typed, typed + "@example.com", typed + "@example.org"} {
		c := e.dial()
		expectReply(t, c, "USER "+name, "+OK")
		expectReply(t, c, "PASS x", "-ERR [AUTH] Authentication failed.")
		c.Quit()
	}
	e.login("bob@example.com", "upstream-bob@example.com").Quit()
	waitFor(t, func() bool { return strings.Count(logs.String(), "session end") == 4 })
	out := logs.String()
	if !strings.Contains(out, "login refused") || !strings.Contains(out, "upstream refused the credentials") {
		t.Fatalf("the refusals are not logged:\n%s", out)
	}
	if strings.Contains(out, typed) {
		t.Fatalf("a refused name is logged at Info or above:\n%s", out)
	}
	if !strings.Contains(out, "user=bob@example.com") {
		t.Fatalf("the name of a login that succeeded is missing:\n%s", out)
	}
}

// TestPassthroughFailureBudget: past its budget of refused passthrough
// logins an upstream is asked no more (every one of them comes from the
// gateway's address); passthrough logins get [SYS/TEMP] until the budget
// refills, while mapped users and other upstreams go on.
func TestPassthroughFailureBudget(t *testing.T) {
	e := newEnv(t, envOptions{})
	mem := capPassthrough(e, 2)
	c := e.dial()
	for range 2 {
		expectReply(t, c, "USER bob@example.com", "+OK")
		expectReply(t, c, "PASS guess", "-ERR [AUTH] Authentication failed.")
	}
	c = e.dial()
	opened := e.proxy.Accepted()
	expectReply(t, c, "USER bob@example.com", "+OK")
	expectReply(t, c, "PASS upstream-bob@example.com", "-ERR [SYS/TEMP] Temporary failure, please try again later.")
	if n := e.proxy.Accepted(); n != opened {
		t.Fatalf("a passthrough login over budget reached the upstream (%d connections)", n-opened)
	}
	e.login("alice", localPassword).Quit()
	e.login("carol@example.org", "carol-pass").Quit()

	// The budget refills over a minute.
	b := e.gw.passthroughBudget(mem)
	b.mu.Lock()
	b.last = b.last.Add(-time.Minute)
	b.mu.Unlock()
	e.login("bob@example.com", "upstream-bob@example.com").Quit()
}

// capPassthrough reloads e's gateway with a budget of n refused
// passthrough logins a minute for the upstream mem, and returns mem.
func capPassthrough(e *env, n int) *Upstream {
	cfg := *e.config
	mem := *cfg.Upstreams["mem"]
	mem.PassthroughFailures = n
	cfg.Upstreams = map[string]*Upstream{"mem": &mem, "other": cfg.Upstreams["other"]}
	e.gw.Reload(&cfg)
	return &mem
}

// refusals is a RefusalCounter in memory, standing for the replicas'
// count: what other replicas counted is set in it directly.
type refusals struct {
	mu     sync.Mutex
	counts map[string]int
	err    error // both methods fail with it, when set
}

func (r *refusals) RefusedLastMinute(_ context.Context, upstream string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[upstream], r.err
}

func (r *refusals) CountRefused(_ context.Context, upstream string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.counts[upstream]++
	return r.counts[upstream], nil
}

func (r *refusals) set(upstream string, n int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.counts[upstream], r.err = n, err
}

// TestPassthroughFailureBudgetShared: with a RefusalCounter the budget of
// refused passthrough logins is the replicas' together: refusals another
// replica counted spend it here, and this replica's count there. A
// counter that cannot be asked leaves the replica's own budget in force,
// logged.
func TestPassthroughFailureBudgetShared(t *testing.T) {
	var logs testenv.Buffer
	shared := &refusals{counts: map[string]int{"mem": 1}} // one from another replica
	e := newEnv(t, envOptions{refusals: shared, log: slog.New(slog.NewTextHandler(&logs, nil))})
	capPassthrough(e, 2)

	// One refusal here makes two of two: this replica's own bucket
	// would still allow one more.
	c := e.dial()
	expectReply(t, c, "USER bob@example.com", "+OK")
	expectReply(t, c, "PASS guess", "-ERR [AUTH] Authentication failed.")
	if n, _ := shared.RefusedLastMinute(context.Background(), "mem"); n != 2 {
		t.Fatalf("the shared count is %d after a refusal here, want 2", n)
	}
	opened := e.proxy.Accepted()
	expectReply(t, c, "USER bob@example.com", "+OK")
	expectReply(t, c, "PASS upstream-bob@example.com", "-ERR [SYS/TEMP] Temporary failure, please try again later.")
	if n := e.proxy.Accepted(); n != opened {
		t.Fatalf("a passthrough login over the shared budget reached the upstream (%d connections)", n-opened)
	}
	if n, _ := shared.RefusedLastMinute(context.Background(), "other"); n != 0 {
		t.Fatalf("another upstream's count is %d", n)
	}
	e.login("alice", localPassword).Quit()
	e.login("carol@example.org", "carol-pass").Quit()

	// The minute passed for the replicas' count: logins go through.
	shared.set("mem", 0, nil)
	e.login("bob@example.com", "upstream-bob@example.com").Quit()

	// Without the counter, the replica's own bucket decides: it holds
	// one token of two after the refusal above. (Bob's own password would
	// now take the connection kept for him, asking the upstream nothing.)
	shared.set("mem", 5, errors.New("connection refused"))
	c = e.dial()
	expectReply(t, c, "USER bob@example.com", "+OK")
	expectReply(t, c, "PASS guess", "-ERR [AUTH] Authentication failed.")
	opened = e.proxy.Accepted()
	expectReply(t, c, "USER bob@example.com", "+OK")
	expectReply(t, c, "PASS another-guess", "-ERR [SYS/TEMP] Temporary failure, please try again later.")
	if n := e.proxy.Accepted(); n != opened {
		t.Fatalf("a passthrough login over the replica's own budget reached the upstream (%d connections)", n-opened)
	}
	if !strings.Contains(logs.String(), "this replica's own budget applies") {
		t.Fatalf("the unavailable shared count is not logged:\n%s", logs.String())
	}
}

// TestMappedAndForwardedRefusalsTakeAlike: a wrong password for a mapped
// user (refused by the local hash) and for a forwarded name (refused by
// the upstream) both take at least the server's MinRefusalTime.
func TestMappedAndForwardedRefusalsTakeAlike(t *testing.T) {
	const floor = 300 * time.Millisecond
	e := newEnv(t, envOptions{})
	addr := e.listen(nil, func(s *pop3.Server) { s.MinRefusalTime = floor })
	c := dialAt(t, addr)
	for _, user := range []string{"alice", "bob@example.com", "nobody@example.net"} {
		expectReply(t, c, "USER "+user, "+OK")
		start := time.Now()
		expectReply(t, c, "PASS wrong", "-ERR [AUTH] Authentication failed.")
		if took := time.Since(start); took < floor {
			t.Errorf("refusal of %s took %v, want at least %v", user, took, floor)
		}
	}
}
