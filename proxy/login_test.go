package proxy

import (
	"testing"

	"github.com/pop3gw/gateway/internal/passwd"
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
