package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// exportCorpus is the tricky corpus and plain messages of about 1 KiB up
// to n messages.
func exportCorpus(n int) [][]byte {
	var msgs [][]byte
	for _, m := range trickyCorpus() {
		msgs = append(msgs, []byte(m.raw))
	}
	for i := len(msgs); i < n; i++ {
		msgs = append(msgs, fmt.Appendf(nil, "From: a@example.com\nSubject: message %d\nMessage-ID: <m%d@example.com>\nDate: Mon, 2 Nov 2026 09:00:00 +0000\n\n%s", i, i, strings.Repeat(fmt.Sprintf("line %d of message %d\n", i%7, i), 40)))
	}
	return msgs
}

// exportResult is what one `gateway export` printed and its exit status.
type exportResult struct {
	stdout, stderr string
	code           int
}

var fetchedRE = regexp.MustCompile(`fetched (\d+)`)

// fetched is the number of message bodies the run read from the store.
func (r exportResult) fetched(t *testing.T) int {
	t.Helper()
	m := fetchedRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no summary in the output:\n%s\n%s", r.stdout, r.stderr)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func exportCommand(bin, config, dir, format string, extra ...string) *exec.Cmd {
	args := append([]string{"export", "-config", config, "-user", "alice", "-to", dir, "-format", format}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "ALICE_UPSTREAM=upstream-pass")
	return cmd
}

func runExport(t *testing.T, bin, config, dir, format string, extra ...string) exportResult {
	t.Helper()
	cmd := exportCommand(bin, config, dir, format, extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := exportResult{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

var progressRE = regexp.MustCompile(`^export: (\d+)/(\d+) messages`)

// interruptedExport starts an export slowed down by -limit-rate and sends
// sig once its progress lines say half the messages are written.
func interruptedExport(t *testing.T, bin, config, dir, format string, sig syscall.Signal) exportResult {
	t.Helper()
	cmd := exportCommand(bin, config, dir, format, "-limit-rate", "768KiB", "-progress-interval", "20ms")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	sent := false
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		stderr.WriteString(sc.Text() + "\n")
		m := progressRE.FindStringSubmatch(sc.Text())
		if m == nil || sent {
			continue
		}
		done, _ := strconv.Atoi(m[1])
		total, _ := strconv.Atoi(m[2])
		if done >= total/2 {
			cmd.Process.Signal(sig)
			sent = true
		}
	}
	err = cmd.Wait()
	r := exportResult{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	}
	if !sent {
		t.Fatalf("the export ended before half its messages:\n%s", r.stderr)
	}
	return r
}

// recorded is how many messages the export's state file records.
func recorded(t *testing.T, dir string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, ".gateway-export"))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(data, []byte("\n")) - 1
}

// tree reads every file of an export but its state, by path.
func tree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := make(map[string][]byte)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if rel == ".gateway-export" {
			return nil
		}
		b, err := os.ReadFile(path)
		files[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func sameTree(t *testing.T, got, want map[string][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d files, want %d", len(got), len(want))
	}
	bad := 0
	for name, w := range want {
		if g, ok := got[name]; !ok || !bytes.Equal(g, w) {
			if bad++; bad <= 3 {
				t.Errorf("%s: present %v, %d octets, want %d octets", name, ok, len(g), len(w))
			}
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			if bad++; bad <= 6 {
				t.Errorf("%s: not in the uninterrupted export", name)
			}
		}
	}
}

// TestExportInterruptedThenResumed: `gateway export` stopped half way, by
// SIGINT or SIGKILL, and run again leaves exactly what an uninterrupted
// export leaves, and the second run fetches only what the first did not
// record: no message is fetched twice.
func TestExportInterruptedThenResumed(t *testing.T) {
	const n = 2000
	bin := buildGateway(t)
	dc := dovecottest.Start(t, map[string]string{"alice@example.com": "upstream-pass"})
	dc.Deliver(t, "alice@example.com", exportCorpus(n)...)
	config := aliceConfig(t, dc.IMAPAddr(), "")
	for _, c := range []struct {
		format string
		sig    syscall.Signal
	}{{"eml", syscall.SIGINT}, {"maildir", syscall.SIGKILL}, {"mbox", syscall.SIGKILL}} {
		t.Run(c.format+"/"+c.sig.String(), func(t *testing.T) {
			ref := t.TempDir()
			if r := runExport(t, bin, config, ref, c.format); r.code != 0 || r.fetched(t) != n {
				t.Fatalf("uninterrupted export: exit %d, want 0 and %d fetched:\n%s\n%s", r.code, n, r.stdout, r.stderr)
			}
			dir := t.TempDir()
			first := interruptedExport(t, bin, config, dir, c.format, c.sig)
			if c.sig == syscall.SIGINT && (first.code != 1 || !strings.Contains(first.stderr, "interrupted")) {
				t.Errorf("after SIGINT: exit %d, want 1 and a word on it:\n%s", first.code, first.stderr)
			}
			done := recorded(t, dir)
			if done <= 0 || done >= n {
				t.Fatalf("the interrupted run recorded %d of %d messages", done, n)
			}
			second := runExport(t, bin, config, dir, c.format)
			if second.code != 0 {
				t.Fatalf("the run after the interrupted one: exit %d:\n%s\n%s", second.code, second.stdout, second.stderr)
			}
			if got := second.fetched(t); got != n-done {
				t.Errorf("the second run fetched %d messages; the first recorded %d of %d, so want %d", got, done, n, n-done)
			}
			sameTree(t, tree(t, dir), tree(t, ref))
			if c.format == "mbox" {
				if got := muttCount(t, filepath.Join(dir, "INBOX.mbox")); got != n {
					t.Errorf("mutt reads %d messages in the mbox, want %d", got, n)
				}
			}
			if c.format == "maildir" {
				compareOverPOP3(t, dc, dir, n)
			}
		})
	}
}

// muttCount opens an mbox with mutt (on a pseudo-terminal made by
// script), copies every message to a Maildir and counts them there.
func muttCount(t *testing.T, mbox string) int {
	t.Helper()
	for _, bin := range []string{"mutt", "script"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Missing(t, bin+" not found: install the Debian packages mutt and bsdutils")
		}
	}
	tmp := t.TempDir()
	rc := filepath.Join(tmp, "muttrc")
	// folder: mutt offers to create a missing ~/Mail first, which would
	// take the keys pushed.
	os.WriteFile(rc, []byte("set folder="+tmp+"\nset mbox_type=Maildir\nset confirmcreate=no\nset confirmappend=no\nset quit=yes\nset move=no\nset read_only=yes\n"), 0o600)
	out := filepath.Join(tmp, "out")
	mutt := fmt.Sprintf(`TERM=vt100 mutt -n -F %s -f %s -e 'push "<tag-pattern>all<enter><tag-prefix><copy-message>%s<enter><quit>"'`, rc, mbox, out)
	cmd := exec.Command("script", "-qec", mutt, "/dev/null")
	cmd.Env = append(os.Environ(), "HOME="+tmp)
	// script passes the end of its input on to mutt as a key: give it
	// an input that stays open.
	stdin, keepOpen, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	defer keepOpen.Close()
	cmd.Stdin = stdin
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mutt: %v", err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("mutt did not finish")
	}
	n := 0
	for _, sub := range []string{"cur", "new"} {
		ents, _ := os.ReadDir(filepath.Join(out, sub))
		n += len(ents)
	}
	return n
}

