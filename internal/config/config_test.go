package config

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/upstream"
)

// A bcrypt hash (cost 4) of "pw"; cheap to check.
const testHash = "$2a$04$sx8nCOq5d3Xt0IM.BOo/j.EWqnvRpkhrDA1SmJSsViNG9Z.hXmn4."

const minimal = `
listen:
  pop3: "127.0.0.1:1110"
upstreams:
  corp:
    address: "imap.example.com:993"
users:
  alice:
    password_hash: "` + testHash + `"
    upstream: corp
    upstream_user: alice@example.com
    upstream_password_env: ALICE_PW
`

func mustParse(t *testing.T, text string) *Config {
	t.Helper()
	c, err := Parse([]byte(text))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

func TestTestHash(t *testing.T) {
	if ok, err := passwd.Verify(testHash, "pw"); !ok || err != nil {
		t.Fatalf("testHash does not verify: %v, %v", ok, err)
	}
}

func TestExample(t *testing.T) {
	c, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Listen.POP3 != "0.0.0.0:110" || c.Listen.POP3S != "0.0.0.0:995" || c.Listen.HTTP != "127.0.0.1:9110" {
		t.Errorf("listen = %+v", c.Listen)
	}
	if c.TLS.CertFile != "/etc/gateway/tls/cert.pem" || c.MinTLSVersion() != tls.VersionTLS12 {
		t.Errorf("tls = %+v", c.TLS)
	}
	corp := c.Upstreams["corp"]
	if corp == nil || corp.Name != "corp" || corp.OnDelete != upstream.DeleteTrash || corp.TrashMailbox != "Deleted Items" ||
		corp.Timeout.Duration() != time.Minute || corp.TLSServerName() != "imap.example.com" || corp.CAFile == "" {
		t.Errorf("upstreams.corp = %+v", corp)
	}
	partner := c.Upstreams["partner"]
	if partner == nil || partner.TLS != upstream.SecurityStartTLS || partner.Timeout.Duration() != 2*time.Minute || partner.Mailbox != "INBOX" {
		t.Errorf("upstreams.partner = %+v", partner)
	}
	if g := c.Upstreams["gmail"]; g == nil || g.Provider != "gmail" || g.Address != "imap.gmail.com:993" ||
		g.Auth != AuthXOAuth2 || g.OnDelete != upstream.DeleteTrash || g.OAuth2 == nil ||
		g.OAuth2.TokenURL != "https://oauth2.googleapis.com/token" || len(g.OAuth2.Scopes) != 1 {
		t.Errorf("upstreams.gmail = %+v", g)
	}
	if c.Users["bob"].OAuth2TokenFile == "" || c.Secrets.KeyFile == "" {
		t.Errorf("users.bob = %+v, secrets = %+v", c.Users["bob"], c.Secrets)
	}
	if !c.ProxyProtocol.Enabled("pop3s") || c.ProxyProtocol.HeaderTimeout != DefaultHeaderTimeout || c.Redis == nil || c.Redis.LockTTL != DefaultRedisLockTTL {
		t.Errorf("proxy_protocol = %+v, redis = %+v", c.ProxyProtocol, c.Redis)
	}
	if c.Limits != (Limits{ConnectionsPerIP: 20, SessionsPerUser: 4, LoginDelay: DefaultLoginDelay, LoginDelayMax: DefaultLoginDelayMax,
		MaxConnections: DefaultMaxConnections, LoginTimeout: DefaultLoginTimeout,
		MaxRecipients: DefaultMaxRecipients, MessagesPerHour: DefaultMessagesPerHour}) {
		t.Errorf("limits = %+v", c.Limits)
	}
	if c.Listen.Submission != "0.0.0.0:587" || c.Listen.Submissions != "0.0.0.0:465" ||
		c.Upstreams["corp"].Submission == nil || *c.Upstreams["corp"].Submission != (Submission{Address: "smtp.example.com:587", TLS: upstream.SecurityStartTLS}) ||
		c.Upstreams["gmail"].Submission == nil || c.Upstreams["gmail"].Submission.Address != "smtp.gmail.com:465" ||
		c.Upstreams["partner"].Submission != nil || len(c.Users["alice"].Addresses) != 1 {
		t.Errorf("submission: listen %+v, corp %+v, gmail %+v, partner %+v", c.Listen, c.Upstreams["corp"].Submission, c.Upstreams["gmail"].Submission, c.Upstreams["partner"].Submission)
	}
	alice := c.Users["alice"]
	if alice == nil || alice.Name != "alice" || alice.Upstream != "corp" || alice.UpstreamUser != "alice@example.com" ||
		alice.UpstreamPasswordFile != "/run/secrets/alice" {
		t.Errorf("users.alice = %+v", alice)
	}
	if ok, err := passwd.Verify(alice.PasswordHash, "alice-local-password"); !ok || err != nil {
		t.Errorf("alice's example hash does not verify: %v, %v", ok, err)
	}
	if ok, err := passwd.Verify(c.Users["bob"].PasswordHash, "bob-local-password"); !ok || err != nil {
		t.Errorf("bob's example hash does not verify: %v, %v", ok, err)
	}
	if c.Passthrough == nil || c.Passthrough.Upstream != "corp" || c.Passthrough.Domains["example.org"] != "partner" {
		t.Errorf("passthrough = %+v", c.Passthrough)
	}
	if c.Cache.Memory != 256*MiB || c.Cache.MaxMessage != 16*MiB {
		t.Errorf("cache = %+v", c.Cache)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestDefaults(t *testing.T) {
	c := mustParse(t, minimal)
	if c.Listen.POP3S != "" || c.Listen.HTTP != "" {
		t.Errorf("listen = %+v", c.Listen)
	}
	if c.TLS.MinVersion != "1.2" || c.MinTLSVersion() != tls.VersionTLS12 || c.TLSEnabled() {
		t.Errorf("tls = %+v", c.TLS)
	}
	if c.Auth.AllowInsecure {
		t.Error("auth.allow_insecure defaults to true")
	}
	u := c.Upstreams["corp"]
	if u.FetchAhead == nil || !*u.FetchAhead || u.KeepConnection == nil || *u.KeepConnection != DefaultKeepConnection {
		t.Errorf("fetch_ahead = %v, keep_connection = %v; want true, 60s", u.FetchAhead, u.KeepConnection)
	}
	got := *u
	got.FetchAhead, got.KeepConnection = nil, nil
	want := Upstream{Name: "corp", Address: "imap.example.com:993", TLS: upstream.SecurityImplicit, Mailbox: "INBOX",
		OnDelete: upstream.DeleteExpunge, Timeout: Duration(60 * time.Second), Auth: AuthPassword, Protocol: ProtocolIMAP}
	if got != want {
		t.Errorf("upstream = %+v, want %+v", got, want)
	}
	if c.Cache.Memory != 256<<20 || c.Cache.MaxMessage != 16<<20 {
		t.Errorf("cache = %+v", c.Cache)
	}
	if c.Passthrough != nil {
		t.Errorf("passthrough = %+v", c.Passthrough)
	}
}

func TestPassthroughOnly(t *testing.T) {
	c := mustParse(t, `
listen: {pop3s: ":995"}
tls: {cert_file: c.pem, key_file: k.pem, min_version: "1.3"}
upstreams:
  corp: {address: "127.0.0.1:143", tls: none}
passthrough:
  upstream: corp
  domains: {Example.ORG: corp}
`)
	if c.MinTLSVersion() != tls.VersionTLS13 {
		t.Errorf("MinTLSVersion = %x", c.MinTLSVersion())
	}
	if c.Passthrough.Domains["example.org"] != "corp" {
		t.Errorf("domains = %v; want lower-case keys", c.Passthrough.Domains)
	}
}

func TestMinTLSVersion(t *testing.T) {
	for v, want := range map[string]uint16{"1.0": tls.VersionTLS10, "1.1": tls.VersionTLS11, "1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13, "": tls.VersionTLS12} {
		c := &Config{TLS: TLS{MinVersion: v}}
		if got := c.MinTLSVersion(); got != want {
			t.Errorf("MinTLSVersion(%q) = %x, want %x", v, got, want)
		}
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Config)
		want   string // one line of the error
	}{
		{"no listener", func(c *Config) { c.Listen.POP3 = "" }, "listen: set at least one of pop3 and pop3s"},
		{"pop3 not host:port", func(c *Config) { c.Listen.POP3 = "localhost" }, `listen.pop3: "localhost" is not host:port`},
		{"pop3 port name", func(c *Config) { c.Listen.POP3 = ":pop3" }, `listen.pop3: ":pop3": port must be a number from 1 to 65535`},
		{"pop3 port too big", func(c *Config) { c.Listen.POP3 = ":70000" }, `listen.pop3: ":70000": port must be a number`},
		{"http not host:port", func(c *Config) { c.Listen.HTTP = "9110" }, `listen.http: "9110" is not host:port`},
		{"same address", func(c *Config) { c.Listen.HTTP = c.Listen.POP3 }, "listen.http: same address as listen.pop3"},
		{"pop3s without tls", func(c *Config) { c.Listen.POP3S = ":995" }, "listen.pop3s: needs tls.cert_file and tls.key_file"},
		{"cert without key", func(c *Config) { c.TLS.CertFile = "c.pem" }, "tls.key_file: required when tls.cert_file is set"},
		{"key without cert", func(c *Config) { c.TLS.KeyFile = "k.pem" }, "tls.cert_file: required when tls.key_file is set"},
		{"min_version", func(c *Config) { c.TLS.MinVersion = "1.4" }, `tls.min_version: "1.4" is not one of 1.0, 1.1, 1.2, 1.3`},
		{"upstream no address", func(c *Config) { c.Upstreams["corp"].Address = "" }, "upstreams.corp.address: required (or set provider)"},
		{"upstream address no port", func(c *Config) { c.Upstreams["corp"].Address = "imap.example.com" }, `upstreams.corp.address: "imap.example.com" is not host:port`},
		{"upstream address no host", func(c *Config) { c.Upstreams["corp"].Address = ":993" }, `upstreams.corp.address: ":993": host is empty`},
		{"upstream port 0", func(c *Config) { c.Upstreams["corp"].Address = "imap.example.com:0" }, `port must be a number from 1 to 65535`},
		{"upstream tls", func(c *Config) { c.Upstreams["corp"].TLS = "foo" }, `upstreams.corp.tls: "foo" is not one of implicit, starttls, none`},
		{"upstream on_delete", func(c *Config) { c.Upstreams["corp"].OnDelete = "purge" }, `upstreams.corp.on_delete: "purge" is not one of expunge, trash, seen, keep`},
		{"upstream timeout", func(c *Config) { c.Upstreams["corp"].Timeout = Duration(-time.Second) }, "upstreams.corp.timeout: must be positive, not -1s"},
		{"upstream provider", func(c *Config) { c.Upstreams["corp"].Provider = "hotmail" }, `upstreams.corp.provider: "hotmail" is not one of gmail, outlook, yahoo, icloud, fastmail, aol`},
		{"upstream nil", func(c *Config) { c.Upstreams["x"] = nil }, "upstreams.x: is empty"},
		{"upstream passthrough_failures", func(c *Config) { c.Upstreams["corp"].PassthroughFailures = -2 }, "upstreams.corp.passthrough_failures: must be positive, or -1 for no limit"},
		{"user name space", func(c *Config) { c.Users["a b"] = c.Users["alice"] }, `users: user name "a b" is empty or contains spaces`},
		{"user no hash", func(c *Config) { c.Users["alice"].PasswordHash = "" }, "users.alice.password_hash: required"},
		{"user bad hash", func(c *Config) { c.Users["alice"].PasswordHash = "secret" }, "users.alice.password_hash: unknown hash format"},
		{"user malformed hash", func(c *Config) { c.Users["alice"].PasswordHash = "$argon2id$v=19$m=4194304,t=2,p=2$AAAA$AAAA" }, "users.alice.password_hash: malformed hash: argon2id: m=4194304 out of range"},
		{"user no upstream", func(c *Config) { c.Users["alice"].Upstream = "" }, "users.alice.upstream: required"},
		{"user unknown upstream", func(c *Config) { c.Users["alice"].Upstream = "nope" }, `users.alice.upstream: "nope" is not defined in upstreams`},
		{"user no upstream_user", func(c *Config) { c.Users["alice"].UpstreamUser = "" }, "users.alice.upstream_user: required"},
		{"user no secret", func(c *Config) { c.Users["alice"].UpstreamPasswordEnv = "" }, "users.alice: set one of upstream_password_file and upstream_password_env"},
		{"user two secrets", func(c *Config) { c.Users["alice"].UpstreamPasswordFile = "/run/secrets/a" }, "users.alice: set only one of upstream_password_file and upstream_password_env"},
		{"user env name", func(c *Config) { c.Users["alice"].UpstreamPasswordEnv = "1BAD-NAME" }, `users.alice.upstream_password_env: "1BAD-NAME" is not a valid environment variable name`},
		{"user nil", func(c *Config) { c.Users["bob"] = nil }, "users.bob: is empty"},
		{"user names equal but for case", func(c *Config) { c.Users["Alice"] = c.Users["alice"] }, "users.alice: same user as users.Alice: user names are matched without regard to case"},
		{"upstream auth", func(c *Config) { c.Upstreams["corp"].Auth = "cram-md5" }, `upstreams.corp.auth: "cram-md5" is not one of password, xoauth2, oauthbearer`},
		{"oauth2 without block", func(c *Config) { c.Upstreams["corp"].Auth = AuthXOAuth2 }, "upstreams.corp.oauth2: required for auth xoauth2 and oauthbearer"},
		{"oauth2 block with password auth", func(c *Config) { c.Upstreams["corp"].OAuth2 = &OAuth2{} }, "upstreams.corp.oauth2: set, but auth is password"},
		{"oauth2 no client_id", oauthUpstream(func(o *OAuth2) { o.ClientID = "" }), "upstreams.corp.oauth2.client_id: required"},
		{"oauth2 no token_url", oauthUpstream(func(o *OAuth2) { o.TokenURL = "" }), "upstreams.corp.oauth2.token_url: required"},
		{"oauth2 no auth urls", oauthUpstream(func(o *OAuth2) { o.AuthURL, o.DeviceAuthURL = "", "" }), "upstreams.corp.oauth2: set auth_url or device_auth_url"},
		{"oauth2 bad url", oauthUpstream(func(o *OAuth2) { o.TokenURL = "ftp://x/token" }), `upstreams.corp.oauth2.token_url: "ftp://x/token" is not an http or https URL`},
		{"oauth2 redirect not loopback", oauthUpstream(func(o *OAuth2) { o.RedirectURL = "http://example.com:80/" }), `upstreams.corp.oauth2.redirect_url: "http://example.com:80/" must be an http URL on a loopback address`},
		{"oauth2 two secrets", oauthUpstream(func(o *OAuth2) { o.ClientSecretFile, o.ClientSecretEnv = "f", "E" }), "upstreams.corp.oauth2: set only one of client_secret_file and client_secret_env"},
		{"oauth2 user needs token file", oauthUpstream(nil), "users.alice.oauth2_token_file: required: upstream corp logs in with OAuth2 (auth xoauth2)"},
		{"oauth2 user has password", oauthUpstream(nil), "users.alice: upstream corp logs in with OAuth2: remove upstream_password_file and upstream_password_env"},
		{"oauth2 needs key", oauthUpstream(nil), "secrets: set key_file or key_env: users.alice keeps a sealed OAuth2 token"},
		{"token file with password auth", func(c *Config) { c.Users["alice"].OAuth2TokenFile = "t" }, "users.alice.oauth2_token_file: set, but upstream corp does not use OAuth2"},
		{"oauth2 passthrough", func(c *Config) {
			oauthUpstream(nil)(c)
			c.Passthrough = &Passthrough{Upstream: "corp"}
		}, `passthrough.upstream: "corp" logs in with OAuth2`},
		{"secrets two keys", func(c *Config) { c.Secrets = Secrets{KeyFile: "k", KeyEnv: "K"} }, "secrets: set only one of key_file and key_env"},
		{"secrets env name", func(c *Config) { c.Secrets.KeyEnv = "A-B" }, `secrets.key_env: "A-B" is not a valid environment variable name`},
		{"limits per ip", func(c *Config) { c.Limits.ConnectionsPerIP = -2 }, "limits.connections_per_ip: must be positive, or -1 for no limit"},
		{"limits per user", func(c *Config) { c.Limits.SessionsPerUser = -5 }, "limits.sessions_per_user: must be positive, or -1 for no limit"},
		{"limits max connections", func(c *Config) { c.Limits.MaxConnections = -3 }, "limits.max_connections: must be positive, or -1 for no limit"},
		{"limits login timeout", func(c *Config) { c.Limits.LoginTimeout = Duration(time.Second) }, "limits.login_timeout: must be between 10s and 1h, not 1s"},
		{"limits delay order", func(c *Config) { c.Limits.LoginDelay = Duration(time.Minute) }, "limits.login_delay_max: 15s is less than limits.login_delay (1m0s)"},
		{"limits delay cap", func(c *Config) { c.Limits.LoginDelayMax = Duration(time.Hour) }, "limits.login_delay_max: 1h0m0s is more than 5m"},
		{"proxy protocol no listeners", func(c *Config) {
			c.ProxyProtocol = &ProxyProtocol{Trusted: []string{"10.0.0.0/8"}, HeaderTimeout: Duration(time.Second)}
		}, "proxy_protocol.listeners: name at least one of pop3 and pop3s"},
		{"proxy protocol listener not configured", func(c *Config) {
			c.ProxyProtocol = &ProxyProtocol{Listeners: []string{"pop3s"}, Trusted: []string{"10.0.0.1"}, HeaderTimeout: Duration(time.Second)}
		}, "proxy_protocol.listeners: pop3s is not configured in listen"},
		{"proxy protocol listener name", func(c *Config) {
			c.ProxyProtocol = &ProxyProtocol{Listeners: []string{"http"}, Trusted: []string{"10.0.0.1"}, HeaderTimeout: Duration(time.Second)}
		}, `proxy_protocol.listeners: "http" is not pop3, pop3s, submission or submissions`},
		{"proxy protocol no trusted", func(c *Config) {
			c.ProxyProtocol = &ProxyProtocol{Listeners: []string{"pop3"}, HeaderTimeout: Duration(time.Second)}
		}, "proxy_protocol.trusted: list the load balancers' networks"},
		{"proxy protocol bad trusted", func(c *Config) {
			c.ProxyProtocol = &ProxyProtocol{Listeners: []string{"pop3"}, Trusted: []string{"10.0.0.0/33"}, HeaderTimeout: Duration(time.Second)}
		}, `proxy_protocol.trusted: "10.0.0.0/33" is not an address or a network`},
		{"redis no address", func(c *Config) { c.Redis = &Redis{LockTTL: DefaultRedisLockTTL} }, "redis.address: required"},
		{"redis two passwords", func(c *Config) {
			c.Redis = &Redis{Address: "redis:6379", PasswordFile: "f", PasswordEnv: "E", LockTTL: DefaultRedisLockTTL}
		}, "redis: set only one of password_file and password_env"},
		{"redis lock ttl", func(c *Config) { c.Redis = &Redis{Address: "redis:6379", LockTTL: Duration(time.Second)} }, "redis.lock_ttl: must be between 3s and 10m, not 1s"},
		{"redis ca without tls", func(c *Config) {
			c.Redis = &Redis{Address: "redis:6379", CAFile: "ca.pem", LockTTL: DefaultRedisLockTTL}
		}, "redis.ca_file: set, but tls is false"},
		{"passthrough no upstream", func(c *Config) { c.Passthrough = &Passthrough{} }, "passthrough.upstream: required"},
		{"passthrough unknown upstream", func(c *Config) { c.Passthrough = &Passthrough{Upstream: "nope"} }, `passthrough.upstream: "nope" is not defined in upstreams`},
		{"passthrough domain upstream", func(c *Config) {
			c.Passthrough = &Passthrough{Upstream: "corp", Domains: map[string]string{"example.org": "other"}}
		}, `passthrough.domains.example.org: "other" is not defined in upstreams`},
		{"passthrough domain syntax", func(c *Config) {
			c.Passthrough = &Passthrough{Upstream: "corp", Domains: map[string]string{"@example.org": "corp"}}
		}, `passthrough.domains: "@example.org" is not a domain name`},
		{"passthrough domain twice", func(c *Config) {
			c.Passthrough = &Passthrough{Upstream: "corp", Domains: map[string]string{"example.org": "corp", "Example.org": "corp"}}
		}, `passthrough.domains: "Example.org" and "example.org" are the same domain`},
		{"no users, no passthrough", func(c *Config) { c.Users = nil }, "users: no users and no passthrough"},
		{"cache max_message", func(c *Config) { c.Cache.MaxMessage = 512 * MiB }, "cache.max_message: 512MiB is larger than cache.memory (256MiB)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, minimal)
			tt.change(c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate = nil, want %q", tt.want)
			}
			if _, ok := errors.AsType[*Error](err); !ok {
				t.Errorf("error type %T, want *Error", err)
			}
			found := false
			for line := range strings.SplitSeq(withoutLines(err), "\n") {
				if !strings.HasPrefix(line, "config: ") {
					t.Errorf("line %q lacks the config: prefix", line)
				}
				if strings.Contains(line, tt.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("error:\n%v\nwant a line containing %q", err, tt.want)
			}
		})
	}
}

func TestProviderWithoutAddress(t *testing.T) {
	c := mustParse(t, minimal)
	c.Upstreams["corp"].Address = ""
	c.Upstreams["corp"].Provider = "fastmail"
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestAllProblemsReported(t *testing.T) {
	_, err := Parse([]byte(`
listen: {}
upstreams:
  corp: {tls: foo, on_delete: bar}
users:
  alice: {upstream: nope}
cache: {memory: 1MiB}
`))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	want := []string{
		"config: listen: set at least one of pop3 and pop3s",
		"config: upstreams.corp.address: required (or set provider)",
		`config: upstreams.corp.tls: "foo" is not one of implicit, starttls, none`,
		`config: upstreams.corp.on_delete: "bar" is not one of expunge, trash, seen, keep`,
		"config: users.alice.password_hash: required (create one with `gateway hash-password`)",
		`config: users.alice.upstream: "nope" is not defined in upstreams`,
		"config: users.alice.upstream_user: required",
		"config: users.alice: set one of upstream_password_file and upstream_password_env",
		"config: cache.max_message: 16MiB is larger than cache.memory (1MiB)",
	}
	if got := withoutLines(err); got != strings.Join(want, "\n") {
		t.Errorf("error:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
	}{
		{"empty", "", []string{"config: the file is empty"}},
		{"comments only", "# nothing\n", []string{"config: the file is empty"}},
		{"unknown key", strings.Replace(minimal, "imap.example.com:993\"\n", "imap.example.com:993\"\n    provder: gmail\n", 1), []string{
			`config: line 7: upstreams.corp: unknown key "provder" (valid keys: address, tls, ca_file, server_name, mailbox, on_delete, timeout, provider, protocol, trash_mailbox, fetch_ahead, keep_connection, auth, tls_skip_verify, oauth2, send_client_ip, passthrough_failures, submission)`}},
		{"unknown top-level key", "listen: {pop3: ':110'}\nlisten_http: x\n", []string{
			`config: line 2: unknown key "listen_http" (valid keys: listen, listeners, data_dir, tls, auth, upstreams, users, passthrough, cache, secrets, limits, proxy_protocol, redis)`}},
		{"unknown key and bad size", "listen:\n  pop3: ':110'\n  pop4: ':111'\ncache:\n  memory: 1TB\n", []string{
			`config: line 3: listen: unknown key "pop4"`,
			`config: line 5: cache.memory: invalid size "1TB": unknown unit "TB" (use KiB, MiB, GiB or a plain number of bytes)`}},
		{"bad duration", "upstreams:\n  corp:\n    timeout: 60\n", []string{
			`config: line 3: upstreams.corp.timeout: invalid duration "60": want a number with a unit, e.g. 30s, 5m or 1h30m`}},
		{"bad bool", "auth:\n  allow_insecure: maybe\n", []string{
			"config: line 2: auth.allow_insecure: cannot unmarshal !!str `maybe` into bool"}},
		{"duplicate key", "users:\n  alice: {}\n  alice: {}\n", []string{`config: line 3: users: key "alice" appears twice (also at line 2)`}},
		{"list for a string", "upstreams:\n  c:\n    mailbox:\n      - a\n", []string{"config: line 4: upstreams.c.mailbox: cannot unmarshal !!seq into string"}},
		{"syntax", "listen:\n  pop3: [\n", []string{"config: ", "line 2"}},
		{"two documents", minimal + "---\nlisten: {}\n", []string{"config: line 13: more than one YAML document"}},
		{"list at top", "- a\n", []string{"config: line 1: cannot unmarshal !!seq into config.Config"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.text))
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
		err  string
	}{
		{"256MiB", 256 << 20, ""},
		{"16 MiB", 16 << 20, ""},
		{"1GiB", 1 << 30, ""},
		{"512KiB", 512 << 10, ""},
		{"1048576", 1048576, ""},
		{"0", 0, ""},
		{"100B", 100, ""},
		{"8mib", 8 << 20, ""},
		{"8191GiB", 8191 << 30, ""},
		{"", 0, "want a whole number"},
		{"MiB", 0, "want a whole number"},
		{"-1", 0, "want a whole number"},
		{"1.5GiB", 0, "want a whole number, e.g. 1536MiB"},
		{"256MB", 0, `unknown unit "MB"`},
		{"1K", 0, `unknown unit "K"`},
		{"1TiB", 0, `unknown unit "TiB"`},
		{"99999999999999999999", 0, "too large"},
		{"9999999999GiB", 0, "too large"},
	}
	for _, tt := range tests {
		got, err := ParseByteSize(tt.in)
		if tt.err != "" {
			if err == nil || !mentions(err, tt.err) {
				t.Errorf("ParseByteSize(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		// In the file, with the line number of errors checked elsewhere.
		c, err := Parse([]byte(minimal + "cache:\n  memory: 8192GiB\n  max_message: " + tt.in + "\n"))
		if err != nil || c.Cache.MaxMessage != tt.want && tt.want != 0 {
			t.Errorf("max_message %q: %v, %v", tt.in, c, err)
		}
	}
	for b, want := range map[ByteSize]string{256 * MiB: "256MiB", GiB: "1GiB", 1536 * KiB: "1536KiB", 1000: "1000", 0: "0"} {
		if got := b.String(); got != want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", int64(b), got, want)
		}
		if back, err := ParseByteSize(want); err != nil || back != b {
			t.Errorf("ParseByteSize(%q) = %v, %v", want, back, err)
		}
	}
}

func TestDurationYAML(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"30s", 30 * time.Second, ""},
		{"5m", 5 * time.Minute, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"1500ms", 1500 * time.Millisecond, ""},
		{`"2m"`, 2 * time.Minute, ""},
		{"60", 0, `line 7: upstreams.corp.timeout: invalid duration "60"`},
		{"soon", 0, `line 7: upstreams.corp.timeout: invalid duration "soon"`},
		{"-5s", 0, "upstreams.corp.timeout: must be positive, not -5s"},
		{"[1s]", 0, "line 7: upstreams.corp.timeout: want a duration such as 30s, not a list"},
	}
	for _, tt := range tests {
		text := strings.Replace(minimal, `    address: "imap.example.com:993"`+"\n",
			`    address: "imap.example.com:993"`+"\n    timeout: "+tt.in+"\n", 1)
		c, err := Parse([]byte(text))
		if tt.err != "" {
			if err == nil || !mentions(err, tt.err) {
				t.Errorf("timeout %s: error %v, want it to contain %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || c.Upstreams["corp"].Timeout.Duration() != tt.want {
			t.Errorf("timeout %s: %v, %v; want %v", tt.in, c, err, tt.want)
		}
	}
}

func TestUpstreamPasswordFile(t *testing.T) {
	dir := t.TempDir()
	const secret = "upstream-s3cret"
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to umask
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, content string
		mode          os.FileMode
		want, err     string
	}{
		{"newline", secret + "\n", 0o600, secret, ""},
		{"crlf", secret + "\r\n", 0o600, secret, ""},
		{"no newline", secret, 0o400, secret, ""},
		{"keeps spaces", " " + secret + " \n", 0o600, " " + secret + " ", ""},
		{"group readable", secret + "\n", 0o640, "", "chmod 600 "},
		{"world readable", secret + "\n", 0o644, "", "chmod 600 "},
		{"empty", "", 0o600, "", "is empty"},
		{"only newline", "\n", 0o600, "", "is empty"},
		{"two lines", secret + "\n\n", 0o600, "", "line break"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(tt.name, " ", "_"), tt.content, tt.mode)
			u := &User{Name: "alice", UpstreamPasswordFile: p}
			got, err := u.UpstreamPassword()
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), p) {
					t.Fatalf("UpstreamPassword = %q, %v; want an error naming %s containing %q", got, err, p, tt.err)
				}
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error contains the secret: %v", err)
				}
				if tt.err == "chmod 600 " && !strings.HasSuffix(err.Error(), "chmod 600 "+p) {
					t.Errorf("error %q does not end in chmod 600 %s", err, p)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("UpstreamPassword = %q, %v; want %q", got, err, tt.want)
			}
		})
	}

	missing := filepath.Join(dir, "missing")
	_, err := (&User{UpstreamPasswordFile: missing}).UpstreamPassword()
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
	_, err = (&User{UpstreamPasswordFile: dir}).UpstreamPassword()
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}

