package server

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/config"
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

// An upstream of protocol jmap is served by the JMAP store; with auth
// oauth2 the proxy fetches the user's access token for it.
func TestJMAPUpstreamWiring(t *testing.T) {
	t.Setenv("GATEWAY_TEST_KEY", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)))
	for _, tt := range []struct {
		keys   string
		oauth2 bool
	}{
		{"", false},
		{"    auth: oauth2\n    oauth2:\n      client_id: \"abc\"\n      token_url: \"https://login.example.com/token\"\n      device_auth_url: \"https://login.example.com/device\"\n", true},
	} {
		user := "    upstream_password_env: ALICE_PW\n"
		if tt.oauth2 {
			user = "    oauth2_token_file: /nonexistent/alice.token\n"
		}
		text := "listen:\n  pop3: \"127.0.0.1:0\"\nsecrets:\n  key_env: GATEWAY_TEST_KEY\nupstreams:\n  fm:\n    protocol: jmap\n    address: \"https://api.fastmail.com/jmap/session\"\n" + tt.keys +
			"users:\n  alice:\n    password_hash: \"$2a$04$sx8nCOq5d3Xt0IM.BOo/j.EWqnvRpkhrDA1SmJSsViNG9Z.hXmn4.\"\n    upstream: fm\n    upstream_user: alice@example.com\n" + user
		cfg, err := config.Parse([]byte(text))
		if err != nil {
			t.Fatalf("the file does not validate: %v", err)
		}
		pc, err := newSetup("gateway.yaml", nil).gatewayConfig(cfg)
		if err != nil {
			t.Fatalf("gatewayConfig: %v", err)
		}
		up := pc.Upstreams["fm"]
		if up.Store == nil || (up.OAuth2 != "") != tt.oauth2 || (pc.Users["alice"].UpstreamToken != nil) != tt.oauth2 {
			t.Errorf("oauth2 %v: store %v, OAuth2 %q", tt.oauth2, up.Store, up.OAuth2)
		}
	}
}
