package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/submission"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
)

// relay is the submission door's Backend: a login is resolved by the
// gateway exactly as a POP3 login, and its mail goes to its upstream's
// submission endpoint with the same upstream credentials, or, for a
// Graph upstream without one, through Graph's sendMail with the token
// the Graph store uses.
type relay struct {
	gateway *proxy.Gateway
	routes  atomic.Pointer[relayRoutes] // replaced on reload
}

// relayRoutes is what the relay takes from the config file.
type relayRoutes struct {
	upstreams  map[string]*submission.Upstream // by upstream name; absent: no submission endpoint
	mechanisms map[string]string               // upstream name -> XOAUTH2 or OAUTHBEARER, for OAuth2 upstreams
	addresses  map[string][]string             // canonical mapped user name -> its further sender addresses
	// graph are the Graph upstreams without a submission endpoint: their
	// mail goes through sendMail, with these client options.
	graph map[string]graph.Options
}

func newRelayRoutes(cfg *config.Config) (*relayRoutes, error) {
	r := &relayRoutes{
		upstreams:  make(map[string]*submission.Upstream),
		mechanisms: make(map[string]string),
		addresses:  make(map[string][]string),
		graph:      make(map[string]graph.Options),
	}
	for name, u := range cfg.Upstreams {
		if u.Submission == nil && u.Protocol == config.ProtocolGraph {
			tlsConfig, err := upstreamTLS(u)
			if err != nil {
				return nil, fmt.Errorf("upstreams.%s: %w", name, err)
			}
			r.graph[name] = graph.Options{
				BaseURL:    u.Address,
				HTTPClient: graphHTTP(tlsConfig, time.Duration(u.Timeout)),
				Timeout:    time.Duration(u.Timeout),
			}
			continue
		}
		if u.Submission == nil {
			continue
		}
		tlsConfig, err := clientTLS(u.CAFile, u.ServerName, u.TLSSkipVerify)
		if err != nil {
			return nil, fmt.Errorf("upstreams.%s: %w", name, err)
		}
		r.upstreams[name] = &submission.Upstream{
			Name:      name,
			Address:   u.Submission.Address,
			Security:  submission.Security(u.Submission.TLS),
			TLSConfig: tlsConfig,
			Timeout:   time.Duration(u.Timeout),
		}
		switch u.Auth {
		case config.AuthXOAuth2:
			r.mechanisms[name] = submission.XOAuth2
		case config.AuthOAuthBearer:
			r.mechanisms[name] = submission.OAuthBearer
		}
	}
	for name, u := range cfg.Users {
		r.addresses[username.Canonical(name)] = u.Addresses
	}
	return r, nil
}

func (r *relay) Login(ctx context.Context, login *submission.LoginInfo) (*submission.Account, error) {
	cred, err := r.gateway.Credentials(login.Username, login.Password)
	if errors.Is(err, proxy.ErrLoginRefused) {
		return nil, submission.ErrAuthFailed
	}
	if err != nil {
		return nil, err
	}
	return r.account(cred)
}

// account is where a resolved login's mail goes.
func (r *relay) account(cred *proxy.Credentials) (*submission.Account, error) {
	routes := r.routes.Load()
	name := cred.Upstream.Name
	if opts, ok := routes.graph[name]; ok {
		return graphAccount(name, cred, opts)
	}
	up := routes.upstreams[name]
	if up == nil {
		return nil, fmt.Errorf("upstreams.%s has no submission endpoint", name)
	}
	acct := &submission.Account{
		Key:      name + "/" + username.Canonical(cred.Username),
		Upstream: up,
		Username: cred.Username,
		Password: cred.Password,
		// The upstream account is the sender the provider itself allows;
		// a passthrough login's name is that account.
		Senders: []string{cred.Username},
	}
	if !cred.Forwarded() {
		acct.Senders = append(acct.Senders, routes.addresses[username.Canonical(cred.User)]...)
	}
	if cred.Token != nil {
		acct.Mechanism = routes.mechanisms[name]
		acct.Token = relayToken(cred)
	}
	return acct, nil
}

// relayToken gives the login's OAuth2 tokens, an account the operator
// must authorise first refused like bad credentials, as for POP3; the
// log says what the operator must do.
func relayToken(cred *proxy.Credentials) func(ctx context.Context, refresh bool) (string, error) {
	return func(ctx context.Context, refresh bool) (string, error) {
		tok, err := cred.Token(ctx, refresh)
		if errors.Is(err, proxy.ErrNeedsAuthorization) {
			return "", fmt.Errorf("%w: %w", submission.ErrAuthFailed, err)
		}
		return tok, err
	}
}

