//go:build linux

package main

import (
	"bytes"
	"os"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/dovecot"
	"github.com/pop3gw/gateway/internal/testkit/postfix"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// TestLoadShort runs the load workload for 20 seconds, as CI can afford
// on two cores: 300 session loops over 30 mailboxes (ten loops a mailbox,
// as in the full run), 150 slow-loris connections and 200 submissions a
// minute. The bench fails unless there were no unexpected errors, the
// gateway stayed within its memory budget, its goroutines and descriptors
// came back to their baseline, and every submission was delivered once.
func TestLoadShort(t *testing.T) {
	if testing.Short() {
		t.Skip("a 20-second load run")
	}
	switch {
	case dovecot.Binary() == "":
		testenv.Missing(t, dovecot.ErrNotInstalled.Error())
	case !postfix.Available():
		testenv.Missing(t, postfix.ErrNotInstalled.Error())
	case os.Geteuid() != 0:
		testenv.Missing(t, postfix.ErrNotRoot.Error())
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"-only", "load", "-load-duration", "20s", "-load-sessions", "300",
		"-load-mailboxes", "30", "-load-slowloris", "150", "-load-submissions", "200"}, &stdout, &stderr)
	t.Log("\n" + stdout.String())
	if code != 0 {
		t.Fatalf("pop3bench exited %d\n%s", code, stderr.String())
	}
}
