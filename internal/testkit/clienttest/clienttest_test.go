package clienttest_test

import (
	"bytes"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
)

var messages = [][]byte{
	[]byte("From: a@example.org\nTo: b@example.org\nSubject: one\n\nbody one\n.leading dot\n..two dots\n"),
	[]byte("Subject: two\r\n\r\nCRLF body\r\n.\r\nend\r\n"),
	[]byte("Subject: three\n\nno final newline"),
}

// normalize undoes the documented client alterations for these messages.
func normalize(name string, m []byte) []byte {
	m = bytes.ReplaceAll(m, []byte("\r\n"), []byte("\n"))
	if name == "getmail" {
		m = bytes.TrimPrefix(m, []byte("Return-Path: <unknown>\n"))
	}
	return m
}

func want(i int) []byte {
	m := bytes.ReplaceAll(messages[i], []byte("\r\n"), []byte("\n"))
	if !bytes.HasSuffix(m, []byte("\n")) {
		m = append(m, '\n')
	}
	return m
}

func check(t *testing.T, c clienttest.Client, got [][]byte) {
	t.Helper()
	if len(got) != len(messages) {
		t.Fatalf("got %d messages, want %d: %q", len(got), len(messages), got)
	}
	for i, m := range got {
		if n := normalize(c.Name(), m); !bytes.Equal(n, want(i)) {
			t.Errorf("message %d = %q, want %q", i+1, m, want(i))
		}
	}
}

func TestClients(t *testing.T) {
	users := map[string]string{
		"fetchmail": "pw-fetchmail",
		"mpop":      `p"w\mpop`,
		"getmail":   "pw getmail",
		"curl":      "pw;curl@x",
	}
	s := dovecottest.Start(t, users)
	clients := []struct {
		name string
		new  func(t testing.TB, addr, user, pass string) clienttest.Client
	}{
		{"fetchmail", clienttest.Fetchmail},
		{"mpop", clienttest.Mpop},
		{"getmail", clienttest.Getmail},
		{"curl", clienttest.Curl},
	}
	for _, tc := range clients {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := tc.new(t, s.POP3Addr(), tc.name, users[tc.name])
			if c.Name() != tc.name {
				t.Errorf("Name() = %q", c.Name())
			}
			s.Deliver(t, tc.name, messages...)

			check(t, c, c.Fetch(t, true))
			if n := s.Count(t, tc.name); n != 3 {
				t.Fatalf("after keep fetch: %d messages on the server, want 3", n)
			}

			got := c.Fetch(t, true)
			if c.RemembersUIDL() {
				if len(got) != 0 {
					t.Fatalf("second keep fetch got %d messages, want 0", len(got))
				}
			} else {
				check(t, c, got)
			}

			check(t, c, c.Fetch(t, false))
			if n := s.Count(t, tc.name); n != 0 {
				t.Fatalf("after delete fetch: %d messages on the server, want 0\n%s", n, s.LogTail())
			}
			if got := c.Fetch(t, false); len(got) != 0 {
				t.Fatalf("fetch from empty mailbox got %d messages", len(got))
			}
		})
	}
}

func TestWrongPassword(t *testing.T) {
	s := dovecottest.Start(t, map[string]string{"u": "right"})
	s.Deliver(t, "u", messages[0])
	for _, c := range []clienttest.Client{
		clienttest.Fetchmail(t, s.POP3Addr(), "u", "wrong"),
		clienttest.Mpop(t, s.POP3Addr(), "u", "wrong"),
		clienttest.Getmail(t, s.POP3Addr(), "u", "wrong"),
		clienttest.Curl(t, s.POP3Addr(), "u", "wrong"),
	} {
		if msgs, err := c.TryFetch(false); err == nil || len(msgs) != 0 {
			t.Errorf("%s: TryFetch with a wrong password: %d messages, err %v", c.Name(), len(msgs), err)
		}
	}
	if n := s.Count(t, "u"); n != 1 {
		t.Errorf("%d messages on the server, want 1", n)
	}
}
