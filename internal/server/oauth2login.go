package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/oauth"
	"github.com/pop3gw/gateway/proxy"
)

// OAuth2Login are the choices of an OAuth2 first authorisation.
type OAuth2Login struct {
	Config string // the config file
	User   string // the mapped user (a key of users in the config)
	// Flow is "auto" (the device grant where the provider offers one,
	// else the code grant), "device" or "code".
	Flow string
	// NoCheck skips the upstream login with the new token.
	NoCheck bool
	// Timeout bounds the wait for the approval; 0: 15 minutes.
	Timeout time.Duration
}

// AuthorizeOAuth2 runs the first authorisation of a mapped user's upstream
// account: it obtains a refresh token with the device or code grant
// (instructions on stdout, a pasted redirect address on stdin), stores it
// sealed in the user's oauth2_token_file, and logs in upstream with it.
func AuthorizeOAuth2(ctx context.Context, opts OAuth2Login, stdin io.Reader, stdout io.Writer) error {
	if opts.Timeout <= 0 {
		opts.Timeout = 15 * time.Minute
	}
	cfg, err := config.Load(opts.Config)
	if err != nil {
		return err
	}
	user := cfg.Users[opts.User]
	if user == nil {
		return fmt.Errorf("no user %q in %s", opts.User, opts.Config)
	}
	up := cfg.Upstreams[user.Upstream]
	if !up.OAuthEnabled() {
		return fmt.Errorf("users.%s: upstream %s has auth %s; OAuth2 needs auth xoauth2 or oauthbearer (oauth2 for protocol graph and jmap)", opts.User, up.Name, up.Auth)
	}
	key, err := cfg.SealingKey()
	if err != nil {
		return err
	}
	client, err := oauthClient(up)
	if err != nil {
		return fmt.Errorf("upstreams.%s: %w", up.Name, err)
	}
	o := up.OAuth2
	switch opts.Flow {
	case "auto", "":
		opts.Flow = "code"
		if o.DeviceAuthURL != "" {
			opts.Flow = "device"
		}
	case "device":
		if o.DeviceAuthURL == "" {
			return fmt.Errorf("upstreams.%s.oauth2: no device_auth_url; use -flow code", up.Name)
		}
	case "code":
		if o.AuthURL == "" {
			return fmt.Errorf("upstreams.%s.oauth2: no auth_url; use -flow device", up.Name)
		}
	default:
		return fmt.Errorf("-flow %q is not auto, device or code", opts.Flow)
	}

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	fmt.Fprintf(stdout, "Authorising the gateway for users.%s (%s on upstream %s).\n", opts.User, user.UpstreamUser, up.Name)
	var tok *oauth2.Token
	if opts.Flow == "device" {
		tok, err = client.DeviceLogin(ctx, stdout)
	} else {
		tok, err = client.CodeLogin(ctx, stdin, stdout)
	}
	if err == nil {
		// The token directory is made on first use, for the gateway's
		// user only.
		err = os.MkdirAll(filepath.Dir(user.OAuth2TokenFile), 0o700)
	}
	if err == nil {
		store := &oauth.Store{Path: user.OAuth2TokenFile, Key: key, Context: config.TokenContext(opts.User)}
		err = store.Save(tok)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Stored the refresh token for users.%s in %s, sealed with the key of the secrets section. A running gateway uses it at the next login.\n", opts.User, user.OAuth2TokenFile)
	if opts.NoCheck {
		return nil
	}
	pc, err := newSetup(opts.Config, slog.New(slog.DiscardHandler)).gatewayConfig(cfg)
	if err != nil {
		return err
	}
	gw := proxy.New(pc, cache.New(0, 0), slog.New(slog.DiscardHandler))
	defer gw.Close()
	for _, r := range gw.Check(ctx, opts.User) {
		if r.Err != nil {
			return fmt.Errorf("the token is stored, but the upstream login with it failed: %w", r.Err)
		}
		fmt.Fprintf(stdout, "Checked: logged in to upstream %s as %s, %d messages in %s.\n", up.Name, user.UpstreamUser, r.Messages, up.Mailbox)
	}
	return nil
}