func TestUpstreamPasswordEnv(t *testing.T) {
	const name = "GATEWAY_CONFIG_TEST_PW"
	u := &User{Name: "alice", UpstreamPasswordEnv: name}
	t.Setenv(name, "env-s3cret")
	if got, err := u.UpstreamPassword(); err != nil || got != "env-s3cret" {
		t.Fatalf("UpstreamPassword = %q, %v", got, err)
	}
	t.Setenv(name, "")
	if _, err := u.UpstreamPassword(); err == nil || !strings.Contains(err.Error(), name+" is empty") {
		t.Errorf("empty variable: %v", err)
	}
	os.Unsetenv(name)
	if _, err := u.UpstreamPassword(); err == nil || !strings.Contains(err.Error(), name+" is not set") {
		t.Errorf("unset variable: %v", err)
	}
	if _, err := (&User{}).UpstreamPassword(); err == nil {
		t.Error("no source: no error")
	}
}

func TestCheckSecrets(t *testing.T) {
	c := mustParse(t, minimal)
	t.Setenv("ALICE_PW", "x")
	if err := c.CheckSecrets(); err != nil {
		t.Fatalf("CheckSecrets: %v", err)
	}
	os.Unsetenv("ALICE_PW")
	err := c.CheckSecrets()
	if err == nil || err.Error() != "config: users.alice: upstream password: environment variable ALICE_PW is not set" {
		t.Fatalf("CheckSecrets = %v", err)
	}
}

