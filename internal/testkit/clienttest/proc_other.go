//go:build !unix

package clienttest

import "os/exec"

func setupKill(*exec.Cmd) {}
