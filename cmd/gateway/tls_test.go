package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/pop3client"
	"github.com/pop3gw/gateway/internal/testenv"
)

// writeCert writes a self-signed certificate for 127.0.0.1 and its key as
// PEM files and returns their paths and the certificate.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, name+".pem")
	keyFile = filepath.Join(dir, name+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile, cert
}

func TestServeTLS(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	certFile, keyFile, cert := writeCert(t, dir, "first")
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
	go func() { done <- serve(ctx, f.config, slog.New(slog.DiscardHandler), hup, ready) }()
	var addrs map[string]string
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	clientTLS := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}

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
			out, err := exec.CommandContext(cmdCtx, "curl", "-sS", "--ssl-reqd", "--cacert", certFile,
				"-u", "alice:local-pass", url).CombinedOutput()
			stop()
			if err != nil || !bytes.Contains(out, []byte("hello")) {
				t.Fatalf("curl %s: %v\n%s", url, err, out)
			}
		}
	}

	// SIGHUP swaps the certificate for new connections.
	certFile2, keyFile2, cert2 := writeCert(t, dir, "second")
	copyFile(t, certFile2, liveCert)
	copyFile(t, keyFile2, liveKey)
	hup <- syscall.SIGHUP
	waitFor(t, func() bool {
		conn, err := tls.Dial("tcp", addrs["pop3s"], &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return false
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(cert2.SerialNumber) == 0
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
