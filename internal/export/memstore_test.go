package export

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
