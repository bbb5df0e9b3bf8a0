package upstream_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/internal/testkit/faultproxy"
	"github.com/pop3gw/gateway/upstream"
)

// uidSize is what these tests compare of an entry.
type uidSize struct {
	ID   upstream.ID
	Size int64
}

func entriesOf(uids ...uint32) []uidSize {
	var out []uidSize
	for _, uid := range uids {
		out = append(out, uidSize{ID: idOf(uid), Size: int64(len(message(int(uid))))})
	}
	return out
}

// uidSizes keeps only the ID and size of each entry.
func uidSizes(entries []upstream.Entry) []uidSize {
	out := make([]uidSize, len(entries))
	for i, e := range entries {
		out[i] = uidSize{ID: e.ID, Size: e.Size}
	}
	return out
}

func TestSnapshot(t *testing.T) {
	mem := startMem(t, nil, messages(5)...)
	s := open(t, plain(mem.Addr()))
	got, err := s.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := entriesOf(1, 2, 3, 4, 5); !slices.Equal(uidSizes(got), want) {
		t.Errorf("Snapshot = %v, want %v", got, want)
	}
}

func TestSnapshotEmpty(t *testing.T) {
	mem := startMem(t, nil)
	s := open(t, plain(mem.Addr()))
	got, err := s.Snapshot(testCtx(t))
	if err != nil || len(got) != 0 {
		t.Errorf("Snapshot = %v, %v; want none", got, err)
	}
}

func TestSnapshotGaps(t *testing.T) {
	mem := startMem(t, nil, messages(6)...)
	srv := plain(mem.Addr())
	before := open(t, srv)

	other := open(t, srv)
	if err := other.Delete(testCtx(t), []uint32{2, 5}, upstream.DeleteExpunge, ""); err != nil {
		t.Fatal(err)
	}
	want := entriesOf(1, 3, 4, 6)

	got, err := open(t, srv).Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(uidSizes(got), want) {
		t.Errorf("new session: Snapshot = %v, want %v", got, want)
	}
	// A session selected before the expunge has not been told of it. The
	// server answers its FETCH 1:* with flag updates for the expunged
	// messages, which are no listing entries. (imapmemserver also bounds
	// "*" by the current message count rather than the session's, so it
	// leaves out the last messages; hence only a subset is required.)
	got, err = before.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range got {
		if !slices.Contains(want, uidSizes([]upstream.Entry{e})[0]) {
			t.Errorf("older session: Snapshot = %v, has %v, not among %v", got, e, want)
		}
	}
	if !slices.IsSortedFunc(got, func(a, b upstream.Entry) int { return cmp.Compare(uidOf(a.ID), uidOf(b.ID)) }) {
		t.Errorf("older session: Snapshot = %v, not in UID order", got)
	}
	// The session that deleted them knows.
	got, err = other.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(uidSizes(got), want) {
		t.Errorf("deleting session: Snapshot = %v, want %v", got, want)
	}
}

