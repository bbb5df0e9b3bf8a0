package export

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

const (
	user = "exporter"
	pass = "secret"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// tricky are messages a careless export gets wrong.
func tricky() [][]byte {
	attachment := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("0123456789abcdef"), 1<<15)) // 512 KiB
	var wrapped strings.Builder
	for len(attachment) > 76 {
		wrapped.WriteString(attachment[:76] + "\n")
		attachment = attachment[76:]
	}
	wrapped.WriteString(attachment + "\n")
	hdr := func(subject string) string {
		return "From: sender@example.com\nTo: rcpt@example.com\nSubject: " + subject + "\nMessage-ID: <" + subject + "@example.com>\nDate: Mon, 2 Nov 2026 09:00:00 +0000\n"
	}
	msgs := []string{
		hdr("no final newline") + "\nlast line without newline",
		hdr("bare LF") + "\nline1\nline2\n",
		"Subject: crlf\r\nMessage-ID: <crlf@example.com>\r\n\r\nbody\r\n.\r\n",
		"Subject: mixed\r\nX: y\n\r\nline1\nline2\r\n",
		"From: =?UTF-8?Q?Ren=C3=A9e?= <r@example.com>\nSubject: Gr\xc3\xbc\xc3\x9fe \xe6\x9d\xb1\xe4\xba\xac / a:b\nX-Latin1: caf\xe9\n\nK\xf6rper \xc3\xa4\n",
		hdr("huge header") + "X-Long: " + strings.Repeat("h", 100<<10) + "\n\nbody\n",
		hdr("attachment") + "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nsee attached\n--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + wrapped.String() + "--b--\n",
		hdr("from lines") + "\nFrom the start\n>From quoted\n>>From twice\nFrom\n",
		hdr("=?UTF-8?B?w5xiZXIgYWxsZXM=?="),
	}
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i] = []byte(m)
	}
	return out
}

// corpus is the tricky messages and n-len(tricky) plain ones.
func corpus(n int) [][]byte {
	msgs := tricky()
	for i := len(msgs); i < n; i++ {
		msgs = append(msgs, fmt.Appendf(nil, "From: a@example.com\nSubject: message %d\nMessage-ID: <m%d@example.com>\n\nbody %d\n%s", i, i, i, strings.Repeat("line of text\n", i%50)))
	}
	return msgs
}

// mailbox is a private Dovecot with one user.
type mailbox struct {
	dc *dovecottest.Server
}

func startDovecot(t *testing.T, msgs [][]byte) *mailbox { return startDovecotB(t, msgs) }

func startDovecotB(t testing.TB, msgs [][]byte) *mailbox {
	t.Helper()
	dc := dovecottest.Start(t, map[string]string{user: pass})
	dc.Deliver(t, user, msgs...)
	return &mailbox{dc: dc}
}

func (m *mailbox) server() *upstream.Server {
	return &upstream.Server{Address: m.dc.IMAPAddr(), Security: upstream.SecurityNone, Timeout: 30 * time.Second}
}

// opener logs in to the Dovecot account, counting the sessions.
func (m *mailbox) opener(logins *int) Opener {
	return openerFor(m.server(), user, pass, logins)
}

// openerFor logs in to srv as name and selects the mailbox asked for,
// counting the sessions in logins unless it is nil.
func openerFor(srv *upstream.Server, name, password string, logins *int) Opener {
	return func(ctx context.Context, mailbox string) (proxy.Session, error) {
		if logins != nil {
			*logins++
		}
		s, err := upstream.Dial(ctx, srv)
		if err != nil {
			return nil, err
		}
		if err := s.Login(ctx, name, password); err != nil {
			s.Close()
			return nil, err
		}
		if _, err := s.Select(ctx, mailbox); err != nil {
			s.Close()
			return nil, err
		}
		return s, nil
	}
}

// served is what IMAP serves of a mailbox: BODY.PEEK[] of each message,
// with its flags, by UIDL.
type servedMessage struct {
	body  []byte
	flags []imap.Flag
	date  time.Time
}