// The Redis password and an OAuth2 client secret are read like an upstream
// password: the file's mode checked, one trailing newline removed, an
// empty or multi-line value refused, the file or variable named in errors.
func TestOtherSecretsReadAlike(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	read := map[string]func(file, env string) (string, error){
		"redis password": func(file, env string) (string, error) {
			return (&Redis{PasswordFile: file, PasswordEnv: env}).Password()
		},
		"oauth2 client secret": func(file, env string) (string, error) {
			return (&OAuth2{ClientSecretFile: file, ClientSecretEnv: env}).ClientSecret()
		},
	}
	t.Setenv("GATEWAY_CONFIG_TEST_SECRET", "s3cret\n")
	t.Setenv("GATEWAY_CONFIG_TEST_EMPTY", "")
	for what, read := range read {
		if got, err := read("", ""); got != "" || err != nil {
			t.Errorf("%s, none configured: %q, %v", what, got, err)
		}
		if got, err := read(write("crlf", "s3cret\r\n"), ""); got != "s3cret" || err != nil {
			t.Errorf("%s from a file: %q, %v", what, got, err)
		}
		if got, err := read("", "GATEWAY_CONFIG_TEST_SECRET"); got != "s3cret" || err != nil {
			t.Errorf("%s from a variable: %q, %v", what, got, err)
		}
		two := write("two", "s3cret\nmore\n")
		if _, err := read(two, ""); err == nil || err.Error() != "config: "+what+": "+two+" contains a line break or NUL byte besides one trailing newline" {
			t.Errorf("%s, two lines: %v", what, err)
		}
		if _, err := read("", "GATEWAY_CONFIG_TEST_EMPTY"); err == nil || err.Error() != "config: "+what+": environment variable GATEWAY_CONFIG_TEST_EMPTY is empty" {
			t.Errorf("%s, empty variable: %v", what, err)
		}
		open := write("open", "s3cret")
		if err := os.Chmod(open, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := read(open, ""); err == nil || !strings.HasSuffix(err.Error(), "chmod 600 "+open) {
			t.Errorf("%s, file readable by others: %v", what, err)
		}
	}
}

// oauthUpstream turns upstream corp into an OAuth2 upstream with complete
// settings, then lets change spoil them.
func oauthUpstream(change func(o *OAuth2)) func(c *Config) {
	return func(c *Config) {
		u := c.Upstreams["corp"]
		u.Auth = AuthXOAuth2
		u.OAuth2 = &OAuth2{ClientID: "id", AuthURL: "https://idp.example/auth", TokenURL: "https://idp.example/token"}
		if change != nil {
			change(u.OAuth2)
		}
	}
}

func TestOAuth2UserValid(t *testing.T) {
	c := mustParse(t, minimal)
	oauthUpstream(nil)(c)
	alice := c.Users["alice"]
	alice.UpstreamPasswordEnv = ""
	alice.OAuth2TokenFile = "/var/lib/gateway/alice.token"
	c.Secrets.KeyEnv = "GATEWAY_KEY"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestPresets(t *testing.T) {
	for _, name := range Providers {
		p, ok := Presets[name]
		if !ok {
			t.Fatalf("provider %s has no preset", name)
		}
		text := strings.Replace(minimal, `address: "imap.example.com:993"`, "provider: "+name+"\n    oauth2: {client_id: id}", 1)
		if p.Auth == AuthPassword {
			text = strings.Replace(text, "\n    oauth2: {client_id: id}", "", 1)
		} else {
			text = strings.Replace(text, "upstream_password_env: ALICE_PW", "oauth2_token_file: alice.token", 1) +
				"secrets: {key_env: GATEWAY_KEY}\n"
		}
		c, err := Parse([]byte(text))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		u := c.Upstreams["corp"]
		if u.Address != p.Address || u.TLS != upstream.SecurityImplicit || u.Auth != p.Auth || u.OnDelete != upstream.DeleteTrash || u.TrashMailbox == "" {
			t.Errorf("%s: upstream = %+v", name, u)
		}
		if u.OAuthEnabled() && (u.OAuth2.TokenURL == "" || u.OAuth2.AuthURL == "" || len(u.OAuth2.Scopes) == 0) {
			t.Errorf("%s: oauth2 = %+v", name, u.OAuth2)
		}
	}
	// Gmail: EXPUNGE only archives, so a delete must move to the trash.
	if g := Presets["gmail"]; g.OnDelete != upstream.DeleteTrash || g.Trash != "[Gmail]/Trash" || g.DeviceAuthURL != "" {
		t.Errorf("gmail preset = %+v", g)
	}
	if o := Presets["outlook"]; o.DeviceAuthURL == "" || !strings.Contains(strings.Join(o.Scopes, " "), "offline_access") {
		t.Errorf("outlook preset = %+v", o)
	}
	// The file's values win over the preset's.
	c := mustParse(t, strings.Replace(minimal, `address: "imap.example.com:993"`,
		"provider: gmail\n    auth: password\n    on_delete: keep\n    address: \"127.0.0.1:1993\"", 1))
	if u := c.Upstreams["corp"]; u.Address != "127.0.0.1:1993" || u.Auth != AuthPassword || u.OnDelete != upstream.DeleteKeep || u.OAuth2 != nil {
		t.Errorf("overridden preset = %+v", u)
	}
}

func TestWarnings(t *testing.T) {
	c := mustParse(t, strings.Replace(minimal, `pop3: "127.0.0.1:1110"`, `pop3: ":110"`, 1))
	w := c.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "only loopback clients can log in") {
		t.Errorf("warnings = %q", w)
	}
	c.Auth.AllowInsecure = true
	c.TLS.MinVersion = "1.0"
	c.Upstreams["corp"].TLS = upstream.SecurityNone
	w = c.Warnings()
	if len(w) != 3 {
		t.Errorf("warnings = %q", w)
	}
	c.Upstreams["corp"].TLS = upstream.SecurityImplicit
	c.Upstreams["corp"].TLSSkipVerify = true
	w = c.Warnings()
	if len(w) != 3 || !strings.Contains(w[2], "upstreams.corp.tls_skip_verify is true") {
		t.Errorf("warnings = %q", w)
	}
	if w := mustParse(t, minimal).Warnings(); len(w) != 0 {
		t.Errorf("loopback-only config: warnings = %q", w)
	}
	c = mustParse(t, minimal+"auth:\n  require_tls_on_loopback: true\n")
	if w := c.Warnings(); !c.Auth.RequireTLSOnLoopback || len(w) != 1 || !strings.Contains(w[0], "no client can log in") {
		t.Errorf("require_tls_on_loopback without TLS: warnings = %q", w)
	}
}

func TestFetchAheadAndKeepConnection(t *testing.T) {
	c, err := Parse([]byte(`listen:
  pop3: "127.0.0.1:110"
upstreams:
  corp:
    address: "imap.example.com:993"
    fetch_ahead: false
    keep_connection: 0s
passthrough:
  upstream: corp
`))
	if err != nil {
		t.Fatal(err)
	}
	u := c.Upstreams["corp"]
	if *u.FetchAhead || *u.KeepConnection != 0 {
		t.Fatalf("fetch_ahead = %v, keep_connection = %v; want false, 0s", *u.FetchAhead, *u.KeepConnection)
	}
	_, err = Parse([]byte(`listen:
  pop3: "127.0.0.1:110"
upstreams:
  corp:
    address: "imap.example.com:993"
    keep_connection: 2h
passthrough:
  upstream: corp
`))
	if err == nil || !strings.Contains(withoutLines(err), "upstreams.corp.keep_connection: must be between 0s and 1h") {
		t.Fatalf("keep_connection 2h: %v", err)
	}
}

func TestCacheInFlight(t *testing.T) {
	c := mustParse(t, minimal)
	if c.Cache.InFlight != nil {
		t.Errorf("in_flight unset = %v; want nil, to be derived at start", *c.Cache.InFlight)
	}
	for in, want := range map[string]ByteSize{"64MiB": 64 * MiB, "0": 0} {
		c := mustParse(t, minimal+"cache:\n  in_flight: "+in+"\n")
		if c.Cache.InFlight == nil || *c.Cache.InFlight != want {
			t.Errorf("in_flight %s = %v; want %v", in, c.Cache.InFlight, want)
		}
	}
	c = mustParse(t, minimal)
	neg := ByteSize(-1)
	c.Cache.InFlight = &neg
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "cache.in_flight: must not be negative") {
		t.Errorf("negative in_flight: %v", err)
	}
}

