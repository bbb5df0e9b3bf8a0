package passwd

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY returns the controller and terminal ends of a new pseudo-terminal.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("ptsname: %v", err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pts: %v", err)
	}
	t.Cleanup(func() { tty.Close() })
	go io.Copy(io.Discard, ptmx) // drain anything the terminal echoes
	return ptmx, tty
}

func TestReadPasswordTerminal(t *testing.T) {
	tests := []struct {
		typed, want, err string
	}{
		{"s3cret\ns3cret\n", "s3cret", ""},
		{"s3cret\nother\n", "", "do not match"},
		{"\n", "", "empty password"},
	}
	for _, tt := range tests {
		ptmx, tty := openPTY(t)
		if _, err := ptmx.WriteString(tt.typed); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		got, err := ReadPassword(tty, &out)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("typed %q: ReadPassword = %q, %v; want error %q", tt.typed, got, err, tt.err)
			}
		} else if err != nil || got != tt.want {
			t.Errorf("typed %q: ReadPassword = %q, %v; want %q", tt.typed, got, err, tt.want)
		}
		if !strings.HasPrefix(out.String(), "Password: ") {
			t.Errorf("typed %q: prompts %q", tt.typed, out.String())
		}
		if tt.err != "empty password" && !strings.Contains(out.String(), "Again: ") {
			t.Errorf("typed %q: prompts %q lack the confirmation", tt.typed, out.String())
		}
	}
}
