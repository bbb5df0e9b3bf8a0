//go:build unix

package export

import (
	"errors"
	"os"
	"syscall"
)

// lockState takes the state file for this run: two exports writing to
// one directory at once would record each other's messages twice.
func lockState(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errBusy
	}
	return err
}
