//go:build unix

package clienttest

import (
	"os/exec"
	"syscall"
)

// setupKill makes a timeout kill the client together with the MDA
// processes it started.
func setupKill(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
