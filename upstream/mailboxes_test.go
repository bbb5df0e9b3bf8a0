package upstream_test

import (
	"slices"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/upstream"
)

func TestMailboxes(t *testing.T) {
	mem := startMem(t, nil, messages(1)...)
	c := client(t, mem.Addr(), "INBOX")
	for _, name := range []string{"Work", "Work/Sub", "Archive"} {
		if err := c.Create(name, nil).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	got, err := open(t, plain(mem.Addr())).Mailboxes(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []upstream.MailboxName{{"Archive", '/'}, {"INBOX", '/'}, {"Trash", '/'}, {"Work", '/'}, {"Work/Sub", '/'}}
	if !slices.Equal(got, want) {
		t.Errorf("Mailboxes = %v, want %v", got, want)
	}
}

func TestSnapshotFlags(t *testing.T) {
	mem := startMem(t, nil, messages(3)...)
	c := client(t, mem.Addr(), "INBOX")
	if err := c.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen, imap.FlagFlagged}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	got, err := open(t, plain(mem.Addr())).Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("Snapshot = %v", got)
	}
	flags := slices.Sorted(slices.Values(got[1].Flags))
	if want := []string{`\Flagged`, `\Seen`}; !slices.Equal(flags, want) {
		t.Errorf("flags of UID 2 = %q, want %q", flags, want)
	}
	if len(got[0].Flags) != 0 {
		t.Errorf("flags of UID 1 = %q, want none", got[0].Flags)
	}
}
