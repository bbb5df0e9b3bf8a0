package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/oauth"
	"github.com/pop3gw/gateway/internal/secrets"
	"github.com/pop3gw/gateway/internal/state/redisstate"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
)

// setup turns the file's settings into the proxy's. It outlives reloads:
// the OAuth2 token sources it made are reused while their settings stay
// the same, so a refresh under way is never raced by a second source
// holding the same refresh token.
type setup struct {
	path string // the config file, for the hints in error messages
	log  *slog.Logger
	// observe, when set, gives each upstream's Observe function.
	observe func(upstream string) func(op string, d time.Duration, err error)

	mu      sync.Mutex
	sources map[string]*tokenSource // by token file
}

type tokenSource struct {
	src         *oauth.Source
	fingerprint string
}

func newSetup(path string, log *slog.Logger) *setup {
	if log == nil {
		log = slog.Default()
	}
	return &setup{path: path, log: log, sources: make(map[string]*tokenSource)}
}

// gatewayConfig turns the file's settings into the proxy's.
func (st *setup) gatewayConfig(cfg *config.Config) (*proxy.Config, error) {
	pc := &proxy.Config{
		Upstreams: make(map[string]*proxy.Upstream),
		Users:     make(map[string]*proxy.User),
	}
	var key *secrets.Key
	clients := make(map[string]*oauth.Client)
	for name, u := range cfg.Upstreams {
		// A protocol without its store is refused at start rather than
		// an API URL dialled as an IMAP server.
		// rather than dial an API URL as an IMAP server.
		if err := u.Served(); err != nil {
			return nil, err
		}
		tlsConfig, err := upstreamTLS(u)
		if err != nil {
			return nil, fmt.Errorf("upstreams.%s: %w", name, err)
		}
		pc.Upstreams[name] = &proxy.Upstream{
			Name: name,
			Server: upstream.Server{
				Address:   u.Address,
				Security:  u.TLS,
				TLSConfig: tlsConfig,
				Timeout:   time.Duration(u.Timeout),
			},
			Mailbox:      u.Mailbox,
			OnDelete:     u.OnDelete,
			Trash:        u.TrashMailbox,
			NoFetchAhead: u.FetchAhead != nil && !*u.FetchAhead,
		}
		pc.Upstreams[name].Server.SendClientIP = u.SendClientIP
		pc.Upstreams[name].PassthroughFailures = u.PassthroughFailures
		if st.observe != nil {
			pc.Upstreams[name].Server.Observe = st.observe(name)
		}
		if u.Protocol == config.ProtocolGraph {
			opts := graph.Options{
				BaseURL:    u.Address,
				HTTPClient: graphHTTP(tlsConfig, time.Duration(u.Timeout)),
				Timeout:    time.Duration(u.Timeout),
			}
			if st.observe != nil {
				opts.Observe = st.observe(name)
			}
			pc.Upstreams[name].Store = proxy.GraphStore(graph.NewStore(opts))
		}
		if u.Protocol == config.ProtocolJMAP {
			if err := jmapUpstream(pc.Upstreams[name], u, tlsConfig); err != nil {
				return nil, fmt.Errorf("upstreams.%s: %w", name, err)
			}
		}
		if u.OAuthEnabled() {
			pc.Upstreams[name].OAuth2 = map[string]string{
				config.AuthXOAuth2: upstream.XOAuth2, config.AuthOAuthBearer: upstream.OAuthBearer,
				config.AuthOAuth2: upstream.Bearer,
			}[u.Auth]
			if clients[name], err = oauthClient(u); err != nil {
				return nil, fmt.Errorf("upstreams.%s: %w", name, err)
			}
		}
		if k := u.KeepConnection; k != nil {
			pc.Upstreams[name].KeepConnection = time.Duration(*k)
			if *k == 0 {
				pc.Upstreams[name].KeepConnection = -1 // log out at once
			}
		}
	}
	for name, u := range cfg.Users {
		pu := &proxy.User{
			Name:             name,
			PasswordHash:     u.PasswordHash,
			Upstream:         u.Upstream,
			UpstreamUser:     u.UpstreamUser,
			UpstreamPassword: u.UpstreamPassword,
		}
		if c := clients[u.Upstream]; c != nil {
			if key == nil {
				var err error
				if key, err = cfg.SealingKey(); err != nil {
					return nil, err
				}
			}
			pu.UpstreamToken = st.tokenFunc(name, u.OAuth2TokenFile, c, key)
		}
		pc.Users[name] = pu
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

// graphHTTP is the HTTP client of a Graph upstream: its TLS settings
// (ca_file, tls_skip_verify) and timeout.
func graphHTTP(tlsConfig *tls.Config, timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = graph.DefaultTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	tr.ResponseHeaderTimeout = timeout
	// A handshake that stalls is an upstream that does not answer.
	tr.TLSHandshakeTimeout = min(tr.TLSHandshakeTimeout, timeout)
	tr.MaxIdleConnsPerHost = graph.DefaultConcurrency
	return &http.Client{Transport: tr}
}

// oauthClient is the upstream's registered OAuth2 application.
func oauthClient(u *config.Upstream) (*oauth.Client, error) {
	o := u.OAuth2
	secret, err := o.ClientSecret()
	if err != nil {
		return nil, err
	}
	endpoint := oauth2.Endpoint{AuthURL: o.AuthURL, TokenURL: o.TokenURL, DeviceAuthURL: o.DeviceAuthURL}
	if secret == "" {
		// A public client (Microsoft's "mobile and desktop" applications)
		// sends its client_id in the form; HTTP Basic with an empty
		// secret is refused by some providers.
		endpoint.AuthStyle = oauth2.AuthStyleInParams
	}
	return &oauth.Client{Config: &oauth2.Config{
		ClientID:     o.ClientID,
		ClientSecret: secret,
		Endpoint:     endpoint,
		Scopes:       o.Scopes,
		RedirectURL:  o.RedirectURL,
	}}, nil
}

// tokenFunc gives a user's access tokens from the token source of its
// file, and turns a missing or refused grant into an instruction for the
// operator.
func (st *setup) tokenFunc(user, file string, c *oauth.Client, key *secrets.Key) func(context.Context, bool) (string, error) {
	cfg := c.Config
	fingerprint := strings.Join(append([]string{user, cfg.ClientID, cfg.ClientSecret, cfg.Endpoint.TokenURL, key.ID()}, cfg.Scopes...), "\x00")
	st.mu.Lock()
	ts := st.sources[file]
	if ts == nil || ts.fingerprint != fingerprint {
		store := &oauth.Store{Path: file, Key: key, Context: config.TokenContext(user)}
		ts = &tokenSource{src: oauth.NewSource(c, store, st.log.With("user", user)), fingerprint: fingerprint}
		st.sources[file] = ts
	}
	st.mu.Unlock()
	return func(ctx context.Context, refresh bool) (string, error) {
		tok, err := ts.src.AccessToken(ctx, refresh)
		if errors.Is(err, oauth.ErrNoToken) || errors.Is(err, oauth.ErrRefused) {
			return "", fmt.Errorf("%w: %w; run `gateway oauth2 login -config %s -user %s`", proxy.ErrNeedsAuthorization, err, st.path, user)
		}
		return tok, err
	}
}

// upstreamTLS verifies the upstream against the system roots plus ca_file;
// tls_skip_verify turns verification off.
func upstreamTLS(u *config.Upstream) (*tls.Config, error) {
	return clientTLS(u.CAFile, u.ServerName, u.TLSSkipVerify)
}

// clientTLS verifies a server against the system roots plus caFile.
func clientTLS(caFile, serverName string, skipVerify bool) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, InsecureSkipVerify: skipVerify}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate found", caFile)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// sharedState connects to the Redis that replicas share, if configured.
// Names in its keys are hidden by an HMAC keyed from the sealing key when
// there is one, else by the deployment's key kept in Redis.
func sharedState(ctx context.Context, cfg *config.Config, log *slog.Logger) (*redisstate.Store, error) {
	r := cfg.Redis
	password, err := r.Password()
	if err != nil {
		return nil, err
	}
	var nameKey []byte
	if cfg.Secrets.KeyFile != "" || cfg.Secrets.KeyEnv != "" {
		key, err := cfg.SealingKey()
		if err != nil {
			return nil, err
		}
		nameKey = key.Derive("redis key names")
	}
	opts := redisstate.Options{
		Addr:      r.Address,
		Username:  r.Username,
		Password:  password,
		DB:        r.DB,
		KeyPrefix: r.KeyPrefix,
		LockTTL:   time.Duration(r.LockTTL),
		Logger:    log,
		NameKey:   nameKey,
	}
	if r.TLS {
		host, _, _ := net.SplitHostPort(r.Address)
		if opts.TLS, err = clientTLS(r.CAFile, host, false); err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
	}
	return redisstate.New(ctx, opts)
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

// serverTLS returns a listener's TLS configuration, or nil when it has no
// certificate. The cipher suites are listed explicitly (see
// config.ServerTLS.CipherSuites), so the legacy suites one listener offers
// never reach another, whatever GODEBUG says.
func serverTLS(t config.ServerTLS, cert *certificate) *tls.Config {
	if !t.Enabled() {
		return nil
	}
	return &tls.Config{
		MinVersion:   t.MinVersion,
		CipherSuites: t.CipherSuites(),
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert.current.Load(), nil
		},
	}
}
