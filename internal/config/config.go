// Package config loads and validates the gateway's YAML configuration file
// (see CONTRACT.md, "Config file").
//
// Parse and Load decode the file strictly (an unknown key is an error that
// names its line), fill in defaults (SetDefaults) and check the result
// (Validate). All problems found are reported together in one *Error.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pop3gw/gateway/internal/proxyproto"
	"github.com/pop3gw/gateway/internal/secrets"
	"github.com/pop3gw/gateway/internal/state/guard"
	"github.com/pop3gw/gateway/internal/state/redisstate"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// Config is the configuration file.
type Config struct {
	Listen      Listen               `yaml:"listen"`
	Listeners   []*Listener          `yaml:"listeners"` // more listeners, each with TLS settings of its own
	DataDir     string               `yaml:"data_dir"`  // the embedded UIDL store, unless redis is set; empty: in memory only
	TLS         TLS                  `yaml:"tls"`
	Auth        Auth                 `yaml:"auth"`
	Upstreams   map[string]*Upstream `yaml:"upstreams"`
	Users       map[string]*User     `yaml:"users"`
	Passthrough *Passthrough         `yaml:"passthrough"` // nil: no passthrough
	Cache       Cache                `yaml:"cache"`
	Secrets     Secrets              `yaml:"secrets"`
	Limits      Limits               `yaml:"limits"`
	// ProxyProtocol, when set, reads the client's address from a PROXY
	// protocol header sent by a trusted load balancer.
	ProxyProtocol *ProxyProtocol `yaml:"proxy_protocol"`
	// Redis, when set, shares the maildrop locks and the login-failure
	// counters among replicas, and holds the UIDL store.
	Redis *Redis `yaml:"redis"`

	// lines maps the path of each key written in the file to its line,
	// set by Parse: a default applies only to a key that is absent, and
	// problems name the lines of the keys involved.
	lines map[string]int
}

// ProxyProtocol configures the PROXY protocol (v1 and v2) on listeners.
type ProxyProtocol struct {
	Listeners []string `yaml:"listeners"` // "pop3", "pop3s"
	// Trusted lists the load balancers' networks (CIDR) or addresses; a
	// connection from them must start with a header, any other connection
	// is taken as it is.
	Trusted       []string `yaml:"trusted"`
	HeaderTimeout Duration `yaml:"header_timeout"` // default DefaultHeaderTimeout
}

// Enabled reports whether the listener named (pop3 or pop3s) expects
// headers.
func (p *ProxyProtocol) Enabled(listener string) bool {
	return p != nil && slices.Contains(p.Listeners, listener)
}

// Redis is the server holding the state that replicas share.
type Redis struct {
	Address      string   `yaml:"address"` // host:port
	Username     string   `yaml:"username"`
	PasswordFile string   `yaml:"password_file"` // at most one of these two
	PasswordEnv  string   `yaml:"password_env"`
	DB           int      `yaml:"db"`
	TLS          bool     `yaml:"tls"`
	CAFile       string   `yaml:"ca_file"`
	KeyPrefix    string   `yaml:"key_prefix"` // default DefaultRedisKeyPrefix
	LockTTL      Duration `yaml:"lock_ttl"`   // default DefaultRedisLockTTL: a dead replica's locks expire after this
}

// Password returns the Redis password, "" when none is configured.
func (r *Redis) Password() (string, error) {
	pw, err := secrets.Source{File: r.PasswordFile, Env: r.PasswordEnv}.Read()
	if err != nil {
		return "", fmt.Errorf("config: redis password: %w", err)
	}
	return pw, nil
}

// Secrets says where the key that seals secrets at rest comes from: the
// OAuth2 tokens and the upstream passwords the gateway writes.
type Secrets struct {
	KeyFile string `yaml:"key_file"` // base64 of 32 bytes, from `gateway secrets new-key`
	KeyEnv  string `yaml:"key_env"`  // or the name of an environment variable holding it
}

