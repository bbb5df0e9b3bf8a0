package export

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// BenchmarkExportVsMbsync exports 5,000 messages from a private Dovecot
// to a Maildir, with the gateway and with mbsync (Debian isync), FSync on
// for both, and reports the ratio of the times (goal: at most 1) and the
// eml export's rate.
//
//	go test -run '^$' -bench ExportVsMbsync -benchtime 1x ./internal/export
func BenchmarkExportVsMbsync(b *testing.B) {
	mbsync, err := exec.LookPath("mbsync")
	if err != nil {
		testenv.Missing(b, "mbsync not found: install the Debian package isync")
	}
	// Plain messages of about 20 KiB (mbsync refuses some of the tricky
	// ones).
	msgs := make([][]byte, 5000)
	for i := range msgs {
		line := fmt.Sprintf("line of message %d, with some text to fill it\n", i)
		msgs[i] = fmt.Appendf(nil, "From: a@example.com\nSubject: message %d\nMessage-ID: <m%d@example.com>\n\n%s", i, i, strings.Repeat(line, 20<<10/len(line)))
	}
	mb := startDovecotB(b, msgs)
	var gw, ms, eml time.Duration
	var emlBytes int64
	for range b.N {
		// mbsync first, then the gateway: each reads a mailbox the other
		// has warmed.
		dir := b.TempDir()
		rc := filepath.Join(dir, "mbsyncrc")
		os.WriteFile(rc, []byte(fmt.Sprintf(`IMAPAccount src
Host %s
Port %s
User %s
Pass %s
SSLType None
AuthMechs LOGIN

IMAPStore far
Account src

MaildirStore near
Path %s/
Inbox %s/inbox

Channel copy
Far :far:
Near :near:
Patterns INBOX
Create Near
Sync Pull
SyncState *
`, host(mb), port(mb), user, pass, dir, dir)), 0o600)
		start := time.Now()
		if out, err := exec.Command(mbsync, "-q", "-c", rc, "copy").CombinedOutput(); err != nil {
			b.Fatalf("mbsync: %v\n%s", err, out)
		}
		ms += time.Since(start)
		if n := countFiles(filepath.Join(dir, "inbox", "cur")) + countFiles(filepath.Join(dir, "inbox", "new")); n != 5000 {
			b.Fatalf("mbsync copied %d messages", n)
		}

		start = time.Now()
		sum, err := Run(b.Context(), Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: b.TempDir(), Format: Maildir})
		if err != nil || sum.Exported != 5000 {
			b.Fatalf("export: %v, %d messages", err, sum.Exported)
		}
		gw += time.Since(start)

		start = time.Now()
		sum, err = Run(b.Context(), Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: b.TempDir(), Format: EML})
		if err != nil || sum.Exported != 5000 {
			b.Fatalf("export: %v, %d messages", err, sum.Exported)
		}
		eml += time.Since(start)
		emlBytes += sum.Bytes
	}
	b.ReportMetric(gw.Seconds()/ms.Seconds(), "gateway/mbsync")
	b.ReportMetric(ms.Seconds()/float64(b.N), "mbsync-s/op")
	b.ReportMetric(gw.Seconds()/float64(b.N), "gateway-s/op")
	b.ReportMetric(float64(emlBytes)/(1<<20)/eml.Seconds(), "eml-MiB/s")
	b.ReportMetric(float64(5000*b.N)/eml.Seconds(), "eml-msgs/s")
}

func host(m *mailbox) string { h, _, _ := strings.Cut(m.dc.IMAPAddr(), ":"); return h }
func port(m *mailbox) string { _, p, _ := strings.Cut(m.dc.IMAPAddr(), ":"); return p }

func countFiles(dir string) int {
	ents, _ := os.ReadDir(dir)
	return len(ents)
}
