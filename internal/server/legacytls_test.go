package server

import (
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

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// legacyGateway starts a gateway whose default listeners (pop3 with STLS,
// pop3s) use TLS 1.2 and modern suites, beside two listeners for old
// devices (legacy: implicit TLS, legacy-stls: STLS) that allow TLS 1.0
// and the legacy suites. All present the same RSA certificate, so a
// refusal is the listener's TLS settings, not the key type.
func legacyGateway(t *testing.T) (addrs map[string]string, ca *testenv.CA, logs *testenv.Buffer) {
	t.Helper()
	f := newFixture(t)
	dir := t.TempDir()
	ca = testenv.NewCA(t)
	leaf := ca.IssueRSA(t, "127.0.0.1")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFileAt(t, certFile, string(leaf.CertPEM))
	writeFileAt(t, keyFile, string(leaf.KeyPEM))
	body, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(body), "  http: \"127.0.0.1:0\"\n", "  pop3s: \"127.0.0.1:0\"\n", 1)
	cfg += fmt.Sprintf(`tls:
  cert_file: %s
  key_file: %s
listeners:
  - name: legacy
    protocol: pop3s
    address: "127.0.0.1:0"
    tls:
      min_version: "1.0"
      legacy_ciphers: true
  - name: legacy-stls
    protocol: pop3
    address: "127.0.0.1:0"
    tls:
      min_version: "1.0"
      legacy_ciphers: true
limits:
  poll_interval: 300s
`, certFile, keyFile)
	writeFileAt(t, f.config, cfg)
	addrs, logs = startServe(t, f.config)
	return addrs, ca, logs
}

// Old clients offer TLS 1.0 with RSA key exchange or 3DES only: a
// listener with legacy_ciphers serves them, a default listener refuses
// them, even when GODEBUG turns those suites back on for Go's defaults.
func TestLegacyTLSGoClient(t *testing.T) {
	t.Setenv("GODEBUG", "tlsrsakex=1,tls3des=1,tls10server=1")
	addrs, ca, logs := legacyGateway(t)
	for _, w := range []string{"listeners[0] (legacy): tls.legacy_ciphers is true", "listeners[0] (legacy): tls.min_version 1.0"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("no warning %q at start:\n%s", w, logs)
		}
	}
	if strings.Contains(logs.String(), "needs an RSA certificate") {
		t.Errorf("an RSA certificate was warned about:\n%s", logs)
	}
	for _, suite := range config.LegacyCipherSuites {
		for _, version := range []uint16{tls.VersionTLS10, tls.VersionTLS12} {
			name := tls.CipherSuiteName(suite) + " " + tls.VersionName(version)
			client := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: version, MaxVersion: version, CipherSuites: []uint16{suite}}
			c, err := pop3client.DialTLS(addrs["legacy"], client)
			if err != nil {
				t.Errorf("%s on the legacy listener: %v", name, err)
			} else {
				st := c.Conn().(*tls.Conn).ConnectionState()
				if st.CipherSuite != suite || st.Version != version {
					t.Errorf("%s on the legacy listener gave %s %s", name, tls.CipherSuiteName(st.CipherSuite), tls.VersionName(st.Version))
				}
				c.Close()
			}
			if c, err := pop3client.DialTLS(addrs["pop3s"], client); err == nil {
				c.Close()
				t.Errorf("%s accepted by the default pop3s listener", name)
			}
			if err := stlsHandshake(addrs["pop3"], client); err == nil {
				t.Errorf("%s accepted by STLS on the default pop3 listener", name)
			}
			if err := stlsHandshake(addrs["legacy-stls"], client); err != nil {
				t.Errorf("%s by STLS on the legacy listener: %v", name, err)
			}
		}
	}
	// TLS 1.0 even with a modern suite is the legacy listener's alone.
	modern10 := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}
	if c, err := pop3client.DialTLS(addrs["pop3s"], modern10); err == nil {
		c.Close()
		t.Error("TLS 1.0 accepted by the default pop3s listener")
	}
	// A modern client on the legacy listener still gets TLS 1.3.
	c, err := pop3client.DialTLS(addrs["legacy"], &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if v := c.Conn().(*tls.Conn).ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("a modern client on the legacy listener got %s", tls.VersionName(v))
	}
	c.Close()
}

