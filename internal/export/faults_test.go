package export

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/pop3gw/gateway/internal/testkit/faultproxy"
	"github.com/pop3gw/gateway/internal/testkit/leakcheck"
)

// The export's fault matrix, for the faults a run cannot see coming. A
// run killed mid-message and a full disk are TestExportInterruptedThenResumed
// (integration: SIGINT, SIGKILL) and TestFullDiskLeavesWholeFiles; a
// connection dropped by a store in memory is TestDroppedConnectionAndEmptyBody.
// Here the connection to a real Dovecot is cut in the middle of a message
// body by a fault proxy.

// bigMarker is on every line of the message the cuts aim at.
const bigMarker = "BIGBODY"

// faultCorpus is the tricky messages and small ones, with a message of
// 2 MiB in the middle: UIDs before it, it, UIDs after it.
func faultCorpus() [][]byte {
	msgs := corpus(20)
	var big strings.Builder
	big.WriteString("From: a@example.com\nSubject: the big one\nMessage-ID: <big@example.com>\n\n")
	for i := 0; big.Len() < 2<<20; i++ {
		fmt.Fprintf(&big, "%s line %06d %s\n", bigMarker, i, strings.Repeat("y", 50))
	}
	msgs = append(msgs, []byte(big.String()))
	return append(msgs, corpus(40)[20:]...)
}

// cutBigMessage cuts each connection of p, up to times of them, 64 KiB
// into the big message's body: a store that closes the connection in the
// same place on every try. The close is orderly, so the export reads up
// to the cut however far behind it is: a reset would discard what it had
// not read yet, and the cut would show in an earlier message.
func cutBigMessage(p *faultproxy.Proxy, times int) {
	var mu sync.Mutex
	armed := make(map[int64]bool)
	p.WatchConns(func(id int64, toServer bool, chunk []byte) {
		if toServer || !bytes.Contains(chunk, []byte(bigMarker)) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if armed[id] || len(armed) >= times {
			return
		}
		armed[id] = true
		p.CloseServerAfter(64 << 10)
	})
}

// openerAt logs in to the Dovecot account through addr.
func (m *mailbox) openerAt(addr string) Opener {
	srv := m.server()
	srv.Address = addr
	return openerFor(srv, user, pass, nil)
}

// exportedFiles reads what an export left in dir, by UIDL, in the form
// IMAP's bodies take in that format; for mbox, by the body's own UIDL.
func exportedFiles(t *testing.T, dir string, format Format, want map[string]servedMessage) (map[string][]byte, func([]byte) []byte) {
	t.Helper()
	switch format {
	case Maildir:
		got, _ := readMaildir(t, dir)
		return got, lf
	case MBox:
		uidls := make(map[string]string, len(want))
		for uidl, sm := range want {
			uidls[string(mboxForm(sm.body))] = uidl
		}
		got := make(map[string][]byte)
		for i, b := range readMBox(t, filepath.Join(dir, "INBOX.mbox")) {
			key, ok := uidls[string(b)]
			if !ok {
				key = fmt.Sprintf("unknown-%d", i)
			}
			if _, twice := got[key]; twice {
				key += "-again"
			}
			got[key] = b
		}
		return got, mboxForm
	}
	return readEML(t, filepath.Join(dir, "INBOX")), func(b []byte) []byte { return b }
}

