package config

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/upstream"
)

var (
	authMechs   = []string{AuthPassword, AuthXOAuth2, AuthOAuthBearer, AuthOAuth2}
	tlsVersions = []string{"1.0", "1.1", "1.2", "1.3"}
)

type problems []string

func (p *problems) add(path, format string, args ...any) {
	*p = append(*p, path+": "+fmt.Sprintf(format, args...))
}

// oneOf checks that v is in set.
func (p *problems) oneOf(path, v string, set []string) {
	checkOneOf(p, path, v, set)
}

// checkOneOf is oneOf for the string types of other packages, such as
// upstream.Security.
func checkOneOf[T ~string](p *problems, path string, v T, set []T) {
	if !slices.Contains(set, v) {
		names := make([]string, len(set))
		for i, s := range set {
			names[i] = string(s)
		}
		p.add(path, "%q is not one of %s", v, strings.Join(names, ", "))
	}
}

// addr checks a host:port address with a numeric port. Listening addresses
// may have an empty host and port 0; upstream addresses may not.
func (p *problems) addr(path, addr string, listen bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		p.add(path, "%q is not host:port", addr)
		return
	}
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil:
		p.add(path, "%q: port must be a number from 1 to 65535", addr)
	case n == 0 && !listen:
		p.add(path, "%q: port must be a number from 1 to 65535", addr)
	case host == "" && !listen:
		p.add(path, "%q: host is empty", addr)
	}
}

