//go:build !unix

package dovecot

import (
	"os"
	"os/exec"
)

var terminateSignal = os.Kill

func setProcessGroup(*exec.Cmd) {}

func killProcessGroup(cmd *exec.Cmd) { cmd.Process.Kill() }
