package config

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
	"time"
)

const withListeners = minimal + `
tls:
  cert_file: /etc/gateway/cert.pem
  key_file: /etc/gateway/key.pem
listeners:
  - name: lan
    protocol: pop3s
    address: "192.168.1.10:995"
    tls:
      min_version: "1.0"
      legacy_ciphers: true
  - name: lan-stls
    protocol: pop3
    address: "192.168.1.10:110"
    tls:
      cert_file: /etc/gateway/lan.pem
      key_file: /etc/gateway/lan.key
proxy_protocol:
  listeners: [pop3, lan-stls]
  trusted: ["10.0.0.0/8"]
`

func TestListeners(t *testing.T) {
	c := mustParse(t, withListeners)
	if len(c.Listeners) != 2 {
		t.Fatalf("listeners = %+v", c.Listeners)
	}
	def := c.ListenTLS()
	if def.MinVersion != tls.VersionTLS12 || def.LegacyCiphers || def.CertFile != "/etc/gateway/cert.pem" {
		t.Errorf("top-level TLS = %+v", def)
	}
	lan := c.ListenerTLS(c.Listeners[0])
	want := ServerTLS{CertFile: "/etc/gateway/cert.pem", KeyFile: "/etc/gateway/key.pem", MinVersion: tls.VersionTLS10, LegacyCiphers: true}
	if lan != want {
		t.Errorf("lan TLS = %+v, want %+v (the certificate inherited)", lan, want)
	}
	stls := c.ListenerTLS(c.Listeners[1])
	want = ServerTLS{CertFile: "/etc/gateway/lan.pem", KeyFile: "/etc/gateway/lan.key", MinVersion: tls.VersionTLS12}
	if stls != want {
		t.Errorf("lan-stls TLS = %+v, want %+v", stls, want)
	}
	for _, id := range LegacyCipherSuites {
		if !slices.Contains(lan.CipherSuites(), id) {
			t.Errorf("legacy listener lacks %s", tls.CipherSuiteName(id))
		}
		if slices.Contains(def.CipherSuites(), id) || slices.Contains(stls.CipherSuites(), id) {
			t.Errorf("a listener without legacy_ciphers offers %s", tls.CipherSuiteName(id))
		}
	}
	for _, id := range def.CipherSuites() {
		if name := tls.CipherSuiteName(id); !strings.HasPrefix(name, "TLS_ECDHE_") {
			t.Errorf("default suites include %s", name)
		}
	}
	if !c.ProxyProtocol.Enabled("lan-stls") || c.ProxyProtocol.Enabled("lan") {
		t.Error("proxy_protocol.listeners does not name listeners by their names")
	}
	warnings := strings.Join(c.Warnings(), "\n")
	for _, w := range []string{"listeners[0] (lan): tls.min_version 1.0", "listeners[0] (lan): tls.legacy_ciphers is true", "TLS_RSA_WITH_3DES_EDE_CBC_SHA"} {
		if !strings.Contains(warnings, w) {
			t.Errorf("warnings lack %q:\n%s", w, warnings)
		}
	}
	if strings.Contains(warnings, "lan-stls") {
		t.Errorf("a listener with modern TLS is warned about:\n%s", warnings)
	}

	plain := mustParse(t, minimal+"listeners:\n  - {name: lan, protocol: pop3, address: \"192.168.1.10:110\"}\n")
	if w := strings.Join(plain.Warnings(), "\n"); !strings.Contains(w, "listeners[0] (lan): no TLS") {
		t.Errorf("a cleartext listener on the network is not warned about:\n%s", w)
	}

	// A listener is enough to serve POP3 without the listen section's.
	only := strings.Replace(minimal, `  pop3: "127.0.0.1:1110"`, `  http: "127.0.0.1:9110"`, 1) + `
listeners:
  - {name: lan, protocol: pop3, address: "127.0.0.1:1110"}
`
	mustParse(t, only)
}

