package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	if len(before) != 4 || before[0] != upstream.DovecotUIDL(1, 1) {
		t.Fatalf("UIDLs before = %v; want 4, the first %s as today", before, upstream.DovecotUIDL(1, 1))
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
			e.proxy.ResetOnCommand([]byte("EXPUNGE"))
			if _, err := c.Cmd("QUIT"); err != nil {
				t.Fatal(err)
			}
			if e.proxy.Fired() == 0 {
				t.Fatal("the upstream connection was not cut at EXPUNGE")
			}

			// Finishing them fails too: the login is refused for now.
			e.proxy.ResetOnCommand([]byte("EXPUNGE"))
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

// generationMemory is a store shared by replicas that tells its
// generation (GenerationStore), moved by every write, and counts the
// identities it is asked for.
type generationMemory struct {
	sharedMemory
	mu    sync.Mutex
	gen   int
	asked int
}

func (m *generationMemory) Assign(ctx context.Context, maildrop string, ids, proposed []string) ([]string, []bool, error) {
	m.mu.Lock()
	m.asked += len(ids)
	if len(ids) > 0 {
		m.gen++
	}
	m.mu.Unlock()
	return m.sharedMemory.Assign(ctx, maildrop, ids, proposed)
}

func (m *generationMemory) Hide(ctx context.Context, maildrop string, ids []string) error {
	m.mu.Lock()
	m.gen++
	m.mu.Unlock()
	return m.sharedMemory.Hide(ctx, maildrop, ids)
}

func (m *generationMemory) Adopt(ctx context.Context, maildrop string, ids, previous []string) error {
	m.mu.Lock()
	m.gen++
	m.mu.Unlock()
	return m.sharedMemory.Adopt(ctx, maildrop, ids, previous)
}

func (m *generationMemory) Generation(context.Context, string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strconv.Itoa(m.gen), nil
}

func (m *generationMemory) askedSoFar() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.asked
}

// Replicas sharing a store that tells its generation: a login asks it
// for the messages that came only, while no replica wrote it since the
// last; once one did (here, hid a message), for every message, and what
// it hid is left out.
func TestSharedStateWithGenerationsAsksForChanges(t *testing.T) {
	e := newEnv(t, envOptions{onDelete: upstream.DeleteKeep})
	e.deliver(alice, corpus...)
	shared := &generationMemory{sharedMemory: sharedMemory{NewMemoryState()}}
	e.gw.SetState(shared)
	other := New(e.config, e.cache, testLogger())
	other.SetState(shared)
	addr := serve(t, &pop3.Server{Backend: other, Logger: testLogger()}, nil)
	poll := func() []string {
		t.Helper()
		c := e.login("alice", localPassword)
		defer c.Quit()
		return uidls(t, c)
	}
	asks := func(want int) {
		t.Helper()
		if got := shared.askedSoFar(); got != want {
			t.Fatalf("the store was asked for %d messages in all, want %d", got, want)
		}
	}

	all := poll()
	asks(3)
	if again := poll(); !slices.Equal(again, all) {
		t.Fatalf("UIDLs %v, then %v", all, again)
	}
	asks(3)
	e.deliver(alice, "Subject: four\r\n\r\nfourth\r\n")
	all = poll()
	asks(4)

	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("alice", localPassword); err != nil {
		t.Fatal(err)
	}
	asks(8) // the other replica remembers nothing yet
	if err := c.Dele(2); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if got, want := poll(), slices.Delete(slices.Clone(all), 1, 2); !slices.Equal(got, want) {
		t.Fatalf("after the other replica's delete: %v, want %v", got, want)
	}
	asks(12)
}

