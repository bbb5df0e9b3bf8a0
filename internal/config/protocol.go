package config

import (
	"fmt"
	"net"
	"net/url"
)

// Protocols an upstream speaks (CONTRACT.md, upstreams.NAME.protocol).
const (
	ProtocolIMAP  = "imap"
	ProtocolJMAP  = "jmap"  // RFC 8620/8621; address is the session URL
	ProtocolGraph = "graph" // Microsoft Graph; address is the API's base URL
)

// Protocols lists the accepted values of an upstream's protocol key.
var Protocols = []string{ProtocolIMAP, ProtocolJMAP, ProtocolGraph}

// AuthOAuth2 is an OAuth2 bearer token in the HTTP Authorization header
// (RFC 6750 §2.1): how Graph, and JMAP servers that take tokens, are
// logged in to. IMAP carries tokens in SASL instead (xoauth2,
// oauthbearer).
const AuthOAuth2 = "oauth2"

// Served returns nil when this version of the gateway can serve the
// upstream's protocol, and otherwise an error naming the key. The
// configuration accepts every protocol of the contract, and each has
// its store; a protocol added to the contract before its store stays
// refused here.
func (u *Upstream) Served() error {
	switch u.Protocol {
	case ProtocolIMAP, ProtocolJMAP, ProtocolGraph, "":
		return nil
	default:
		return fmt.Errorf("upstreams.%s.protocol: %s is not served yet: this version of the gateway has no %s store joined to POP3; use protocol imap where the mailbox allows IMAP", u.Name, u.Protocol, u.Protocol)
	}
}

// protocol checks what depends on an upstream's protocol: the form of its
// address, the login mechanisms it takes, and the IMAP-only keys.
func (p *problems) protocol(c *Config, path string, u *Upstream) {
	checkOneOf(p, path+".protocol", u.Protocol, Protocols)
	if preset, ok := Presets[u.Provider]; ok && preset.protocol() != u.Protocol {
		p.add(c.key(path+".protocol"), "%s, but provider %s is a preset for protocol %s; remove one of them", u.Protocol, u.Provider, preset.protocol())
	}
	switch u.Protocol {
	case ProtocolIMAP:
		if u.Auth == AuthOAuth2 {
			p.add(path+".auth", "oauth2 is for protocol graph and jmap; IMAP takes OAuth2 tokens with auth xoauth2 or oauthbearer")
		}
		switch {
		case u.Address != "":
			p.addr(path+".address", u.Address, false)
		case u.Provider == "":
			p.add(path+".address", "required (or set provider)")
		}
	case ProtocolJMAP, ProtocolGraph:
		what := map[string]string{ProtocolJMAP: "the JMAP session URL, such as https://api.fastmail.com/jmap/session", ProtocolGraph: "the Graph base URL, such as https://graph.microsoft.com/v1.0"}[u.Protocol]
		switch {
		case u.Address == "" && u.Provider == "":
			p.add(path+".address", "required: %s (or set provider)", what)
		case u.Address != "" && !httpURL(u.Address):
			p.add(path+".address", "%q is not %s; protocol %s takes an https URL (http only on a loopback address)", u.Address, what, u.Protocol)
		}
		for _, k := range []struct {
			key string
			set bool
		}{
			{"tls", u.TLS != "" && u.TLS != "implicit"},
			{"server_name", u.ServerName != ""},
			{"send_client_ip", u.SendClientIP},
		} {
			if k.set {
				p.add(c.key(path+"."+k.key), "is for protocol imap; with protocol %s the address's scheme says whether TLS is used", u.Protocol)
			}
		}
		if u.Protocol == ProtocolGraph && u.Auth != AuthOAuth2 {
			p.add(c.key(path+".auth"), "protocol graph logs in with OAuth2 only: set auth to oauth2 (provider microsoft365-graph does), not %s", u.Auth)
		}
		if u.Protocol == ProtocolJMAP && u.Auth != AuthPassword && u.Auth != AuthOAuth2 {
			p.add(c.key(path+".auth"), "protocol jmap takes password (HTTP Basic) or oauth2 (a bearer token), not %s", u.Auth)
		}
	}
}

// httpURL reports whether s is an https URL, or an http one on a loopback
// address (a test double, a local proxy).
func httpURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return false
	}
	switch u.Scheme {
	case "https":
		return true
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); ip != nil {
			return ip.IsLoopback()
		}
		return host == "localhost"
	}
	return false
}