// Snapshot orders by UID whatever order the server answers in, UIDs of
// 2^31 and above included (they are negative as a 32-bit int).
func TestSnapshotOrder(t *testing.T) {
	addr := fakeServer(t, func(cmd string) []string {
		switch {
		case strings.HasPrefix(cmd, "SELECT"):
			return []string{"* 3 EXISTS", "* OK [UIDVALIDITY 7] x", "* OK [UIDNEXT 4000000001] x"}
		case strings.HasPrefix(cmd, "FETCH"):
			return []string{
				"* 3 FETCH (UID 4000000000 RFC822.SIZE 30)",
				"* 1 FETCH (UID 5 RFC822.SIZE 10)",
				"* 2 FETCH (UID 3000000000 RFC822.SIZE 20)",
			}
		}
		return nil
	})
	s := dial(t, plain(addr))
	if _, err := s.Select(testCtx(t), "INBOX"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	// IDs are the UIDs in decimal; the UIDLs are Dovecot's default
	// format, as they were before IDs were strings.
	type idSizeUIDL struct {
		ID   upstream.ID
		Size int64
		UIDL string
	}
	want := []idSizeUIDL{
		{ID: "5", Size: 10, UIDL: "0000000500000007"},
		{ID: "3000000000", Size: 20, UIDL: "b2d05e0000000007"},
		{ID: "4000000000", Size: 30, UIDL: "ee6b280000000007"},
	}
	var gotIDs []idSizeUIDL
	for _, e := range got {
		gotIDs = append(gotIDs, idSizeUIDL{e.ID, e.Size, e.UIDL})
	}
	if !slices.Equal(gotIDs, want) {
		t.Errorf("Snapshot = %v, want %v", got, want)
	}
}

// bigMessage has n lines of 18 octets in its body.
func bigMessage(n int) []byte {
	return append([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef\r\n"), n)...)
}

func fetchAll(t *testing.T, s *upstream.Session, uid uint32) []byte {
	t.Helper()
	rc, err := s.Fetch(testCtx(t), uid)
	if err != nil {
		t.Fatalf("Fetch %d: %v", uid, err)
	}
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %d: %v", uid, err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("Close %d: %v", uid, err)
	}
	return got
}

// Fetch returns the stored octets unchanged, bare LF included.
// imapmemserver re-renders the header with CRLF, so the bare LFs are in
// the bodies.
func TestFetchRawBytes(t *testing.T) {
	msgs := [][]byte{
		[]byte("Subject: bare LF\r\n\r\nline one\nline two\n"),
		[]byte("Subject: mixed\r\n\r\na\r\nb\nc\rd\r\n.\r\n..dot\n"),
		[]byte("Subject: caf\xc3\xa9\r\n\r\n\xff\xfe 8-bit\r\n"),
		[]byte("Subject: no final newline\r\n\r\nend"),
		message(3),
	}
	mem := startMem(t, nil, msgs...)
	s := open(t, plain(mem.Addr()))
	entries, err := s.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(msgs) {
		t.Fatalf("Snapshot: %d entries", len(entries))
	}
	for i, e := range entries {
		if e.Size != int64(len(msgs[i])) {
			t.Errorf("UID %s: size %d, want %d", e.ID, e.Size, len(msgs[i]))
		}
		if got := fetchAll(t, s, uidOf(e.ID)); !bytes.Equal(got, msgs[i]) {
			t.Errorf("UID %s: got %q, want %q", e.ID, got, msgs[i])
		}
	}
}

// Fetch uses BODY.PEEK[]: the message does not become \Seen.
func TestFetchLeavesUnseen(t *testing.T) {
	mem := startMem(t, nil, messages(2)...)
	s := open(t, plain(mem.Addr()))
	fetchAll(t, s, 1)
	checkState(t, mem.Addr(), "INBOX", "1:", "2:")
}

func TestFetchCloseEarly(t *testing.T) {
	big := bigMessage(100_000) // 2 MB
	msgs := [][]byte{big, message(2)}
	mem := startMem(t, nil, msgs...)
	s := open(t, plain(mem.Addr()))

	rc, err := s.Fetch(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 100)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head, big[:100]) {
		t.Errorf("head = %q", head)
	}
	if err := closeBounded(t, rc); err != nil {
		t.Fatalf("Close after a partial read: %v", err)
	}

	// Closed without reading at all.
	rc, err = s.Fetch(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := closeBounded(t, rc); err != nil {
		t.Fatalf("Close without reading: %v", err)
	}

	if got := fetchAll(t, s, 2); !bytes.Equal(got, msgs[1]) {
		t.Errorf("next Fetch got %q", got)
	}
	if got := fetchAll(t, s, 1); !bytes.Equal(got, big) {
		t.Errorf("refetch of the large message: %d bytes, differs", len(got))
	}
	if _, err := s.Snapshot(testCtx(t)); err != nil {
		t.Errorf("Snapshot: %v", err)
	}
	if !s.Alive() {
		t.Error("session died")
	}
}

func TestFetchGone(t *testing.T) {
	mem := startMem(t, nil, messages(3)...)
	srv := plain(mem.Addr())
	s := open(t, srv)

	if _, err := s.Fetch(testCtx(t), 99); !errors.Is(err, upstream.ErrMessageGone) {
		t.Errorf("Fetch of UID 99: got %v, want ErrMessageGone", err)
	}

	// Expunged by another session after this one listed it.
	other := open(t, srv)
	if err := other.Delete(testCtx(t), []uint32{2}, upstream.DeleteExpunge, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(testCtx(t), 2); !errors.Is(err, upstream.ErrMessageGone) {
		t.Errorf("Fetch of expunged UID 2: got %v, want ErrMessageGone", err)
	}

	if got := fetchAll(t, s, 3); !bytes.Equal(got, message(3)) {
		t.Errorf("Fetch of UID 3 afterwards: %q", got)
	}
}

// Cancelling the context in the middle of a message ends the session
// promptly; nothing hangs.
func TestFetchCancel(t *testing.T) {
	big := bigMessage(1 << 17) // 2.3 MiB

	t.Run("between reads", func(t *testing.T) {
		mem := startMem(t, nil, big)
		s := open(t, plain(mem.Addr()))
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		rc, err := s.Fetch(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		cancel()
		start := time.Now()
		closeBounded(t, rc)
		waitDead(t, s)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v", d)
		}
		if _, err := s.Snapshot(testCtx(t)); err == nil {
			t.Error("Snapshot on a dead session succeeded")
		}
		closeBounded(t, sessionCloser{s})
	})

	t.Run("during a blocked read", func(t *testing.T) {
		mem := startMem(t, nil, big)
		p := faultproxy.Start(t, mem.Addr())
		srv := plain(p.Addr())
		srv.Timeout = time.Minute // only the cancellation can end the read
		s := open(t, srv)
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		p.StallServerAfter(200_000)
		rc, err := s.Fetch(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		readErr := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, rc)
			readErr <- err
		}()
		time.Sleep(200 * time.Millisecond)
		select {
		case err := <-readErr:
			t.Fatalf("read ended before the cancellation: %v", err)
		default:
		}
		cancel()
		select {
		case err := <-readErr:
			if err == nil {
				t.Error("read of the whole message succeeded through a frozen connection")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("read still blocked after cancel")
		}
		closeBounded(t, rc)
		waitDead(t, s)
	})

	t.Run("before Fetch", func(t *testing.T) {
		mem := startMem(t, nil, big)
		s := open(t, plain(mem.Addr()))
		ctx, cancel := context.WithCancel(testCtx(t))
		cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			rc, err := s.Fetch(ctx, 1)
			if err == nil {
				// The server may have answered before the connection closed;
				// reading must still end.
				io.Copy(io.Discard, rc)
				rc.Close()
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Fetch with a cancelled context hangs")
		}
		waitDead(t, s)
	})
}

type sessionCloser struct{ s *upstream.Session }

func (c sessionCloser) Close() error { return c.s.Close() }

// The server going away mid-message gives a read error, not a short
// message passed off as complete.
func TestFetchServerGone(t *testing.T) {
	big := bigMessage(1 << 16) // 1.1 MiB
	mem := startMem(t, nil, big)
	p := faultproxy.Start(t, mem.Addr())
	s := open(t, plain(p.Addr()))
	p.StallServerAfter(200_000)
	rc, err := s.Fetch(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	p.CloseAll()
	n, err := io.Copy(io.Discard, rc)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %d of %d octets, then %v; want io.ErrUnexpectedEOF", n+1000, len(big), err)
	}
	closeBounded(t, rc)
	waitDead(t, s)
}

// Flag changes by another client reach the session as unsolicited FETCH
// responses; they do not disturb Fetch or Snapshot.
func TestFetchAfterFlagChange(t *testing.T) {
	mem := startMem(t, nil, messages(3)...)
	s := open(t, plain(mem.Addr()))
	c := client(t, mem.Addr(), "INBOX")
	err := c.Store(imap.UIDSetNum(1, 2), &imap.StoreFlags{
		Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagFlagged},
	}, nil).Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := fetchAll(t, s, 1); !bytes.Equal(got, message(1)) {
		t.Errorf("Fetch of UID 1: %q", got)
	}
	got, err := s.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := entriesOf(1, 2, 3); !slices.Equal(uidSizes(got), want) {
		t.Errorf("Snapshot = %v, want %v", got, want)
	}
}

func TestFetchSequence(t *testing.T) {
	mem := startMem(t, nil, messages(20)...)
	s := open(t, plain(mem.Addr()))
	entries, err := s.Snapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		got := fetchAll(t, s, uidOf(e.ID))
		if want := message(int(uidOf(e.ID))); !bytes.Equal(got, want) {
			t.Errorf("UID %s: got %q", e.ID, got)
		}
		if int64(len(got)) != e.Size {
			t.Errorf("UID %s: %d bytes, listed %d", e.ID, len(got), e.Size)
		}
	}
}

// FetchPart returns the raw octets of a part of the message, byte for
// byte what Fetch returns there, and fewer at the end of the message.
func TestFetchPart(t *testing.T) {
	msg := []byte("Subject: part\r\n\r\nline one\nline two\r\nno final newline")
	mem := startMem(t, nil, msg)
	s := open(t, plain(mem.Addr()))
	for _, tc := range []struct{ offset, n int64 }{
		{0, 10}, {0, int64(len(msg))}, {0, 1000}, {7, 20}, {30, 1000}, {int64(len(msg)) - 1, 5},
	} {
		rc, err := s.FetchPart(testCtx(t), 1, tc.offset, tc.n)
		if err != nil {
			t.Fatalf("FetchPart(%d, %d): %v", tc.offset, tc.n, err)
		}
		got, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
		want := msg[tc.offset:min(int64(len(msg)), tc.offset+tc.n)]
		if !bytes.Equal(got, want) {
			t.Errorf("FetchPart(%d, %d) = %q, want %q", tc.offset, tc.n, got, want)
		}
	}
	if got := fetchAll(t, s, 1); !bytes.Equal(got, msg) {
		t.Errorf("Fetch after FetchPart = %q", got)
	}
}

// Open, the body the store seam asks for, is Fetch for a whole message
// and FetchPart for a part; an offset without a length is refused.
func TestOpenWholeOrPart(t *testing.T) {
	msg := []byte("Subject: open\r\n\r\nline one\nline two\r\nno final newline")
	mem := startMem(t, nil, msg)
	s := open(t, plain(mem.Addr()))
	for _, tc := range []struct{ offset, n int64 }{{0, -1}, {0, 10}, {7, 1000}} {
		rc, err := s.Open(testCtx(t), "1", tc.offset, tc.n)
		if err != nil {
			t.Fatalf("Open(%d, %d): %v", tc.offset, tc.n, err)
		}
		got, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
		want := msg[tc.offset:]
		if tc.n >= 0 {
			want = want[:min(int64(len(want)), tc.n)]
		}
		if !bytes.Equal(got, want) {
			t.Errorf("Open(%d, %d) = %q, want %q", tc.offset, tc.n, got, want)
		}
	}
	if _, err := s.Open(testCtx(t), "1", 5, -1); err == nil {
		t.Error("Open from offset 5 without a length succeeded")
	}
}
