package server

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/export"
	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/oauthtest"
	"github.com/pop3gw/gateway/upstream"
)

// TestExportOneOffOAuth2: `gateway export -provider NAME -login ADDRESS`
// for a provider that logs in with OAuth2 runs the device grant, waits
// for the approval, and exports with the token.
func TestExportOneOffOAuth2(t *testing.T) {
	p := oauthtest.NewProvider(t)
	p.ClientSecret = "" // a public client, as a command line tool is
	mem, err := imapmem.Start("127.0.0.1:0", &imapmem.Options{Bearer: p.ValidFor})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	const login = "carol@example.com"
	mem.AddUser(login, "unused")
	mem.Append(login, "INBOX", []byte("Subject: a\r\n\r\na\r\n"), []byte("Subject: b\r\n\r\nb\r\n"))
	config.Presets["test-oauth"] = config.Preset{
		Address: mem.Addr(), TLS: upstream.SecurityNone, Auth: config.AuthXOAuth2,
		TokenURL: p.TokenURL(), DeviceAuthURL: p.DeviceAuthURL(), Scopes: []string{"mail"},
	}
	t.Cleanup(func() { delete(config.Presets, "test-oauth") })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if codes := p.PendingDeviceCodes(); len(codes) > 0 {
				p.ApproveDevice(codes[0], login)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	dir := t.TempDir()
	sum, err := Export(ctx, ExportAccount{Provider: "test-oauth", Login: login, OAuth2ClientID: p.ClientID},
		export.Options{Dir: dir}, stdin, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Exported != 2 {
		t.Errorf("exported %d, want 2", sum.Exported)
	}
	if ok, _ := mem.BearerLogins(); ok == 0 {
		t.Error("no OAuth2 login upstream")
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "INBOX", "*.eml")); len(files) != 2 {
		t.Errorf("files %v, want 2", files)
	}
}
