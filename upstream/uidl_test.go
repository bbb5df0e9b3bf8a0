package upstream_test

import (
	"fmt"
	"testing"

	"github.com/pop3gw/gateway/upstream"
)

func TestUIDLFormat(t *testing.T) {
	for _, tc := range []struct{ validity, uid uint32 }{
		{1, 1}, {0x6b07542f, 0x1f}, {0xffffffff, 0xffffffff}, {0, 0}, {1 << 31, 12345},
	} {
		want := fmt.Sprintf("%08x%08x", tc.uid, tc.validity)
		if got := upstream.DovecotUIDL(tc.validity, tc.uid); got != want {
			t.Errorf("DovecotUIDL(%d, %d) = %q, want %q", tc.validity, tc.uid, got, want)
		}
	}
}
