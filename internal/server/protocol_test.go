package server

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/internal/config"
)

// The configuration accepts protocol graph, but until its store is
// joined to POP3 the gateway refuses to start with it, and says which
// key; it never dials an API URL as an IMAP server.
func TestUnservedProtocolsRefused(t *testing.T) {
	for _, tc := range []struct{ upstream, want string }{
		{"    provider: microsoft365-graph\n    oauth2:\n      client_id: \"abc\"\n", "upstreams.m365.protocol: graph is not served yet"},
	} {
		text := "listen:\n  pop3: \"127.0.0.1:0\"\nsecrets:\n  key_env: GATEWAY_TEST_KEY\nupstreams:\n  m365:\n" + tc.upstream +
			"users:\n  scanner:\n    password_hash: \"$2a$04$sx8nCOq5d3Xt0IM.BOo/j.EWqnvRpkhrDA1SmJSsViNG9Z.hXmn4.\"\n    upstream: m365\n    upstream_user: scans@example.com\n    oauth2_token_file: /nonexistent/scanner.token\n"
		cfg, err := config.Parse([]byte(text))
		if err != nil {
			t.Fatalf("the file does not validate: %v", err)
		}
		if _, err := newSetup("gateway.yaml", nil).gatewayConfig(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("gatewayConfig: %v, want %q", err, tc.want)
		}
		var out, errOut bytes.Buffer
		path := writeFile(t, "gateway.yaml", text, 0o600)
		if code := checkExit(path, &out, &errOut); code == 0 || !strings.Contains(out.String()+errOut.String(), tc.want) {
			t.Errorf("gateway check: exit %d, output %q %q; want a failure naming %q", code, out.String(), errOut.String(), tc.want)
		}
	}
}
