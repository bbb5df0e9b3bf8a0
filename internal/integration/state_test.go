package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/state/boltstate"
	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/redistest"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// stateGateway is a gateway listening on listen with its UIDL store in
// dataDir, in front of the IMAP server at imapAddr; it keeps no idle
// upstream connection, so every session sees the mailbox as it is. stop
// shuts it down and closes the store, as a restart would.
func stateGateway(t *testing.T, listen, imapAddr string, onDelete upstream.DeleteMode, dataDir string) (addr string, stop func()) {
	t.Helper()
	st, err := boltstate.Open(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	up := &proxy.Upstream{
		Name:           "dovecot",
		Server:         upstream.Server{Address: imapAddr, Security: upstream.SecurityNone, Timeout: 30 * time.Second},
		Mailbox:        "INBOX",
		OnDelete:       onDelete,
		KeepConnection: -1,
	}
	log := testLogger()
	gw := passthroughGateway(up, cache.New(64<<20, 4<<20), log)
	gw.SetState(st)
	addr, stopServing := serve(t, &pop3.Server{Backend: gw, Logger: log}, gw, listen)
	stop = func() {
		stopServing()
		st.Close()
	}
	t.Cleanup(stop)
	return addr, stop
}

// imapInbox logs in to the IMAP server at addr as user and selects
// INBOX. The caller closes the client.
func imapInbox(t *testing.T, addr, user, pass string) (*imapclient.Client, *imap.SelectData) {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c, sel
}

// selectInbox is what selecting user's INBOX answers.
func selectInbox(t *testing.T, addr, user, pass string) *imap.SelectData {
	t.Helper()
	c, sel := imapInbox(t, addr, user, pass)
	defer c.Close()
	c.Logout().Wait()
	return sel
}

// uidValidity selects user's INBOX on Dovecot and returns its UIDVALIDITY.
func uidValidity(t *testing.T, addr, user, pass string) uint32 {
	t.Helper()
	return selectInbox(t, addr, user, pass).UIDValidity
}

// rebuildMailbox makes Dovecot forget the UIDs of user's Maildir, as after
// a restore or a migration: with its uidlist and index files gone, it
// numbers the messages again from 1 under a new UIDVALIDITY (the current
// time). It checks that the UIDVALIDITY really changed.
func rebuildMailbox(t *testing.T, dc *dovecottest.Server, user, pass string) {
	t.Helper()
	before := uidValidity(t, dc.IMAPAddr(), user, pass)
	// A UIDVALIDITY made in the same second as the old one would be equal.
	for time.Now().Unix() <= int64(before) {
		time.Sleep(50 * time.Millisecond)
	}
	dir := dc.Maildir(user)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "dovecot") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	if after := uidValidity(t, dc.IMAPAddr(), user, pass); after == before {
		t.Fatalf("UIDVALIDITY still %d after removing Dovecot's index files", before)
	}
}

// TestUIDLsSurviveUIDValidityChange: fetchmail and mpop, leaving mail on
// the server, download nothing again after Dovecot renumbers the mailbox
// under a new UIDVALIDITY, across a restart of the gateway; a message that
// arrived meanwhile is the only one downloaded.
func TestUIDLsSurviveUIDValidityChange(t *testing.T) {
	clients := []struct {
		name string
		make func(t testing.TB, addr, user, pass string) clienttest.Client
	}{
		{"fetchmail", clienttest.Fetchmail},
		{"mpop", clienttest.Mpop},
	}
	users := map[string]string{}
	for _, c := range clients {
		users[c.name] = "pw-" + c.name
	}
	dc := dovecottest.Start(t, users)
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			pass := users[c.name]
			var msgs [][]byte
			for i := 1; i <= 3; i++ {
				msgs = append(msgs, []byte(fmt.Sprintf(
					"From: a@example.com\nTo: %s@example.com\nSubject: message %d\nMessage-ID: <%d.%s@example.com>\n\nbody %d\n",
					c.name, i, i, c.name, i)))
			}
			// The same message twice: equal digests, still two UIDLs.
			msgs = append(msgs, msgs[2])
			dc.Deliver(t, c.name, msgs...)
			dataDir := filepath.Join(t.TempDir(), "state")

			addr, stop := stateGateway(t, "127.0.0.1:0", dc.IMAPAddr(), upstream.DeleteExpunge, dataDir)
			client := c.make(t, addr, c.name, pass)
			if got := client.Fetch(t, true); len(got) != 4 {
				t.Fatalf("first run fetched %d messages, want 4", len(got))
			}
			stop()

			rebuildMailbox(t, dc, c.name, pass)
			fresh := []byte(fmt.Sprintf("From: a@example.com\nSubject: new\nMessage-ID: <new.%s@example.com>\n\nnew\n", c.name))
			dc.Deliver(t, c.name, fresh)

			// The client, with its memory of UIDLs, finds the gateway
			// restarted at the same address.
			stateGateway(t, addr, dc.IMAPAddr(), upstream.DeleteExpunge, dataDir)
			got := client.Fetch(t, true)
			if len(got) != 1 || !strings.Contains(string(got[0]), "Subject: new") {
				t.Fatalf("run after the UIDVALIDITY change fetched %d messages, want only the new one:\n%q", len(got), got)
			}
			if got := client.Fetch(t, true); len(got) != 0 {
				t.Fatalf("third run fetched %d messages", len(got))
			}
		})
	}
}

