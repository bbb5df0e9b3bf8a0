package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/upstream"
)

// transcript runs commands in one session and returns each reply exactly
// as sent: the status line and, for a multi-line reply, everything up to
// and including the terminating line.
func transcript(t *testing.T, addr, user, pass string, cmds []string) [][]byte {
	t.Helper()
	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if err := c.Login(user, pass); err != nil {
		t.Fatalf("login at %s: %v", addr, err)
	}
	var out [][]byte
	for _, cmd := range cmds {
		line, err := c.Cmd(cmd)
		if err != nil {
			t.Fatalf("%s at %s: %v", cmd, addr, err)
		}
		reply := []byte(line + "\r\n")
		if strings.HasPrefix(line, "+OK") && isMultiLine(cmd) {
			body, err := c.RawMulti()
			if err != nil {
				t.Fatalf("%s at %s: %v", cmd, addr, err)
			}
			reply = append(append(reply, body...), ".\r\n"...)
		}
		out = append(out, reply)
	}
	c.Quit()
	return out
}

func isMultiLine(cmd string) bool {
	f := strings.Fields(cmd)
	switch strings.ToUpper(f[0]) {
	case "RETR", "TOP", "CAPA":
		return true
	case "LIST", "UIDL":
		return len(f) == 1
	}
	return false
}

// firstDifference describes where two replies part.
func firstDifference(a, b []byte) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	from := max(0, i-40)
	return fmt.Sprintf("at octet %d of %d/%d: dovecot %q, gateway %q", i, len(a), len(b),
		a[from:min(len(a), i+40)], b[from:min(len(b), i+40)])
}

func firstLine(reply []byte) string {
	line, _, _ := strings.Cut(string(reply), "\r\n")
	return line
}

var uidlShape = regexp.MustCompile(`^[\x21-\x7e]{1,70}$`)

// TestMatchesDovecotPOP3 serves one maildir through Dovecot's own POP3
// server and through the gateway in front of Dovecot's IMAP server, and
// requires the replies to STAT, LIST, RETR, TOP and UIDL to be identical,
// TOP both before the message is read and after.
func TestMatchesDovecotPOP3(t *testing.T) {
	dc := dovecottest.Start(t, map[string]string{"ref": "ref-pass"})
	corpus := trickyCorpus()
	var raws [][]byte
	for _, m := range corpus {
		raws = append(raws, []byte(m.raw))
	}
	dc.Deliver(t, "ref", raws...)
	gw := startGateway(t, dc.IMAPAddr(), upstream.DeleteKeep)

	cmds := []string{"STAT", "LIST", "UIDL"}
	// TOP before RETR: the gateway answers from a prefix of the message.
	for i := range corpus {
		n := i + 1
		cmds = append(cmds, fmt.Sprintf("TOP %d 0", n), fmt.Sprintf("TOP %d 2", n), fmt.Sprintf("TOP %d 2000", n))
	}
	for i := range corpus {
		n := i + 1
		cmds = append(cmds,
			fmt.Sprintf("LIST %d", n),
			fmt.Sprintf("UIDL %d", n),
			fmt.Sprintf("RETR %d", n),
			fmt.Sprintf("TOP %d 0", n),
			fmt.Sprintf("TOP %d 1", n),
			fmt.Sprintf("TOP %d 3", n),
			fmt.Sprintf("RETR %d", n), // served from the cache this time
		)
	}
	cmds = append(cmds, "STAT", "LIST")

	want := transcript(t, dc.POP3Addr(), "ref", "ref-pass", cmds)
	got := transcript(t, gw, "ref", "ref-pass", cmds)

	// A message without a final line break is sent with a CRLF that ends
	// its last line, which neither server counts in its sizes (RFC 1939
	// §11): the listings agree before and after every RETR.
	same := 0
	for i, cmd := range cmds {
		if bytes.Equal(want[i], got[i]) {
			same++
			continue
		}
		name := ""
		var n int
		if _, err := fmt.Sscanf(strings.Fields(cmd + " 0")[1], "%d", &n); err == nil && n >= 1 && n <= len(corpus) {
			name = corpus[n-1].name
		}
		t.Errorf("%s (%s) differs %s", cmd, name, firstDifference(want[i], got[i]))
	}
	t.Logf("%d of %d replies identical to Dovecot's pop3d byte for byte", same, len(cmds))

	// The gateway's promise: "+OK n octets" is what RETR then sends, but
	// for the CRLF that ends a last line left open.
	for i, cmd := range cmds {
		if strings.HasPrefix(cmd, "RETR") {
			var size, n int
			line := firstLine(got[i])
			fmt.Sscanf(line, "+OK %d octets", &size)
			fmt.Sscanf(cmd, "RETR %d", &n)
			body := pop3client.Unstuff(got[i][len(line)+2 : len(got[i])-3])
			if !strings.HasSuffix(corpus[n-1].raw, "\n") {
				body = bytes.TrimSuffix(body, []byte("\r\n"))
			}
			if size != len(body) {
				t.Errorf("%s: gateway announced %d octets and sent %d", cmd, size, len(body))
			}
		}
	}

	// UIDL: RFC 1939 §7 shape, unique.
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSuffix(string(got[2]), ".\r\n"), "\r\n")[1:] {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || !uidlShape.MatchString(f[1]) || seen[f[1]] {
			t.Errorf("UIDL line %q: not a unique id of 1-70 printable characters", line)
		}
		seen[f[1]] = true
	}
}