// TestExportUpstreamCutMidMessage: the connection to the store is cut in
// the middle of a message's body. Cut once, the run goes on, on a new
// connection, and exports everything once. Cut on every try, the run
// ends with that message, and only it, listed as failed, in one printable
// line, and every file it left is whole; the next run exports the rest, and
// then every message is there once, byte for byte as IMAP serves it.
func TestExportUpstreamCutMidMessage(t *testing.T) {
	msgs := faultCorpus()
	mb := startDovecot(t, msgs)
	want := mb.served(t, "INBOX")
	if len(want) != len(msgs) {
		t.Fatalf("IMAP serves %d messages, want %d", len(want), len(msgs))
	}
	var bigUIDL string
	for uidl, sm := range want {
		if bytes.Contains(sm.body, []byte(bigMarker)) {
			bigUIDL = uidl
		}
	}
	for _, format := range Formats {
		for _, cuts := range []int{1, maxAttempts} {
			t.Run(fmt.Sprintf("%s/%dcuts", format, cuts), func(t *testing.T) {
				p := faultproxy.Start(t, mb.dc.IMAPAddr())
				leaks := leakcheck.Take()
				dir := t.TempDir()
				opts := Options{Open: mb.openerAt(p.Addr()), Mailbox: "INBOX", Dir: dir, Format: format, retryPause: 5 * time.Millisecond}
				cutBigMessage(p, cuts)
				sum, err := Run(testCtx(t), opts)
				if err != nil {
					t.Fatalf("Run = %v; a store's failure is the message's, not the run's", err)
				}
				if p.Fired() != int64(cuts) {
					t.Fatalf("%d cuts fired, want %d", p.Fired(), cuts)
				}
				got, form := exportedFiles(t, dir, format, want)
				for uidl, b := range got {
					if sm, ok := want[uidl]; !ok || !bytes.Equal(b, form(sm.body)) {
						t.Errorf("%s: %d octets that are not the message IMAP serves", uidl, len(b))
					}
				}
				if tmps, _ := filepath.Glob(filepath.Join(dir, "*", "export-*")); len(tmps) > 0 {
					t.Errorf("temporary files left: %v", tmps)
				}
				failed := make(map[string]bool)
				for _, f := range sum.Failures {
					failed[f.UIDL] = true
					line := f.String()
					if strings.ContainsFunc(line, func(r rune) bool { return !unicode.IsPrint(r) }) || len(line) > 300 {
						t.Errorf("failure line %q: not one short printable line", line)
					}
				}
				if cuts == 1 {
					// The cut is retried on a new connection.
					if len(sum.Failures) != 0 || sum.Exported != len(msgs) || sum.Fetched != len(msgs) {
						t.Fatalf("exported %d, fetched %d, failures %v; want all %d once", sum.Exported, sum.Fetched, sum.Failures, len(msgs))
					}
				} else {
					if !failed[bigUIDL] {
						t.Fatalf("the message cut on every try is not among the failures: %v", sum.Failures)
					}
					for _, f := range sum.Failures {
						if !strings.Contains(f.Reason, fmt.Sprintf("not read in %d tries", maxAttempts)) {
							t.Errorf("failure %q does not say the store failed on every try", f)
						}
					}
					if _, ok := got[bigUIDL]; ok {
						t.Fatalf("the message cut on every try was written")
					}
					// Only it: the messages after it in its batch are not
					// held hostage.
					if len(sum.Failures) != 1 {
						t.Errorf("%d failures, want only the message cut on every try: %v", len(sum.Failures), sum.Failures)
					}
					if sum.Exported+len(sum.Failures) != len(msgs) || len(got) != sum.Exported {
						t.Fatalf("exported %d, %d failures, %d files; want %d in all", sum.Exported, len(sum.Failures), len(got), len(msgs))
					}
					t.Logf("%d failures; the first, as the command prints it: %s", len(sum.Failures), sum.Failures[0])
					// The next run, with the store whole again.
					again, err := Run(testCtx(t), opts)
					if err != nil {
						t.Fatal(err)
					}
					if len(again.Failures) != 0 || again.Exported != len(sum.Failures) || again.Fetched != len(sum.Failures) || again.Known != sum.Exported {
						t.Fatalf("next run: exported %d, fetched %d, known %d, failures %v; want the %d that failed, fetched once",
							again.Exported, again.Fetched, again.Known, again.Failures, len(sum.Failures))
					}
					got, _ = exportedFiles(t, dir, format, want)
				}
				compare(t, got, want, form)
				if format == MBox {
					// compare keys mbox messages by their content; count
					// them too, so a message there twice shows.
					if n := len(readMBox(t, filepath.Join(dir, "INBOX.mbox"))); n != len(msgs) {
						t.Errorf("the mbox holds %d messages, want %d", n, len(msgs))
					}
				}
				if len(got) != len(msgs) {
					t.Errorf("%d messages exported, want %d", len(got), len(msgs))
				}
				if data, err := os.ReadFile(filepath.Join(dir, stateName)); err != nil || bytes.Count(data, []byte("\n"))-1 != len(msgs) {
					t.Errorf("the state file records %d messages, want %d (%v)", bytes.Count(data, []byte("\n"))-1, len(msgs), err)
				}
				// Before the proxy closes, which would end a session left
				// open.
				leaks.Check(t)
			})
		}
	}
}
