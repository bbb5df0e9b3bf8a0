package upstream_test

import (
	"fmt"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/imapscript"
	"github.com/pop3gw/gateway/upstream"
)

// greetAndSelect is a scripted server's greeting with caps, login and
// SELECT of a mailbox of n messages.
func greetAndSelect(caps string, n int) string {
	return fmt.Sprintf(`
	S: * OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR %[1]s] ready
	C: {tag} AUTHENTICATE PLAIN AHUAcA==
	S: {tag} OK [CAPABILITY IMAP4rev1 %[1]s] logged in
	C: {tag} SELECT INBOX
	S: * %[2]d EXISTS
	S: * OK [UIDVALIDITY 1] ok
	S: * OK [UIDNEXT %[3]d] ok
	S: {tag} OK [READ-WRITE] selected
	C: {tag} FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
`, caps, n, n+1)
}

func scriptedSnapshot(t *testing.T, script string) []upstream.Entry {
	t.Helper()
	srv := imapscript.Start(t, script)
	s := dial(t, plain(srv.Addr()))
	if err := s.Login(testCtx(t), "u", "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Select(testCtx(t), "INBOX"); err != nil {
		t.Fatal(err)
	}
	entries, err := s.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Alive() {
		t.Fatal("the session ended")
	}
	return entries
}

// TestSnapshotGmailMessageID: a server with X-GM-EXT-1 is asked for
// X-GM-MSGID with a command of the gateway's own after the listing; a
// flag update the server sends meanwhile still reaches the IMAP client.
func TestSnapshotGmailMessageID(t *testing.T) {
	entries := scriptedSnapshot(t, greetAndSelect("X-GM-EXT-1", 2)+`
	S: * 1 FETCH (UID 4 FLAGS () RFC822.SIZE 10)
	S: * 2 FETCH (UID 6 FLAGS () RFC822.SIZE 10)
	S: {tag} OK fetched
	C: {tag} UID FETCH 1:* (UID X-GM-MSGID)
	S: * 1 FETCH (X-GM-MSGID 1278455344230334865 UID 4)
	S: * 2 FETCH (UID 6 FLAGS (\Seen))
	S: * 2 FETCH (UID 6 X-GM-MSGID 1278455344230334866)
	S: {tag} OK done
	`)
	if len(entries) != 2 || entries[0].Identity != "gmail:1278455344230334865" || entries[1].Identity != "gmail:1278455344230334866" {
		t.Fatalf("entries %+v", entries)
	}
}

// TestSnapshotEmailID: a server with OBJECTID is asked for EMAILID; a
// message it gives NIL for has no identity.
func TestSnapshotEmailID(t *testing.T) {
	entries := scriptedSnapshot(t, greetAndSelect("OBJECTID X-GM-EXT-1", 2)+`
	S: * 1 FETCH (UID 4 FLAGS () RFC822.SIZE 10)
	S: * 2 FETCH (UID 6 FLAGS () RFC822.SIZE 10)
	S: {tag} OK fetched
	C: {tag} UID FETCH 1:* (UID EMAILID)
	S: * 1 FETCH (UID 4 EMAILID (M6d99ac3275bb4e))
	S: * 2 FETCH (UID 6 EMAILID NIL)
	S: {tag} OK done
	`)
	if len(entries) != 2 || entries[0].Identity != "imap-emailid:M6d99ac3275bb4e" || entries[1].Identity != "" {
		t.Fatalf("entries %+v", entries)
	}
}

// TestSnapshotWithoutObjectIDs: a server that offers neither capability
// is never sent the command (the script ends after the listing, and any
// further command would fail the test).
func TestSnapshotWithoutObjectIDs(t *testing.T) {
	entries := scriptedSnapshot(t, greetAndSelect("UIDPLUS", 1)+`
	S: * 1 FETCH (UID 4 FLAGS () RFC822.SIZE 10)
	S: {tag} OK fetched
	`)
	if len(entries) != 1 || entries[0].Identity != "" {
		t.Fatalf("entries %+v", entries)
	}
}

// TestSnapshotObjectIDRefused: a server that advertises OBJECTID but
// refuses EMAILID fails the listing rather than list without ids, which
// would give every message a new UIDL.
func TestSnapshotObjectIDRefused(t *testing.T) {
	srv := imapscript.Start(t, greetAndSelect("OBJECTID", 1)+`
	S: * 1 FETCH (UID 4 FLAGS () RFC822.SIZE 10)
	S: {tag} OK fetched
	C: {tag} UID FETCH 1:* (UID EMAILID)
	S: {tag} BAD unknown item
	`)
	s := dial(t, plain(srv.Addr()))
	if err := s.Login(testCtx(t), "u", "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Select(testCtx(t), "INBOX"); err != nil {
		t.Fatal(err)
	}
	if entries, err := s.Snapshot(testCtx(t)); err == nil {
		t.Fatalf("Snapshot = %+v, want an error", entries)
	}
}

// TestChangesEmailID: the new messages a listing of changes finds get
// their ids with one more UID FETCH of the same range.
func TestChangesEmailID(t *testing.T) {
	srv := imapscript.Start(t, `
	S: * OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR OBJECTID] ready
	C: {tag} AUTHENTICATE PLAIN AHUAcA==
	S: {tag} OK [CAPABILITY IMAP4rev1 OBJECTID] logged in
	C: {tag} SELECT INBOX
	S: * 2 EXISTS
	S: * OK [UIDVALIDITY 1] ok
	S: * OK [UIDNEXT 8] ok
	S: {tag} OK [READ-WRITE] selected
	C: {tag} UID FETCH 7:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
	S: * 2 FETCH (UID 7 FLAGS () RFC822.SIZE 10)
	S: {tag} OK fetched
	C: {tag} UID FETCH 7:* (UID EMAILID)
	S: * 2 FETCH (UID 7 EMAILID (Mnew))
	S: {tag} OK done
	`)
	s := dial(t, plain(srv.Addr()))
	if err := s.Login(testCtx(t), "u", "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Select(testCtx(t), "INBOX"); err != nil {
		t.Fatal(err)
	}
	ch, err := s.Changes(testCtx(t), upstream.Mailbox{Name: "INBOX", Epoch: "1", State: "7/1", Messages: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Added) != 1 || ch.Added[0].ID != "7" || ch.Added[0].Identity != upstream.IdentityEmailID+"Mnew" {
		t.Fatalf("Changes = %+v", ch)
	}
}
