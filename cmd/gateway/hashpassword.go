package main

import (
	"fmt"
	"io"
	"os"

	"github.com/pop3gw/gateway/internal/passwd"
)

func hashPasswordCmd(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: gateway hash-password < password")
		return 2
	}
	pw, err := passwd.ReadPassword(stdin, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "gateway hash-password:", err)
		return 1
	}
	hash, err := passwd.Hash(pw)
	if err != nil {
		fmt.Fprintln(stderr, "gateway hash-password:", err)
		return 1
	}
	fmt.Fprintln(stdout, hash)
	return 0
}
