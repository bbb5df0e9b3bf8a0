//go:build !unix

package cyrus

import (
	"os"
	"os/exec"
)

func setProcessGroup(*exec.Cmd) {}

func terminate(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}

func kill(pid int) { terminate(pid) }

func running(pid int) bool {
	p, err := os.FindProcess(pid)
	return err == nil && p != nil
}