// Limits bound what one client can ask of the gateway.
type Limits struct {
	// ConnectionsPerIP bounds the open connections from one address; 0
	// means the default, -1 no limit.
	ConnectionsPerIP int `yaml:"connections_per_ip"`
	// SessionsPerUser bounds the sessions logging in or logged in under one
	// name; 0 means the default, -1 no limit.
	SessionsPerUser int `yaml:"sessions_per_user"`
	// LoginDelay is the delay after the first failed login from an address
	// or for a user name; it doubles with each further failure up to
	// LoginDelayMax. Attempts queue: parallel ones are checked one delay
	// apart. A successful login resets the user's count, not the
	// address's, which expires 15 minutes after its last failure.
	LoginDelay    Duration `yaml:"login_delay"`
	LoginDelayMax Duration `yaml:"login_delay_max"`
	// MaxConnections bounds the open POP3 connections on all listeners;
	// 0 means the default, -1 no limit.
	MaxConnections int `yaml:"max_connections"`
	// LoginTimeout bounds the time from connect to login; the time the
	// gateway spends checking logins counts only beyond a second one.
	LoginTimeout Duration `yaml:"login_timeout"`
	// PollInterval is announced as LOGIN-DELAY (RFC 2449 §6.5), in whole
	// seconds: the least time a client is asked to leave between logins,
	// which spares the upstream's quota. Announced, not enforced; 0 (the
	// default) announces nothing.
	PollInterval Duration `yaml:"poll_interval"`
	// MaxRecipients and MessagesPerHour bound what one SMTP submission
	// login may send (see submission.go).
	MaxRecipients   int `yaml:"max_recipients"`
	MessagesPerHour int `yaml:"messages_per_hour"`
}

// Listen holds the listening addresses (host:port). An empty address means
// not listening.
type Listen struct {
	POP3  string `yaml:"pop3"`  // cleartext POP3, STLS offered when TLS is configured
	POP3S string `yaml:"pop3s"` // implicit TLS POP3
	HTTP  string `yaml:"http"`  // health and metrics
	// Submission (STARTTLS) and Submissions (implicit TLS) are the SMTP
	// submission relay's listeners.
	Submission  string `yaml:"submission"`
	Submissions string `yaml:"submissions"`
}

// TLS is the server certificate used for POP3S and STLS.
type TLS struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	MinVersion string `yaml:"min_version"` // "1.0", "1.1", "1.2" (default) or "1.3"
}

// Auth holds client authentication settings.
type Auth struct {
	// AllowInsecure allows USER/PASS/AUTH without TLS from non-loopback
	// addresses. Loopback clients are allowed too, unless
	// RequireTLSOnLoopback; a client whose address comes from a PROXY
	// header is never a loopback client.
	AllowInsecure bool `yaml:"allow_insecure"`
	// RequireTLSOnLoopback removes the loopback exemption: passwords need
	// TLS from every address (unless AllowInsecure).
	RequireTLSOnLoopback bool `yaml:"require_tls_on_loopback"`
	// MinRefusalTime is the least time a refused login takes from the
	// start of its check, so that a mapped user refused by its local hash
	// and a name refused by the upstream look alike in time; default
	// DefaultMinRefusalTime (Dovecot's auth_failure_delay), 0s for none.
	MinRefusalTime *Duration `yaml:"min_refusal_time"`
}

// Upstream login mechanisms.
const (
	AuthPassword    = "password"    // AUTHENTICATE PLAIN, else LOGIN
	AuthXOAuth2     = "xoauth2"     // OAuth2 access token, Google's XOAUTH2
	AuthOAuthBearer = "oauthbearer" // OAuth2 access token, RFC 7628
)