func TestIdentities(t *testing.T) {
	at := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	ids := identities([]upstream.Entry{
		{ID: "1", Size: 10, MessageID: "<a@x>", InternalDate: at},
		{ID: "2", Size: 10, MessageID: "<a@x>", InternalDate: at},                  // a second copy
		{ID: "3", Size: 11, MessageID: "<a@x>", InternalDate: at},                  // another size
		{ID: "4", Size: 10, MessageID: "<a@x>", InternalDate: at.Add(time.Second)}, // another arrival
		{ID: "5", Size: 10, MessageID: "", InternalDate: at},
		{ID: "6", Size: 10, MessageID: "<a@x>", InternalDate: at},
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
	// The ID is no part of it.
	again := identities([]upstream.Entry{{ID: "99", Size: 10, MessageID: "<a@x>", InternalDate: at}})
	if again[0] != ids[0] {
		t.Errorf("identity under another UID = %q, want %q", again[0], ids[0])
	}
}

// Identities and suggested UIDLs are what the state stores hold: a store
// written before message IDs were strings is read the same, and no UIDL
// changes. These values are those that release computed.
func TestIdentitiesAsRecorded(t *testing.T) {
	at := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	got := identities([]upstream.Entry{
		{ID: "1", Size: 1234, MessageID: "<a@example.com>", InternalDate: at},
		{ID: "2", Size: 1234, MessageID: "<a@example.com>", InternalDate: at},
		{ID: "3", Size: 99, InternalDate: at},
	})
	want := []string{
		"d:019c9685ddb58d343058455aa41fb1b9:0",
		"d:019c9685ddb58d343058455aa41fb1b9:1",
		"d:75f2de4cf7dcb08f9974bca19931d469:0",
	}
	if !slices.Equal(got, want) {
		t.Errorf("identities %q, want %q", got, want)
	}
	if u := upstream.DovecotUIDL(1700000000, 42); u != "0000002a6553f100" {
		t.Errorf("IMAP's suggested UIDL %q, want 0000002a6553f100", u)
	}
	// A store's permanent id replaces what the digest is made of.
	withIdentity := identities([]upstream.Entry{
		{ID: "1", Size: 1234, MessageID: "<a@example.com>", InternalDate: at, Identity: "M0123"},
		{ID: "2", Size: 1234, MessageID: "<a@example.com>", InternalDate: at, Identity: "M4567"},
	})
	if withIdentity[0] == want[0] || withIdentity[1] == want[1] || !strings.HasSuffix(withIdentity[1], ":0") {
		t.Errorf("identities with the store's ids %q: want other digests, each of rank 0", withIdentity)
	}
}

// The UIDL a message gets when first seen is the store's suggestion when
// RFC 1939 §7 allows it with room for a variant, else one made from it.
func TestProposedUIDL(t *testing.T) {
	long := strings.Repeat("x", maxProposedUIDL+1)
	for _, tc := range []struct {
		e    listedEntry
		keep bool
	}{
		{listedEntry{ID: "7", UIDL: "0000000700000001"}, true},
		{listedEntry{ID: "Mabc", UIDL: "Mabc"}, true},
		{listedEntry{ID: "Mabc", UIDL: long}, false},
		{listedEntry{ID: "Mabc", UIDL: "with space"}, false},
		{listedEntry{ID: "Mabc", UIDL: "caf\u00e9"}, false},
		{listedEntry{ID: "Mabc"}, false},
	} {
		got := proposedUIDL(tc.e)
		if tc.keep != (got == tc.e.UIDL) || !validUIDL(got, maxProposedUIDL) {
			t.Errorf("proposedUIDL(%+v) = %q; want the suggestion kept: %v, and a valid UIDL", tc.e, got, tc.keep)
		}
		if again := proposedUIDL(tc.e); again != got {
			t.Errorf("proposedUIDL(%+v) = %q, then %q", tc.e, got, again)
		}
	}
	if proposedUIDL(listedEntry{ID: "a"}) == proposedUIDL(listedEntry{ID: "b"}) {
		t.Error("two messages without suggestions got one UIDL")
	}
}

// A pending-delete journal recorded before message IDs were strings (IMAP
// UIDs and UIDVALIDITY as numbers) reads as the IMAP store's IDs, and one
// recorded now reads back as written.
func TestJournalAsRecorded(t *testing.T) {
	var old []pendingDelete
	if err := json.Unmarshal([]byte(`[{"uidvalidity":7,"uids":[3,15],"mode":"trash","trash":"Bin","copied":true}]`), &old); err != nil {
		t.Fatal(err)
	}
	want := pendingDelete{Epoch: "7", IDs: []upstream.ID{"3", "15"}, Mode: upstream.DeleteTrash, Trash: "Bin", Copied: true}
	if len(old) != 1 || !reflect.DeepEqual(old[0], want) {
		t.Errorf("journal as recorded before = %+v, want %+v", old, want)
	}
	now := []pendingDelete{{Epoch: "e1", IDs: []upstream.ID{"m-1a", "m-2b"}, Mode: upstream.DeleteExpunge}}
	data, err := json.Marshal(now)
	if err != nil {
		t.Fatal(err)
	}
	var back []pendingDelete
	if err := json.Unmarshal(data, &back); err != nil || !reflect.DeepEqual(back, now) {
		t.Errorf("journal %s read back as %+v, %v", data, back, err)
	}
}

// A delete that a gateway before string IDs left pending (its journal
// names IMAP UIDs as numbers) is finished by the next session: the
// message is expunged and not listed again.
func TestLegacyJournalFinished(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver(alice, corpus...)
	all := e.uidls()
	validity, err := strconv.ParseUint(all[1][8:], 16, 32)
	if err != nil {
		t.Fatal(err)
	}
	journal := fmt.Appendf(nil, `[{"uidvalidity":%d,"uids":[2],"mode":"expunge"}]`, validity)
	if err := e.gw.state.SetJournal(context.Background(), "mem/"+alice+"\x00INBOX", journal); err != nil {
		t.Fatal(err)
	}
	e.gw.snaps.forget("mem/" + alice + "\x00INBOX")
	if got, want := e.uidls(), []string{all[0], all[2]}; !slices.Equal(got, want) {
		t.Errorf("UIDLs after the pending delete = %v, want %v", got, want)
	}
	if n := e.count(alice); n != len(all)-1 {
		t.Errorf("%d messages upstream, want %d", n, len(all)-1)
	}
	if left, err := e.gw.state.Journal(context.Background(), "mem/"+alice+"\x00INBOX"); err != nil || left != nil {
		t.Errorf("journal left: %s, %v", left, err)
	}
}
