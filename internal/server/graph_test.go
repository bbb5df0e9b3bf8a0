package server

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/secrets"
	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/internal/testkit/oauthtest"
)

// A Microsoft 365 mailbox through Graph, from the first authorisation to
// serving it: `gateway oauth2 login` with the microsoft365-graph preset
// (its device grant, against a local provider) stores a token the Graph
// store logs in with; `gateway check` lists the mailbox and says where
// deletes go; `gateway serve` serves it over POP3, reports the Graph
// upstream ready and its calls in the metrics. Graph is the double of Microsoft's documented API,
// accepting the provider's tokens.
func TestGraphUpstreamServed(t *testing.T) {
	p := oauthtest.NewProvider(t)
	double := graphdouble.New(t)
	double.TokensFrom(func(tok string) (string, bool) { return bobUpstream, p.ValidFor(bobUpstream, tok) })
	box := double.Mailbox(bobUpstream)
	box.Add("inbox", graphdouble.Msg{MessageID: "<1@x>", MIME: []byte("Subject: one\r\n\r\nfirst\r\n")})
	box.Add("inbox", graphdouble.Msg{MessageID: "<2@x>", MIME: []byte("Subject: two\n\nbare LF\n")})

	_, keyText, err := secrets.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "secrets.key")
	secretFile := filepath.Join(dir, "client-secret")
	tokenFile := filepath.Join(dir, "tokens", "bob.token")
	os.WriteFile(keyFile, []byte(keyText+"\n"), 0o600)
	os.WriteFile(secretFile, []byte(p.ClientSecret+"\n"), 0o600)
	hash, err := passwd.Hash("bob-local")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "gateway.yaml")
	text := fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
  http: "127.0.0.1:0"
upstreams:
  m365:
    provider: microsoft365-graph
    address: %q
    oauth2:
      client_id: %q
      client_secret_file: %s
      auth_url: %s
      token_url: %s
      device_auth_url: %s
users:
  bob:
    password_hash: %q
    upstream: m365
    upstream_user: %s
    oauth2_token_file: %s
secrets:
  key_file: %s
`, double.URL, p.ClientID, secretFile, p.AuthURL(), p.TokenURL(), p.DeviceAuthURL(), hash, bobUpstream, tokenFile, keyFile)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	r := startCLI("oauth2", "login", "-config", path, "-user", "bob")
	r.waitLine(t, func(l string) bool { return strings.Contains(l, "enter the code") })
	codes := p.PendingDeviceCodes()
	if len(codes) != 1 {
		t.Fatalf("pending device codes %q", codes)
	}
	if scope := p.LastScope(); !strings.Contains(scope, "Mail.ReadWrite") || !strings.Contains(scope, "offline_access") {
		t.Fatalf("device grant asked for scope %q", scope)
	}
	p.ApproveDevice(codes[0], bobUpstream)
	if code, out := r.wait(t); code != 0 || !strings.Contains(out, "Checked: logged in to upstream m365 as "+bobUpstream+", 2 messages in INBOX") {
		t.Fatalf("oauth2 login: exit %d:\n%s", code, out)
	}

	var out, errOut bytes.Buffer
	if code := checkExit(path, &out, &errOut); code != 0 || !strings.Contains(out.String(), `user bob (upstream m365): ok, 2 messages; deleted messages are moved to "Deleted Items" (marked \Trash)`) {
		t.Fatalf("gateway check: exit %d:\n%s%s", code, out.String(), errOut.String())
	}

	addrs, logs := startServe(t, path)
	if n, err := fetchAll(addrs["pop3"]); err != nil || n != 2 {
		t.Fatalf("POP3 session: %d messages, %v", n, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addrs["http"] + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz: %d %s", resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, metrics := httpGet(t, "http://"+addrs["http"]+"/metrics")
	for _, op := range []string{"select", "list", "fetch"} {
		if !strings.Contains(metrics, `pop3gw_upstream_duration_seconds_count{operation="`+op+`"}`) {
			t.Errorf("no %s operation in the metrics", op)
		}
	}
	assertNoSecrets(t, logs.String(), []string{"bob-local", keyText, p.ClientSecret})
}
