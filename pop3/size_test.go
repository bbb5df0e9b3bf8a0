package pop3

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

// wrongSizes is a maildrop whose listing has wrong sizes: message 1's is
// corrected by nothing but its transfer, message 2's by Open, which has
// read it.
type wrongSizes struct {
	memMaildrop
	listings int
	listing  []Message // handed to every session, as a maildrop may
}

var wrongSizesBodies = [][]byte{
	[]byte("Subject: a\r\n\r\nstreamed\r\n"),
	[]byte("Subject: b\r\n\r\nread whole\r\n"),
}

func (m *wrongSizes) Messages() []Message {
	m.listings++
	if m.listing == nil {
		m.listing = []Message{{Size: 100, UIDL: "a"}, {Size: 5, UIDL: "b"}}
	}
	return m.listing
}

func (m *wrongSizes) Open(ctx context.Context, i int) (io.ReadCloser, int64, error) {
	r := io.NopCloser(strings.NewReader(string(wrongSizesBodies[i])))
	if i == 0 {
		return r, 100, nil
	}
	return r, int64(len(wrongSizesBodies[i])), nil
}

type wrongSizesBackend struct{ md *wrongSizes }

func (b wrongSizesBackend) Login(ctx context.Context, li *LoginInfo) (Maildrop, error) {
	if li.Username == "alice" && li.Password == "secret pass" {
		return b.md, nil
	}
	return nil, ErrAuthFailed
}

// TestSizeCorrections: the session takes the listing once, at login; a
// size is corrected only by what Open returns or by a whole transfer, and
// STAT and LIST report the correction from then on (RFC 1939 §11).
func TestSizeCorrections(t *testing.T) {
	md := &wrongSizes{}
	h := newHarness(t, func(s *Server) { s.Backend = wrongSizesBackend{md} })
	c := h.dial()
	c.login()
	c.cmd("STAT", "+OK 2 105")
	c.cmd("RETR 1", "+OK 100 octets")
	if got := c.multi(); got != string(wrongSizesBodies[0]) {
		t.Fatalf("RETR 1 = %q", got)
	}
	a, b := len(wrongSizesBodies[0]), len(wrongSizesBodies[1])
	c.cmd("LIST 1", fmt.Sprintf("+OK 1 %d", a))
	c.cmd("RETR 2", fmt.Sprintf("+OK %d octets", b))
	if got := c.multi(); got != string(wrongSizesBodies[1]) {
		t.Fatalf("RETR 2 = %q", got)
	}
	c.cmd("STAT", fmt.Sprintf("+OK 2 %d", a+b))
	c.cmd("QUIT", "+OK Logging out.")
	if md.listings != 1 {
		t.Fatalf("Messages called %d times, want once, at login", md.listings)
	}
	// The corrections were the session's own: the listing it was handed
	// is as the maildrop made it, and the next session starts from it.
	if want := []Message{{Size: 100, UIDL: "a"}, {Size: 5, UIDL: "b"}}; !slices.Equal(md.listing, want) {
		t.Fatalf("the maildrop's listing became %v, want %v", md.listing, want)
	}
	c = h.dial()
	c.login()
	c.cmd("STAT", "+OK 2 105")
	c.cmd("QUIT", "+OK Logging out.")
}
