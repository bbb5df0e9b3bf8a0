package upstream_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/pop3gw/gateway/upstream"
)

func TestFetchEach(t *testing.T) {
	msgs := messages(4)
	mem := startMem(t, nil, msgs...)
	s := open(t, plain(mem.Addr()))
	ctx := testCtx(t)
	// Another client's expunge of UID 3 leaves it out; UID 9 never existed.
	if err := s.Delete(ctx, []uint32{3}, upstream.DeleteExpunge, ""); err != nil {
		t.Fatal(err)
	}
	got := map[uint32][]byte{}
	err := s.FetchEach(ctx, []upstream.ID{"1", "2", "3", "4", "9"}, func(id upstream.ID, body io.Reader) error {
		b, err := io.ReadAll(body)
		got[uidOf(id)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got UIDs %v, want 1, 2 and 4", keys(got))
	}
	for _, uid := range []uint32{1, 2, 4} {
		if !bytes.Equal(got[uid], msgs[uid-1]) {
			t.Errorf("UID %d: %q", uid, got[uid])
		}
	}
	// The session stays usable.
	if b := fetchAll(t, s, 2); !bytes.Equal(b, msgs[1]) {
		t.Fatalf("Fetch after FetchEach: %q", b)
	}
}

func TestFetchEachStopsOnError(t *testing.T) {
	mem := startMem(t, nil, messages(3)...)
	s := open(t, plain(mem.Addr()))
	stop := errors.New("stop")
	calls := 0
	err := s.FetchEach(testCtx(t), []upstream.ID{"1", "2", "3"}, func(_ upstream.ID, body io.Reader) error {
		calls++
		io.ReadFull(body, make([]byte, 10))
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("FetchEach = %v after %d calls, want the callback's error after 1", err, calls)
	}
	waitDead(t, s)
}

func keys(m map[uint32][]byte) []uint32 {
	var out []uint32
	for k := range m {
		out = append(out, k)
	}
	return out
}