// Upstream is a mail store: an IMAP server, or a JMAP or Graph API.
type Upstream struct {
	Name       string              `yaml:"-"`           // key in Config.Upstreams, set by SetDefaults
	Address    string              `yaml:"address"`     // host:port; may be empty when Provider is set
	TLS        upstream.Security   `yaml:"tls"`         // one of upstream.Securities; default upstream.SecurityImplicit
	CAFile     string              `yaml:"ca_file"`     // extra trusted CA (PEM); system roots otherwise
	ServerName string              `yaml:"server_name"` // TLS name to verify; default the host of Address
	Mailbox    string              `yaml:"mailbox"`     // default INBOX
	OnDelete   upstream.DeleteMode `yaml:"on_delete"`   // one of upstream.DeleteModes, applied at QUIT; default upstream.DeleteExpunge
	Timeout    Duration            `yaml:"timeout"`     // default DefaultTimeout
	Provider   string              `yaml:"provider"`    // optional preset, one of Providers
	// Protocol is how the store is spoken to: ProtocolIMAP (default),
	// ProtocolJMAP or ProtocolGraph; see protocol.go.
	Protocol string `yaml:"protocol"`
	// TrashMailbox is the mailbox used by on_delete trash when the server
	// has no \Trash special-use mailbox.
	TrashMailbox string `yaml:"trash_mailbox"`
	// FetchAhead fetches the following messages while a client reads one;
	// default true. Turn it off where a provider meters download volume.
	FetchAhead *bool `yaml:"fetch_ahead"`
	// KeepConnection keeps a logged-in connection after a session for the
	// next login to the same mailbox with the same credentials; default
	// DefaultKeepConnection, 0s logs out at once.
	KeepConnection *Duration `yaml:"keep_connection"`
	// Auth is how the gateway logs in: AuthPassword (default), AuthXOAuth2
	// or AuthOAuthBearer.
	Auth string `yaml:"auth"`
	// TLSSkipVerify accepts any certificate from the upstream. For tests
	// only; it is logged as a warning at start.
	TLSSkipVerify bool `yaml:"tls_skip_verify"`
	// OAuth2 is the authorization server and client for auth xoauth2 and
	// oauthbearer; a provider preset fills its endpoints and scopes.
	OAuth2 *OAuth2 `yaml:"oauth2"`
	// SendClientIP tells the upstream each POP3 client's address before
	// logging in (IMAP ID x-originating-ip, RFC 2971), for a server that
	// trusts the gateway with it (Dovecot: login_trusted_networks), so its
	// per-address login penalties and logs see the client.
	SendClientIP bool `yaml:"send_client_ip"`
	// PassthroughFailures is how many refused passthrough logins a minute
	// the gateway forwards to this upstream; past it, passthrough logins
	// are refused with [SYS/TEMP] without asking the upstream until the
	// budget refills. 0 means proxy.DefaultPassthroughFailures, -1 no
	// limit.
	PassthroughFailures int `yaml:"passthrough_failures"`
	// Submission is where the SMTP relay sends this upstream's users'
	// mail; a provider preset fills it in.
	Submission *Submission `yaml:"submission"`
}

// OAuth2 describes the OAuth2 client the gateway is registered as, and the
// provider's endpoints.
type OAuth2 struct {
	ClientID         string   `yaml:"client_id"`
	ClientSecretFile string   `yaml:"client_secret_file"` // at most one of these two; public clients have none
	ClientSecretEnv  string   `yaml:"client_secret_env"`
	AuthURL          string   `yaml:"auth_url"`        // authorization code grant with PKCE
	TokenURL         string   `yaml:"token_url"`       // token and refresh requests
	DeviceAuthURL    string   `yaml:"device_auth_url"` // device authorization grant (RFC 8628), preferred when set
	Scopes           []string `yaml:"scopes"`
	// RedirectURL is the loopback address the browser is sent back to
	// after the authorization code grant; default http://127.0.0.1 on a
	// free port.
	RedirectURL string `yaml:"redirect_url"`
}

