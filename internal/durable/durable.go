// Package durable makes what the gateway wrote to disk survive a crash:
// a file's octets once synced, and a file created or renamed in a
// directory once the directory is synced.
package durable

import (
	"os"
	"runtime"
)

// Sync flushes path to stable storage: a file's octets, or a directory's
// entries, which makes the renames and creations in it durable. Windows
// cannot sync a directory; there a directory is left as it is.
func Sync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if runtime.GOOS == "windows" {
		if fi, err := f.Stat(); err != nil || fi.IsDir() {
			f.Close()
			return err
		}
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