// TestDeleteToDovecotTrash: with on_delete trash, QUIT moves the deleted
// messages to the mailbox Dovecot marks \Trash (RFC 6154), found without
// configuration.
func TestDeleteToDovecotTrash(t *testing.T) {
	dc := dovecottest.Start(t, map[string]string{"tina": "tina-pass"})
	dc.Deliver(t, "tina", []byte("Subject: a\n\nkeep\n"), []byte("Subject: b\n\ntrash me\n"), []byte("Subject: c\n\nkeep too\n"))
	gw := startGateway(t, dc.IMAPAddr(), upstream.DeleteTrash)

	c, err := pop3client.Dial(gw)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("tina", "tina-pass"); err != nil {
		t.Fatal(err)
	}
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	sess, err := upstream.Dial(ctx, &upstream.Server{Address: dc.IMAPAddr(), Security: upstream.SecurityNone})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.Login(ctx, "tina", "tina-pass"); err != nil {
		t.Fatal(err)
	}
	for mailbox, want := range map[string]int{"INBOX": 2, "Trash": 1} {
		mb, err := sess.Select(ctx, mailbox)
		if err != nil {
			t.Fatal(err)
		}
		if mb.Messages != want {
			t.Errorf("%s holds %d messages, want %d", mailbox, mb.Messages, want)
		}
	}
	// The loop above selects the mailboxes in random order.
	if _, err := sess.Select(ctx, "Trash"); err != nil {
		t.Fatal(err)
	}
	r, err := sess.Fetch(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r)
	r.Close()
	if !bytes.Contains(body, []byte("trash me")) {
		t.Errorf("Trash holds %q", body)
	}
}

// TestLargeMessageStreams: a message over the cache ceiling passes through
// without being held whole in memory.
func TestLargeMessageStreams(t *testing.T) {
	dc := dovecottest.Start(t, map[string]string{"big": "big-pass"})
	line := strings.Repeat("0123456789", 7) + "\n"
	msg := "Subject: big\n\n" + strings.Repeat(line, (24<<20)/len(line))
	dc.Deliver(t, "big", []byte(msg))
	gw := startGateway(t, dc.IMAPAddr(), upstream.DeleteKeep) // cache ceiling 4 MiB

	c, err := pop3client.Dial(gw)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if err := c.Login("big", "big-pass"); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	reply, err := c.OK("RETR 1")
	if err != nil {
		t.Fatal(err)
	}
	// Count the octets without keeping them.
	n, err := c.DiscardMulti()
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	want := int64(len(msg) + strings.Count(msg, "\n"))
	if reply != fmt.Sprintf("+OK %d octets", want) || n != want {
		t.Fatalf("RETR: %q and %d octets, want %d", reply, n, want)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Fatalf("streaming %d octets allocated %d bytes", n, alloc)
	} else {
		t.Logf("streamed %d octets with %d bytes allocated", n, alloc)
	}
}