// OAuthEnabled reports whether the upstream logs in with OAuth2 tokens.
func (u *Upstream) OAuthEnabled() bool {
	return u.Auth == AuthXOAuth2 || u.Auth == AuthOAuthBearer || u.Auth == AuthOAuth2
}

// TLSServerName returns the name to verify in the upstream's certificate:
// ServerName if set, otherwise the host of Address.
func (u *Upstream) TLSServerName() string {
	if u.ServerName != "" {
		return u.ServerName
	}
	host, _, err := net.SplitHostPort(u.Address)
	if err != nil {
		return u.Address
	}
	return host
}

// User is a mapped user: local POP3 credentials for one upstream account.
type User struct {
	Name                 string `yaml:"-"`             // key in Config.Users, set by SetDefaults
	PasswordHash         string `yaml:"password_hash"` // argon2id or bcrypt, see package passwd
	Upstream             string `yaml:"upstream"`      // key in Config.Upstreams
	UpstreamUser         string `yaml:"upstream_user"`
	UpstreamPasswordFile string `yaml:"upstream_password_file"` // exactly one of these two
	UpstreamPasswordEnv  string `yaml:"upstream_password_env"`
	// OAuth2TokenFile is where the user's sealed OAuth2 token is kept, for
	// an upstream with auth xoauth2 or oauthbearer; `gateway oauth2 login`
	// writes it and the gateway rewrites it when the token rotates.
	OAuth2TokenFile string `yaml:"oauth2_token_file"`
	// Addresses are the envelope senders the user may use through the
	// SMTP relay, besides upstream_user.
	Addresses []string `yaml:"addresses"`

	config *Config // for the sealing key; set by SetDefaults
}

// Passthrough forwards logins not listed in Users, with their own
// credentials.
type Passthrough struct {
	Upstream string `yaml:"upstream"` // default upstream
	// Domains maps the domain of a login user@domain to an upstream. Keys
	// are lower case after SetDefaults.
	Domains map[string]string `yaml:"domains"`
}

// Cache bounds the in-memory message cache.
type Cache struct {
	Memory     ByteSize `yaml:"memory"`      // total bytes of cached bodies; default 256MiB, an explicit 0 caches none
	MaxMessage ByteSize `yaml:"max_message"` // larger messages are not cached; default 16MiB
	// InFlight bounds the bodies held outside the cache (read whole before
	// RETR answers, or fetched ahead) and the remembered listings; 0 holds
	// none. nil: derived from the memory limit when the gateway starts.
	InFlight *ByteSize `yaml:"in_flight"`
}

// Defaults applied by SetDefaults to empty or zero values. A default whose
// behaviour a package owns lives in that package, which applies it to its
// own zero values too; these name it in the file's types.
const (
	DefaultMailbox = "INBOX"
	DefaultTimeout = Duration(upstream.DefaultTimeout)
	// DefaultKeepConnection is how long an upstream connection is kept
	// after its session for the next login.
	DefaultKeepConnection = Duration(upstream.DefaultKeepConnection)
	DefaultMinVersion     = "1.2"
	DefaultMemory         = 256 * MiB
	DefaultMaxMessage     = 16 * MiB
	// Login limits: a few POP3 pollers behind one NAT address fit well
	// within these, a password-guessing run does not.
	DefaultConnectionsPerIP = 20
	DefaultSessionsPerUser  = 4
	DefaultMaxConnections   = 1000
	DefaultLoginTimeout     = Duration(pop3.DefaultLoginTimeout)
	DefaultLoginDelay       = Duration(guard.DefaultBase)
	DefaultLoginDelayMax    = Duration(guard.DefaultMax)
	DefaultHeaderTimeout    = Duration(proxyproto.DefaultHeaderTimeout)
	DefaultRedisKeyPrefix   = redisstate.DefaultKeyPrefix
	DefaultRedisLockTTL     = Duration(redisstate.DefaultLockTTL)
	DefaultMinRefusalTime   = Duration(2 * time.Second)
)