func (m *mailbox) served(t *testing.T, name string) map[string]servedMessage {
	t.Helper()
	c := imapLogin(t, m.dc.IMAPAddr(), user, pass)
	defer c.Close()
	sel := imapSelect(t, c, name)
	out := make(map[string]servedMessage)
	if sel.NumMessages == 0 {
		return out
	}
	var all imap.SeqSet
	all.AddRange(1, 0)
	msgs, err := c.Fetch(all, &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range msgs {
		var body []byte
		for _, b := range msg.BodySection {
			body = b.Bytes
		}
		out[upstream.DovecotUIDL(sel.UIDValidity, uint32(msg.UID))] = servedMessage{body: body, flags: msg.Flags, date: msg.InternalDate}
	}
	return out
}

// setFlags stores flags on the messages of INBOX with the given UIDs.
func (m *mailbox) setFlags(t *testing.T, flags []imap.Flag, uids ...imap.UID) {
	t.Helper()
	c := imapLogin(t, m.dc.IMAPAddr(), user, pass)
	defer c.Close()
	imapSelect(t, c, "INBOX")
	if err := c.Store(imap.UIDSetNum(uids...), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: flags}, nil).Close(); err != nil {
		t.Fatal(err)
	}
}

func (m *mailbox) createFolder(t *testing.T, name string, msgs ...[]byte) {
	t.Helper()
	c := imapLogin(t, m.dc.IMAPAddr(), user, pass)
	defer c.Close()
	if err := c.Create(name, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	for _, msg := range msgs {
		cmd := c.Append(name, int64(len(msg)), nil)
		cmd.Write(msg)
		cmd.Close()
		if _, err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
}

// rebuild makes Dovecot number the INBOX again under a new UIDVALIDITY,
// as after a restore: its uidlist and index files go.
func (m *mailbox) rebuild(t *testing.T) {
	t.Helper()
	before := m.uidValidity(t)
	for time.Now().Unix() <= int64(before) {
		time.Sleep(50 * time.Millisecond)
	}
	dir := m.dc.Maildir(user)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "dovecot") {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	if after := m.uidValidity(t); after == before {
		t.Fatalf("UIDVALIDITY still %d after removing Dovecot's index files", before)
	}
}

func (m *mailbox) uidValidity(t *testing.T) uint32 {
	t.Helper()
	c := imapLogin(t, m.dc.IMAPAddr(), user, pass)
	defer c.Close()
	return imapSelect(t, c, "INBOX").UIDValidity
}

func run(t *testing.T, opts Options) *Summary {
	t.Helper()
	sum, err := Run(testCtx(t), opts)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(sum.Failures) > 0 {
		t.Fatalf("Run: failures %v", sum.Failures)
	}
	return sum
}

// lf is the message as Maildir and mbox store it.
func lf(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }

// uidlOf is the UIDL at the end of an exported file's name.
func uidlOf(name string) string {
	name = strings.TrimSuffix(name, ".eml")
	if i := strings.LastIndexByte(name, '_'); i >= 0 {
		return name[i+1:]
	}
	return ""
}

// readEML reads an eml folder: UIDL -> content.
func readEML(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string][]byte)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".eml") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[uidlOf(e.Name())] = b
	}
	return out
}

