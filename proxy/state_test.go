package proxy

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

const alice = "alice@example.com"

func uidls(t *testing.T, c *pop3client.Client) []string {
	t.Helper()
	entries, err := c.UIDL()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Value)
	}
	return out
}

// session logs alice in, returns her UIDLs and quits.
func (e *env) uidls() []string {
	e.t.Helper()
	c := e.login("alice", localPassword)
	defer c.Quit()
	return uidls(e.t, c)
}

// A mailbox rebuilt under a new UIDVALIDITY (restored, migrated) keeps
// every message's UIDL: a client that leaves mail on the server downloads
// nothing again.
func TestUIDLSurvivesUIDValidityChange(t *testing.T) {
	e := newEnv(t, envOptions{})
	arrived := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	msgs := [][]byte{
		[]byte("Message-ID: <1@example.com>\r\nSubject: one\r\n\r\nx\r\n"),
		[]byte("Subject: no Message-ID\r\n\r\nx\r\n"),
		[]byte("Subject: no Message-ID\r\n\r\nx\r\n"), // the same again
		[]byte("Message-ID: <4@example.com>\r\nSubject: four\r\n\r\nx\r\n"),
	}
	if err := e.mem.AppendAt(alice, "INBOX", arrived, msgs...); err != nil {
		t.Fatal(err)
	}
	before := e.uidls()
	if len(before) != 4 || before[0] != uidl(1, 1) {
		t.Fatalf("UIDLs before = %v; want 4, the first %s as today", before, uidl(1, 1))
	}

	if err := e.mem.Recreate(alice, "INBOX"); err != nil {
		t.Fatal(err)
	}
	// Restored in another order, with one new message among them.
	fresh := []byte("Message-ID: <5@example.com>\r\nSubject: new\r\n\r\nx\r\n")
	if err := e.mem.AppendAt(alice, "INBOX", arrived, msgs[3], msgs[0], fresh, msgs[1], msgs[2]); err != nil {
		t.Fatal(err)
	}
	after := e.uidls()
	want := []string{before[3], before[0], after[2], before[1], before[2]}
	if !slices.Equal(after, want) {
		t.Fatalf("UIDLs after the UIDVALIDITY change = %v, want %v", after, want)
	}
	if slices.Contains(before, after[2]) || !strings.HasPrefix(after[2], "00000003") {
		t.Errorf("new message's UIDL %q: want the usual format for its UID 3, unique", after[2])
	}
}

// on_delete seen and keep leave the messages on the server, but a message
// the client deleted is never listed to that maildrop again, and QUIT
// says what happened.
func TestKeepModesHideDeletedMessages(t *testing.T) {
	for _, mode := range []upstream.DeleteMode{upstream.DeleteSeen, upstream.DeleteKeep} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t, envOptions{onDelete: mode})
			e.deliver(alice, corpus...)
			c := e.login("alice", localPassword)
			all := uidls(t, c)
			must[[]byte](t)(c.Retr(1))
			if err := c.Dele(1); err != nil {
				t.Fatal(err)
			}
			if err := c.Dele(3); err != nil {
				t.Fatal(err)
			}
			expectReply(t, c, "QUIT", "+OK Logging out, 2 messages hidden, kept on the server.")

			if got := e.uidls(); !slices.Equal(got, all[1:2]) {
				t.Fatalf("UIDLs after QUIT = %v, want %v", got, all[1:2])
			}
			if n := e.count(alice); n != 3 {
				t.Fatalf("%d messages upstream, want all 3 kept", n)
			}
		})
	}
}

// A server without UIDPLUS cannot expunge just our messages while another
// is flagged \Deleted; ours stay flagged, and must not be listed again
// after QUIT said they were deleted.
func TestFlaggedDeletedNotListed(t *testing.T) {
	e := newEnv(t, envOptions{caps: imap.CapSet{imap.CapIMAP4rev1: {}}})
	e.deliver(alice, corpus...)
	upstreamClient(t, e.mem.Addr()).Store(imap.UIDSetNum(3), &imap.StoreFlags{
		Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted},
	}, nil).Close()

	c := e.login("alice", localPassword)
	all := uidls(t, c)
	if len(all) != 2 {
		t.Fatalf("UIDLs %v: the message flagged \\Deleted is listed", all)
	}
	if err := c.Dele(1); err != nil {
		t.Fatal(err)
	}
	expectReply(t, c, "QUIT", "+OK Logging out, messages deleted.")
	if n := e.count(alice); n != 3 {
		t.Fatalf("%d messages upstream; the expunge should have been left for later", n)
	}
	if got := e.uidls(); !slices.Equal(got, all[1:]) {
		t.Fatalf("UIDLs after QUIT = %v, want %v", got, all[1:])
	}
}

// upstreamClient logs in to alice's mailbox as another mail program would.
func upstreamClient(t *testing.T, addr string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(alice, "upstream-"+alice).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	return c
}

