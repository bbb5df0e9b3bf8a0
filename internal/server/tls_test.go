package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// writeLeaf writes a certificate for 127.0.0.1 issued by ca, and its key,
// as PEM files and returns their paths.
func writeLeaf(t *testing.T, ca *testenv.CA, dir, name string) (certFile, keyFile string, leaf *testenv.Leaf) {
	t.Helper()
	leaf = ca.Issue(t, "127.0.0.1")
	certFile = filepath.Join(dir, name+".pem")
	keyFile = filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, leaf.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, leaf.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, leaf
}

func TestServeTLS(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	ca := testenv.NewCA(t)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, _ := writeLeaf(t, ca, dir, "first")
	// Install a stable cert path so a reload can swap the files.
	liveCert, liveKey := filepath.Join(dir, "live.pem"), filepath.Join(dir, "live.key")
	copyFile(t, certFile, liveCert)
	copyFile(t, keyFile, liveKey)

	body, _ := os.ReadFile(f.config)
	cfg := strings.Replace(string(body), "  http: \"127.0.0.1:0\"\n", "  pop3s: \"127.0.0.1:0\"\n", 1)
	cfg += fmt.Sprintf("tls:\n  cert_file: %s\n  key_file: %s\n", liveCert, liveKey)
	os.WriteFile(f.config, []byte(cfg), 0o600)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hup := make(chan os.Signal, 1)
	ready := make(chan map[string]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: f.config, Logger: slog.New(slog.DiscardHandler), Ready: func(a map[string]string) { ready <- a }}, hup)
	}()
	var addrs map[string]string
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	clientTLS := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}

	// Implicit TLS.
	c, err := pop3client.DialTLS(addrs["pop3s"], clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}
	if n, _, err := c.Stat(); err != nil || n != 1 {
		t.Fatalf("STAT over TLS: %d, %v", n, err)
	}
	c.Quit()

	// STLS on the cleartext port.
	c, err = pop3client.Dial(addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.OK("STLS"); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c.Conn(), clientTLS)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("STLS handshake: %v", err)
	}
	tc.Close()

	// Real client: curl over pop3s and over STLS, verifying the certificate.
	if _, err := exec.LookPath("curl"); err != nil {
		testenv.Missing(t, "curl not found: install the Debian package curl")
	} else {
		for _, url := range []string{"pop3s://" + addrs["pop3s"] + "/1", "pop3://" + addrs["pop3"] + "/1"} {
			cmdCtx, stop := context.WithTimeout(ctx, 30*time.Second)
			out, err := exec.CommandContext(cmdCtx, "curl", "-sS", "--ssl-reqd", "--cacert", caFile,
				"-u", "alice:local-pass", url).CombinedOutput()
			stop()
			if err != nil || !bytes.Contains(out, []byte("hello")) {
				t.Fatalf("curl %s: %v\n%s", url, err, out)
			}
		}
	}

	// SIGHUP swaps the certificate for new connections.
	certFile2, keyFile2, second := writeLeaf(t, ca, dir, "second")
	copyFile(t, certFile2, liveCert)
	copyFile(t, keyFile2, liveKey)
	hup <- syscall.SIGHUP
	waitFor(t, func() bool {
		conn, err := tls.Dial("tcp", addrs["pop3s"], &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return false
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(second.Cert.SerialNumber) == 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".tmp", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}

// An upstream's certificate is verified unless the config says
// tls_skip_verify, which is warned about at start.
func TestUpstreamCertificateVerification(t *testing.T) {
	mem, err := imapmem.Start("127.0.0.1:0", &imapmem.Options{TLSConfig: testenv.ServerTLS(t, "127.0.0.1"), ImplicitTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	mem.AddUser("alice@example.com", "upstream-secret")
	secret := writeFile(t, "secret", "upstream-secret\n", 0o600)
	hash, err := passwd.Hash("local-pass")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		skip   bool
		wantOK bool
	}{{false, false}, {true, true}} {
		config := writeFile(t, "gateway.yaml", fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
upstreams:
  mem:
    address: %q
    tls: implicit
    tls_skip_verify: %v
users:
  alice:
    password_hash: %q
    upstream: mem
    upstream_user: alice@example.com
    upstream_password_file: %s
`, mem.Addr(), tc.skip, hash, secret), 0o600)
		addrs, logs := startServe(t, config)
		c, err := pop3client.Dial(addrs["pop3"])
		if err != nil {
			t.Fatal(err)
		}
		err = c.Login("alice", "local-pass")
		c.Close()
		if (err == nil) != tc.wantOK {
			t.Errorf("tls_skip_verify %v: login error %v", tc.skip, err)
		}
		warned := strings.Contains(logs.String(), "tls_skip_verify is true")
		if warned != tc.skip {
			t.Errorf("tls_skip_verify %v: warning logged %v", tc.skip, warned)
		}
		if !tc.skip && !strings.Contains(logs.String(), "certificate") {
			t.Errorf("the refused certificate is not named in the log:\n%s", logs)
		}
	}
}