// readMaildir reads a Maildir folder's cur/: UIDL -> content, flags.
func readMaildir(t *testing.T, dir string) (map[string][]byte, map[string]string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "cur"))
	if err != nil {
		t.Fatal(err)
	}
	out, flags := make(map[string][]byte), make(map[string]string)
	for _, e := range ents {
		base, info, _ := strings.Cut(e.Name(), ":2,")
		_, rest, _ := strings.Cut(base, ".U")
		uidl, _, _ := strings.Cut(rest, ".")
		b, err := os.ReadFile(filepath.Join(dir, "cur", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[uidl] = b
		flags[uidl] = info
	}
	return out, flags
}

// readMBox splits an mboxrd file into its messages, unquoting ">From "
// lines and dropping the blank line that ends each message.
func readMBox(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var msgs [][]byte
	var cur []byte
	lines := bytes.SplitAfter(data, []byte("\n"))
	for i, line := range lines {
		if bytes.HasPrefix(line, []byte("From ")) && (i == 0 || string(lines[i-1]) == "\n") {
			if i > 0 {
				msgs = append(msgs, bytes.TrimSuffix(cur, []byte("\n")))
			}
			cur = []byte{}
			continue
		}
		if isFromLine(line) && line[0] == '>' {
			line = line[1:]
		}
		cur = append(cur, line...)
	}
	if cur != nil {
		msgs = append(msgs, bytes.TrimSuffix(cur, []byte("\n")))
	}
	return msgs
}

// mboxForm is a message as it reads back from an mbox: LF lines, and a
// final newline added where there was none.
func mboxForm(b []byte) []byte {
	b = lf(b)
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return b
}

func TestExportFormatsMatchIMAP(t *testing.T) {
	const n = 2000
	mb := startDovecot(t, corpus(n))
	mb.setFlags(t, []imap.Flag{imap.FlagSeen}, 1, 2, 3)
	mb.setFlags(t, []imap.Flag{imap.FlagAnswered, imap.FlagFlagged}, 2)
	mb.setFlags(t, []imap.Flag{imap.FlagDraft}, 4)
	want := mb.served(t, "INBOX")
	if len(want) != n {
		t.Fatalf("IMAP serves %d messages, want %d", len(want), n)
	}
	for _, format := range Formats {
		t.Run(string(format), func(t *testing.T) {
			dir := t.TempDir()
			sum := run(t, Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: dir, Format: format, Verify: true})
			if sum.Exported != n || sum.Verified != n {
				t.Errorf("exported %d, verified %d; want %d", sum.Exported, sum.Verified, n)
			}
			// Each message once for the export and once for -verify.
			if sum.Fetched != 2*n {
				t.Errorf("fetched %d bodies, want %d", sum.Fetched, 2*n)
			}
			switch format {
			case EML:
				got := readEML(t, filepath.Join(dir, "INBOX"))
				compare(t, got, want, func(b []byte) []byte { return b })
			case Maildir:
				got, flags := readMaildir(t, dir)
				compare(t, got, want, lf)
				for uidl, sm := range want {
					if f := flags[uidl]; f != maildirFlags(sm.flags) {
						t.Errorf("%s: Maildir flags %q, want %q for %v", uidl, f, maildirFlags(sm.flags), sm.flags)
					}
				}
			case MBox:
				got := readMBox(t, filepath.Join(dir, "INBOX.mbox"))
				if len(got) != n {
					t.Fatalf("mbox holds %d messages, want %d", len(got), n)
				}
				// The mbox is in UID order, as the UIDLs sort.
				uidls := make([]string, 0, n)
				for u := range want {
					uidls = append(uidls, u)
				}
				slices.Sort(uidls)
				for i, u := range uidls {
					if w := mboxForm(want[u].body); !bytes.Equal(got[i], w) {
						t.Fatalf("mbox message %d (%s) differs:\n got %q\nwant %q", i, u, head(got[i]), head(w))
					}
				}
			}
		})
	}
}

func maildirFlags(flags []imap.Flag) string {
	var s []byte
	for _, f := range flags {
		switch f {
		case imap.FlagDraft:
			s = append(s, 'D')
		case imap.FlagFlagged:
			s = append(s, 'F')
		case imap.FlagAnswered:
			s = append(s, 'R')
		case imap.FlagSeen:
			s = append(s, 'S')
		}
	}
	slices.Sort(s)
	return string(s)
}

func head(b []byte) []byte { return b[:min(len(b), 200)] }

func compare(t *testing.T, got map[string][]byte, want map[string]servedMessage, form func([]byte) []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d files, want %d", len(got), len(want))
	}
	bad := 0
	for uidl, sm := range want {
		g, ok := got[uidl]
		if w := form(sm.body); !ok || !bytes.Equal(g, w) {
			if bad++; bad < 5 {
				t.Errorf("%s: file (%v) differs from IMAP's BODY.PEEK[]:\n got %q\nwant %q", uidl, ok, head(g), head(w))
			}
		}
	}
}