// on_delete trash into the served mailbox would hand every deleted message
// back under a new UID; the error names both keys and their lines.
func TestTrashIsServedMailbox(t *testing.T) {
	for _, tt := range []struct {
		name, keys string
		want       []string
	}{
		{"same name", "    mailbox: Archive\n    on_delete: trash\n    trash_mailbox: Archive\n", []string{
			`upstreams.corp.on_delete (line 8): trash moves deleted messages into upstreams.corp.trash_mailbox (line 9), which is upstreams.corp.mailbox (line 7) ("Archive")`}},
		{"inbox in other case", "    on_delete: trash\n    trash_mailbox: inbox\n", []string{
			"upstreams.corp.on_delete (line 7)", "upstreams.corp.trash_mailbox (line 8)", "upstreams.corp.mailbox (\"INBOX\")"}},
		{"provider preset", "    provider: gmail\n    mailbox: \"[Gmail]/Trash\"\n", []string{
			"upstreams.corp.on_delete: trash moves deleted messages into upstreams.corp.trash_mailbox, which is upstreams.corp.mailbox (line 8)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			text := strings.Replace(minimal, `    address: "imap.example.com:993"`+"\n",
				`    address: "imap.example.com:993"`+"\n"+tt.keys, 1)
			_, err := Parse([]byte(text))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
	// Another mailbox, or the same name with another delete mode, is fine.
	for _, keys := range []string{
		"    mailbox: Archive\n    on_delete: trash\n    trash_mailbox: Trash\n",
		"    mailbox: Trash\n    on_delete: expunge\n    trash_mailbox: Trash\n",
		"    mailbox: INBOX.Trash\n    on_delete: trash\n    trash_mailbox: INBOX\n",
	} {
		text := strings.Replace(minimal, `    address: "imap.example.com:993"`+"\n",
			`    address: "imap.example.com:993"`+"\n"+keys, 1)
		if _, err := Parse([]byte(text)); err != nil {
			t.Errorf("%q: %v", keys, err)
		}
	}
}

// cache.memory: 0 turns the body cache off; only a missing key gets the
// default.
func TestCacheMemoryZero(t *testing.T) {
	for _, tt := range []struct {
		text string
		want ByteSize
	}{
		{"", DefaultMemory},
		{"cache:\n  max_message: 1MiB\n", DefaultMemory},
		{"cache:\n  memory: 0\n", 0},
		{"cache:\n  memory: 0MiB\n  max_message: 1MiB\n", 0},
		{"cache:\n  memory: 64MiB\n", 64 * MiB},
	} {
		c, err := Parse([]byte(minimal + tt.text))
		if err != nil {
			t.Errorf("%q: %v", tt.text, err)
			continue
		}
		if c.Cache.Memory != tt.want {
			t.Errorf("%q: cache.memory %v, want %v", tt.text, c.Cache.Memory, tt.want)
		}
	}
}

func TestSendClientIP(t *testing.T) {
	c := mustParse(t, strings.Replace(minimal, `address: "imap.example.com:993"`, "address: \"imap.example.com:993\"\n    send_client_ip: true", 1))
	if !c.Upstreams["corp"].SendClientIP {
		t.Fatal("send_client_ip not read")
	}
	if mustParse(t, minimal).Upstreams["corp"].SendClientIP {
		t.Fatal("send_client_ip on by default")
	}
}

func TestMinRefusalTime(t *testing.T) {
	if d := mustParse(t, minimal).Auth.MinRefusalTime; d == nil || *d != DefaultMinRefusalTime {
		t.Errorf("default min_refusal_time = %v, want %v", d, DefaultMinRefusalTime)
	}
	if d := mustParse(t, minimal+"auth:\n  min_refusal_time: 0s\n").Auth.MinRefusalTime; d == nil || *d != 0 {
		t.Errorf("min_refusal_time 0s read as %v", d)
	}
	_, err := Parse([]byte(minimal + "auth:\n  min_refusal_time: 1m\n"))
	if err == nil || !strings.Contains(withoutLines(err), "auth.min_refusal_time: must be between 0s and 30s, not 1m0s") {
		t.Errorf("min_refusal_time 1m: %v", err)
	}
}

// lineNote is how a problem names the line of its key.
var lineNote = regexp.MustCompile(` \(line \d+\)`)

// withoutLines is an error's text without the lines of the keys it names,
// for the tests that check what a problem says.
func withoutLines(err error) string { return lineNote.ReplaceAllString(err.Error(), "") }

// mentions reports whether err says want, with the lines it names or
// without them.
func mentions(err error, want string) bool {
	return strings.Contains(err.Error(), want) || strings.Contains(withoutLines(err), want)
}

// TestProblemsNameTheirLines: every problem about a key the file has names
// that key's line.
func TestProblemsNameTheirLines(t *testing.T) {
	_, err := Parse([]byte("listen:\n  pop3: \"localhost\"\ndata_dir: var/lib/gateway\nauth:\n  min_refusal_time: 1m\n"))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`listen.pop3 (line 2): "localhost" is not host:port`,
		`data_dir (line 3): "var/lib/gateway" is not an absolute path`,
		`auth.min_refusal_time (line 5): must be between 0s and 30s`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error:\n%v\nwant a line containing %q", err, want)
		}
	}
}
