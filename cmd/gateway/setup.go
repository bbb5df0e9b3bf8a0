package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// gatewayConfig turns the file's settings into the proxy's.
func gatewayConfig(cfg *config.Config) (*proxy.Config, error) {
	pc := &proxy.Config{
		Upstreams: make(map[string]*proxy.Upstream),
		Users:     make(map[string]*proxy.User),
	}
	for name, u := range cfg.Upstreams {
		if u.Address == "" {
			return nil, fmt.Errorf("upstreams.%s: provider presets (%q) are not implemented yet: set address and tls", name, u.Provider)
		}
		tlsConfig, err := upstreamTLS(u)
		if err != nil {
			return nil, fmt.Errorf("upstreams.%s: %w", name, err)
		}
		pc.Upstreams[name] = &proxy.Upstream{
			Name: name,
			Server: upstream.Server{
				Address:   u.Address,
				Security:  upstream.Security(u.TLS),
				TLSConfig: tlsConfig,
				Timeout:   time.Duration(u.Timeout),
			},
			Mailbox:      u.Mailbox,
			OnDelete:     upstream.DeleteMode(u.OnDelete),
			Trash:        u.TrashMailbox,
			NoFetchAhead: u.FetchAhead != nil && !*u.FetchAhead,
		}
		if k := u.KeepConnection; k != nil {
			pc.Upstreams[name].KeepConnection = time.Duration(*k)
			if *k == 0 {
				pc.Upstreams[name].KeepConnection = -1 // log out at once
			}
		}
	}
	for name, u := range cfg.Users {
		pc.Users[name] = &proxy.User{
			Name:             name,
			PasswordHash:     u.PasswordHash,
			Upstream:         u.Upstream,
			UpstreamUser:     u.UpstreamUser,
			UpstreamPassword: u.UpstreamPassword,
		}
	}
	if pt := cfg.Passthrough; pt != nil {
		domains := make(map[string]string, len(pt.Domains))
		for d, up := range pt.Domains {
			domains[strings.ToLower(d)] = up
		}
		pc.Passthrough = &proxy.Passthrough{Upstream: pt.Upstream, Domains: domains}
	}
	return pc, nil
}

// upstreamTLS verifies the upstream against the system roots plus ca_file.
func upstreamTLS(u *config.Upstream) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.ServerName}
	if u.CAFile != "" {
		pem, err := os.ReadFile(u.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate found", u.CAFile)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// certificate holds the listener certificate, replaced on reload.
type certificate struct {
	current atomic.Pointer[tls.Certificate]
}

func (c *certificate) load(certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	c.current.Store(&cert)
	return nil
}

// serverTLS returns the listeners' TLS configuration, or nil when the file
// configures none.
func serverTLS(cfg *config.Config, cert *certificate) *tls.Config {
	if cfg.TLS.CertFile == "" {
		return nil
	}
	return &tls.Config{
		MinVersion: cfg.MinTLSVersion(),
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert.current.Load(), nil
		},
	}
}