// Validate checks a configuration to which SetDefaults has been applied and
// returns all problems found as an *Error, or nil.
func (c *Config) Validate() error {
	var p problems

	// listen
	if c.Listen.POP3 == "" && c.Listen.POP3S == "" && !c.hasPOP3Listener() {
		p.add("listen", "set at least one of pop3 and pop3s")
	}
	seen := map[string]string{}
	for _, l := range []struct{ key, addr string }{
		{"pop3", c.Listen.POP3}, {"pop3s", c.Listen.POP3S}, {"http", c.Listen.HTTP},
		{"submission", c.Listen.Submission}, {"submissions", c.Listen.Submissions},
	} {
		if l.addr == "" {
			continue
		}
		p.addr("listen."+l.key, l.addr, true)
		if other, dup := seen[l.addr]; dup && !strings.HasSuffix(l.addr, ":0") {
			p.add("listen."+l.key, "same address as listen.%s", other)
		}
		seen[l.addr] = l.key
	}
	c.validateListeners(&p, seen)

	// tls
	if c.Listen.POP3S != "" && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
		p.add("listen.pop3s", "needs tls.cert_file and tls.key_file")
	}
	if c.TLS.CertFile != "" && c.TLS.KeyFile == "" {
		p.add("tls.key_file", "required when tls.cert_file is set")
	}
	if c.TLS.KeyFile != "" && c.TLS.CertFile == "" {
		p.add("tls.cert_file", "required when tls.key_file is set")
	}
	p.oneOf("tls.min_version", c.TLS.MinVersion, tlsVersions)

	// upstreams
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		path := "upstreams." + name
		if strings.TrimSpace(name) == "" {
			p.add("upstreams", "an upstream has an empty name")
			path = fmt.Sprintf("upstreams.%q", name)
		}
		u := c.Upstreams[name]
		if u == nil {
			p.add(path, "is empty")
			continue
		}
		p.protocol(c, path, u)
		checkOneOf(&p, path+".tls", u.TLS, upstream.Securities)
		checkOneOf(&p, path+".on_delete", u.OnDelete, upstream.DeleteModes)
		if u.Timeout <= 0 {
			p.add(path+".timeout", "must be positive, not %v", u.Timeout)
		}
		if k := u.KeepConnection; k != nil && (*k < 0 || *k > Duration(time.Hour)) {
			p.add(path+".keep_connection", "must be between 0s and 1h, not %v", *k)
		}
		if u.Provider != "" {
			p.oneOf(path+".provider", u.Provider, Providers)
		}
		if u.PassthroughFailures < -1 {
			p.add(path+".passthrough_failures", "must be positive, or -1 for no limit")
		}
		if u.Mailbox == "" {
			p.add(path+".mailbox", "required")
		}
		if u.OnDelete == upstream.DeleteTrash && u.TrashMailbox != "" && upstream.SameMailbox(u.TrashMailbox, u.Mailbox) {
			// Moving a message into the mailbox it is in gives it a new
			// UID: every poll would download it again. `gateway check`
			// also catches a served mailbox the server marks \Trash.
			p.add(c.key(path+".on_delete"), "trash moves deleted messages into %s, which is %s (%q), the mailbox POP3 serves: they would come back under new UIDs and be downloaded at every poll; set trash_mailbox to another mailbox or on_delete to expunge",
				c.key(path+".trash_mailbox"), c.key(path+".mailbox"), u.Mailbox)
		}
		p.oneOf(path+".auth", u.Auth, authMechs)
		switch {
		case u.OAuthEnabled():
			p.oauth2(path+".oauth2", u.OAuth2)
		case u.OAuth2 != nil:
			p.add(path+".oauth2", "set, but auth is %s; use auth xoauth2 or oauthbearer (oauth2 for protocol graph and jmap)", u.Auth)
		}
	}

	// users
	tokenFiles := map[string]string{}
	folded := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(c.Users)) {
		path := "users." + name
		if name == "" || strings.ContainsFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
			p.add("users", "user name %q is empty or contains spaces or control characters", name)
			path = fmt.Sprintf("users.%q", name)
		}
		// Logins are matched case-insensitively, so these would be one user.
		if other, dup := folded[username.Canonical(name)]; dup {
			p.add(path, "same user as users.%s: user names are matched without regard to case", other)
		}
		folded[username.Canonical(name)] = name
		u := c.Users[name]
		if u == nil {
			p.add(path, "is empty")
			continue
		}
		if u.PasswordHash == "" {
			p.add(path+".password_hash", "required (create one with `gateway hash-password`)")
		} else if err := passwd.Check(u.PasswordHash); err != nil {
			p.add(path+".password_hash", "%s", strings.TrimPrefix(err.Error(), "passwd: "))
		}
		switch {
		case u.Upstream == "":
			p.add(path+".upstream", "required")
		case c.Upstreams[u.Upstream] == nil:
			p.add(path+".upstream", "%q is not defined in upstreams", u.Upstream)
		}
		if u.UpstreamUser == "" {
			p.add(path+".upstream_user", "required")
		}
		if up := c.Upstreams[u.Upstream]; up != nil && up.OAuthEnabled() {
			if u.OAuth2TokenFile == "" {
				p.add(path+".oauth2_token_file", "required: upstream %s logs in with OAuth2 (auth %s)", u.Upstream, up.Auth)
			} else if other, dup := tokenFiles[u.OAuth2TokenFile]; dup {
				p.add(path+".oauth2_token_file", "same file as users.%s; each account needs its own", other)
			}
			tokenFiles[u.OAuth2TokenFile] = name
			if u.UpstreamPasswordFile != "" || u.UpstreamPasswordEnv != "" {
				p.add(path, "upstream %s logs in with OAuth2: remove upstream_password_file and upstream_password_env", u.Upstream)
			}
			if c.Secrets.KeyFile == "" && c.Secrets.KeyEnv == "" {
				p.add("secrets", "set key_file or key_env: users.%s keeps a sealed OAuth2 token (create a key with `gateway secrets new-key`)", name)
			}
			continue
		}
		if u.OAuth2TokenFile != "" {
			p.add(path+".oauth2_token_file", "set, but upstream %s does not use OAuth2 (auth is password)", u.Upstream)
		}
		switch {
		case u.UpstreamPasswordFile != "" && u.UpstreamPasswordEnv != "":
			p.add(path, "set only one of upstream_password_file and upstream_password_env")
		case u.UpstreamPasswordFile == "" && u.UpstreamPasswordEnv == "":
			p.add(path, "set one of upstream_password_file and upstream_password_env")
		case u.UpstreamPasswordEnv != "" && !validEnvName(u.UpstreamPasswordEnv):
			p.add(path+".upstream_password_env", "%q is not a valid environment variable name", u.UpstreamPasswordEnv)
		}
	}

	// passthrough
	if pt := c.Passthrough; pt != nil {
		switch {
		case pt.Upstream == "":
			p.add("passthrough.upstream", "required")
		case c.Upstreams[pt.Upstream] == nil:
			p.add("passthrough.upstream", "%q is not defined in upstreams", pt.Upstream)
		case c.Upstreams[pt.Upstream].OAuthEnabled():
			p.add("passthrough.upstream", "%q logs in with OAuth2, which needs a mapped user with a token; passthrough forwards passwords", pt.Upstream)
		}
		lower := map[string]string{}
		for _, d := range slices.Sorted(maps.Keys(pt.Domains)) {
			path := "passthrough.domains." + d
			if d == "" || strings.ContainsAny(d, "@ \t\r\n") {
				p.add("passthrough.domains", "%q is not a domain name", d)
			}
			if other, dup := lower[strings.ToLower(d)]; dup {
				p.add("passthrough.domains", "%q and %q are the same domain", other, d)
			}
			lower[strings.ToLower(d)] = d
			switch up := pt.Domains[d]; {
			case up == "":
				p.add(path, "an upstream name is required")
			case c.Upstreams[up] == nil:
				p.add(path, "%q is not defined in upstreams", up)
			case c.Upstreams[up].OAuthEnabled():
				p.add(path, "%q logs in with OAuth2, which needs a mapped user with a token; passthrough forwards passwords", up)
			}
		}
	}
	if len(c.Users) == 0 && c.Passthrough == nil {
		p.add("users", "no users and no passthrough; configure at least one of them")
	}

	// cache
	if c.Cache.Memory < 0 {
		p.add("cache.memory", "must not be negative")
	}
	if c.Cache.MaxMessage < 0 {
		p.add("cache.max_message", "must not be negative")
	}
	if c.Cache.InFlight != nil && *c.Cache.InFlight < 0 {
		p.add("cache.in_flight", "must not be negative")
	}
	if c.Cache.MaxMessage > c.Cache.Memory && c.Cache.Memory != 0 {
		p.add("cache.max_message", "%v is larger than cache.memory (%v)", c.Cache.MaxMessage, c.Cache.Memory)
	}

	// proxy_protocol
	if pp := c.ProxyProtocol; pp != nil {
		if len(pp.Listeners) == 0 {
			p.add("proxy_protocol.listeners", "name at least one of pop3 and pop3s")
		}
		for _, l := range pp.Listeners {
			switch {
			case l == "pop3" && c.Listen.POP3 != "", l == "pop3s" && c.Listen.POP3S != "",
				l == "submission" && c.Listen.Submission != "", l == "submissions" && c.Listen.Submissions != "":
			case l == "pop3" || l == "pop3s" || l == "submission" || l == "submissions":
				p.add("proxy_protocol.listeners", "%s is not configured in listen", l)
			case c.listener(l) != nil:
			default:
				p.add("proxy_protocol.listeners", "%q is not pop3, pop3s, submission or submissions, nor the name of a listener in listeners", l)
			}
		}
		if len(pp.Trusted) == 0 {
			p.add("proxy_protocol.trusted", "list the load balancers' networks or addresses; headers are accepted only from them")
		}
		for _, t := range pp.Trusted {
			if _, err := netip.ParsePrefix(t); err != nil {
				if _, err := netip.ParseAddr(t); err != nil {
					p.add("proxy_protocol.trusted", "%q is not an address or a network such as 10.0.0.0/8", t)
				}
			}
		}
		if pp.HeaderTimeout <= 0 {
			p.add("proxy_protocol.header_timeout", "must be positive")
		}
	}

	// redis
	if r := c.Redis; r != nil {
		if r.Address == "" {
			p.add("redis.address", "required (host:port)")
		} else {
			p.addr("redis.address", r.Address, false)
		}
		if r.PasswordFile != "" && r.PasswordEnv != "" {
			p.add("redis", "set only one of password_file and password_env")
		}
		if r.PasswordEnv != "" && !validEnvName(r.PasswordEnv) {
			p.add("redis.password_env", "%q is not a valid environment variable name", r.PasswordEnv)
		}
		if r.CAFile != "" && !r.TLS {
			p.add("redis.ca_file", "set, but tls is false")
		}
		if r.DB < 0 {
			p.add("redis.db", "must not be negative")
		}
		if r.LockTTL < Duration(3*time.Second) || r.LockTTL > Duration(10*time.Minute) {
			p.add("redis.lock_ttl", "must be between 3s and 10m, not %v", r.LockTTL)
		}
	}

	// data_dir
	if d := c.DataDir; d != "" && !filepath.IsAbs(d) {
		p.add("data_dir", "%q is not an absolute path", d)
	}

	// secrets
	switch s := c.Secrets; {
	case s.KeyFile != "" && s.KeyEnv != "":
		p.add("secrets", "set only one of key_file and key_env")
	case s.KeyEnv != "" && !validEnvName(s.KeyEnv):
		p.add("secrets.key_env", "%q is not a valid environment variable name", s.KeyEnv)
	}

	if d := c.Auth.MinRefusalTime; d != nil && (*d < 0 || *d > Duration(30*time.Second)) {
		p.add("auth.min_refusal_time", "must be between 0s and 30s, not %v", *d)
	}

	// limits
	l := c.Limits
	if l.ConnectionsPerIP < -1 {
		p.add("limits.connections_per_ip", "must be positive, or -1 for no limit")
	}
	if l.SessionsPerUser < -1 {
		p.add("limits.sessions_per_user", "must be positive, or -1 for no limit")
	}
	if l.MaxConnections < -1 {
		p.add("limits.max_connections", "must be positive, or -1 for no limit")
	}
	if l.LoginTimeout < Duration(10*time.Second) || l.LoginTimeout > Duration(time.Hour) {
		p.add("limits.login_timeout", "must be between 10s and 1h, not %v", l.LoginTimeout)
	}
	if l.LoginDelay < 0 {
		p.add("limits.login_delay", "must not be negative")
	}
	if l.LoginDelayMax < l.LoginDelay {
		p.add("limits.login_delay_max", "%v is less than limits.login_delay (%v)", l.LoginDelayMax, l.LoginDelay)
	}
	if l.LoginDelayMax > Duration(5*time.Minute) {
		p.add("limits.login_delay_max", "%v is more than 5m; clients give up long before", l.LoginDelayMax)
	}
	if l.PollInterval < 0 || l.PollInterval > Duration(24*time.Hour) || time.Duration(l.PollInterval)%time.Second != 0 {
		p.add(c.key("limits.poll_interval"), "must be whole seconds from 0s to 24h, not %v", l.PollInterval)
	}
	c.validateSubmission(&p)

	if len(p) > 0 {
		return &Error{Problems: c.withLines(p)}
	}
	return nil
}