// stlsHandshake runs STLS and a TLS handshake with client.
func stlsHandshake(addr string, client *tls.Config) error {
	c, err := pop3client.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.OK("STLS"); err != nil {
		return err
	}
	return tls.Client(c.Conn(), client).Handshake()
}

// POP3 works over the legacy handshake, and CAPA carries the RFC 2449
// capabilities old clients read: EXPIRE NEVER and LOGIN-DELAY before and
// after login, IMPLEMENTATION after.
func TestLegacyTLSSession(t *testing.T) {
	addrs, ca, _ := legacyGateway(t)
	client := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10,
		CipherSuites: []uint16{tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA}}
	c, err := pop3client.DialTLS(addrs["legacy"], client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	capa := func() string {
		t.Helper()
		_, body, err := c.Multi("CAPA")
		if err != nil {
			t.Fatal(err)
		}
		return string(body)
	}
	before := capa()
	for _, want := range []string{"\r\nEXPIRE NEVER\r\n", "\r\nLOGIN-DELAY 300\r\n", "\r\nUSER\r\n"} {
		if !strings.Contains(before, want) {
			t.Errorf("CAPA before login lacks %q:\n%s", want, before)
		}
	}
	if strings.Contains(before, "IMPLEMENTATION") || strings.Contains(before, "STLS") {
		t.Errorf("CAPA before login over TLS:\n%s", before)
	}
	if err := c.Login("alice", "local-pass"); err != nil {
		t.Fatal(err)
	}
	after := capa()
	for _, want := range []string{"\r\nEXPIRE NEVER\r\n", "\r\nLOGIN-DELAY 300\r\n", "\r\nIMPLEMENTATION gateway "} {
		if !strings.Contains(after, want) {
			t.Errorf("CAPA after login lacks %q:\n%s", want, after)
		}
	}
	list, err := c.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("LIST over TLS 1.0 with 3DES: %v, %v", list, err)
	}
	msg, err := c.Retr(1)
	if err != nil || !strings.Contains(string(msg), "hello") {
		t.Fatalf("RETR over TLS 1.0 with 3DES: %q, %v", msg, err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// OpenSSL as an old client: TLS 1.0 with AES128-SHA or AES256-SHA (RSA
// key exchange), implicit and by STLS, logs in and lists on the legacy
// listeners; the default listeners refuse the handshake. (Debian's
// OpenSSL 3 is built without 3DES; TestLegacyTLSGoClient covers it.)
func TestLegacyTLSOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		testenv.Missing(t, "openssl not found: install the Debian package openssl")
	}
	addrs, _, _ := legacyGateway(t)
	session := "USER alice\nPASS local-pass\nLIST\nQUIT\n"
	run := func(addr, cipher string, stls bool) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := []string{"s_client", "-connect", addr, "-tls1", "-cipher", cipher + "@SECLEVEL=0", "-quiet", "-crlf"}
		if stls {
			args = append(args, "-starttls", "pop3")
		}
		cmd := exec.CommandContext(ctx, "openssl", args...)
		cmd.Stdin = strings.NewReader(session)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, cipher := range []string{"AES128-SHA", "AES256-SHA"} {
		for _, stls := range []bool{false, true} {
			legacy, def := addrs["legacy"], addrs["pop3s"]
			if stls {
				legacy, def = addrs["legacy-stls"], addrs["pop3"]
			}
			out, err := run(legacy, cipher, stls)
			if err != nil || !strings.Contains(out, "+OK Logged in.") || !strings.Contains(out, "\n1 ") {
				t.Errorf("openssl -tls1 -cipher %s (STLS %v) on the legacy listener: %v\n%s", cipher, stls, err, out)
			}
			out, err = run(def, cipher, stls)
			if err == nil || strings.Contains(out, "Logged in") {
				t.Errorf("openssl -tls1 -cipher %s (STLS %v) accepted by the default listener:\n%s", cipher, stls, out)
			}
		}
	}
}

