package config

import (
	"crypto/tls"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Listener is a listening address with TLS settings of its own, beside
// the listen section's: for instance a LAN listener that serves old
// devices with TLS 1.0 and the RSA key exchange, next to a listener on
// the Internet that refuses both. Configured as a list under listeners.
type Listener struct {
	// Name identifies the listener in logs, in metrics and in
	// proxy_protocol.listeners.
	Name     string `yaml:"name"`
	Protocol string `yaml:"protocol"` // one of ListenerProtocols
	Address  string `yaml:"address"`  // host:port
	// TLS overrides the top-level tls section for this listener; a key it
	// leaves out is taken from there.
	TLS *ListenerTLS `yaml:"tls"`
}

// ListenerTLS is a listener's own TLS settings.
type ListenerTLS struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	MinVersion string `yaml:"min_version"` // as tls.min_version
	// LegacyCiphers also offers the cipher suites of LegacyCipherSuites,
	// which old devices need and modern clients never choose: RSA key
	// exchange without forward secrecy, and 3DES (Sweet32). They need an
	// RSA certificate.
	LegacyCiphers bool `yaml:"legacy_ciphers"`
}

// Listener protocols: what a listener of the listeners list serves.
const (
	ProtocolPOP3  = "pop3"  // cleartext POP3, STLS offered when the listener has TLS
	ProtocolPOP3S = "pop3s" // POP3 in implicit TLS
)

// ListenerProtocols are the protocols a listener may have.
var ListenerProtocols = []string{ProtocolPOP3, ProtocolPOP3S}

// reservedListenerNames are the keys of the listen section, which name
// its listeners in logs and in proxy_protocol.listeners.
var reservedListenerNames = []string{"pop3", "pop3s", "http", "submission", "submissions"}

var listenerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// LegacyCipherSuites are the suites legacy_ciphers adds, for devices
// (printers, scanners, Windows XP and old embedded TLS stacks) that offer
// nothing newer. Go's crypto/tls implements them but leaves them out of
// its defaults (RSA key exchange since Go 1.22, 3DES since Go 1.23); listed
// explicitly in a listener's configuration they are offered without any
// GODEBUG setting.
var LegacyCipherSuites = []uint16{
	tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_RSA_WITH_AES_256_CBC_SHA,
	tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
}

// ServerTLS is the TLS one listener offers: its own settings with the
// top-level tls section's filled in.
type ServerTLS struct {
	CertFile, KeyFile string
	MinVersion        uint16 // a crypto/tls version constant
	LegacyCiphers     bool
}

// Enabled reports whether the listener has a certificate.
func (t ServerTLS) Enabled() bool { return t.CertFile != "" && t.KeyFile != "" }

// CipherSuites is the explicit list of TLS 1.0-1.2 suites the listener
// offers: Go's secure suites without RSA key exchange, plus
// LegacyCipherSuites when asked for. Explicit, so that a listener without
// legacy_ciphers refuses those suites whatever GODEBUG says
// (tlsrsakex=1 and tls3des=1 only change Go's defaults).
func (t ServerTLS) CipherSuites() []uint16 {
	var ids []uint16
	for _, s := range tls.CipherSuites() {
		if strings.HasPrefix(s.Name, "TLS_RSA_") || !slices.ContainsFunc(s.SupportedVersions, func(v uint16) bool { return v <= tls.VersionTLS12 }) {
			continue
		}
		ids = append(ids, s.ID)
	}
	if t.LegacyCiphers {
		ids = append(ids, LegacyCipherSuites...)
	}
	return ids
}

// ListenTLS is the TLS of the listen section's listeners: the top-level
// tls section.
func (c *Config) ListenTLS() ServerTLS {
	return ServerTLS{CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile, MinVersion: tlsVersion(c.TLS.MinVersion)}
}

// ListenerTLS is the TLS of a listener of the listeners list.
func (c *Config) ListenerTLS(l *Listener) ServerTLS {
	t := c.ListenTLS()
	if o := l.TLS; o != nil {
		if o.CertFile != "" || o.KeyFile != "" {
			t.CertFile, t.KeyFile = o.CertFile, o.KeyFile
		}
		if o.MinVersion != "" {
			t.MinVersion = tlsVersion(o.MinVersion)
		}
		t.LegacyCiphers = o.LegacyCiphers
	}
	return t
}

// tlsVersion is a tls.min_version setting as a crypto/tls version
// constant: tls.VersionTLS12 for an empty or unknown one.
func tlsVersion(v string) uint16 {
	switch v {
	case "1.0":
		return tls.VersionTLS10
	case "1.1":
		return tls.VersionTLS11
	case "1.3":
		return tls.VersionTLS13
	}
	return tls.VersionTLS12
}