func TestEMLNames(t *testing.T) {
	mb := startDovecot(t, tricky())
	dir := t.TempDir()
	run(t, Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: dir})
	ents, err := os.ReadDir(filepath.Join(dir, "INBOX"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	for _, want := range []string{"_no-final-newline_", "_Grüße-東京-a-b_", "_Über-alles_"} {
		if !slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, want) }) {
			t.Errorf("no name with %q among %q", want, names)
		}
	}
}

func TestIncrementalAndUIDValidityChange(t *testing.T) {
	mb := startDovecot(t, corpus(50))
	dir := t.TempDir()
	opts := Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: dir, Format: Maildir}
	if sum := run(t, opts); sum.Exported != 50 || sum.Fetched != 50 {
		t.Fatalf("first run: exported %d, fetched %d; want 50", sum.Exported, sum.Fetched)
	}
	mb.dc.Deliver(t, user, corpus(53)[50:]...)
	if sum := run(t, opts); sum.Exported != 3 || sum.Fetched != 3 || sum.Known != 50 {
		t.Fatalf("after 3 new messages: exported %d, fetched %d, known %d; want 3, 3, 50", sum.Exported, sum.Fetched, sum.Known)
	}
	mb.rebuild(t)
	if sum := run(t, opts); sum.Exported != 0 || sum.Fetched != 0 || sum.Known != 53 {
		t.Fatalf("after a UIDVALIDITY change: exported %d, fetched %d, known %d; want 0, 0, 53", sum.Exported, sum.Fetched, sum.Known)
	}
	got, _ := readMaildir(t, dir)
	if len(got) != 53 {
		t.Errorf("Maildir holds %d messages, want 53", len(got))
	}
}

func TestAllFolders(t *testing.T) {
	mb := startDovecot(t, corpus(5))
	mb.createFolder(t, "Work", corpus(3)[:2]...)
	// Dovecot's Maildir++ hierarchy delimiter is ".".
	mb.createFolder(t, "Work.Sub 2024", corpus(4)[1:]...)
	for _, format := range Formats {
		t.Run(string(format), func(t *testing.T) {
			dir := t.TempDir()
			sum := run(t, Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: dir, Format: format, All: true})
			// INBOX, Trash, Work, Work.Sub 2024
			if want := len(corpus(5)) + 2 + len(corpus(4)) - 1; sum.Folders != 4 || sum.Exported != want {
				t.Errorf("%d folders, %d messages; want 4, %d", sum.Folders, sum.Exported, want)
			}
			var paths []string
			switch format {
			case EML:
				paths = []string{"INBOX", "Trash", "Work", "Work/Sub 2024"}
			case Maildir:
				paths = []string{"cur", ".Trash/cur", ".Work/cur", ".Work.Sub 2024/cur", ".Work/maildirfolder"}
			case MBox:
				paths = []string{"INBOX.mbox", "Trash.mbox", "Work.mbox", "Work/Sub 2024.mbox"}
			}
			for _, p := range paths {
				if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func TestSince(t *testing.T) {
	msgs := corpus(12)
	mb := startDovecot(t, msgs)
	// Dovecot's INTERNALDATE of a Maildir message is its file's time.
	cur := filepath.Join(mb.dc.Maildir(user), "new")
	ents, _ := os.ReadDir(cur)
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, e := range ents[:4] {
		os.Chtimes(filepath.Join(cur, e.Name()), old, old)
	}
	sum := run(t, Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: t.TempDir(), Since: time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)})
	if sum.Exported != len(msgs)-4 || sum.Old != 4 {
		t.Errorf("exported %d, left out %d; want %d, 4", sum.Exported, sum.Old, len(msgs)-4)
	}
}

func TestUnknownMailbox(t *testing.T) {
	mb := startDovecot(t, corpus(2))
	_, err := Run(testCtx(t), Options{Open: mb.opener(nil), Mailbox: "INBOX", Folder: "Nope", Dir: t.TempDir()})
	if !errors.Is(err, ErrNoMailbox) || strings.Contains(err.Error(), "\n") {
		t.Errorf("Run = %v, want one line wrapping ErrNoMailbox", err)
	}
}

func TestUnwritableDir(t *testing.T) {
	mb := startDovecot(t, corpus(2))
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	_, err := Run(testCtx(t), Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: filepath.Join(file, "export")})
	if err == nil || !strings.Contains(err.Error(), "export directory") {
		t.Errorf("Run = %v, want an error about the export directory", err)
	}
}

// fullDisk fails every write once limit octets have gone through it, as a
// full file system does.
type fullDisk struct {
	left *int64
	w    io.Writer
}

func (d fullDisk) Write(p []byte) (int, error) {
	if int64(len(p)) > *d.left {
		n, _ := d.w.Write(p[:*d.left])
		*d.left = 0
		return n, &os.PathError{Op: "write", Path: "export", Err: syscall.ENOSPC}
	}
	*d.left -= int64(len(p))
	return d.w.Write(p)
}

func TestFullDiskLeavesWholeFiles(t *testing.T) {
	msgs := corpus(40)
	mb := startDovecot(t, msgs)
	for _, format := range Formats {
		t.Run(string(format), func(t *testing.T) {
			dir := t.TempDir()
			left := int64(600 << 10) // the attachment and a few more
			opts := Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: dir, Format: format}
			opts.wrapFile = func(w io.Writer) io.Writer { return fullDisk{left: &left, w: w} }
			sum, err := Run(testCtx(t), opts)
			if !IsDiskFull(err) || !errors.Is(err, ErrLocal) {
				t.Fatalf("Run = %v, want a full disk", err)
			}
			if sum.Exported == 0 || sum.Exported >= len(msgs) {
				t.Fatalf("exported %d before the disk was full", sum.Exported)
			}
			tmps, _ := filepath.Glob(filepath.Join(dir, "*", "export-*"))
			if len(tmps) > 0 {
				t.Errorf("temporary files left: %v", tmps)
			}
			// What is recorded is whole: the next run, with room, checks
			// it and writes the rest.
			opts.wrapFile = nil
			opts.Verify = true
			sum = run(t, opts)
			if sum.Exported+sum.Known != len(msgs) || sum.Verified != len(msgs) {
				t.Errorf("second run: exported %d, known %d, verified %d; want %d in all", sum.Exported, sum.Known, sum.Verified, len(msgs))
			}
		})
	}
}

