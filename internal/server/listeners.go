package server

import (
	"crypto/rsa"
	"crypto/tls"
	"fmt"

	"github.com/pop3gw/gateway/internal/config"
)

// listenerTLS is the TLS of one listener of the listeners list: its
// configuration and the certificate it presents, replaced on reload.
type listenerTLS struct {
	settings config.ServerTLS
	cert     certificate
	config   *tls.Config // nil: no TLS on this listener
}

// listenerTLS makes the TLS configuration of each listener of the
// listeners list and loads its certificate.
func (s *Server) listenerTLS(cfg *config.Config) (map[string]*listenerTLS, error) {
	s.listenerCerts = make(map[string]*listenerTLS, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		lt := &listenerTLS{settings: cfg.ListenerTLS(l)}
		lt.config = serverTLS(lt.settings, &lt.cert)
		if lt.config != nil {
			if err := lt.load(); err != nil {
				return nil, fmt.Errorf("listeners %s: %w", l.Name, err)
			}
			s.warnLegacyCert(l.Name, lt)
		}
		s.listenerCerts[l.Name] = lt
	}
	return s.listenerCerts, nil
}

func (lt *listenerTLS) load() error {
	return lt.cert.load(lt.settings.CertFile, lt.settings.KeyFile)
}

// reloadListenerCerts reads again the certificates of the listeners that
// have TLS, from the files the new configuration names for them. The
// listeners themselves and their other TLS settings change at the next
// start.
func (s *Server) reloadListenerCerts(cfg *config.Config) error {
	for _, l := range cfg.Listeners {
		lt := s.listenerCerts[l.Name]
		if lt == nil || lt.config == nil {
			continue
		}
		next := cfg.ListenerTLS(l)
		if !next.Enabled() {
			continue
		}
		if err := lt.cert.load(next.CertFile, next.KeyFile); err != nil {
			return fmt.Errorf("listeners %s: %w", l.Name, err)
		}
		s.warnLegacyCert(l.Name, lt)
	}
	return nil
}

// warnLegacyCert warns when a listener offers the legacy suites with a
// certificate they cannot use: RSA key exchange needs an RSA key, so with
// any other key the old devices those suites are for cannot connect.
func (s *Server) warnLegacyCert(name string, lt *listenerTLS) {
	if !lt.settings.LegacyCiphers {
		return
	}
	if c := lt.cert.current.Load(); c != nil {
		if _, ok := c.PrivateKey.(*rsa.PrivateKey); !ok {
			s.log.Warn("tls.legacy_ciphers needs an RSA certificate; this listener's key is not RSA, so clients that offer only the legacy suites cannot connect",
				"listener", name, "cert_file", lt.settings.CertFile, "key", fmt.Sprintf("%T", c.PrivateKey))
		}
	}
}