// TestKeepModesDeliverOnce: fetchmail deleting after download (no keep)
// against on_delete keep and seen: 3 messages, 3 polls, 3 deliveries,
// and the mail is still on the server.
func TestKeepModesDeliverOnce(t *testing.T) {
	modes := []upstream.DeleteMode{upstream.DeleteKeep, upstream.DeleteSeen}
	users := map[string]string{}
	for _, m := range modes {
		users[string(m)] = "pw-" + string(m)
	}
	dc := dovecottest.Start(t, users)
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			user := string(mode)
			var msgs [][]byte
			for i := 1; i <= 3; i++ {
				msgs = append(msgs, []byte(fmt.Sprintf(
					"From: a@example.com\nSubject: message %d\nMessage-ID: <%d.%s@example.com>\n\nbody %d\n", i, i, user, i)))
			}
			dc.Deliver(t, user, msgs...)
			addr, _ := stateGateway(t, "127.0.0.1:0", dc.IMAPAddr(), mode, filepath.Join(t.TempDir(), "state"))
			client := clienttest.Fetchmail(t, addr, user, users[user])
			deliveries := 0
			for poll := 1; poll <= 3; poll++ {
				deliveries += len(client.Fetch(t, false))
			}
			if deliveries != 3 {
				t.Fatalf("3 polls delivered %d messages, want 3", deliveries)
			}
			if n := dc.Count(t, user); n != 3 {
				t.Fatalf("%d messages left on the server, want 3", n)
			}
		})
	}
}

// TestKilledGatewayKeepsUIDLs runs the gateway binary with a data_dir,
// kills it with SIGKILL in the middle of a session that has shown the
// UIDLs, renumbers the mailbox under a new UIDVALIDITY and starts the
// gateway again: every UIDL is the same.
func TestKilledGatewayKeepsUIDLs(t *testing.T) {
	bin := buildGateway(t)
	const user = "alice@example.com"
	mem := startMem(t, user, "upstream-pass")
	arrived := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	var msgs [][]byte
	for i := 1; i <= 3; i++ {
		msgs = append(msgs, []byte(fmt.Sprintf("Message-ID: <%d@example.com>\r\nSubject: %d\r\n\r\nbody\r\n", i, i)))
	}
	if err := mem.AppendAt(user, "INBOX", arrived, msgs...); err != nil {
		t.Fatal(err)
	}
	config := aliceConfig(t, mem.Addr(), fmt.Sprintf("data_dir: %s\n", filepath.Join(t.TempDir(), "state")))

	listUIDLs := func(c *pop3client.Client) []string {
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
	first := startReplica(t, bin, config)
	c, err := login(first.addr, "local-pass")
	if err != nil {
		t.Fatal(err)
	}
	before := listUIDLs(c)
	first.cmd.Process.Kill()
	first.cmd.Wait()
	c.Close()

	if err := mem.Recreate(user, "INBOX"); err != nil {
		t.Fatal(err)
	}
	if err := mem.AppendAt(user, "INBOX", arrived, msgs[2], msgs[0], msgs[1]); err != nil {
		t.Fatal(err)
	}
	second := startReplica(t, bin, config)
	c, err = login(second.addr, "local-pass")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	after := listUIDLs(c)
	if want := []string{before[2], before[0], before[1]}; len(before) != 3 || !slices.Equal(after, want) {
		t.Fatalf("UIDLs after kill -9 and a UIDVALIDITY change = %v, want %v", after, want)
	}
}

// TestReplicasShareUIDLsThroughRedis: two gateway processes with one
// Redis give a message the same UIDL, also after the mailbox was
// renumbered under a new UIDVALIDITY between their sessions.
func TestReplicasShareUIDLsThroughRedis(t *testing.T) {
	redisAddr := redistest.Start(t)
	bin := buildGateway(t)
	const user = "alice@example.com"
	mem := startMem(t, user, "upstream-pass")
	arrived := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	msgs := [][]byte{
		[]byte("Message-ID: <1@example.com>\r\nSubject: 1\r\n\r\nbody\r\n"),
		[]byte("Message-ID: <2@example.com>\r\nSubject: 2\r\n\r\nbody\r\n"),
	}
	if err := mem.AppendAt(user, "INBOX", arrived, msgs...); err != nil {
		t.Fatal(err)
	}
	config := aliceConfig(t, mem.Addr(), fmt.Sprintf("redis:\n  address: %q\n", redisAddr))
	one := startReplica(t, bin, config)
	two := startReplica(t, bin, config)
	uidlsOn := func(r *replica) []string {
		t.Helper()
		c, err := login(r.addr, "local-pass")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Quit()
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
	before := uidlsOn(one)
	if err := mem.Recreate(user, "INBOX"); err != nil {
		t.Fatal(err)
	}
	if err := mem.AppendAt(user, "INBOX", arrived, msgs[1], msgs[0]); err != nil {
		t.Fatal(err)
	}
	after := uidlsOn(two)
	if want := []string{before[1], before[0]}; len(before) != 2 || !slices.Equal(after, want) {
		t.Fatalf("UIDLs on the other replica after a UIDVALIDITY change = %v, want %v", after, want)
	}
}
