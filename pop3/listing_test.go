package pop3

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

func TestNextNumber(t *testing.T) {
	num := []byte{'0'}
	for n := 1; n <= 1_000_000; n++ {
		num = nextNumber(num)
		if string(num) != strconv.Itoa(n) {
			t.Fatalf("after %d: %q", n-1, num)
		}
	}
}

// TestListingNumbers: a listing numbers every message by its place, a
// message marked deleted leaving its number out, across a change in the
// count of digits.
func TestListingNumbers(t *testing.T) {
	msgs := make([][]byte, 120)
	for i := range msgs {
		msgs[i] = []byte(strings.Repeat("x", i) + "\r\n")
	}
	h := newHarness(t, nil)
	h.be.md = &memMaildrop{msgs: msgs}
	c := h.dial()
	c.login()
	c.cmd("DELE 10", "+OK Marked to be deleted.")
	c.cmd("DELE 100", "+OK Marked to be deleted.")
	c.cmd("LIST", "+OK 118 messages:")
	var want strings.Builder
	for i := range msgs {
		if i+1 != 10 && i+1 != 100 {
			fmt.Fprintf(&want, "%d %d\r\n", i+1, len(msgs[i]))
		}
	}
	if got := c.multi(); got != want.String() {
		t.Fatalf("LIST =\n%s\nwant\n%s", got, want.String())
	}
}
