package proxy

import (
	"bytes"
	"encoding/base64"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden transcripts")

// TestGoldenTranscripts pipelines a whole session of commands through the
// gateway and compares everything it sends with testdata/NAME.golden.
func TestGoldenTranscripts(t *testing.T) {
	plain := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + localPassword))
	for _, tc := range []struct {
		name     string
		commands []string
	}{
		{"every-command", []string{
			"CAPA", "AUTH PLAIN " + plain, "CAPA", "STAT", "LIST", "LIST 2", "UIDL", "UIDL 3",
			"TOP 1 0", "TOP 3 1", "RETR 2", "DELE 2", "STAT", "LIST", "LIST 2", "RETR 2", "RSET",
			"NOOP", "DELE 1", "QUIT",
		}},
		{"wrong-state-and-bad-arguments", []string{
			"STAT", "RETR 1", "PASS x", "USER alice", "PASS wrong", "USER alice", "PASS " + localPassword,
			"USER alice", "STLS", "RETR", "RETR 0", "RETR 4", "RETR x", "TOP 1", "TOP 1 -2", "LIST 1 2",
			"DELE 99", "XYZZY", "QUIT",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.deliver("alice@example.com", corpus...)
			c := e.dial()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.WriteString(c.Conn(), strings.Join(tc.commands, "\r\n")+"\r\n"); err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			got.WriteString(c.Greeting + "\r\n")
			rest, err := io.ReadAll(c.Conn())
			if err != nil {
				t.Fatal(err)
			}
			got.Write(rest)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				os.WriteFile(path, got.Bytes(), 0o644)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("transcript differs from %s:\n--- got\n%s\n--- want\n%s", path, got.Bytes(), want)
			}
		})
	}
}
