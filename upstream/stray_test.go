package upstream_test

import (
	"errors"
	"io"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/imapscript"
	"github.com/pop3gw/gateway/upstream"
)

// selected is a scripted server's greeting, login and SELECT of a mailbox
// with one message.
const selected = `
	S: * OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready
	C: {tag} AUTHENTICATE PLAIN AHUAcA==
	S: {tag} OK [CAPABILITY IMAP4rev1] logged in
	C: {tag} SELECT INBOX
	S: * 1 EXISTS
	S: * OK [UIDVALIDITY 1] ok
	S: {tag} OK [READ-WRITE] selected
	C: {tag} UID FETCH 1 (UID BODY.PEEK[])
`

func scriptedSession(t *testing.T, script string) *upstream.Session {
	t.Helper()
	srv := imapscript.Start(t, selected+script)
	s := dial(t, plain(srv.Addr()))
	if err := s.Login(testCtx(t), "u", "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Select(testCtx(t), "INBOX"); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFetchBodyAfterFlagUpdate: the server sends a flag update for the
// UID being fetched before its body. The IMAP client gives the second
// response to no command; Fetch still takes the body from it.
func TestFetchBodyAfterFlagUpdate(t *testing.T) {
	s := scriptedSession(t, `
		S: * 1 FETCH (UID 1 FLAGS (\Seen))
		S: * 1 FETCH (UID 1 BODY[] {7}
		S: Hello
		S: )
		S: {tag} OK fetched
	`)
	rc, err := s.Fetch(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if string(got) != "Hello\r\n" {
		t.Fatalf("Fetch = %q", got)
	}
}

// TestFetchWithoutBody: a response without the body is ErrMessageGone
// only when a search no longer finds the UID; NIL is ErrNoBody.
func TestFetchWithoutBody(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		want         error
	}{
		{"NIL", "S: * 1 FETCH (UID 1 BODY[] NIL)\nS: {tag} OK fetched\n", upstream.ErrNoBody},
		{"flags, still there", "S: * 1 FETCH (UID 1 FLAGS ())\nS: {tag} OK fetched\nC: {tag} UID SEARCH UID 1\nS: * SEARCH 1\nS: {tag} OK\n", upstream.ErrNoBody},
		{"flags, gone", "S: * 1 FETCH (UID 1 FLAGS ())\nS: {tag} OK fetched\nC: {tag} UID SEARCH UID 1\nS: * SEARCH\nS: {tag} OK\n", upstream.ErrMessageGone},
		{"nothing, gone", "S: {tag} OK fetched\nC: {tag} UID SEARCH UID 1\nS: * SEARCH\nS: {tag} OK\n", upstream.ErrMessageGone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := scriptedSession(t, tc.script)
			if _, err := s.Fetch(testCtx(t), 1); !errors.Is(err, tc.want) {
				t.Fatalf("Fetch: %v, want %v", err, tc.want)
			}
			if !s.Alive() {
				t.Fatal("the session ended")
			}
		})
	}
}
