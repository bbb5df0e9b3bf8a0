package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/oauth"
	"github.com/pop3gw/gateway/proxy"
)

const oauth2Usage = `usage: gateway oauth2 login -config FILE -user NAME [-flow auto|device|code] [-no-check]

Authorises the gateway to read the mailbox of a mapped user on an upstream
with auth xoauth2 or oauthbearer, and stores the refresh token, sealed, in
the user's oauth2_token_file.
`

// oauth2Cmd runs the first authorisation of a mapped user's upstream
// account.
func oauth2Cmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "login" {
		fmt.Fprint(stderr, oauth2Usage)
		return 2
	}
	fs := flag.NewFlagSet("oauth2 login", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (YAML)")
	userName := fs.String("user", "", "the mapped user (a key of users in the config)")
	flow := fs.String("flow", "auto", "auto: the device grant where the provider offers one, else the code grant; device; code")
	noCheck := fs.Bool("no-check", false, "do not log in upstream with the new token")
	timeout := fs.Duration("timeout", 15*time.Minute, "give up waiting for the approval after this long")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *configPath == "" || *userName == "" {
		fmt.Fprint(stderr, oauth2Usage)
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "gateway oauth2 login:", err)
		return 1
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return fail(err)
	}
	user := cfg.Users[*userName]
	if user == nil {
		return fail(fmt.Errorf("no user %q in %s", *userName, *configPath))
	}
	up := cfg.Upstreams[user.Upstream]
	if !up.OAuthEnabled() {
		return fail(fmt.Errorf("users.%s: upstream %s has auth %s; OAuth2 needs auth xoauth2 or oauthbearer", *userName, up.Name, up.Auth))
	}
	key, err := cfg.SealingKey()
	if err != nil {
		return fail(err)
	}
	client, err := oauthClient(up)
	if err != nil {
		return fail(fmt.Errorf("upstreams.%s: %w", up.Name, err))
	}
	o := up.OAuth2
	switch *flow {
	case "auto":
		*flow = "code"
		if o.DeviceAuthURL != "" {
			*flow = "device"
		}
	case "device":
		if o.DeviceAuthURL == "" {
			return fail(fmt.Errorf("upstreams.%s.oauth2: no device_auth_url; use -flow code", up.Name))
		}
	case "code":
		if o.AuthURL == "" {
			return fail(fmt.Errorf("upstreams.%s.oauth2: no auth_url; use -flow device", up.Name))
		}
	default:
		return fail(fmt.Errorf("-flow %q is not auto, device or code", *flow))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	fmt.Fprintf(stdout, "Authorising the gateway for users.%s (%s on upstream %s).\n", *userName, user.UpstreamUser, up.Name)
	var tok *oauth2.Token
	if *flow == "device" {
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
		store := &oauth.Store{Path: user.OAuth2TokenFile, Key: key, Context: config.TokenContext(*userName)}
		err = store.Save(tok)
	}
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "Stored the refresh token for users.%s in %s, sealed with the key of the secrets section. A running gateway uses it at the next login.\n", *userName, user.OAuth2TokenFile)
	if *noCheck {
		return 0
	}
	pc, err := newSetup(*configPath, slog.New(slog.DiscardHandler)).gatewayConfig(cfg)
	if err != nil {
		return fail(err)
	}
	gw := proxy.New(pc, cache.New(0, 0), slog.New(slog.DiscardHandler))
	defer gw.Close()
	for _, r := range gw.Check(ctx, *userName) {
		if r.Err != nil {
			return fail(fmt.Errorf("the token is stored, but the upstream login with it failed: %w", r.Err))
		}
		fmt.Fprintf(stdout, "Checked: logged in to upstream %s as %s, %d messages in %s.\n", up.Name, user.UpstreamUser, r.Messages, up.Mailbox)
	}
	return 0
}
