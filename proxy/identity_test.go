package proxy

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/upstream"
)

// gmailSession is a scripted Gmail session: X-GM-EXT-1, a mailbox under
// UIDVALIDITY validity whose messages (UIDs 1, 2, ...) have the same
// Message-ID, size and arrival time, and the given X-GM-MSGIDs.
func gmailSession(validity int, msgids ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
		S: * OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS X-GM-EXT-1] ready
		C: {tag} AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==
		S: {tag} OK [CAPABILITY IMAP4rev1 UIDPLUS X-GM-EXT-1] logged in
		C: {tag} SELECT INBOX
		S: * %d EXISTS
		S: * OK [UIDVALIDITY %d] ok
		S: * OK [UIDNEXT %d] ok
		S: {tag} OK [READ-WRITE] selected
		C: {tag} FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
	`, len(msgids), validity, len(msgids)+1)
	field := "Message-ID: <same@example.com>\r\n\r\n"
	for i := range msgids {
		fmt.Fprintf(&b, "S: * %d FETCH (UID %d FLAGS () INTERNALDATE \"06-Dec-2026 10:00:00 +0000\" RFC822.SIZE 100 BODY[HEADER.FIELDS (\"Message-ID\")] {%d}\nS: %s)\n",
			i+1, i+1, len(field), strings.ReplaceAll(field, "\r\n", "\nS: "))
	}
	b.WriteString("S: {tag} OK fetched\nC: {tag} UID FETCH 1:* (UID X-GM-MSGID)\n")
	for i, id := range msgids {
		fmt.Fprintf(&b, "S: * %d FETCH (UID %d X-GM-MSGID %s)\n", i+1, i+1, id)
	}
	b.WriteString("S: {tag} OK done\n")
	return b.String()
}

// TestGmailUIDLsFollowMessageID: two messages alike in Message-ID, size
// and arrival time but with different X-GM-MSGIDs get different UIDLs,
// and each keeps its own across a UIDVALIDITY change that numbers them
// the other way round (a digest of what they share could only rank
// them by UID).
func TestGmailUIDLsFollowMessageID(t *testing.T) {
	e := newScriptedEnv(t,
		gmailSession(1, "1278455344230334865", "1278455344230334866"),
		gmailSession(2, "1278455344230334866", "1278455344230334865"),
	)
	c := e.login()
	first := uidls(t, c)
	if want := []string{upstream.DovecotUIDL(1, 1), upstream.DovecotUIDL(1, 2)}; !slices.Equal(first, want) {
		t.Fatalf("UIDL = %v, want %v", first, want)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	c = e.login()
	if got, want := uidls(t, c), []string{first[1], first[0]}; !slices.Equal(got, want) {
		t.Fatalf("UIDL after the UIDVALIDITY change = %v, want %v", got, want)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}
