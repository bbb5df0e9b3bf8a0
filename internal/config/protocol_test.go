package config

import (
	"slices"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/upstream"
)

// graphConfig is a Microsoft 365 mailbox through Graph, upstream lines
// given.
func graphConfig(upstreamLines string) string {
	return `
listen:
  pop3: "127.0.0.1:1110"
secrets:
  key_env: GATEWAY_KEY
upstreams:
  m365:
` + upstreamLines + `
users:
  scanner:
    password_hash: "` + testHash + `"
    upstream: m365
    upstream_user: scans@example.com
    oauth2_token_file: /var/lib/gateway/scanner.token
`
}

func TestGraphPreset(t *testing.T) {
	c := mustParse(t, graphConfig(`
    provider: microsoft365-graph
    oauth2:
      client_id: "00000000-0000-0000-0000-000000000000"`))
	u := c.Upstreams["m365"]
	if u.Protocol != ProtocolGraph || u.Address != "https://graph.microsoft.com/v1.0" || u.Auth != AuthOAuth2 || !u.OAuthEnabled() {
		t.Errorf("upstream %+v", u)
	}
	if u.OnDelete != upstream.DeleteTrash || u.TrashMailbox != "deleteditems" || u.Mailbox != "INBOX" {
		t.Errorf("on_delete %s into %q from %q", u.OnDelete, u.TrashMailbox, u.Mailbox)
	}
	o := u.OAuth2
	if o.DeviceAuthURL != "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode" || o.TokenURL == "" || o.AuthURL == "" {
		t.Errorf("oauth2 endpoints %+v", o)
	}
	if want := []string{"https://graph.microsoft.com/Mail.ReadWrite", "https://graph.microsoft.com/Mail.Send", "offline_access"}; !slices.Equal(o.Scopes, want) {
		t.Errorf("scopes %q, want %q", o.Scopes, want)
	}
	if err := u.Served(); err != nil {
		t.Errorf("graph: Served() = %v", err)
	}
	if err := mustParse(t, minimal).Upstreams["corp"].Served(); err != nil {
		t.Errorf("imap: Served() = %v", err)
	}
}

func TestJMAPServed(t *testing.T) {
	c := mustParse(t, `
listen:
  pop3: "127.0.0.1:1110"
upstreams:
  fm:
    protocol: jmap
    address: "https://api.fastmail.com/jmap/session"
users:
  alice:
    password_hash: "`+testHash+`"
    upstream: fm
    upstream_user: alice@example.com
    upstream_password_env: ALICE_PW
`)
	if err := c.Upstreams["fm"].Served(); err != nil {
		t.Errorf("Served() = %v", err)
	}
}

// Preset fastmail-jmap: Fastmail's JMAP session URL and an app password,
// deletes into the trash; protocol jmap is served.
func TestFastmailJMAPPreset(t *testing.T) {
	c := mustParse(t, `
listen:
  pop3: "127.0.0.1:1110"
upstreams:
  fm:
    provider: fastmail-jmap
users:
  alice:
    password_hash: "`+testHash+`"
    upstream: fm
    upstream_user: alice@fastmail.com
    upstream_password_env: ALICE_PW
`)
	u := c.Upstreams["fm"]
	if u.Protocol != ProtocolJMAP || u.Address != "https://api.fastmail.com/jmap/session" || u.Auth != AuthPassword || u.OAuthEnabled() {
		t.Errorf("upstream %+v", u)
	}
	if u.OnDelete != upstream.DeleteTrash || u.TrashMailbox != "Trash" || u.Mailbox != "INBOX" {
		t.Errorf("on_delete %s into %q from %q", u.OnDelete, u.TrashMailbox, u.Mailbox)
	}
	if err := u.Served(); err != nil {
		t.Errorf("Served() = %v", err)
	}
}

func TestProtocolProblems(t *testing.T) {
	oauth := `
    oauth2:
      client_id: "abc"
      token_url: "https://login.example.com/token"
      device_auth_url: "https://login.example.com/device"`
	for _, tc := range []struct {
		name, lines, want string
	}{
		{"unknown", `
    protocol: pop3
    address: "mail.example.com:993"`, `upstreams.m365.protocol: "pop3" is not one of imap, jmap, graph`},
		{"host and port", `
    protocol: graph
    auth: oauth2
    address: "graph.microsoft.com:443"` + oauth, `upstreams.m365.address: "graph.microsoft.com:443" is not the Graph base URL`},
		{"cleartext off loopback", `
    protocol: graph
    auth: oauth2
    address: "http://graph.example.com/v1.0"` + oauth, `upstreams.m365.address: "http://graph.example.com/v1.0" is not the Graph base URL`},
		{"no address", `
    protocol: graph
    auth: oauth2` + oauth, `upstreams.m365.address: required: the Graph base URL`},
		{"password", `
    protocol: graph
    auth: password
    address: "https://graph.microsoft.com/v1.0"`, `upstreams.m365.auth (line 10): protocol graph logs in with OAuth2 only`},
		{"sasl mechanism", `
    protocol: graph
    auth: xoauth2
    address: "https://graph.microsoft.com/v1.0"` + oauth, `protocol graph logs in with OAuth2 only: set auth to oauth2 (provider microsoft365-graph does), not xoauth2`},
		{"imap key", `
    protocol: graph
    auth: oauth2
    tls: starttls
    address: "https://graph.microsoft.com/v1.0"` + oauth, `upstreams.m365.tls (line 11): is for protocol imap`},
		{"oauth2 over imap", `
    address: "imap.example.com:993"
    auth: oauth2` + oauth, `upstreams.m365.auth: oauth2 is for protocol graph and jmap`},
		{"preset of another protocol", `
    provider: microsoft365-graph
    protocol: imap` + oauth, `upstreams.m365.protocol (line 10): imap, but provider microsoft365-graph is a preset for protocol graph`},
		{"imap preset with graph", `
    provider: outlook
    protocol: graph` + oauth, `upstreams.m365.protocol (line 10): graph, but provider outlook is a preset for protocol imap`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(graphConfig(tc.lines)))
			if err == nil || !mentions(err, tc.want) {
				t.Errorf("error:\n%v\nwant it to contain %q", err, tc.want)
			}
		})
	}
	// A loopback http address is fine: the double in tests, a local proxy.
	mustParse(t, graphConfig(`
    protocol: graph
    auth: oauth2
    address: "http://127.0.0.1:8080/v1.0"`+oauth))
}

func TestPassthroughToGraphRefused(t *testing.T) {
	_, err := Parse([]byte(graphConfig(`
    provider: microsoft365-graph
    oauth2:
      client_id: "abc"`) + `
passthrough:
  upstream: m365
`))
	if err == nil || !strings.Contains(withoutLines(err), `passthrough.upstream: "m365" logs in with OAuth2`) {
		t.Errorf("error %v", err)
	}
}
