package config

import (
	"slices"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/upstream"
)

func TestSubmissionPresetsAndScopes(t *testing.T) {
	base := `
listen:
  pop3: "127.0.0.1:0"
%s
upstreams:
  ms:
    provider: outlook
    auth: xoauth2
    oauth2: {client_id: x}
  fm:
    provider: fastmail
  own:
    address: "imap.example.com:993"
    submission: {address: "smtp.example.com:587", tls: starttls}
users:
  alice:
    password_hash: "$argon2id$v=19$m=65536,t=2,p=2$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    upstream: own
    upstream_user: alice@example.com
    upstream_password_env: X
    addresses: [scanner@example.com]
`
	c, err := Parse([]byte(strings.Replace(base, "%s", "  submission: \"127.0.0.1:0\"", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Upstreams["ms"].Submission; s == nil || s.Address != "smtp.office365.com:587" || s.TLS != upstream.SecurityStartTLS {
		t.Errorf("outlook submission = %+v", s)
	}
	if s := c.Upstreams["fm"].Submission; s == nil || s.Address != "smtp.fastmail.com:465" || s.TLS != upstream.SecurityImplicit {
		t.Errorf("fastmail submission = %+v", s)
	}
	if !slices.Contains(c.Upstreams["ms"].OAuth2.Scopes, "https://outlook.office.com/SMTP.Send") {
		t.Errorf("outlook scopes with the relay on = %v", c.Upstreams["ms"].OAuth2.Scopes)
	}
	if c.Limits.MaxRecipients != DefaultMaxRecipients || c.Limits.MessagesPerHour != DefaultMessagesPerHour {
		t.Errorf("limits = %+v", c.Limits)
	}
	if got := c.Users["alice"].Addresses; len(got) != 1 || got[0] != "scanner@example.com" {
		t.Errorf("addresses = %v", got)
	}
	c, err = Parse([]byte(strings.Replace(base, "%s", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(c.Upstreams["ms"].OAuth2.Scopes, "https://outlook.office.com/SMTP.Send") {
		t.Errorf("outlook scopes without the relay = %v: a token without SMTP.Send must keep working", c.Upstreams["ms"].OAuth2.Scopes)
	}
}

func TestSubmissionValidation(t *testing.T) {
	_, err := Parse([]byte(`
listen:
  pop3: "127.0.0.1:0"
  submissions: "127.0.0.1:0"
limits:
  max_recipients: -5
upstreams:
  own:
    address: "imap.example.com:993"
    submission: {address: "smtp.example.com", tls: sometimes}
users:
  alice:
    password_hash: "$argon2id$v=19$m=65536,t=2,p=2$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    upstream: own
    upstream_user: alice@example.com
    upstream_password_env: X
    addresses: ["Alice <alice@example.com>"]
`))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"listen.submissions (line 4): needs tls.cert_file",
		"limits.max_recipients (line 6): must be positive",
		"upstreams.own.submission.address (line 10): \"smtp.example.com\" is not host:port",
		"upstreams.own.submission.tls (line 10)",
		"users.alice.addresses (line 17): item 1",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error:\n%v\nwant a line containing %q", err, want)
		}
	}
}

func TestSubmissionWarnings(t *testing.T) {
	c, err := Parse([]byte(`
listen:
  pop3: "127.0.0.1:0"
  submission: "0.0.0.0:587"
upstreams:
  own:
    address: "imap.example.com:993"
passthrough:
  upstream: own
`))
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(c.Warnings(), "\n")
	for _, want := range []string{"no upstream has a submission endpoint", "listen.submission has no TLS"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings:\n%s\nwant one containing %q", w, want)
		}
	}
}
