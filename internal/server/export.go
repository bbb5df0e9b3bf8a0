package server

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/term"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/export"
	"github.com/pop3gw/gateway/internal/oauth"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// ExportAccount says whose mail `gateway export` copies: a mapped user of
// a config file, or one account given on the command line.
type ExportAccount struct {
	Config string
	User   string

	// Without Config: a provider preset, or Address and TLS for any IMAP
	// server, and the login.
	Provider     string
	Address      string
	TLS          upstream.Security
	Login        string
	PasswordFile string
	// OAuth2ClientID is the provider's registered application, for
	// providers whose preset logs in with OAuth2.
	OAuth2ClientID string
}

// Export copies an account's mail into opts.Dir. opts.Open and
// opts.Mailbox are filled in here. Prompts (password, OAuth2 approval) go
// to stderr; the password is read from stdin.
func Export(ctx context.Context, acct ExportAccount, opts export.Options, stdin *os.File, stderr io.Writer) (*export.Summary, error) {
	log := cmp.Or(opts.Log, slog.New(slog.DiscardHandler))
	var pc *proxy.Config
	user := acct.User
	if acct.Config != "" {
		cfg, err := config.Load(acct.Config)
		if err != nil {
			return nil, err
		}
		if pc, err = newSetup(acct.Config, log).gatewayConfig(cfg); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	} else {
		var err error
		user = "export"
		if pc, err = oneOffConfig(ctx, acct, stdin, stderr); err != nil {
			return nil, err
		}
	}
	gw := proxy.New(pc, cache.New(0, 0), log)
	defer gw.Close()
	open, mailbox, err := gw.UserSessions(user)
	if err != nil {
		return nil, err
	}
	opts.Open, opts.Mailbox = export.Opener(open), mailbox
	return export.Run(ctx, opts)
}

// oneOffConfig is a gateway configuration of one user for the account on
// the command line.
func oneOffConfig(ctx context.Context, acct ExportAccount, stdin *os.File, stderr io.Writer) (*proxy.Config, error) {
	if acct.Login == "" {
		return nil, errors.New("-login ADDRESS is required without -config")
	}
	up := &config.Upstream{Provider: acct.Provider, Address: acct.Address, TLS: acct.TLS}
	if acct.Provider != "" {
		p, ok := config.Presets[acct.Provider]
		if !ok {
			return nil, fmt.Errorf("-provider %q is not one of %s", acct.Provider, strings.Join(config.Providers, ", "))
		}
		up.Address = cmp.Or(up.Address, p.Address)
		up.TLS = cmp.Or(up.TLS, p.TLS)
		up.Auth = p.Auth
		if p.TokenURL != "" {
			up.OAuth2 = &config.OAuth2{AuthURL: p.AuthURL, TokenURL: p.TokenURL, DeviceAuthURL: p.DeviceAuthURL, Scopes: p.Scopes}
		}
	}
	if up.Address == "" {
		return nil, errors.New("-provider NAME or -address HOST:PORT is required without -config")
	}
	up.TLS = cmp.Or(up.TLS, upstream.SecurityImplicit)
	tlsConfig, err := clientTLS("", "", false)
	if err != nil {
		return nil, err
	}
	pu := &proxy.Upstream{
		Name:    "export",
		Server:  upstream.Server{Address: up.Address, Security: up.TLS, TLSConfig: tlsConfig},
		Mailbox: "INBOX",
	}
	user := &proxy.User{Name: "export", Upstream: "export", UpstreamUser: acct.Login}
	oauthLogin := up.Auth == config.AuthXOAuth2 || up.Auth == config.AuthOAuthBearer
	switch {
	case acct.PasswordFile != "" || !oauthLogin:
		pw, err := oneOffPassword(acct, stdin, stderr)
		if err != nil {
			return nil, err
		}
		user.UpstreamPassword = func() (string, error) { return pw, nil }
	default:
		if acct.OAuth2ClientID == "" || up.OAuth2 == nil {
			return nil, fmt.Errorf("%s logs in with OAuth2: give -oauth2-client-id (the application registered with the provider), or -password-file with an app password", acct.Provider)
		}
		pu.OAuth2 = map[string]string{config.AuthXOAuth2: upstream.XOAuth2, config.AuthOAuthBearer: upstream.OAuthBearer}[up.Auth]
		src, err := oneOffToken(ctx, up.OAuth2, acct.OAuth2ClientID, stdin, stderr)
		if err != nil {
			return nil, err
		}
		user.UpstreamToken = func(context.Context, bool) (string, error) {
			tok, err := src.Token()
			if err != nil {
				return "", err
			}
			return tok.AccessToken, nil
		}
	}
	return &proxy.Config{
		Upstreams: map[string]*proxy.Upstream{"export": pu},
		Users:     map[string]*proxy.User{"export": user},
	}, nil
}

// oneOffPassword reads the password from the file, else from the
// terminal without echo, else one line of stdin.
func oneOffPassword(acct ExportAccount, stdin *os.File, stderr io.Writer) (string, error) {
	if acct.PasswordFile != "" {
		b, err := os.ReadFile(acct.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("-password-file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	if term.IsTerminal(int(stdin.Fd())) {
		fmt.Fprintf(stderr, "Password for %s: ", acct.Login)
		b, err := term.ReadPassword(int(stdin.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		return string(b), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && line == "" {
		return "", errors.New("no password: give -password-file, or type it on a terminal")
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// oneOffToken authorises the export with the provider's device grant
// where it has one, else the code grant, and keeps the token in memory
// only.
func oneOffToken(ctx context.Context, o *config.OAuth2, clientID string, stdin io.Reader, stderr io.Writer) (oauth2.TokenSource, error) {
	cfg := &oauth2.Config{
		ClientID: clientID,
		Endpoint: oauth2.Endpoint{AuthURL: o.AuthURL, TokenURL: o.TokenURL, DeviceAuthURL: o.DeviceAuthURL, AuthStyle: oauth2.AuthStyleInParams},
		Scopes:   o.Scopes,
	}
	client := &oauth.Client{Config: cfg}
	var tok *oauth2.Token
	var err error
	if o.DeviceAuthURL != "" {
		tok, err = client.DeviceLogin(ctx, stderr)
	} else {
		tok, err = client.CodeLogin(ctx, stdin, stderr)
	}
	if err != nil {
		return nil, err
	}
	return cfg.TokenSource(context.WithoutCancel(ctx), tok), nil
}
