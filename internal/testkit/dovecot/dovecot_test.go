package dovecot_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/dovecot"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

func start(t *testing.T, opts dovecot.Options) *dovecot.Instance {
	t.Helper()
	inst, err := dovecot.Start(opts)
	if errors.Is(err, dovecot.ErrNotInstalled) {
		testenv.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := inst.Stop(); err != nil {
			t.Error(err)
		}
	})
	return inst
}

type listing struct {
	stat  string
	uidl  []pop3client.Entry
	sizes map[int]int64
}

func session(t *testing.T, addr, user, pass string, retr bool) (listing, [][]byte) {
	t.Helper()
	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass); err != nil {
		t.Fatalf("login %s at %s: %v", user, addr, err)
	}
	var l listing
	if l.stat, err = c.OK("STAT"); err != nil {
		t.Fatal(err)
	}
	if l.uidl, err = c.UIDL(); err != nil {
		t.Fatal(err)
	}
	if l.sizes, err = c.List(); err != nil {
		t.Fatal(err)
	}
	var bodies [][]byte
	if retr {
		for i := range l.uidl {
			b, err := c.Retr(i + 1)
			if err != nil {
				t.Fatal(err)
			}
			bodies = append(bodies, b)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	return l, bodies
}

// imapOut returns the octets sent by the upstream's IMAP sessions for user,
// from the "Disconnected ... in=N out=M" lines of its log.
// It waits for the first such line: the log is written asynchronously.
func imapOut(t *testing.T, inst *dovecot.Instance, user string) int64 {
	t.Helper()
	re := regexp.MustCompile(`imap\(` + regexp.QuoteMeta(user) + `\).* out=(\d+)`)
	var found [][]string
	testenv.WaitFor(t, func() bool {
		data, err := os.ReadFile(filepath.Join(inst.Dir(), "dovecot.log"))
		if err != nil {
			t.Fatal(err)
		}
		found = re.FindAllStringSubmatch(string(data), -1)
		return len(found) > 0
	})
	var n int64
	for _, m := range found {
		v, _ := strconv.ParseInt(m[1], 10, 64)
		n += v
	}
	return n
}

func TestIMAPC(t *testing.T) {
	users := map[string]string{"ann": "ann-pass", "ben": "ben-pass"}
	up := start(t, dovecot.Options{Users: users})
	var msgs [][]byte
	for i := range 20 {
		msgs = append(msgs, fmt.Appendf(nil, "Subject: %d\n\n%s\n", i, strings.Repeat("x", 20000)))
	}
	if err := up.Deliver("ann", msgs...); err != nil {
		t.Fatal(err)
	}
	if err := up.Deliver("ben", msgs[0]); err != nil {
		t.Fatal(err)
	}
	ic := start(t, dovecot.Options{Users: users, IMAPC: up.IMAPAddr()})
	if ic.IMAPAddr() != "" {
		t.Errorf("imapc instance IMAPAddr = %q, want none", ic.IMAPAddr())
	}

	l, _ := session(t, ic.POP3Addr(), "ann", "ann-pass", false)
	out := imapOut(t, up, "ann")
	t.Logf("upstream sent %d octets for login, STAT, UIDL, LIST", out)
	if out > 20000 {
		t.Errorf("login, STAT, UIDL and LIST through imapc made the upstream send %d octets: bodies were fetched", out)
	}
	direct, bodies := session(t, up.POP3Addr(), "ann", "ann-pass", true)
	if l.stat != direct.stat || fmt.Sprint(l.uidl) != fmt.Sprint(direct.uidl) || fmt.Sprint(l.sizes) != fmt.Sprint(direct.sizes) {
		t.Errorf("imapc: %q %v %v\ndirect: %q %v %v", l.stat, l.uidl, l.sizes, direct.stat, direct.uidl, direct.sizes)
	}
	_, got := session(t, ic.POP3Addr(), "ann", "ann-pass", true)
	if len(got) != len(bodies) {
		t.Fatalf("imapc RETR: %d messages, want %d", len(got), len(bodies))
	}
	for i := range got {
		if !bytes.Equal(got[i], bodies[i]) {
			t.Errorf("imapc RETR %d differs from direct", i+1)
		}
	}

	// Each user logs in upstream with their own password.
	if l, _ := session(t, ic.POP3Addr(), "ben", "ben-pass", false); len(l.uidl) != 1 {
		t.Errorf("ben: %d messages, want 1", len(l.uidl))
	}
	c, err := pop3client.Dial(ic.POP3Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("ben", "ann-pass"); err == nil {
		t.Error("imapc: wrong password accepted")
	}
	if err := ic.Deliver("ann", msgs[0]); err == nil {
		t.Error("Deliver on an imapc instance succeeded")
	}
}

func TestStopRemoves(t *testing.T) {
	inst := start(t, dovecot.Options{Users: map[string]string{"u": "p"}})
	md := inst.Maildir("u")
	if err := inst.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(md); !os.IsNotExist(err) {
		t.Errorf("after Stop: %v, want the maildir removed", err)
	}
	if err := inst.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestLimits checks that Dovecot finds its limits consistent: it logs a
// warning otherwise.
func TestLimits(t *testing.T) {
	for _, o := range []struct {
		reuse bool
		max   int
	}{{false, 1500}, {true, 0}, {true, 1500}} {
		dir := t.TempDir()
		inst := start(t, dovecot.Options{Users: map[string]string{"u": "p"}, ReuseProcesses: o.reuse, MaxConnections: o.max, Dir: dir})
		if err := inst.Deliver("u", []byte("Subject: x\n\nx\n")); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if l, _ := session(t, inst.POP3Addr(), "u", "p", true); len(l.uidl) != 1 {
				t.Fatalf("%d messages, want 1", len(l.uidl))
			}
		}
		if err := inst.Stop(); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, "dovecot.log"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, "Warning") && !strings.Contains(line, "Killed with signal 15") {
				t.Errorf("%+v: %s", o, line)
			}
		}
	}
}

// TestDeliverLDA: a message delivered through Dovecot's LDA lands in the
// INBOX beside one written into Maildir/new, and POP3 serves both. The
// LDA's comes first: Dovecot numbers it at delivery, the other when a
// session finds it.
func TestDeliverLDA(t *testing.T) {
	inst := start(t, dovecot.Options{Users: map[string]string{"lda": "pw"}})
	if err := inst.Deliver("lda", []byte("Subject: dropped\r\n\r\none\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := inst.DeliverLDA("lda", []byte("Subject: by LDA\n\ntwo\n")); err != nil {
		t.Fatal(err)
	}
	if n, err := inst.Count("lda"); err != nil || n != 2 {
		t.Fatalf("Count: %d, %v; want 2", n, err)
	}
	_, bodies := session(t, inst.POP3Addr(), "lda", "pw", true)
	if len(bodies) != 2 || string(bodies[0]) != "Subject: by LDA\r\n\r\ntwo\r\n" || !bytes.Contains(bodies[1], []byte("dropped")) {
		t.Fatalf("POP3 served %q", bodies)
	}
	if err := inst.DeliverLDA("nobody-here", []byte("x\n")); err == nil {
		t.Error("DeliverLDA to an unknown user succeeded")
	}
}