// listener returns the listener of the listeners list named name, or nil.
func (c *Config) listener(name string) *Listener {
	for _, l := range c.Listeners {
		if l != nil && l.Name == name {
			return l
		}
	}
	return nil
}

// hasPOP3Listener reports whether a listener of the list serves POP3.
func (c *Config) hasPOP3Listener() bool {
	return slices.ContainsFunc(c.Listeners, func(l *Listener) bool {
		return l != nil && (l.Protocol == ProtocolPOP3 || l.Protocol == ProtocolPOP3S)
	})
}

// item names an element of a list for a problem: its path, and the line
// of its first key when the file has it.
func (c *Config) item(path string) string {
	line := 0
	for k, l := range c.lines {
		if strings.HasPrefix(k, path+".") && (line == 0 || l < line) {
			line = l
		}
	}
	if line == 0 {
		return path
	}
	return fmt.Sprintf("%s (line %d)", path, line)
}

// validateListeners checks the listeners list; seen holds the addresses
// of the listen section, by key.
func (c *Config) validateListeners(p *problems, seen map[string]string) {
	names := map[string]int{}
	for i, l := range c.Listeners {
		path := fmt.Sprintf("listeners[%d]", i)
		if l == nil {
			p.add(c.item(path), "is empty")
			continue
		}
		switch {
		case l.Name == "":
			p.add(c.item(path), "name is required")
		case slices.Contains(reservedListenerNames, l.Name):
			p.add(c.key(path+".name"), "%q is the name of a listen key; choose another", l.Name)
		case !listenerNameRE.MatchString(l.Name):
			p.add(c.key(path+".name"), "%q: use up to 32 lower-case letters, digits, - and _", l.Name)
		default:
			if j, dup := names[l.Name]; dup {
				p.add(c.key(path+".name"), "%q is also the name of listeners[%d]", l.Name, j)
			}
			names[l.Name] = i
		}
		if l.Protocol == "" {
			p.add(c.item(path), "protocol is required (one of %s)", strings.Join(ListenerProtocols, ", "))
		} else if !slices.Contains(ListenerProtocols, l.Protocol) {
			p.add(c.key(path+".protocol"), "%q is not one of %s", l.Protocol, strings.Join(ListenerProtocols, ", "))
		}
		if l.Address == "" {
			p.add(c.item(path), "address is required (host:port)")
		} else {
			p.addr(c.key(path+".address"), l.Address, true)
			if other, dup := seen[l.Address]; dup && !strings.HasSuffix(l.Address, ":0") {
				p.add(c.key(path+".address"), "same address as %s", other)
			}
			seen[l.Address] = path
		}
		if o := l.TLS; o != nil {
			if (o.CertFile == "") != (o.KeyFile == "") {
				p.add(c.key(path+".tls"), "set both cert_file and key_file, or neither to use tls.cert_file and tls.key_file")
			}
			if o.MinVersion != "" {
				p.oneOf(c.key(path+".tls.min_version"), o.MinVersion, tlsVersions)
			}
		}
		t := c.ListenerTLS(l)
		switch {
		case l.Protocol == ProtocolPOP3S && !t.Enabled():
			p.add(c.item(path), "protocol pop3s needs a certificate: set tls.cert_file and tls.key_file, here or at the top level")
		case l.TLS != nil && !t.Enabled():
			p.add(c.key(path+".tls"), "set, but no certificate: set cert_file and key_file, here or at the top level")
		}
	}
}

// listenerWarnings are the warnings of the listeners list.
func (c *Config) listenerWarnings() []string {
	var w []string
	for i, l := range c.Listeners {
		if l == nil {
			continue
		}
		path := fmt.Sprintf("listeners[%d] (%s)", i, l.Name)
		if l.Protocol == ProtocolPOP3 && !c.ListenerTLS(l).Enabled() && !c.Auth.AllowInsecure && (c.Auth.RequireTLSOnLoopback || !isLoopback(l.Address)) {
			w = append(w, fmt.Sprintf("%s: no TLS (no certificate here or in tls) and auth.allow_insecure is false: only loopback clients can log in, if any", path))
		}
		if l.TLS == nil {
			continue
		}
		if v := l.TLS.MinVersion; v == "1.0" || v == "1.1" {
			w = append(w, fmt.Sprintf("%s: tls.min_version %s is obsolete and weak; use it only for very old clients, on a network you trust", path, v))
		}
		if l.TLS.LegacyCiphers {
			w = append(w, fmt.Sprintf("%s: tls.legacy_ciphers is true: %s offers TLS_RSA_WITH_AES_128_CBC_SHA, TLS_RSA_WITH_AES_256_CBC_SHA and TLS_RSA_WITH_3DES_EDE_CBC_SHA to clients that offer nothing better (no forward secrecy; 3DES is open to Sweet32); use it only for old devices, on a network you trust", path, l.Address))
		}
	}
	return w
}