// compareOverPOP3 serves the exported Maildir with a second Dovecot and
// compares every message its POP3 server sends with what the source's
// POP3 server sends.
func compareOverPOP3(t *testing.T, src *dovecottest.Server, maildir string, n int) {
	t.Helper()
	const user, pass = "copy", "copy-pass"
	dst := dovecottest.Start(t, map[string]string{user: pass})
	target := dst.Maildir(user)
	var owner syscall.Stat_t
	if err := syscall.Stat(target, &owner); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(maildir, "cur"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		to := filepath.Join(target, "cur", e.Name())
		b, err := os.ReadFile(filepath.Join(maildir, "cur", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Lchown(to, int(owner.Uid), int(owner.Gid))
	}
	got := retrAll(t, dst.POP3Addr(), user, pass)
	want := retrAll(t, src.POP3Addr(), "alice@example.com", "upstream-pass")
	if len(got) != n || len(want) != n {
		t.Fatalf("POP3 serves %d messages from the export and %d from the source, want %d", len(got), len(want), n)
	}
	// The copy's UID order is its own: compare the sorted messages.
	slices.SortFunc(got, bytes.Compare)
	slices.SortFunc(want, bytes.Compare)
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("POP3 RETR differs:\n got %q\nwant %q", got[i][:min(len(got[i]), 300)], want[i][:min(len(want[i]), 300)])
		}
	}
}

func retrAll(t *testing.T, addr, user, pass string) [][]byte {
	t.Helper()
	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	if err := c.Login(user, pass); err != nil {
		t.Fatal(err)
	}
	count, _, err := c.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var msgs [][]byte
	for i := 1; i <= count; i++ {
		m, err := c.Retr(i)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	c.Quit()
	return msgs
}

// TestExportOneOffAndClearErrors: without a config, an account given on
// the command line is exported with the password from a file; an unknown
// mailbox and an unwritable directory are one line each and exit 1.
func TestExportOneOffAndClearErrors(t *testing.T) {
	bin := buildGateway(t)
	dc := dovecottest.Start(t, map[string]string{"bob@example.com": "bob-pass"})
	dc.Deliver(t, "bob@example.com", exportCorpus(30)...)
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("bob-pass\n"), 0o600)
	oneOff := func(dir string, extra ...string) exportResult {
		args := append([]string{"export", "-address", dc.IMAPAddr(), "-tls", "none", "-login", "bob@example.com", "-password-file", pw, "-to", dir}, extra...)
		cmd := exec.Command(bin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		r := exportResult{stdout: stdout.String(), stderr: stderr.String()}
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		}
		return r
	}
	dir := t.TempDir()
	if r := oneOff(dir, "-verify"); r.code != 0 || r.fetched(t) != 2*30 || !strings.Contains(r.stdout, "verified 30") {
		t.Fatalf("one-off export: exit %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if r := oneOff(dir); r.code != 0 || r.fetched(t) != 0 {
		t.Errorf("second one-off export: exit %d, want 0 and nothing fetched:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	for _, c := range []struct {
		dir  string
		args []string
		want string
	}{
		{t.TempDir(), []string{"-mailbox", "Nope"}, `no such mailbox "Nope"`},
		{filepath.Join(file, "export"), nil, "cannot create the export directory"},
		{dir, []string{"-format", "mbox"}, "holds a eml export"},
	} {
		r := oneOff(c.dir, c.args...)
		if r.code != 1 || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("export %q: exit %d, %q; want 1 and one line with %q", c.args, r.code, r.stderr, c.want)
		}
	}
}
