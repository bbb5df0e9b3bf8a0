package upstream_test

import (
	"testing"
	"time"
)

// The listing carries what identifies a message apart from its UID, and
// the \Deleted flag, so that the proxy can leave such messages out.
func TestSnapshotIdentityAndDeleted(t *testing.T) {
	mem := startMem(t, nil,
		[]byte("Message-ID:\r\n <one@example.com>\r\nSubject: one\r\n\r\nbody\r\n"),
		[]byte("Subject: no id\r\n\r\nbody\r\n"),
		[]byte("Subject: three\r\nmessage-id: <three@example.com>\r\n\r\nbody\r\n"),
	)
	flagDeleted(t, mem.Addr(), 2)
	s := open(t, plain(mem.Addr()))
	got, err := s.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("Snapshot = %v, want 3 entries", got)
	}
	for i, want := range []struct {
		id      string
		deleted bool
	}{{"<one@example.com>", false}, {"", true}, {"<three@example.com>", false}} {
		e := got[i]
		if e.MessageID != want.id || e.Deleted != want.deleted {
			t.Errorf("entry %d: Message-ID %q, deleted %v; want %q, %v", i+1, e.MessageID, e.Deleted, want.id, want.deleted)
		}
		if time.Since(e.InternalDate) > time.Hour || e.InternalDate.After(time.Now().Add(time.Minute)) {
			t.Errorf("entry %d: INTERNALDATE %v, want about now", i+1, e.InternalDate)
		}
	}
}