// TestMaildirLostRecord: a message whose record was lost (a power loss
// between the rename and the record) is written again, and its earlier
// file goes even when its flags, and so its name, changed meanwhile.
func TestMaildirLostRecord(t *testing.T) {
	msgs := corpus(12)
	mb := startDovecot(t, msgs)
	dir := t.TempDir()
	opts := Options{Open: mb.opener(nil), Mailbox: "INBOX", Dir: dir, Format: Maildir}
	run(t, opts)
	state := filepath.Join(dir, stateName)
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	os.WriteFile(state, bytes.Join(lines[:len(lines)-2], nil), 0o600) // the last record gone
	// Every message is read meanwhile; only the one written again shows it.
	var all []imap.UID
	for uid := range len(msgs) {
		all = append(all, imap.UID(uid+1))
	}
	mb.setFlags(t, []imap.Flag{imap.FlagSeen}, all...)
	if sum := run(t, opts); sum.Exported != 1 {
		t.Errorf("exported %d, want the message whose record was lost", sum.Exported)
	}
	got, flags := readMaildir(t, dir)
	ents, _ := os.ReadDir(filepath.Join(dir, "cur"))
	if len(got) != len(msgs) || len(ents) != len(msgs) {
		t.Errorf("%d messages in %d files, want %d", len(got), len(ents), len(msgs))
	}
	n := 0
	for _, f := range flags {
		if f == "S" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d files flagged S, want 1: %v", n, flags)
	}
}

// imapLogin is an IMAP connection to addr, logged in.
func imapLogin(t *testing.T, addr, login, password string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(login, password).Wait(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c
}

// imapSelect selects mailbox on c.
func imapSelect(t *testing.T, c *imapclient.Client, mailbox string) *imap.SelectData {
	t.Helper()
	sel, err := c.Select(mailbox, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	return sel
}
