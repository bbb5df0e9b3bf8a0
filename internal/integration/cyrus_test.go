package integration

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/upstream"
)

// TestCyrusUIDLsFollowEmailID: Cyrus offers RFC 8474 OBJECTID, and its
// EMAILID is a hash of the message's octets. The mailbox is deleted and
// created again (a new UIDVALIDITY) and the same messages appended with
// another arrival time, so that every digest of Message-ID, size and
// INTERNALDATE changes: only the EMAILID still names each message, and
// no UIDL changes, and fetchmail, leaving mail on the server, downloads
// nothing again. Two byte-identical messages, one EMAILID, keep two
// UIDLs.
func TestCyrusUIDLsFollowEmailID(t *testing.T) {
	const user, pass = "alice", "secret"
	cy := cyrustest.Start(t, map[string]string{user: pass})
	var msgs [][]byte
	for i := 1; i <= 3; i++ {
		msgs = append(msgs, []byte(fmt.Sprintf("From: a@example.com\r\nSubject: message %d\r\nMessage-ID: <%d@example.com>\r\n\r\nbody %d\r\n", i, i, i)))
	}
	msgs = append(msgs, msgs[2])
	first := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cy.AppendDated(t, user, first, msgs...)
	validity, dates := cyrusState(t, cy.IMAPAddr(), user, pass)

	addr, _ := stateGateway(t, "127.0.0.1:0", cy.IMAPAddr(), upstream.DeleteKeep, filepath.Join(t.TempDir(), "state"))
	before := popUIDLs(t, addr, user, pass)
	if len(before) != 4 || len(slices.Compact(slices.Sorted(slices.Values(before)))) != 4 {
		t.Fatalf("UIDL = %v, want 4 distinct", before)
	}
	// A client leaving mail on the server.
	fetchmail := clienttest.Fetchmail(t, addr, user, pass)
	if got := fetchmail.Fetch(t, true); len(got) != 4 {
		t.Fatalf("fetchmail fetched %d messages, want 4", len(got))
	}

	cy.Recreate(t, user)
	cy.AppendDated(t, user, first.Add(48*time.Hour), msgs...)
	newValidity, newDates := cyrusState(t, cy.IMAPAddr(), user, pass)
	if newValidity == validity || slices.Equal(newDates, dates) {
		t.Fatalf("UIDVALIDITY %d -> %d, dates %v -> %v: the rebuild changed too little to prove anything", validity, newValidity, dates, newDates)
	}
	if after := popUIDLs(t, addr, user, pass); !slices.Equal(after, before) {
		t.Fatalf("UIDL after the mailbox was rebuilt = %v, want %v", after, before)
	}
	if got := fetchmail.Fetch(t, true); len(got) != 0 {
		t.Fatalf("fetchmail fetched %d messages again after the rebuild", len(got))
	}
}

// cyrusState returns the UIDVALIDITY of user's INBOX and its messages'
// INTERNALDATEs.
func cyrusState(t *testing.T, addr, user, pass string) (uint32, []time.Time) {
	t.Helper()
	c, sel := imapInbox(t, addr, user, pass)
	defer c.Close()
	var all imap.SeqSet
	all.AddRange(1, 0)
	msgs, err := c.Fetch(all, &imap.FetchOptions{InternalDate: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var dates []time.Time
	for _, m := range msgs {
		dates = append(dates, m.InternalDate)
	}
	return sel.UIDValidity, dates
}

// popUIDLs logs in to the gateway at addr and returns the UIDL listing.
func popUIDLs(t *testing.T, addr, user, pass string) []string {
	t.Helper()
	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.Login(user, pass); err != nil {
		t.Fatal(err)
	}
	entries, err := c.UIDL()
	if err != nil {
		t.Fatal(err)
	}
	var uidls []string
	for _, e := range entries {
		uidls = append(uidls, e.Value)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	return uidls
}