// withLines adds to each problem the line of the key it names, when the
// file has that key and the problem does not say it already.
func (c *Config) withLines(p problems) []string {
	out := make([]string, len(p))
	for i, msg := range p {
		out[i] = msg
		path, rest, ok := strings.Cut(msg, ": ")
		if !ok || strings.Contains(path, " (line ") {
			continue
		}
		if line, ok := c.lines[path]; ok {
			out[i] = fmt.Sprintf("%s (line %d): %s", path, line, rest)
		}
	}
	return out
}

// oauth2 checks an upstream's OAuth2 block.
func (p *problems) oauth2(path string, o *OAuth2) {
	if o == nil {
		p.add(path, "required for auth xoauth2 and oauthbearer (client_id and the provider's endpoints; a provider preset fills the endpoints)")
		return
	}
	if o.ClientID == "" {
		p.add(path+".client_id", "required: the client ID of the OAuth2 application registered with the provider")
	}
	if o.TokenURL == "" {
		p.add(path+".token_url", "required (or set the upstream's provider)")
	}
	if o.AuthURL == "" && o.DeviceAuthURL == "" {
		p.add(path, "set auth_url or device_auth_url (or the upstream's provider)")
	}
	for _, f := range []struct{ key, v string }{
		{"auth_url", o.AuthURL}, {"token_url", o.TokenURL}, {"device_auth_url", o.DeviceAuthURL},
	} {
		if f.v == "" {
			continue
		}
		if u, err := url.Parse(f.v); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			p.add(path+"."+f.key, "%q is not an http or https URL", f.v)
		}
	}
	if o.RedirectURL != "" {
		u, err := url.Parse(o.RedirectURL)
		if err != nil || u.Scheme != "http" || !isLoopback(u.Host) && !isLoopback(u.Host+":80") {
			p.add(path+".redirect_url", "%q must be an http URL on a loopback address, such as http://127.0.0.1:8080/", o.RedirectURL)
		}
	}
	switch {
	case o.ClientSecretFile != "" && o.ClientSecretEnv != "":
		p.add(path, "set only one of client_secret_file and client_secret_env")
	case o.ClientSecretEnv != "" && !validEnvName(o.ClientSecretEnv):
		p.add(path+".client_secret_env", "%q is not a valid environment variable name", o.ClientSecretEnv)
	}
}

func validEnvName(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}