func TestListenerValidation(t *testing.T) {
	for _, tc := range []struct{ extra, want string }{
		{"listeners:\n  - {protocol: pop3, address: \"127.0.0.1:2110\"}\n", "listeners[0] (line 14): name is required"},
		{"listeners:\n  - {name: pop3s, protocol: pop3, address: \"127.0.0.1:2110\"}\n", `listeners[0].name (line 14): "pop3s" is the name of a listen key`},
		{"listeners:\n  - {name: Big Name, protocol: pop3, address: \"127.0.0.1:2110\"}\n", `"Big Name": use up to 32 lower-case letters`},
		{"listeners:\n  - {name: a, protocol: pop3, address: \"127.0.0.1:2110\"}\n  - {name: a, protocol: pop3, address: \"127.0.0.1:2111\"}\n", `listeners[1].name (line 15): "a" is also the name of listeners[0]`},
		{"listeners:\n  - {name: a, protocol: imap, address: \"127.0.0.1:2110\"}\n", `listeners[0].protocol (line 14): "imap" is not one of pop3, pop3s`},
		{"listeners:\n  - {name: a, address: \"127.0.0.1:2110\"}\n", "listeners[0] (line 14): protocol is required"},
		{"listeners:\n  - {name: a, protocol: pop3}\n", "listeners[0] (line 14): address is required"},
		{"listeners:\n  - {name: a, protocol: pop3, address: \"127.0.0.1:1110\"}\n", "listeners[0].address (line 14): same address as pop3"},
		{"listeners:\n  - {name: a, protocol: pop3s, address: \"127.0.0.1:2110\"}\n", "listeners[0] (line 14): protocol pop3s needs a certificate"},
		{"listeners:\n  - name: a\n    protocol: pop3\n    address: \"127.0.0.1:2110\"\n    tls: {legacy_ciphers: true}\n", "listeners[0].tls (line 17): set, but no certificate"},
		{"listeners:\n  - name: a\n    protocol: pop3\n    address: \"127.0.0.1:2110\"\n    tls: {cert_file: /c.pem}\n", "listeners[0].tls (line 17): set both cert_file and key_file"},
		{"listeners:\n  - name: a\n    protocol: pop3\n    address: \"127.0.0.1:2110\"\n    tls: {cert_file: /c.pem, key_file: /k.pem, min_version: \"0.9\"}\n", `listeners[0].tls.min_version (line 17): "0.9" is not one of 1.0, 1.1, 1.2, 1.3`},
		{"listeners:\n  - name: a\n    protocol: pop3\n    address: \"127.0.0.1:2110\"\n    tls: {ciphers: all}\n", `unknown key "ciphers" (valid keys: cert_file, key_file, min_version, legacy_ciphers)`},
		{"tls:\n  cert_file: /c.pem\n  key_file: /k.pem\n  legacy_ciphers: true\n", `unknown key "legacy_ciphers"`},
		{"proxy_protocol:\n  listeners: [lan]\n  trusted: [10.0.0.0/8]\n", `"lan" is not pop3, pop3s, submission or submissions, nor the name of a listener in listeners`},
		{"limits:\n  poll_interval: 1500ms\n", "limits.poll_interval (line 14): must be whole seconds from 0s to 24h, not 1.5s"},
		{"limits:\n  poll_interval: 25h\n", "limits.poll_interval (line 14): must be whole seconds"},
	} {
		_, err := Parse([]byte(minimal + tc.extra))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("with\n%s\nerror = %v\nwant it to contain %q", tc.extra, err, tc.want)
		}
	}
}

func TestPollInterval(t *testing.T) {
	if c := mustParse(t, minimal); c.Limits.PollInterval != 0 {
		t.Errorf("default poll_interval = %v, want 0 (nothing announced)", c.Limits.PollInterval)
	}
	c := mustParse(t, minimal+"limits:\n  poll_interval: 5m\n")
	if time.Duration(c.Limits.PollInterval) != 5*time.Minute {
		t.Errorf("poll_interval = %v", c.Limits.PollInterval)
	}
}