// graphAccount sends a Graph user's mail through sendMail as the token's
// user, the account POP3 reads. Graph itself allows that user's own
// address and those it may send as; the relay allows the same senders
// as for an SMTP upstream.
func graphAccount(name string, cred *proxy.Credentials, opts graph.Options) (*submission.Account, error) {
	if cred.Token == nil {
		return nil, fmt.Errorf("upstreams.%s: sendMail needs an OAuth2 token", name)
	}
	acct := &submission.Account{
		Key:      name + "/" + username.Canonical(cred.Username),
		Upstream: &submission.Upstream{Name: name},
		Username: cred.Username,
		Senders:  []string{cred.Username},
		Token:    relayToken(cred),
	}
	opts.Tokens = tokenFunc(acct.Token)
	c, err := graph.New(opts)
	if err != nil {
		return nil, fmt.Errorf("upstreams.%s: %w", name, err)
	}
	acct.Mailer = graphMailer{c}
	return acct, nil
}

type tokenFunc func(ctx context.Context, refresh bool) (string, error)

func (f tokenFunc) AccessToken(ctx context.Context, refresh bool) (string, error) {
	return f(ctx, refresh)
}

// graphMailer is Graph's sendMail as the relay's Mailer.
type graphMailer struct{ c *graph.Client }

func (graphMailer) MaxSize() int64 { return graph.MaxSendMIME }

// Check reads the Sent Items folder (api/mailfolder-get), where sendMail
// keeps its copies: the token is had, Graph answers for the account, and
// nothing is sent. Whether the token carries Mail.Send shows only at the
// first message (403 ErrorAccessDenied, refused with 554).
func (m graphMailer) Check(ctx context.Context) error {
	_, err := m.c.Folder(ctx, "sentitems")
	return err
}

// Send tells the relay Graph's answer: its status and error code (the
// code is printable and Graph's own vocabulary, such as
// ErrorSendAsDenied, never its message text).
func (m graphMailer) Send(ctx context.Context, msg []byte) error {
	err := m.c.SendMail(ctx, msg)
	var ge *graph.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ge):
		return &submission.MailerRefusal{
			Status: ge.Status, Code: ge.Code, RetryAfter: ge.RetryAfter,
			Temporary: errors.Is(err, graph.ErrTemporary) || errors.Is(err, upstream.ErrAuthFailed),
		}
	default:
		return err
	}
}

// submissionCapabilities asks the submission upstreams what the relay's
// EHLO may offer, for at most 10 seconds: an upstream that cannot be
// asked delays the start by no more, and EHLO then offers SIZE without a
// limit and no SMTPUTF8. Upstreams added by a reload are not asked.
//
// Where every route is Graph's sendMail, EHLO offers SIZE with its limit
// (RFC 1870), so a device learns it before sending. Beside SMTP
// upstreams, the SMTP upstreams' limit is offered and sendMail's is
// enforced at DATA.
func submissionCapabilities(ctx context.Context, r *relayRoutes, log *slog.Logger) submission.Capabilities {
	if len(r.upstreams) == 0 {
		if len(r.graph) > 0 {
			return submission.Capabilities{Size: graph.MaxSendMIME}
		}
		return submission.Capabilities{}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var ups []*submission.Upstream
	for _, name := range slices.Sorted(maps.Keys(r.upstreams)) {
		ups = append(ups, r.upstreams[name])
	}
	caps, err := submission.Probe(ctx, ups)
	if err != nil {
		log.Warn("submission upstreams' capabilities unknown: EHLO offers SIZE without a limit and no SMTPUTF8", "err", err)
		return caps
	}
	log.Info("submission upstreams' capabilities", "size", caps.Size, "smtputf8", caps.SMTPUTF8)
	return caps
}

// checkSubmission logs in to the submission endpoint of each mapped
// user whose upstream has one, and asks Graph for each whose mail goes
// through sendMail, for `gateway check`.
func checkSubmission(ctx context.Context, cfg *config.Config, gw *proxy.Gateway, stdout io.Writer) (failed int) {
	routes, err := newRelayRoutes(cfg)
	if err != nil {
		fmt.Fprintf(stdout, "submission: FAILED: %v\n", err)
		return 1
	}
	r := &relay{gateway: gw}
	r.routes.Store(routes)
	for _, name := range slices.Sorted(maps.Keys(cfg.Users)) {
		u := cfg.Users[name]
		var route string
		if up := routes.upstreams[u.Upstream]; up != nil {
			route = "submission " + up.Address
		} else if opts, ok := routes.graph[u.Upstream]; ok {
			route = "sendMail " + cmp.Or(opts.BaseURL, graph.DefaultBaseURL)
		} else {
			continue
		}
		cred, err := gw.UserCredentials(name)
		if err == nil {
			var acct *submission.Account
			if acct, err = r.account(cred); err == nil {
				err = submission.Check(ctx, acct)
			}
		}
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "user %s (%s): FAILED: %v\n", name, route, err)
			continue
		}
		fmt.Fprintf(stdout, "user %s (%s): ok\n", name, route)
	}
	return failed
}
