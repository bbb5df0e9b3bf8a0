//go:build !linux

// Command pop3bench measures the gateway side by side with Dovecot; it
// reads /proc and runs on Linux only.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "pop3bench: runs on Linux only")
	os.Exit(1)
}
