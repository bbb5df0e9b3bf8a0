package server

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/secrets"
)

// NewKey creates a key for the secrets section and prints it on stdout,
// or, when out is set, writes it to that file (mode 0600), never replacing
// an existing file.
func NewKey(out string, stdout io.Writer) error {
	_, text, err := secrets.NewKey()
	if err != nil {
		return err
	}
	if out == "" {
		fmt.Fprintln(stdout, text)
		return nil
	}
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s exists; a new key would make everything sealed with it unreadable", out)
	}
	if err := secrets.WriteFile(out, []byte(text+"\n")); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Wrote a new key to %s. Set secrets.key_file: %s in the config.\n", out, out)
	return nil
}

// SetPassword reads an upstream password from stdin (no echo on a
// terminal, the prompt on stderr) and writes it, sealed with the config's
// key, to the mapped user's upstream_password_file.
func SetPassword(configPath, userName string, stdin *os.File, stdout, stderr io.Writer) error {
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}
	user := cfg.Users[userName]
	switch {
	case user == nil:
		return fmt.Errorf("no user %q in %s", userName, configPath)
	case user.UpstreamPasswordFile == "":
		return fmt.Errorf("users.%s has no upstream_password_file to write", userName)
	}
	key, err := cfg.SealingKey()
	if err != nil {
		return err
	}
	pw, err := passwd.ReadPassword(stdin, stderr)
	if err != nil {
		return err
	}
	if pw == "" {
		return errors.New("the password is empty")
	}
	if err := secrets.WriteFile(user.UpstreamPasswordFile, key.Seal([]byte(pw), config.PasswordContext(userName))); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Sealed the upstream password of users.%s into %s. A running gateway uses it at the next login.\n", userName, user.UpstreamPasswordFile)
	return nil
}
