package upstream_test

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/upstream"
)

// rev1Only advertises IMAP4rev1 without UIDPLUS and MOVE.
var rev1Only = imap.CapSet{imap.CapIMAP4rev1: {}}

// loggedInCaps returns what the server advertises after login.
func loggedInCaps(t *testing.T, addr string) imap.CapSet {
	t.Helper()
	c := client(t, addr, "INBOX")
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	return caps
}

func TestServerCaps(t *testing.T) {
	full := startMem(t, nil)
	caps := loggedInCaps(t, full.Addr())
	for _, c := range []imap.Cap{imap.CapUIDPlus, imap.CapMove} {
		if !caps.Has(c) {
			t.Errorf("default imapmem lacks %s", c)
		}
	}
	old := startMem(t, &imapmem.Options{Caps: rev1Only})
	caps = loggedInCaps(t, old.Addr())
	for _, c := range []imap.Cap{imap.CapUIDPlus, imap.CapMove, imap.CapIMAP4rev2} {
		if caps.Has(c) {
			t.Errorf("IMAP4rev1-only imapmem advertises %s: %v", c, caps)
		}
	}
}

// captureLog sends the default slog logger's output to a buffer for the
// rest of the test.
func captureLog(t *testing.T) *testenv.Buffer {
	t.Helper()
	var buf testenv.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return &buf
}

const leftFlaggedWarning = "leaving ours flagged"

// deleteSetup starts a server with five messages in INBOX, where another
// client flagged otherDeleted \Deleted (none if 0), and a session on it.
func deleteSetup(t *testing.T, caps imap.CapSet, otherDeleted uint32) (*imapmem.Server, *upstream.Session) {
	t.Helper()
	mem := startMem(t, &imapmem.Options{Caps: caps}, messages(5)...)
	s := open(t, plain(mem.Addr()))
	if otherDeleted != 0 {
		flagDeleted(t, mem.Addr(), otherDeleted)
	}
	return mem, s
}

func TestDeleteFullCaps(t *testing.T) {
	t.Run("expunge", func(t *testing.T) {
		mem, s := deleteSetup(t, nil, 5)
		if err := s.Delete(testCtx(t), []uint32{2, 3}, upstream.DeleteExpunge, ""); err != nil {
			t.Fatal(err)
		}
		// UID EXPUNGE leaves the other client's \Deleted message alone.
		checkState(t, mem.Addr(), "INBOX", "1:", "4:", "5:\\Deleted")
	})
	t.Run("trash", func(t *testing.T) {
		mem, s := deleteSetup(t, nil, 5)
		if err := s.Delete(testCtx(t), []uint32{1, 4}, upstream.DeleteTrash, "Trash"); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "2:", "3:", "5:\\Deleted")
		checkState(t, mem.Addr(), "Trash", "1:", "2:")
		checkTrashCopies(t, mem.Addr(), 1, 4)
	})
	t.Run("trash not configured", func(t *testing.T) {
		mem, s := deleteSetup(t, nil, 0)
		err := s.Delete(testCtx(t), []uint32{1}, upstream.DeleteTrash, "")
		if !errors.Is(err, upstream.ErrNoTrash) {
			t.Fatalf("got %v, want ErrNoTrash", err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "2:", "3:", "4:", "5:")
		// The session is still usable.
		if err := s.Delete(testCtx(t), []uint32{1}, upstream.DeleteExpunge, ""); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("trash missing", func(t *testing.T) {
		// The configured trash is created at the first delete, instead
		// of every QUIT failing with NO [TRYCREATE].
		mem, s := deleteSetup(t, nil, 0)
		if err := s.Delete(testCtx(t), []uint32{1, 3}, upstream.DeleteTrash, "Bin"); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "2:", "4:", "5:")
		checkState(t, mem.Addr(), "Bin", "1:", "2:")
		if err := s.Delete(testCtx(t), []uint32{2}, upstream.DeleteTrash, "Bin"); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "Bin", "1:", "2:", "3:")
	})
	t.Run("seen", func(t *testing.T) {
		mem, s := deleteSetup(t, nil, 0)
		if err := s.Delete(testCtx(t), []uint32{2, 5}, upstream.DeleteSeen, ""); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "2:\\Seen", "3:", "4:", "5:\\Seen")
	})
	t.Run("keep", func(t *testing.T) {
		mem, s := deleteSetup(t, nil, 0)
		if err := s.Delete(testCtx(t), []uint32{1, 2, 3}, upstream.DeleteKeep, ""); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "2:", "3:", "4:", "5:")
		checkState(t, mem.Addr(), "Trash")
	})
	t.Run("no UIDs", func(t *testing.T) {
		mem, s := deleteSetup(t, nil, 0)
		for _, mode := range []upstream.DeleteMode{upstream.DeleteExpunge, upstream.DeleteTrash, upstream.DeleteSeen} {
			if err := s.Delete(testCtx(t), nil, mode, ""); err != nil {
				t.Errorf("%s of nothing: %v", mode, err)
			}
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "2:", "3:", "4:", "5:")
	})
	t.Run("unknown mode", func(t *testing.T) {
		mem, s := deleteSetup(t, nil, 0)
		if err := s.Delete(testCtx(t), []uint32{1}, "shred", ""); err == nil {
			t.Error("unknown mode accepted")
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "2:", "3:", "4:", "5:")
	})
}

