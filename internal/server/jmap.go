package server

import (
	"crypto/tls"
	"net/http"
	"time"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream/jmap"
)

// jmapUpstream makes the upstream a JMAP store (RFC 8620/8621): address
// is its session URL, or the server's base URL; auth password is HTTP
// Basic, oauth2 a bearer token (upstream.Bearer: the store asks the
// token source again when one is refused).
func jmapUpstream(pu *proxy.Upstream, u *config.Upstream, tlsConfig *tls.Config) error {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	timeout := time.Duration(u.Timeout)
	tr.ResponseHeaderTimeout = timeout
	if timeout > 0 {
		// A handshake that stalls is an upstream that does not answer.
		tr.TLSHandshakeTimeout = min(tr.TLSHandshakeTimeout, timeout)
	}
	store, err := jmap.New(jmap.Options{SessionURL: u.Address, HTTPClient: &http.Client{Transport: tr}, Timeout: timeout})
	if err != nil {
		return err
	}
	pu.Store = proxy.JMAPStore(store)
	return nil
}
