package export

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/imapscript"
	"github.com/pop3gw/gateway/upstream"
)

const selectInbox = `
	C: {tag} SELECT INBOX
	S: * 2 EXISTS
	S: * OK [UIDVALIDITY 1] ok
	S: * OK [UIDNEXT 3] ok
	S: {tag} OK [READ-WRITE] selected
`

// refreshInbox is how a connection that has INBOX selected learns its
// state again (see upstream.Session.Refresh).
const refreshInbox = `
	C: {tag} NOOP
	S: {tag} OK noop
	C: {tag} STATUS INBOX (UIDNEXT MESSAGES UIDVALIDITY)
	S: * STATUS INBOX (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 1)
	S: {tag} OK status
`

// TestThrottledFetchIsRetried: a server that answers a fetch with NO
// [LIMIT] (RFC 5530) is asked again after a pause, on the same
// connection, and the export completes.
func TestThrottledFetchIsRetried(t *testing.T) {
	srv := imapscript.Start(t, `
		S: * OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready
		C: {tag} AUTHENTICATE PLAIN AHUAcA==
		S: {tag} OK [CAPABILITY IMAP4rev1] logged in
	`+selectInbox+`
		C: {tag} LIST "" "*"
		S: * LIST () "/" INBOX
		S: {tag} OK listed
	`+refreshInbox+`
		C: {tag} FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
		S: * 1 FETCH (UID 1 FLAGS () RFC822.SIZE 12)
		S: * 2 FETCH (UID 2 FLAGS (\Seen) RFC822.SIZE 12)
		S: {tag} OK fetched
	`+refreshInbox+`
		C: {tag} UID FETCH 1:2 (UID BODY.PEEK[])
		S: {tag} NO [LIMIT] Too many requests, slow down
	`+refreshInbox+`
		C: {tag} UID FETCH 1:2 (UID BODY.PEEK[])
		S: * 1 FETCH (UID 1 BODY[] {12}
		S: Subject: a
		S: )
		S: * 2 FETCH (UID 2 BODY[] {12}
		S: Subject: b
		S: )
		S: {tag} OK fetched
	`)
	open := scriptOpener(srv)
	dir := t.TempDir()
	sum, err := Run(testCtx(t), Options{Open: open, Mailbox: "INBOX", Dir: dir, Format: Maildir, retryPause: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Exported != 2 || len(sum.Failures) != 0 {
		t.Fatalf("exported %d, failures %v; want 2, none", sum.Exported, sum.Failures)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "cur"))
	if len(ents) != 2 {
		t.Errorf("%d files, want 2", len(ents))
	}
}

// TestNILBodyIsAFailure: a message the server sends as NIL (Exchange does
// for one it cannot convert) is reported, not written, and left for the
// next run.
func TestNILBodyIsAFailure(t *testing.T) {
	srv := imapscript.Start(t, `
		S: * OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready
		C: {tag} AUTHENTICATE PLAIN AHUAcA==
		S: {tag} OK [CAPABILITY IMAP4rev1] logged in
	`+selectInbox+`
		C: {tag} LIST "" "*"
		S: * LIST () "/" INBOX
		S: {tag} OK listed
	`+refreshInbox+`
		C: {tag} FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
		S: * 1 FETCH (UID 1 FLAGS () RFC822.SIZE 12)
		S: * 2 FETCH (UID 2 FLAGS () RFC822.SIZE 12)
		S: {tag} OK fetched
	`+refreshInbox+`
		C: {tag} UID FETCH 1:2 (UID BODY.PEEK[])
		S: * 1 FETCH (UID 1 BODY[] {12}
		S: Subject: a
		S: )
		S: * 2 FETCH (UID 2 BODY[] NIL)
		S: {tag} OK fetched
		C: {tag} UID FETCH 2 (UID BODY.PEEK[])
		S: * 2 FETCH (UID 2 BODY[] NIL)
		S: {tag} OK fetched
	`)
	open := scriptOpener(srv)
	dir := t.TempDir()
	sum, err := Run(testCtx(t), Options{Open: open, Mailbox: "INBOX", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Exported != 1 || len(sum.Failures) != 1 || sum.Failures[0].UIDL != "0000000200000001" || sum.Failures[0].Reason != "the store sent no body" {
		t.Fatalf("exported %d, failures %v; want 1 and message 2 without body", sum.Exported, sum.Failures)
	}
	j, err := openJournal(dir, EML)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	if len(j.records) != 1 {
		t.Errorf("%d messages recorded, want 1", len(j.records))
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "INBOX", "*")); len(files) != 1 {
		t.Errorf("files %v, want 1", files)
	}
}

// scriptOpener logs in to a scripted server as u/p.
func scriptOpener(srv *imapscript.Server) Opener {
	return openerFor(&upstream.Server{Address: srv.Addr(), Security: upstream.SecurityNone, Timeout: 10 * time.Second}, "u", "p", nil)
}