// Without UIDPLUS a plain EXPUNGE removes every \Deleted message, so it is
// sent only when no other message carries the flag.
func TestDeleteWithoutUIDPlusAndMove(t *testing.T) {
	t.Run("expunge", func(t *testing.T) {
		mem, s := deleteSetup(t, rev1Only, 0)
		log := captureLog(t)
		if err := s.Delete(testCtx(t), []uint32{2, 3}, upstream.DeleteExpunge, ""); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "4:", "5:")
		if strings.Contains(log.String(), leftFlaggedWarning) {
			t.Errorf("unexpected warning: %s", log)
		}
	})
	t.Run("expunge with another deleted message", func(t *testing.T) {
		mem, s := deleteSetup(t, rev1Only, 5)
		log := captureLog(t)
		if err := s.Delete(testCtx(t), []uint32{2, 3}, upstream.DeleteExpunge, ""); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "2:\\Deleted", "3:\\Deleted", "4:", "5:\\Deleted")
		if !strings.Contains(log.String(), leftFlaggedWarning) {
			t.Errorf("no warning logged; log: %q", log)
		}
	})
	t.Run("trash", func(t *testing.T) {
		mem, s := deleteSetup(t, rev1Only, 0)
		if err := s.Delete(testCtx(t), []uint32{1, 4}, upstream.DeleteTrash, "Trash"); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "2:", "3:", "5:")
		checkState(t, mem.Addr(), "Trash", "1:", "2:")
		checkTrashCopies(t, mem.Addr(), 1, 4)
	})
	t.Run("trash with another deleted message", func(t *testing.T) {
		mem, s := deleteSetup(t, rev1Only, 5)
		captureLog(t)
		if err := s.Delete(testCtx(t), []uint32{1, 4}, upstream.DeleteTrash, "Trash"); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:\\Deleted", "2:", "3:", "4:\\Deleted", "5:\\Deleted")
		checkState(t, mem.Addr(), "Trash", "1:", "2:")
	})
	t.Run("trash missing", func(t *testing.T) {
		mem, s := deleteSetup(t, rev1Only, 0)
		if err := s.Delete(testCtx(t), []uint32{2, 5}, upstream.DeleteTrash, "Bin"); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "3:", "4:")
		checkState(t, mem.Addr(), "Bin", "1:", "2:")
	})
	t.Run("trash not configured", func(t *testing.T) {
		mem, s := deleteSetup(t, rev1Only, 0)
		if err := s.Delete(testCtx(t), []uint32{1}, upstream.DeleteTrash, ""); !errors.Is(err, upstream.ErrNoTrash) {
			t.Fatalf("got %v, want ErrNoTrash", err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "2:", "3:", "4:", "5:")
	})
	t.Run("seen", func(t *testing.T) {
		mem, s := deleteSetup(t, rev1Only, 0)
		if err := s.Delete(testCtx(t), []uint32{3}, upstream.DeleteSeen, ""); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "2:", "3:\\Seen", "4:", "5:")
	})
	t.Run("our earlier leftovers", func(t *testing.T) {
		// Messages this session left flagged earlier do not count as
		// another client's once they are part of the request again.
		mem, s := deleteSetup(t, rev1Only, 5)
		captureLog(t)
		if err := s.Delete(testCtx(t), []uint32{2}, upstream.DeleteExpunge, ""); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(testCtx(t), []uint32{2, 5}, upstream.DeleteExpunge, ""); err != nil {
			t.Fatal(err)
		}
		checkState(t, mem.Addr(), "INBOX", "1:", "3:", "4:")
	})
}

