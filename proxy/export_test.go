package proxy

import (
	"context"
	"slices"
	"testing"
)

// TestUserSessions: the export logs in as a POP3 login of the mapped user
// does, with the stored upstream secret, in any mailbox of the account.
func TestUserSessions(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver("alice@example.com", "Subject: a\r\n\r\na\r\n", "Subject: b\r\n\r\nb\r\n")
	if err := e.mem.Append("alice@example.com", "Trash", []byte("Subject: t\r\n\r\nt\r\n")); err != nil {
		t.Fatal(err)
	}
	open, mailbox, err := e.gw.UserSessions("ALICE")
	if err != nil || mailbox != "INBOX" {
		t.Fatalf("UserSessions = %q, %v; want INBOX", mailbox, err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		mailbox string
		want    int
	}{{"", 2}, {"Trash", 1}} {
		sess, err := open(ctx, c.mailbox)
		if err != nil {
			t.Fatalf("open(%q): %v", c.mailbox, err)
		}
		entries, err := sess.Snapshot(ctx)
		sess.Close()
		if err != nil || len(entries) != c.want {
			t.Errorf("open(%q): %d messages, %v; want %d", c.mailbox, len(entries), err, c.want)
		}
	}
	// The identities are the UIDL store's.
	sess, _ := open(ctx, "")
	defer sess.Close()
	entries, _ := sess.Snapshot(ctx)
	if got, want := Identities(entries), identities(entries); !slices.Equal(got, want) {
		t.Errorf("Identities = %q, want %q", got, want)
	}
	if _, _, err := e.gw.UserSessions("nobody"); err == nil {
		t.Error("UserSessions of an unknown user: no error")
	}
}
