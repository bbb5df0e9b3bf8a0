package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/dovecot"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/upstream"
)

// dovecotSession logs in to a Dovecot instance as alice and selects
// mailbox.
func dovecotSession(t *testing.T, dc *dovecottest.Server, mailbox string) *upstream.Session {
	t.Helper()
	s := dial(t, plain(dc.IMAPAddr()))
	ctx := testCtx(t)
	if err := s.Login(ctx, user, password); err != nil {
		t.Fatalf("Login: %v\n%s", err, dc.LogTail())
	}
	if _, err := s.Select(ctx, mailbox); err != nil {
		t.Fatalf("Select %s: %v\n%s", mailbox, err, dc.LogTail())
	}
	return s
}

// Dovecot marks its Trash \Trash: serving that mailbox with on_delete trash
// must move nothing, even with no trash_mailbox configured.
func TestDovecotDeleteIntoServedTrash(t *testing.T) {
	dc := dovecottest.Start(t, map[string]string{user: password})
	inbox := dovecotSession(t, dc, "INBOX")
	ctx := testCtx(t)
	tr, err := inbox.FindTrash(ctx, "")
	if err != nil || tr.Mailbox != "Trash" || !tr.Marked || tr.Served {
		t.Fatalf("FindTrash from INBOX = %+v, %v; want Trash, marked, not served", tr, err)
	}

	c := client(t, dc.IMAPAddr(), "Trash")
	for i := 1; i <= 3; i++ {
		cmd := c.Append("Trash", int64(len(message(i))), nil)
		cmd.Write(message(i))
		if err := cmd.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	s := dovecotSession(t, dc, "Trash")
	for _, configured := range []string{"", "Trash", "Bin"} {
		err := s.Delete(ctx, []uint32{1, 2}, upstream.DeleteTrash, configured)
		if !errors.Is(err, upstream.ErrTrashIsServed) {
			t.Errorf("trash_mailbox %q: got %v, want ErrTrashIsServed", configured, err)
		}
	}
	checkState(t, dc.IMAPAddr(), "Trash", "1:", "2:", "3:")
}

// Without a \Trash mailbox, the configured trash is created at the first
// delete instead of every QUIT failing with NO [TRYCREATE].
func TestDovecotDeleteCreatesTrash(t *testing.T) {
	dc := dovecottest.StartWith(t, dovecot.Options{Users: map[string]string{user: password}, NoTrash: true})
	dc.Deliver(t, user, messages(4)...)
	s := dovecotSession(t, dc, "INBOX")
	ctx := testCtx(t)
	tr, err := s.FindTrash(ctx, "Deleted Messages")
	if err != nil || tr != (upstream.Trash{Mailbox: "Deleted Messages"}) {
		t.Fatalf("FindTrash = %+v, %v; want the configured, missing mailbox", tr, err)
	}
	if err := s.Delete(ctx, []uint32{1, 3}, upstream.DeleteTrash, "Deleted Messages"); err != nil {
		t.Fatalf("Delete: %v\n%s", err, dc.LogTail())
	}
	checkState(t, dc.IMAPAddr(), "INBOX", "2:", "4:")
	checkUIDs(t, dc.IMAPAddr(), "Deleted Messages", 1, 2)
	if err := s.Delete(ctx, []uint32{4}, upstream.DeleteTrash, "Deleted Messages"); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	checkState(t, dc.IMAPAddr(), "INBOX", "2:")
	checkUIDs(t, dc.IMAPAddr(), "Deleted Messages", 1, 2, 3)
}

// Deleting every other message of 6,000 makes a UID set of about 15,000
// octets. Dovecot here accepts command lines of 8 KiB at most, the length
// RFC 7162 §4 asks clients to stay near: the deletes must be sent in
// pieces, and all of them applied.
func TestDovecotScatteredDeletes(t *testing.T) {
	if testing.Short() {
		t.Skip("delivers 12,000 messages")
	}
	const n = 6000
	users := map[string]string{user: password, "bob": password}
	dc := dovecottest.StartWith(t, dovecot.Options{Users: users, IMAPMaxLineLength: 8192})
	for _, mode := range []upstream.DeleteMode{upstream.DeleteExpunge, upstream.DeleteTrash} {
		t.Run(string(mode), func(t *testing.T) {
			who := user
			if mode == upstream.DeleteTrash {
				who = "bob"
			}
			msgs := make([][]byte, n)
			for i := range msgs {
				msgs[i] = fmt.Appendf(nil, "Subject: %d\r\n\r\nbody %d\r\n", i+1, i+1)
			}
			dc.Deliver(t, who, msgs...)
			srv := plain(dc.IMAPAddr())
			srv.Timeout = time.Minute
			s := dial(t, srv)
			// Dovecot renames or removes 3,000 files: longer than testCtx.
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			if err := s.Login(ctx, who, password); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Select(ctx, "INBOX"); err != nil {
				t.Fatal(err)
			}
			entries, err := s.Snapshot(ctx)
			if err != nil || len(entries) != n {
				t.Fatalf("Snapshot: %d entries, %v", len(entries), err)
			}
			var uids []uint32
			for i, e := range entries {
				if i%2 == 1 {
					uids = append(uids, uidOf(e.ID))
				}
			}
			if err := s.Delete(ctx, uids, mode, ""); err != nil {
				t.Fatalf("Delete: %v\n%s", err, dc.LogTail())
			}
			if got := dc.Count(t, who); got != n/2 {
				t.Fatalf("%d messages left, want %d", got, n/2)
			}
			for i, m := range dc.Messages(t, who) {
				if want := fmt.Appendf(nil, "Subject: %d\r\n", 2*i+1); !slices.Equal(m[:len(want)], want) {
					t.Fatalf("message %d left is %q, want %q", i+1, m[:len(want)], want)
				}
			}
		})
	}
}

// checkUIDs checks the UIDs of a mailbox, ignoring flags: Dovecot marks
// messages that arrive in a mailbox no session has open \Recent.
func checkUIDs(t *testing.T, addr, mailbox string, want ...int) {
	t.Helper()
	var got []int
	for _, st := range state(t, addr, mailbox) {
		var uid int
		fmt.Sscanf(st, "%d:", &uid)
		got = append(got, uid)
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s holds UIDs %v, want %v", mailbox, got, want)
	}
}