// checkTrashCopies verifies that Trash holds the messages numbered nums,
// in order.
func checkTrashCopies(t *testing.T, addr string, nums ...int) {
	t.Helper()
	c := client(t, addr, "Trash")
	var all imap.SeqSet
	all.AddRange(1, 0)
	bufs, err := c.Fetch(all, &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(bufs) != len(nums) {
		t.Fatalf("Trash holds %d messages, want %d", len(bufs), len(nums))
	}
	for i, b := range bufs {
		if got, want := string(body(b)), string(message(nums[i])); got != want {
			t.Errorf("Trash message %d: %q, want %q", i+1, got, want)
		}
	}
}

func body(b *imapclient.FetchMessageBuffer) []byte {
	for _, s := range b.BodySection {
		return s.Bytes
	}
	return nil
}

// A trash that is the served mailbox would take each deleted message back
// under a new UID, to be downloaded again at the next poll: nothing moves.
func TestDeleteIntoServedMailbox(t *testing.T) {
	for _, tt := range []struct {
		name string
		caps imap.CapSet
	}{{"full caps", nil}, {"IMAP4rev1 only", rev1Only}} {
		t.Run(tt.name, func(t *testing.T) {
			mem := startMem(t, &imapmem.Options{Caps: tt.caps})
			if err := mem.Append(user, "Trash", messages(3)...); err != nil {
				t.Fatal(err)
			}
			s := dial(t, plain(mem.Addr()))
			ctx := testCtx(t)
			if err := s.Login(ctx, user, password); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Select(ctx, "Trash"); err != nil {
				t.Fatal(err)
			}
			err := s.Delete(ctx, []uint32{1, 2}, upstream.DeleteTrash, "Trash")
			if !errors.Is(err, upstream.ErrTrashIsServed) {
				t.Fatalf("got %v, want ErrTrashIsServed", err)
			}
			checkState(t, mem.Addr(), "Trash", "1:", "2:", "3:")
			tr, err := s.FindTrash(ctx, "Trash")
			if err != nil || !tr.Served || tr.Mailbox != "Trash" {
				t.Errorf("FindTrash = %+v, %v; want Trash, served", tr, err)
			}
		})
	}
}

// scriptedServer plays an IMAP server from a script: each command line,
// without its tag, gets the untagged lines and the tagged status (OK when
// empty) that answer returns. It records the commands it got.
func scriptedServer(t *testing.T, answer func(cmd string) (untagged []string, status string)) (addr string, commands func() []string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "* OK [CAPABILITY IMAP4rev1] scripted\r\n")
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			mu.Lock()
			got = append(got, cmd)
			mu.Unlock()
			untagged, status := answer(cmd)
			for _, l := range untagged {
				fmt.Fprintf(c, "%s\r\n", l)
			}
			if status == "" {
				status = "OK done"
			}
			fmt.Fprintf(c, "%s %s\r\n", tag, status)
			if strings.HasPrefix(cmd, "LOGOUT") {
				return
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String(), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// A server that offers CREATE-SPECIAL-USE gets the missing trash created
// marked \Trash (RFC 6154 §3), or plain where it refuses the mark
// (USEATTR, §5.3), and the move is tried once more.
func TestDeleteCreatesTrashMarked(t *testing.T) {
	for _, tt := range []struct {
		name      string
		useStatus string
		want      []string
	}{
		{"marked", "", []string{`LIST "" "*" RETURN (SPECIAL-USE)`, `UID MOVE 1:2 "Bin"`, `CREATE "Bin" (USE (\Trash))`, `UID MOVE 1:2 "Bin"`}},
		{"mark refused", "NO [USEATTR] \\Trash is taken", []string{`LIST "" "*" RETURN (SPECIAL-USE)`, `UID MOVE 1:2 "Bin"`,
			`CREATE "Bin" (USE (\Trash))`, `CREATE "Bin"`, `UID MOVE 1:2 "Bin"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			moves := 0
			addr, commands := scriptedServer(t, func(cmd string) ([]string, string) {
				switch verb, _, _ := strings.Cut(cmd, " "); verb {
				case "CAPABILITY":
					return []string{"* CAPABILITY IMAP4rev1 UIDPLUS MOVE SPECIAL-USE CREATE-SPECIAL-USE"}, ""
				case "SELECT":
					return []string{"* 3 EXISTS", "* OK [UIDVALIDITY 7] ok", "* OK [UIDNEXT 4] ok"}, "OK [READ-WRITE] done"
				case "LIST":
					return []string{`* LIST (\HasNoChildren) "/" INBOX`, `* LIST (\HasNoChildren \Junk) "/" Spam`}, ""
				case "CREATE":
					if strings.Contains(cmd, "USE") {
						return nil, tt.useStatus
					}
				case "UID":
					moves++
					if moves == 1 {
						return nil, "NO [TRYCREATE] Mailbox does not exist"
					}
					return []string{"* 1 EXPUNGE", "* 1 EXPUNGE"}, ""
				}
				return nil, ""
			})
			s := open(t, plain(addr))
			if err := s.Delete(testCtx(t), []uint32{1, 2}, upstream.DeleteTrash, "Bin"); err != nil {
				t.Fatal(err)
			}
			var after []string
			for _, c := range commands() {
				if verb, _, _ := strings.Cut(c, " "); verb != "LOGIN" && verb != "SELECT" && verb != "CAPABILITY" {
					after = append(after, c)
				}
			}
			if !slices.Equal(after, tt.want) {
				t.Fatalf("commands %q,\nwant %q", after, tt.want)
			}
		})
	}
}
