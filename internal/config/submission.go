package config

import (
	"fmt"
	"maps"
	"net/mail"
	"slices"

	"github.com/pop3gw/gateway/upstream"
)

// Submission is an upstream's SMTP submission server, where the relay
// sends its users' mail. The upstream's ca_file, server_name and
// tls_skip_verify apply to it too; server_name, when empty, is the host
// of this address.
type Submission struct {
	Address string            `yaml:"address"` // host:port
	TLS     upstream.Security `yaml:"tls"`     // implicit | starttls | none; default implicit
}

// Submission limits' defaults: a device, a printer or a ticketing system
// stays well within them; a stolen login used for spam does not.
const (
	DefaultMaxRecipients   = 100
	DefaultMessagesPerHour = 200
)

// submissionPresets are the providers' submission servers (RFC 8314:
// implicit TLS where the provider offers it).
var submissionPresets = map[string]Submission{
	"gmail":    {Address: "smtp.gmail.com:465", TLS: upstream.SecurityImplicit},
	"outlook":  {Address: "smtp.office365.com:587", TLS: upstream.SecurityStartTLS},
	"yahoo":    {Address: "smtp.mail.yahoo.com:465", TLS: upstream.SecurityImplicit},
	"aol":      {Address: "smtp.aol.com:465", TLS: upstream.SecurityImplicit},
	"icloud":   {Address: "smtp.mail.me.com:587", TLS: upstream.SecurityStartTLS},
	"fastmail": {Address: "smtp.fastmail.com:465", TLS: upstream.SecurityImplicit},
}

// submissionScopes are the OAuth2 scopes a provider wants for SMTP AUTH
// beyond its IMAP ones. Gmail's https://mail.google.com/ covers both;
// Microsoft wants SMTP.Send. They are requested only when a submission
// listener is configured: a token granted without them keeps serving
// POP3, and `gateway oauth2 login` asks for them again.
var submissionScopes = map[string][]string{
	"outlook": {"https://outlook.office.com/SMTP.Send"},
}

// SubmissionEnabled reports whether a submission listener is configured.
func (l Listen) SubmissionEnabled() bool { return l.Submission != "" || l.Submissions != "" }

// applySubmissionPreset fills the upstream's submission endpoint from its
// provider, and the provider's SMTP scopes when the relay is on.
func applySubmissionPreset(u *Upstream, l Listen) {
	p, ok := submissionPresets[u.Provider]
	if !ok {
		return
	}
	if u.Submission == nil {
		u.Submission = &Submission{}
	}
	if u.Submission.Address == "" {
		u.Submission.Address = p.Address
		if u.Submission.TLS == "" {
			u.Submission.TLS = p.TLS
		}
	}
	if l.SubmissionEnabled() && u.OAuth2 != nil {
		for _, s := range submissionScopes[u.Provider] {
			if !slices.Contains(u.OAuth2.Scopes, s) {
				u.OAuth2.Scopes = append(u.OAuth2.Scopes, s)
			}
		}
	}
}

func (c *Config) setSubmissionDefaults() {
	if c.Limits.MaxRecipients == 0 {
		c.Limits.MaxRecipients = DefaultMaxRecipients
	}
	if c.Limits.MessagesPerHour == 0 {
		c.Limits.MessagesPerHour = DefaultMessagesPerHour
	}
	for _, u := range c.Upstreams {
		if u != nil && u.Submission != nil && u.Submission.TLS == "" {
			u.Submission.TLS = upstream.SecurityImplicit
		}
	}
}

func (c *Config) validateSubmission(p *problems) {
	if c.Listen.Submissions != "" && !c.TLSEnabled() {
		p.add(c.key("listen.submissions"), "needs tls.cert_file and tls.key_file")
	}
	if c.Limits.MaxRecipients < -1 {
		p.add(c.key("limits.max_recipients"), "must be positive, or -1 for no limit")
	}
	if c.Limits.MessagesPerHour < -1 {
		p.add(c.key("limits.messages_per_hour"), "must be positive, or -1 for no limit")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		u := c.Upstreams[name]
		if u == nil || u.Submission == nil {
			continue
		}
		path := "upstreams." + name + ".submission"
		if u.Submission.Address == "" {
			p.add(c.key(path+".address"), "required")
		} else {
			p.addr(c.key(path+".address"), u.Submission.Address, false)
		}
		checkOneOf(p, c.key(path+".tls"), u.Submission.TLS, upstream.Securities)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Users)) {
		u := c.Users[name]
		if u == nil {
			continue
		}
		for i, a := range u.Addresses {
			path := fmt.Sprintf("users.%s.addresses", name)
			if addr, err := mail.ParseAddress(a); err != nil || addr.Address != a || addr.Name != "" {
				p.add(c.key(path), "item %d: %q is not a bare address such as user@example.com", i+1, a)
			}
		}
	}
}

// submissionWarnings are the relay's settings that leave it unusable or
// weak, for Warnings.
func (c *Config) submissionWarnings() []string {
	if !c.Listen.SubmissionEnabled() {
		return nil
	}
	var w []string
	endpoint := false
	for _, u := range c.Upstreams {
		if u != nil && u.Submission != nil {
			endpoint = true
		}
	}
	if !endpoint {
		w = append(w, "listen.submission or listen.submissions is set, but no upstream has a submission endpoint (upstreams.NAME.submission, or a provider): every login is refused for now")
	}
	if l := c.Listen.Submission; l != "" && !c.TLSEnabled() && !c.Auth.AllowInsecure && !isLoopback(l) {
		w = append(w, "listen.submission has no TLS (no tls.cert_file) and auth.allow_insecure is false: only loopback clients can log in")
	}
	return w
}
