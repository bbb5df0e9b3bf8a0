package export

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/memstore"
	"github.com/pop3gw/gateway/proxy"
)

func memOpener(s *memstore.Store) Opener {
	return func(ctx context.Context, mailbox string) (proxy.Session, error) {
		return s.Login(ctx, proxy.StoreLogin{Username: user, Password: pass, Mailbox: mailbox})
	}
}

// TestDroppedConnectionAndEmptyBody: a connection that drops inside a
// message leaves no file, and the message is fetched again on a new
// connection; a message the store sends empty is never written, is
// reported, and is tried again by the next run.
func TestDroppedConnectionAndEmptyBody(t *testing.T) {
	s := memstore.New()
	s.AddUser(user, pass)
	for i := range 10 {
		if i == 4 {
			s.Deliver(user, []byte{})
			continue
		}
		s.Deliver(user, fmt.Appendf(nil, "Subject: m%d\r\nMessage-ID: <m%d@x>\r\n\r\n%s\r\n", i, i, strings.Repeat("body ", 100)))
	}
	s.CutAfter(100)
	dir := t.TempDir()
	opts := Options{Open: memOpener(s), Mailbox: "INBOX", Dir: dir}
	sum, err := Run(testCtx(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Exported != 9 || len(sum.Failures) != 1 || !strings.Contains(sum.Failures[0].Reason, "empty") {
		t.Fatalf("exported %d, failures %v; want 9 and the empty message", sum.Exported, sum.Failures)
	}
	if s.Logins() < 2 {
		t.Errorf("%d logins: the dropped connection was not replaced", s.Logins())
	}
	files := readEML(t, filepath.Join(dir, "INBOX"))
	for name, b := range files {
		if len(b) < 500 {
			t.Errorf("%s holds %d octets", name, len(b))
		}
	}
	if len(files) != 9 {
		t.Errorf("%d files, want 9", len(files))
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".export-tmp", "*")); len(tmps) > 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
	bodies := s.Bodies()
	sum, err = Run(testCtx(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Exported != 0 || len(sum.Failures) != 1 || s.Bodies()-bodies != 1 {
		t.Errorf("second run: exported %d, failures %v, %d bodies read; want 0, the empty message, 1", sum.Exported, sum.Failures, s.Bodies()-bodies)
	}
	if _, err := os.Stat(filepath.Join(dir, stateName)); err != nil {
		t.Error(err)
	}
}

func memMailbox(t *testing.T, n, size int) *memstore.Store {
	t.Helper()
	s := memstore.New()
	s.AddUser(user, pass)
	for i := range n {
		s.Deliver(user, fmt.Appendf(nil, "Subject: m%d\r\nMessage-ID: <m%d@x>\r\n\r\n%s\r\n", i, i, strings.Repeat("x", size)))
	}
	return s
}

// TestLimitRate: -limit-rate holds the reading back: 200 KiB at 100 KiB/s,
// with a burst of one second's worth, cannot take less than a second.
func TestLimitRate(t *testing.T) {
	s := memMailbox(t, 10, 20<<10)
	start := time.Now()
	sum := run(t, Options{Open: memOpener(s), Mailbox: "INBOX", Dir: t.TempDir(), LimitRate: 100 << 10})
	if sum.Exported != 10 {
		t.Fatalf("exported %d, want 10", sum.Exported)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("200 KiB at 100 KiB/s took %v", d)
	}
}

// TestConnections: with several connections every message is exported
// once, each connection logged in.
func TestConnections(t *testing.T) {
	s := memMailbox(t, 100, 100)
	dir := t.TempDir()
	sum := run(t, Options{Open: memOpener(s), Mailbox: "INBOX", Dir: dir, Connections: 3, BatchSize: 5})
	if sum.Exported != 100 || s.Bodies() != 100 {
		t.Errorf("exported %d, %d bodies read; want 100 each", sum.Exported, s.Bodies())
	}
	if s.Logins() != 3 {
		t.Errorf("%d logins, want 3", s.Logins())
	}
	if got := readEML(t, filepath.Join(dir, "INBOX")); len(got) != 100 {
		t.Errorf("%d files, want 100", len(got))
	}
}

// TestVerifyFindsDamage: -verify compares each file with the store; a
// damaged file is a failure, and the next run writes it again.
func TestVerifyFindsDamage(t *testing.T) {
	s := memMailbox(t, 5, 100)
	dir := t.TempDir()
	opts := Options{Open: memOpener(s), Mailbox: "INBOX", Dir: dir, Verify: true}
	if sum := run(t, opts); sum.Verified != 5 {
		t.Fatalf("verified %d, want 5", sum.Verified)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "INBOX"))
	victim := filepath.Join(dir, "INBOX", ents[2].Name())
	b, _ := os.ReadFile(victim)
	b[len(b)-3] ^= 1
	os.WriteFile(victim, b, 0o600)
	sum, err := Run(testCtx(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Verified != 4 || len(sum.Failures) != 1 || !strings.Contains(sum.Failures[0].Reason, "verify") {
		t.Fatalf("verified %d, failures %v; want 4 and the damaged file", sum.Verified, sum.Failures)
	}
	sum = run(t, opts)
	if sum.Exported != 1 || sum.Verified != 5 {
		t.Errorf("after the damage: exported %d, verified %d; want 1, 5", sum.Exported, sum.Verified)
	}
	if got, _ := os.ReadFile(victim); string(got) == string(b) {
		t.Error("the damaged file was not written again")
	}
}

func TestThrottled(t *testing.T) {
	for _, c := range []struct {
		err  string
		want bool
	}{
		{"imap: NO [LIMIT] Too many concurrent connections", true},
		{"imap: NO [UNAVAILABLE] Server busy", true},
		{"imap: NO Request is throttled. Suggested Backoff Time: 1000 milliseconds", true},
		{"imap: NO [AUTHENTICATIONFAILED] Invalid credentials", false},
		{"upstream: connect 127.0.0.1:1: connection refused", false},
	} {
		if got := isThrottled(errors.New(c.err)); got != c.want {
			t.Errorf("isThrottled(%q) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestOneExportPerDirectory: a second export into a directory another is
// writing to stops at once, with one line, touching nothing.
func TestOneExportPerDirectory(t *testing.T) {
	s := memMailbox(t, 3, 100)
	dir := t.TempDir()
	j, err := openJournal(dir, EML)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(testCtx(t), Options{Open: memOpener(s), Mailbox: "INBOX", Dir: dir})
	if !errors.Is(err, errBusy) {
		t.Errorf("Run beside another = %v, want %v", err, errBusy)
	}
	j.close()
	if sum := run(t, Options{Open: memOpener(s), Mailbox: "INBOX", Dir: dir}); sum.Exported != 3 {
		t.Errorf("exported %d after the other, want 3", sum.Exported)
	}
}