// Real clients read the new capabilities: mpop reports LOGIN-DELAY and
// EXPIRE as it understands them, and mpop and curl still fetch.
func TestCapabilitiesRealClients(t *testing.T) {
	f := newFixture(t)
	body, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFileAt(t, f.config, string(body)+"limits:\n  poll_interval: 300s\n")
	addrs, _ := startServe(t, f.config)
	host, port, _ := strings.Cut(addrs["pop3"], ":")

	if _, err := exec.LookPath("mpop"); err != nil {
		testenv.Missing(t, "mpop not found: install the Debian package mpop")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "mpop", "--serverinfo", "--host="+host, "--port="+port, "--tls=off",
			"--auth=user", "--user=alice", "--passwordeval=echo local-pass")
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mpop --serverinfo: %v\n%s", err, out)
		}
		for _, want := range []string{"LOGIN-DELAY 300", "minimum time between logins is 300 seconds", "EXPIRE NEVER", "will never delete mails"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("mpop --serverinfo lacks %q:\n%s", want, out)
			}
		}
	}
	for _, client := range []clienttest.Client{
		clienttest.Mpop(t, addrs["pop3"], "alice", "local-pass"),
		clienttest.Curl(t, addrs["pop3"], "alice", "local-pass"),
	} {
		got := client.Fetch(t, true)
		if len(got) != 1 || !strings.Contains(string(got[0]), "hello") {
			t.Errorf("%s fetched %q", client.Name(), got)
		}
	}
}

// A listener's own certificate is read again on SIGHUP, as the top-level
// one is.
func TestListenerCertificateReload(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	ca := testenv.NewCA(t)
	certFile, keyFile := filepath.Join(dir, "lan.pem"), filepath.Join(dir, "lan.key")
	first := ca.IssueRSA(t, "127.0.0.1")
	writeFileAt(t, certFile, string(first.CertPEM))
	writeFileAt(t, keyFile, string(first.KeyPEM))
	body, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFileAt(t, f.config, string(body)+fmt.Sprintf(`listeners:
  - name: lan
    protocol: pop3s
    address: "127.0.0.1:0"
    tls:
      cert_file: %s
      key_file: %s
`, certFile, keyFile))
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
	serial := func() string {
		conn, err := tls.Dial("tcp", addrs["lan"], &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("TLS to the listener: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	if got := serial(); got != first.Cert.SerialNumber.String() {
		t.Fatalf("the listener presents serial %s, not its own certificate's", got)
	}
	second := ca.IssueRSA(t, "127.0.0.1")
	copyFile(t, writeFile(t, "second.pem", string(second.CertPEM), 0o600), certFile)
	copyFile(t, writeFile(t, "second.key", string(second.KeyPEM), 0o600), keyFile)
	hup <- syscall.SIGHUP
	waitFor(t, func() bool { return serial() == second.Cert.SerialNumber.String() })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// The legacy suites exchange keys by RSA: with another key they serve
// nobody who needs them, which the start says.
func TestLegacyCiphersNeedRSA(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	certFile, keyFile, _ := writeLeaf(t, testenv.NewCA(t), dir, "ecdsa")
	body, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFileAt(t, f.config, string(body)+fmt.Sprintf(`listeners:
  - name: lan
    protocol: pop3s
    address: "127.0.0.1:0"
    tls:
      cert_file: %s
      key_file: %s
      legacy_ciphers: true
`, certFile, keyFile))
	_, logs := startServe(t, f.config)
	if !strings.Contains(logs.String(), "tls.legacy_ciphers needs an RSA certificate") || !strings.Contains(logs.String(), "listener=lan") {
		t.Errorf("an ECDSA certificate with legacy_ciphers was not warned about:\n%s", logs)
	}
}
