package export

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/imapscript"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

const selectInbox = `
	C: {tag} SELECT INBOX
	S: * 2 EXISTS
	S: * OK [UIDVALIDITY 1] ok
	S: * OK [UIDNEXT 3] ok
	S: {tag} OK [READ-WRITE] selected
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
	`+selectInbox+`
		C: {tag} FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ("Message-ID")])
		S: * 1 FETCH (UID 1 FLAGS () RFC822.SIZE 12)
		S: * 2 FETCH (UID 2 FLAGS (\Seen) RFC822.SIZE 12)
		S: {tag} OK fetched
	`+selectInbox+`
		C: {tag} UID FETCH 1:2 (UID BODY.PEEK[])
		S: {tag} NO [LIMIT] Too many requests, slow down
	`+selectInbox+`
		C: {tag} UID FETCH 1:2 (UID BODY.PEEK[])
		S: * 1 FETCH (UID 1 BODY[] {12}
		S: Subject: a
		S: )
		S: * 2 FETCH (UID 2 BODY[] {12}
		S: Subject: b
		S: )
		S: {tag} OK fetched
	`)
	open := func(ctx context.Context, mailbox string) (proxy.Session, error) {
		s, err := upstream.Dial(ctx, &upstream.Server{Address: srv.Addr(), Security: upstream.SecurityNone, Timeout: 10 * time.Second})
		if err != nil {
			return nil, err
		}
		if err := s.Login(ctx, "u", "p"); err != nil {
			return nil, err
		}
		if _, err := s.Select(ctx, mailbox); err != nil {
			return nil, err
		}
		return s, nil
	}
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