// Error lists the problems found in a configuration, one per line, each
// prefixed with "config: ".
type Error struct {
	Problems []string // without the "config: " prefix
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString("config: ")
		b.WriteString(p)
	}
	return b.String()
}

// Load reads, decodes and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data)
}

// Parse decodes and validates a configuration file's contents.
func Parse(data []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if err == io.EOF {
			return nil, &Error{Problems: []string{"the file is empty"}}
		}
		return nil, decodeError(data, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{Problems: []string{fmt.Sprintf("line %d: more than one YAML document", extra.Line)}}
	} else if err != io.EOF {
		return nil, decodeError(data, err)
	}
	var root yaml.Node
	if yaml.Unmarshal(data, &root) == nil {
		c.lines = map[string]int{}
		for _, k := range collectKeys(&root, "", nil) {
			if k.value == 0 {
				c.lines[k.path] = k.line
			}
		}
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// SetDefaults fills empty values with their defaults, sets the Name of each
// upstream and user, replaces nil upstreams and users by empty ones and
// lower-cases the passthrough domains.
func (c *Config) SetDefaults() {
	if c.TLS.MinVersion == "" {
		c.TLS.MinVersion = DefaultMinVersion
	}
	if _, set := c.lines["cache.memory"]; c.Cache.Memory == 0 && !set {
		c.Cache.Memory = DefaultMemory
	}
	if c.Cache.MaxMessage == 0 {
		c.Cache.MaxMessage = DefaultMaxMessage
	}
	if c.Auth.MinRefusalTime == nil {
		d := DefaultMinRefusalTime
		c.Auth.MinRefusalTime = &d
	}
	if c.Limits.ConnectionsPerIP == 0 {
		c.Limits.ConnectionsPerIP = DefaultConnectionsPerIP
	}
	if c.Limits.SessionsPerUser == 0 {
		c.Limits.SessionsPerUser = DefaultSessionsPerUser
	}
	if c.Limits.MaxConnections == 0 {
		c.Limits.MaxConnections = DefaultMaxConnections
	}
	if c.Limits.LoginTimeout == 0 {
		c.Limits.LoginTimeout = DefaultLoginTimeout
	}
	if c.Limits.LoginDelay == 0 {
		c.Limits.LoginDelay = DefaultLoginDelay
	}
	if c.Limits.LoginDelayMax == 0 {
		c.Limits.LoginDelayMax = max(DefaultLoginDelayMax, c.Limits.LoginDelay)
	}
	c.setSubmissionDefaults()
	if p := c.ProxyProtocol; p != nil && p.HeaderTimeout == 0 {
		p.HeaderTimeout = DefaultHeaderTimeout
	}
	if r := c.Redis; r != nil {
		if r.KeyPrefix == "" {
			r.KeyPrefix = DefaultRedisKeyPrefix
		}
		if r.LockTTL == 0 {
			r.LockTTL = DefaultRedisLockTTL
		}
	}
	for name, u := range c.Upstreams {
		if u == nil {
			u = &Upstream{}
			c.Upstreams[name] = u
		}
		u.Name = name
		applyPreset(u)
		applySubmissionPreset(u, c.Listen)
		if u.Auth == "" {
			u.Auth = AuthPassword
		}
		if u.TLS == "" {
			u.TLS = upstream.SecurityImplicit
		}
		if u.Mailbox == "" {
			u.Mailbox = DefaultMailbox
		}
		if u.Protocol == "" {
			u.Protocol = ProtocolIMAP
		}
		if u.OnDelete == "" {
			u.OnDelete = upstream.DeleteExpunge
		}
		if u.Timeout == 0 {
			u.Timeout = DefaultTimeout
		}
		if u.FetchAhead == nil {
			on := true
			u.FetchAhead = &on
		}
		if u.KeepConnection == nil {
			keep := DefaultKeepConnection
			u.KeepConnection = &keep
		}
	}
	for name, u := range c.Users {
		if u == nil {
			u = &User{}
			c.Users[name] = u
		}
		u.Name = name
		u.config = c
	}
	if p := c.Passthrough; p != nil && len(p.Domains) > 0 {
		lower := make(map[string]string, len(p.Domains))
		for d, up := range p.Domains {
			lower[strings.ToLower(d)] = up
		}
		// Keys differing only in case are left for Validate to report.
		if len(lower) == len(p.Domains) {
			p.Domains = lower
		}
	}
}

// key names a key for a problem: its path, and its line when the file
// has it.
func (c *Config) key(path string) string {
	if line, ok := c.lines[path]; ok {
		return fmt.Sprintf("%s (line %d)", path, line)
	}
	return path
}

// MinTLSVersion returns tls.min_version as a crypto/tls version constant,
// tls.VersionTLS12 if it is empty or invalid.
func (c *Config) MinTLSVersion() uint16 { return tlsVersion(c.TLS.MinVersion) }

// TLSEnabled reports whether a server certificate is configured.
func (c *Config) TLSEnabled() bool {
	return c.TLS.CertFile != "" && c.TLS.KeyFile != ""
}

// Warnings returns settings of a valid configuration that are allowed but
// weaken security, one sentence each, for logging at startup.
func (c *Config) Warnings() []string {
	var w []string
	if v := c.TLS.MinVersion; v == "1.0" || v == "1.1" {
		w = append(w, fmt.Sprintf("tls.min_version %s is obsolete and weak; use it only for very old clients", v))
	}
	if c.Auth.AllowInsecure {
		w = append(w, "auth.allow_insecure is true: clients may send passwords over the network without TLS")
	} else if c.Listen.POP3 != "" && !c.TLSEnabled() && c.Auth.RequireTLSOnLoopback {
		w = append(w, "listen.pop3 has no TLS (no tls.cert_file) and auth.require_tls_on_loopback is true: no client can log in")
	} else if c.Listen.POP3 != "" && !c.TLSEnabled() && !isLoopback(c.Listen.POP3) {
		w = append(w, "listen.pop3 has no TLS (no tls.cert_file) and auth.allow_insecure is false: only loopback clients can log in")
	}
	w = append(w, c.listenerWarnings()...)
	w = append(w, c.submissionWarnings()...)
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		u := c.Upstreams[name]
		if u != nil && u.TLS == upstream.SecurityNone && u.Address != "" && !isLoopback(u.Address) {
			w = append(w, fmt.Sprintf("upstreams.%s.tls is none: upstream passwords cross the network without TLS", name))
		}
		if u != nil && u.TLSSkipVerify && u.TLS != upstream.SecurityNone {
			w = append(w, fmt.Sprintf("upstreams.%s.tls_skip_verify is true: the upstream's certificate is NOT verified, so anyone on the network path can impersonate it and read the mail and the upstream credentials; use ca_file instead", name))
		}
	}
	return w
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Sealing contexts bind a sealed file to its user and purpose, so a file
// copied to another user's path does not open.
func TokenContext(user string) string    { return "oauth2-token:" + user }
func PasswordContext(user string) string { return "upstream-password:" + user }

// SealingKey loads the key of the secrets section.
func (c *Config) SealingKey() (*secrets.Key, error) {
	if c.Secrets.KeyFile == "" && c.Secrets.KeyEnv == "" {
		return nil, errors.New("config: secrets: no key_file or key_env is set (create a key with `gateway secrets new-key`)")
	}
	k, err := secrets.LoadKey(c.Secrets.KeyFile, c.Secrets.KeyEnv)
	if err != nil {
		return nil, fmt.Errorf("config: secrets: %w", err)
	}
	return k, nil
}

// UpstreamPassword returns the user's upstream password, read from
// UpstreamPasswordFile or the environment variable UpstreamPasswordEnv by
// secrets.Source: one trailing "\n" or "\r\n" is removed; a sealed file
// (written by `gateway secrets set-password`) is opened with the key of the
// secrets section. The file must not be accessible by group or others.
// Errors never contain the password.
func (u *User) UpstreamPassword() (string, error) {
	who := "upstream password"
	if u.Name != "" {
		who = "users." + u.Name + ": upstream password"
	}
	switch {
	case u.UpstreamPasswordFile != "" && u.UpstreamPasswordEnv != "":
		return "", fmt.Errorf("config: %s: both upstream_password_file and upstream_password_env are set", who)
	case u.UpstreamPasswordFile == "" && u.UpstreamPasswordEnv == "":
		return "", fmt.Errorf("config: %s: neither upstream_password_file nor upstream_password_env is set", who)
	}
	src := secrets.Source{File: u.UpstreamPasswordFile, Env: u.UpstreamPasswordEnv, Context: PasswordContext(u.Name)}
	if c := u.config; c != nil {
		src.Key = func() (*secrets.Key, error) {
			key, err := c.SealingKey()
			if err != nil {
				return nil, errors.New(strings.TrimPrefix(err.Error(), "config: "))
			}
			return key, nil
		}
	}
	pw, err := src.Read()
	if err != nil {
		return "", fmt.Errorf("config: %s: %w", who, err)
	}
	return pw, nil
}

// ClientSecret returns the OAuth2 client secret, "" for a public client.
func (o *OAuth2) ClientSecret() (string, error) {
	s, err := secrets.Source{File: o.ClientSecretFile, Env: o.ClientSecretEnv}.Read()
	if err != nil {
		return "", fmt.Errorf("config: oauth2 client secret: %w", err)
	}
	return s, nil
}

// CheckSecrets reads every secret the configuration names: each mapped
// user's upstream password, the sealing key, each OAuth2 client secret and
// each token file that exists, and returns the problems found as an
// *Error, or nil. A token file not written yet is no problem here: that
// user cannot log in until `gateway oauth2 login` ran (see MissingTokens).
func (c *Config) CheckSecrets() error {
	var e Error
	problem := func(err error) {
		e.Problems = append(e.Problems, strings.TrimPrefix(err.Error(), "config: "))
	}
	var key *secrets.Key
	if c.Secrets.KeyFile != "" || c.Secrets.KeyEnv != "" {
		var err error
		if key, err = c.SealingKey(); err != nil {
			problem(err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		if u := c.Upstreams[name]; u != nil && u.OAuthEnabled() && u.OAuth2 != nil {
			if _, err := u.OAuth2.ClientSecret(); err != nil {
				problem(fmt.Errorf("upstreams.%s: %w", name, err))
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Users)) {
		u := c.Users[name]
		if u == nil {
			continue
		}
		if u.OAuth2TokenFile == "" {
			if _, err := u.UpstreamPassword(); err != nil {
				problem(err)
			}
			continue
		}
		data, err := secrets.ReadFile(u.OAuth2TokenFile, secrets.MaxFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			problem(fmt.Errorf("users.%s: oauth2_token_file: %w", name, err))
		case key != nil:
			if _, err := key.Open(data, TokenContext(name)); err != nil {
				problem(fmt.Errorf("users.%s: oauth2_token_file %s: %w (run `gateway oauth2 login` for this user again)", name, u.OAuth2TokenFile, err))
			}
		}
	}
	if len(e.Problems) > 0 {
		return &e
	}
	return nil
}

// MissingTokens lists the users whose OAuth2 token file does not exist yet.
func (c *Config) MissingTokens() []string {
	var names []string
	for _, name := range slices.Sorted(maps.Keys(c.Users)) {
		u := c.Users[name]
		if u == nil || u.OAuth2TokenFile == "" {
			continue
		}
		if _, err := os.Stat(u.OAuth2TokenFile); errors.Is(err, os.ErrNotExist) {
			names = append(names, name)
		}
	}
	return names
}
