package server

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
)

// checkDovecot runs `gateway check` against a Dovecot account whose Trash
// is marked \Trash, with the given upstream keys.
func checkDovecot(t *testing.T, dc *dovecottest.Server, upstreamKeys string) (int, string) {
	t.Helper()
	hash, err := passwd.Hash("local-pass")
	if err != nil {
		t.Fatal(err)
	}
	secret := writeFile(t, "secret", "upstream-secret\n", 0o600)
	cfg := fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
upstreams:
  dc:
    address: %q
    tls: none
%susers:
  alice:
    password_hash: %q
    upstream: dc
    upstream_user: alice
    upstream_password_file: %s
`, dc.IMAPAddr(), upstreamKeys, hash, secret)
	path := writeFile(t, "gateway.yaml", cfg, 0o600)
	var out bytes.Buffer
	code := checkExit(path, &out, io.Discard)
	return code, out.String()
}

// `gateway check` says where deletes go, and refuses on_delete trash when
// the server marks the served mailbox \Trash, which the file cannot show.
func TestCheckTrash(t *testing.T) {
	dc := dovecottest.Start(t, map[string]string{"alice": "upstream-secret"})
	for _, tt := range []struct {
		keys string
		code int
		want []string
	}{
		{"", 0, []string{`user alice (upstream dc): ok, 0 messages; deleted messages are expunged`}},
		{"    on_delete: trash\n", 0, []string{`ok, 0 messages; deleted messages are moved to "Trash" (marked \Trash)`}},
		{"    on_delete: trash\n    trash_mailbox: Bin\n", 0, []string{`moved to "Trash" (marked \Trash)`}},
		{"    on_delete: seen\n", 0, []string{`deleted messages are marked \Seen and kept`}},
		{"    mailbox: Trash\n    on_delete: trash\n", 1, []string{"user alice (upstream dc): FAILED:",
			`upstreams.dc.mailbox "Trash" is the trash`, "upstreams.dc.on_delete trash would move deleted messages back into it"}},
		{"    mailbox: Trash\n    on_delete: expunge\n", 0, []string{"deleted messages are expunged"}},
	} {
		code, out := checkDovecot(t, dc, tt.keys)
		if code != tt.code {
			t.Errorf("%q: exit %d, want %d\n%s", tt.keys, code, tt.code, out)
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("%q: output\n%s\nlacks %q", tt.keys, out, w)
			}
		}
	}
}

// Without a \Trash mailbox, check names the configured trash and says it
// will be created.
func TestCheckTrashCreated(t *testing.T) {
	f := newFixture(t)
	f.write(t, "local-pass")
	text := strings.Replace(readFile(t, f.config), "    tls: none\n", "    tls: none\n    on_delete: trash\n    trash_mailbox: Bin\n", 1)
	writeFileAt(t, f.config, text)
	var out bytes.Buffer
	if code := checkExit(f.config, &out, io.Discard); code != 0 {
		t.Fatalf("check: exit %d\n%s", code, out.String())
	}
	if want := `ok, 1 messages; deleted messages are moved to "Bin" (trash_mailbox; created at the first delete)`; !strings.Contains(out.String(), want) {
		t.Fatalf("check output:\n%s\nlacks %q", out.String(), want)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func writeFileAt(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
