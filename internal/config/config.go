// Package config loads and validates the gateway's YAML configuration file
// (see CONTRACT.md, "Config file").
//
// Parse and Load decode the file strictly (an unknown key is an error that
// names its line), fill in defaults (SetDefaults) and check the result
// (Validate). All problems found are reported together in one *Error.
package config

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the configuration file.
type Config struct {
	Listen      Listen               `yaml:"listen"`
	TLS         TLS                  `yaml:"tls"`
	Auth        Auth                 `yaml:"auth"`
	Upstreams   map[string]*Upstream `yaml:"upstreams"`
	Users       map[string]*User     `yaml:"users"`
	Passthrough *Passthrough         `yaml:"passthrough"` // nil: no passthrough
	Cache       Cache                `yaml:"cache"`
}

// Listen holds the listening addresses (host:port). An empty address means
// not listening.
type Listen struct {
	POP3  string `yaml:"pop3"`  // cleartext POP3, STLS offered when TLS is configured
	POP3S string `yaml:"pop3s"` // implicit TLS POP3
	HTTP  string `yaml:"http"`  // health and metrics
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
	// addresses. Loopback clients are always allowed.
	AllowInsecure bool `yaml:"allow_insecure"`
}

// Upstream TLS modes.
const (
	TLSImplicit = "implicit"
	TLSStartTLS = "starttls"
	TLSNone     = "none"
)

// Upstream on_delete actions, applied at QUIT.
const (
	OnDeleteExpunge = "expunge"
	OnDeleteTrash   = "trash"
	OnDeleteSeen    = "seen"
	OnDeleteKeep    = "keep"
)

// Providers lists the accepted values of an upstream's provider key.
var Providers = []string{"gmail", "outlook", "yahoo", "icloud", "fastmail", "aol"}

// Upstream is an IMAP server.
type Upstream struct {
	Name       string   `yaml:"-"`           // key in Config.Upstreams, set by SetDefaults
	Address    string   `yaml:"address"`     // host:port; may be empty when Provider is set
	TLS        string   `yaml:"tls"`         // TLSImplicit (default), TLSStartTLS or TLSNone
	CAFile     string   `yaml:"ca_file"`     // extra trusted CA (PEM); system roots otherwise
	ServerName string   `yaml:"server_name"` // TLS name to verify; default the host of Address
	Mailbox    string   `yaml:"mailbox"`     // default INBOX
	OnDelete   string   `yaml:"on_delete"`   // OnDeleteExpunge (default), OnDeleteTrash, OnDeleteSeen or OnDeleteKeep
	Timeout    Duration `yaml:"timeout"`     // default 60s
	Provider   string   `yaml:"provider"`    // optional preset, one of Providers
	// TrashMailbox is the mailbox used by on_delete trash when the server
	// has no \Trash special-use mailbox.
	TrashMailbox string `yaml:"trash_mailbox"`
	// FetchAhead fetches the following messages while a client reads one;
	// default true. Turn it off where a provider meters download volume.
	FetchAhead *bool `yaml:"fetch_ahead"`
	// KeepConnection keeps a logged-in connection after a session for the
	// next login to the same mailbox with the same credentials; default
	// 60s, 0s logs out at once.
	KeepConnection *Duration `yaml:"keep_connection"`
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
	Memory     ByteSize `yaml:"memory"`      // total bytes of cached bodies; default 256MiB
	MaxMessage ByteSize `yaml:"max_message"` // larger messages are not cached; default 16MiB
}

