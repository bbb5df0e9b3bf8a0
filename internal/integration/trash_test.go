package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/dovecot"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// mailboxCounts returns the number of messages in each mailbox.
func mailboxCounts(t *testing.T, addr, user, pass string, mailboxes ...string) map[string]int {
	t.Helper()
	ctx := context.Background()
	sess, err := upstream.Dial(ctx, &upstream.Server{Address: addr, Security: upstream.SecurityNone})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.Login(ctx, user, pass); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, m := range mailboxes {
		mb, err := sess.Select(ctx, m)
		if err != nil {
			t.Fatalf("select %s: %v", m, err)
		}
		counts[m] = mb.Messages
	}
	return counts
}

// TestFetchmailDeletesToMissingTrash: with on_delete trash and a configured
// trash that does not exist yet (no mailbox is marked \Trash), fetchmail
// deleting after download gets each message once over three polls: the
// first QUIT creates the trash and moves the messages there. Before, every
// QUIT failed with NO [TRYCREATE] and every poll delivered them again.
func TestFetchmailDeletesToMissingTrash(t *testing.T) {
	const user, pass = "fm", "fm-pass"
	dc := dovecottest.StartWith(t, dovecot.Options{Users: map[string]string{user: pass}, NoTrash: true})
	for i := 1; i <= 3; i++ {
		dc.Deliver(t, user, fmt.Appendf(nil, "Subject: message %d\nMessage-ID: <%d@example.com>\n\nbody %d\n", i, i, i))
	}
	gw := startGatewayFor(t, &proxy.Upstream{
		Name:     "dovecot",
		Server:   upstream.Server{Address: dc.IMAPAddr(), Security: upstream.SecurityNone, Timeout: 30 * time.Second},
		Mailbox:  "INBOX",
		OnDelete: upstream.DeleteTrash,
		Trash:    "Deleted Messages",
	})
	client := clienttest.Fetchmail(t, gw, user, pass)
	delivered := 0
	for poll := 1; poll <= 3; poll++ {
		msgs, err := client.TryFetch(false)
		delivered += len(msgs)
		if err != nil {
			t.Logf("poll %d: %v", poll, err)
		}
	}
	if delivered != 3 {
		t.Fatalf("fetchmail delivered %d messages in 3 polls, want 3\n%s", delivered, dc.LogTail())
	}
	counts := mailboxCounts(t, dc.IMAPAddr(), user, pass, "INBOX", "Deleted Messages")
	if counts["INBOX"] != 0 || counts["Deleted Messages"] != 3 {
		t.Fatalf("mailboxes after the polls: %v; want INBOX empty and 3 in Deleted Messages", counts)
	}
}