// A QUIT whose upstream connection drops before the EXPUNGE (after the
// STORE \Deleted, or after the COPY to the trash of a server without
// MOVE) is finished by the next session before it lists: the messages are
// not served again, and never copied to the trash twice.
func TestInterruptedDeletesFinishedNextSession(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode upstream.DeleteMode
		caps imap.CapSet
	}{
		{"expunge", upstream.DeleteExpunge, nil},
		{"expunge without UIDPLUS", upstream.DeleteExpunge, imap.CapSet{imap.CapIMAP4rev1: {}}},
		{"trash without MOVE", upstream.DeleteTrash, imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{onDelete: tc.mode, caps: tc.caps})
			e.gw.SetPool(0, 0)
			e.deliver(alice, corpus...)

			c := e.login("alice", localPassword)
			all := uidls(t, c)
			if err := c.Dele(1); err != nil {
				t.Fatal(err)
			}
			e.proxy.cutAtCommand("EXPUNGE")
			if _, err := c.Cmd("QUIT"); err != nil {
				t.Fatal(err)
			}
			if !e.proxy.cutDone.Load() {
				t.Fatal("the upstream connection was not cut at EXPUNGE")
			}

			// Finishing them fails too: the login is refused for now.
			e.proxy.cutAtCommand("EXPUNGE")
			if err := e.dial().Login("alice", localPassword); err == nil || !strings.Contains(err.Error(), "[SYS/TEMP]") {
				t.Fatalf("login while the pending deletes cannot be finished: %v, want -ERR [SYS/TEMP]", err)
			}

			// A client that lists it again would delete it again: with
			// COPY, into a second copy in the trash.
			c = e.login("alice", localPassword)
			got := uidls(t, c)
			if i := slices.Index(got, all[0]); i >= 0 {
				c.Dele(i + 1)
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, all[1:]) {
				t.Errorf("UIDLs in the next session = %v, want %v", got, all[1:])
			}
			if n := e.count(alice); n != 2 {
				t.Errorf("%d messages in INBOX, want 2", n)
			}
			if tc.mode == upstream.DeleteTrash {
				n, err := e.mem.Count(alice, "Trash")
				if err != nil {
					t.Fatal(err)
				}
				if n != 1 {
					t.Errorf("%d messages in Trash, want 1", n)
				}
			}
		})
	}
}

// sharedMemory is a MemoryState standing for a store that replicas share.
type sharedMemory struct{ *MemoryState }

func (sharedMemory) SharedWithOtherProcesses() {}

// Replicas sharing a store: what one hides, the other leaves out at its
// next login, though it listed the same mailbox before.
func TestSharedStateNotRemembered(t *testing.T) {
	e := newEnv(t, envOptions{onDelete: upstream.DeleteKeep})
	e.deliver(alice, corpus...)
	shared := sharedMemory{NewMemoryState()}
	e.gw.SetState(shared)
	other := New(e.config, e.cache, testLogger())
	other.SetState(shared)
	srv := &pop3.Server{Backend: other, Logger: testLogger()}
	addr := serve(t, srv, nil)
	onOther := func() []string {
		c, err := pop3client.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login("alice", localPassword); err != nil {
			t.Fatal(err)
		}
		defer c.Quit()
		return uidls(t, c)
	}

	all := onOther()
	c := e.login("alice", localPassword)
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if got, want := onOther(), []string{all[0], all[2]}; !slices.Equal(got, want) {
		t.Fatalf("other replica lists %v after the delete, want %v", got, want)
	}
}

func TestIdentities(t *testing.T) {
	at := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	ids := identities([]upstream.Entry{
		{UID: 1, Size: 10, MessageID: "<a@x>", InternalDate: at},
		{UID: 2, Size: 10, MessageID: "<a@x>", InternalDate: at},                  // a second copy
		{UID: 3, Size: 11, MessageID: "<a@x>", InternalDate: at},                  // another size
		{UID: 4, Size: 10, MessageID: "<a@x>", InternalDate: at.Add(time.Second)}, // another arrival
		{UID: 5, Size: 10, MessageID: "", InternalDate: at},
		{UID: 6, Size: 10, MessageID: "<a@x>", InternalDate: at},
	})
	base, _, _ := strings.Cut(strings.TrimPrefix(ids[0], "d:"), ":")
	if ids[0] != "d:"+base+":0" || ids[1] != "d:"+base+":1" || ids[5] != "d:"+base+":2" {
		t.Errorf("copies of one message: %q %q %q, want ranks 0, 1, 2 of one digest", ids[0], ids[1], ids[5])
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("identity %q given twice in %q", id, ids)
		}
		seen[id] = true
	}
	// The UID is no part of it.
	again := identities([]upstream.Entry{{UID: 99, Size: 10, MessageID: "<a@x>", InternalDate: at}})
	if again[0] != ids[0] {
		t.Errorf("identity under another UID = %q, want %q", again[0], ids[0])
	}
}
