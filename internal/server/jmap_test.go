package server

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
)

// `gateway check` logs in to a JMAP account (Cyrus's JMAP on loopback),
// counts its messages, says where deletes go, and reports a refused
// password as a failure.
func TestCheckJMAP(t *testing.T) {
	srv := cyrustest.Start(t, map[string]string{"alice": "upstream-secret"})
	srv.Append(t, "alice", []byte("Subject: a\r\n\r\none\r\n"), []byte("Subject: b\r\n\r\ntwo\r\n"))
	hash, err := passwd.Hash("local-pass")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		secret, keys string
		code         int
		want         string
	}{
		{"upstream-secret", "", 0, "user alice (upstream cy): ok, 2 messages; deleted messages are expunged"},
		{"upstream-secret", "    on_delete: trash\n    trash_mailbox: Bin\n", 0, `user alice (upstream cy): ok, 2 messages; deleted messages are moved to "Bin"`},
		{"wrong", "", 1, "user alice (upstream cy): FAILED:"},
	} {
		secret := writeFile(t, "secret", tt.secret+"\n", 0o600)
		cfg := fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
upstreams:
  cy:
    protocol: jmap
    address: %q
%susers:
  alice:
    password_hash: %q
    upstream: cy
    upstream_user: alice
    upstream_password_file: %s
`, srv.JMAPURL(), tt.keys, hash, secret)
		path := writeFile(t, "gateway.yaml", cfg, 0o600)
		var out, errOut bytes.Buffer
		code := checkExit(path, &out, &errOut)
		if code != tt.code || !strings.Contains(out.String(), tt.want) {
			t.Errorf("%s %q: exit %d, output\n%s%s\nwant exit %d and %q", tt.secret, tt.keys, code, out.String(), errOut.String(), tt.code, tt.want)
		}
	}
}
