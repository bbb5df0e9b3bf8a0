package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/secrets"
)

const secretsUsage = `usage:
  gateway secrets new-key [-out FILE]
      create a key for the secrets section (prints it, or writes FILE with mode 0600)
  gateway secrets set-password -config FILE -user NAME < password
      seal a mapped user's upstream password into its upstream_password_file
`

func secretsCmd(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, secretsUsage)
		return 2
	}
	switch args[0] {
	case "new-key":
		return newKeyCmd(args[1:], stdout, stderr)
	case "set-password":
		return setPasswordCmd(args[1:], stdin, stdout, stderr)
	}
	fmt.Fprint(stderr, secretsUsage)
	return 2
}

func newKeyCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("secrets new-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "write the key to this file (mode 0600; an existing file is not replaced)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	_, text, err := secrets.NewKey()
	if err != nil {
		fmt.Fprintln(stderr, "gateway secrets new-key:", err)
		return 1
	}
	if *out == "" {
		fmt.Fprintln(stdout, text)
		return 0
	}
	if _, err := os.Lstat(*out); err == nil {
		fmt.Fprintf(stderr, "gateway secrets new-key: %s exists; a new key would make everything sealed with it unreadable\n", *out)
		return 1
	}
	if err := secrets.WriteFile(*out, []byte(text+"\n")); err != nil {
		fmt.Fprintln(stderr, "gateway secrets new-key:", err)
		return 1
	}
	fmt.Fprintf(stdout, "Wrote a new key to %s. Set secrets.key_file: %s in the config.\n", *out, *out)
	return 0
}

func setPasswordCmd(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("secrets set-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (YAML)")
	userName := fs.String("user", "", "the mapped user (a key of users in the config)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "gateway secrets set-password:", err)
		return 1
	}
	if *configPath == "" || *userName == "" {
		fmt.Fprint(stderr, secretsUsage)
		return 2
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return fail(err)
	}
	user := cfg.Users[*userName]
	switch {
	case user == nil:
		return fail(fmt.Errorf("no user %q in %s", *userName, *configPath))
	case user.UpstreamPasswordFile == "":
		return fail(fmt.Errorf("users.%s has no upstream_password_file to write", *userName))
	}
	key, err := cfg.SealingKey()
	if err != nil {
		return fail(err)
	}
	pw, err := passwd.ReadPassword(stdin, stderr)
	if err != nil {
		return fail(err)
	}
	if pw == "" {
		return fail(errors.New("the password is empty"))
	}
	if err := secrets.WriteFile(user.UpstreamPasswordFile, key.Seal([]byte(pw), config.PasswordContext(*userName))); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "Sealed the upstream password of users.%s into %s. A running gateway uses it at the next login.\n", *userName, user.UpstreamPasswordFile)
	return 0
}