// Defaults applied by SetDefaults to empty or zero values.
const (
	DefaultMailbox = "INBOX"
	DefaultTimeout = Duration(60 * time.Second)
	// DefaultKeepConnection is how long an upstream connection is kept
	// after its session for the next login.
	DefaultKeepConnection = Duration(60 * time.Second)
	DefaultMinVersion     = "1.2"
	DefaultMemory         = 256 * MiB
	DefaultMaxMessage     = 16 * MiB
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
	if c.Cache.Memory == 0 {
		c.Cache.Memory = DefaultMemory
	}
	if c.Cache.MaxMessage == 0 {
		c.Cache.MaxMessage = DefaultMaxMessage
	}
	for name, u := range c.Upstreams {
		if u == nil {
			u = &Upstream{}
			c.Upstreams[name] = u
		}
		u.Name = name
		if u.TLS == "" {
			u.TLS = TLSImplicit
		}
		if u.Mailbox == "" {
			u.Mailbox = DefaultMailbox
		}
		if u.OnDelete == "" {
			u.OnDelete = OnDeleteExpunge
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

// MinTLSVersion returns tls.min_version as a crypto/tls version constant,
// tls.VersionTLS12 if it is empty or invalid.
func (c *Config) MinTLSVersion() uint16 {
	switch c.TLS.MinVersion {
	case "1.0":
		return tls.VersionTLS10
	case "1.1":
		return tls.VersionTLS11
	case "1.3":
		return tls.VersionTLS13
	}
	return tls.VersionTLS12
}

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
	} else if c.Listen.POP3 != "" && !c.TLSEnabled() && !isLoopback(c.Listen.POP3) {
		w = append(w, "listen.pop3 has no TLS (no tls.cert_file) and auth.allow_insecure is false: only loopback clients can log in")
	}
	for _, name := range sortedKeys(c.Upstreams) {
		u := c.Upstreams[name]
		if u != nil && u.TLS == TLSNone && u.Address != "" && !isLoopback(u.Address) {
			w = append(w, fmt.Sprintf("upstreams.%s.tls is none: upstream passwords cross the network without TLS", name))
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

// maxSecret bounds the size of an upstream password file.
const maxSecret = 64 << 10

// UpstreamPassword returns the user's upstream password, read from
// UpstreamPasswordFile or the environment variable UpstreamPasswordEnv. One
// trailing "\n" or "\r\n" is removed from the file's contents. The file must
// not be accessible by group or others. Errors never contain the password.
func (u *User) UpstreamPassword() (string, error) {
	who := "upstream password"
	if u.Name != "" {
		who = "users." + u.Name + ": upstream password"
	}
	var pw string
	switch {
	case u.UpstreamPasswordFile != "" && u.UpstreamPasswordEnv != "":
		return "", fmt.Errorf("config: %s: both upstream_password_file and upstream_password_env are set", who)
	case u.UpstreamPasswordFile != "":
		name := u.UpstreamPasswordFile
		f, err := os.Open(name)
		if err != nil {
			return "", fmt.Errorf("config: %s: %w", who, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return "", fmt.Errorf("config: %s: %w", who, err)
		}
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("config: %s: %s is not a regular file", who, name)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
			return "", fmt.Errorf("config: %s: %s has mode %04o and is readable by group or others; chmod 600 %s", who, name, perm, name)
		}
		data, err := io.ReadAll(io.LimitReader(f, maxSecret+1))
		if err != nil {
			return "", fmt.Errorf("config: %s: reading %s: %w", who, name, err)
		}
		if len(data) > maxSecret {
			return "", fmt.Errorf("config: %s: %s is larger than %d bytes", who, name, maxSecret)
		}
		pw = string(data)
		if p, ok := strings.CutSuffix(pw, "\r\n"); ok {
			pw = p
		} else {
			pw = strings.TrimSuffix(pw, "\n")
		}
		if pw == "" {
			return "", fmt.Errorf("config: %s: %s is empty", who, name)
		}
		if strings.ContainsAny(pw, "\r\n\x00") {
			return "", fmt.Errorf("config: %s: %s contains a line break or NUL byte besides one trailing newline", who, name)
		}
	case u.UpstreamPasswordEnv != "":
		name := u.UpstreamPasswordEnv
		v, ok := os.LookupEnv(name)
		if !ok {
			return "", fmt.Errorf("config: %s: environment variable %s is not set", who, name)
		}
		if v == "" {
			return "", fmt.Errorf("config: %s: environment variable %s is empty", who, name)
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			return "", fmt.Errorf("config: %s: environment variable %s contains a line break or NUL byte", who, name)
		}
		pw = v
	default:
		return "", fmt.Errorf("config: %s: neither upstream_password_file nor upstream_password_env is set", who)
	}
	return pw, nil
}

// CheckSecrets reads every mapped user's upstream password and returns the
// problems found as an *Error, or nil.
func (c *Config) CheckSecrets() error {
	var e Error
	for _, name := range sortedKeys(c.Users) {
		u := c.Users[name]
		if u == nil {
			continue
		}
		if _, err := u.UpstreamPassword(); err != nil {
			e.Problems = append(e.Problems, strings.TrimPrefix(err.Error(), "config: "))
		}
	}
	if len(e.Problems) > 0 {
		return &e
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
