package submission

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Security is how the connection to an upstream submission server is
// protected.
type Security string

const (
	SecurityImplicit Security = "implicit" // TLS from the first octet (port 465, RFC 8314 §3.3)
	SecurityStartTLS Security = "starttls" // STARTTLS before AUTH (port 587, RFC 3207)
	SecurityNone     Security = "none"     // cleartext; for loopback and tests
)

// Upstream SASL mechanisms for OAuth2 access tokens.
const (
	XOAuth2     = "XOAUTH2"     // Google's and Microsoft's XOAUTH2
	OAuthBearer = "OAUTHBEARER" // RFC 7628
)

// DefaultTimeout bounds each exchange with an upstream when
// Upstream.Timeout is 0.
const DefaultTimeout = 60 * time.Second

// Upstream is a submission server the relay sends to.
type Upstream struct {
	Name     string // for logs
	Address  string // host:port
	Security Security
	// TLSConfig verifies the server; its ServerName, when empty, is the
	// host of Address.
	TLSConfig *tls.Config
	// Timeout bounds each read and write: an upstream silent for this
	// long ends the transaction with a temporary failure.
	Timeout time.Duration
	// LocalName is sent in EHLO; default "localhost".
	LocalName string
}

// Account is where a login's mail goes: the upstream, its credentials
// there, and the envelope senders the login may use.
type Account struct {
	// Key names the account once for the hourly message limit, whatever
	// case the client typed.
	Key      string
	Upstream *Upstream
	Username string
	Password string
	// Token, when set, gives an OAuth2 access token, a fresh one when
	// refresh is set; Mechanism is then XOAuth2 or OAuthBearer.
	Token     func(ctx context.Context, refresh bool) (string, error)
	Mechanism string
	// Senders are the addresses MAIL FROM may name, compared without
	// regard to case.
	Senders []string
	// Mailer, when set, sends the account's mail in place of an SMTP
	// exchange with Upstream, which then only names the upstream in logs.
	// Token, when set, is asked for a token at login, so that an account
	// without one is refused then rather than at DATA.
	Mailer Mailer
}

// errUpstreamAuth: the upstream refused the account's credentials.
var errUpstreamAuth = errors.New("submission: the upstream refused the credentials")

func (u *Upstream) timeout() time.Duration {
	if u.Timeout > 0 {
		return u.Timeout
	}
	return DefaultTimeout
}

// dial connects, greets and logs in to the account's upstream. A token
// refused by the upstream is refreshed once: the provider may have
// revoked it before its expiry.
func dial(ctx context.Context, acct *Account) (*upstreamConn, error) {
	uc, err := dialOnce(ctx, acct, false)
	if acct.Token != nil && errors.Is(err, errUpstreamAuth) {
		uc, err = dialOnce(ctx, acct, true)
	}
	return uc, err
}

func dialOnce(ctx context.Context, acct *Account, refresh bool) (*upstreamConn, error) {
	u := acct.Upstream
	var sc sasl.Client
	switch {
	case acct.Token != nil:
		token, err := acct.Token(ctx, refresh)
		if err != nil {
			return nil, err
		}
		if acct.Mechanism == OAuthBearer {
			host, port, _ := net.SplitHostPort(u.Address)
			p, _ := strconv.Atoi(port)
			sc = &oauthBearerClient{Client: sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: acct.Username, Token: token, Host: host, Port: p})}
		} else {
			sc = &xoauth2Client{username: acct.Username, token: token}
		}
	default:
		sc = sasl.NewPlainClient("", acct.Username, acct.Password)
	}
	uc, err := u.connect(ctx)
	if err != nil {
		return nil, err
	}
	if acct.Token == nil && !uc.SupportsAuth(sasl.Plain) && uc.SupportsAuth(sasl.Login) {
		sc = sasl.NewLoginClient(acct.Username, acct.Password)
	}
	if err := uc.Auth(sc); err != nil {
		uc.Close()
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code == 535 {
			return nil, fmt.Errorf("%w: %d %v", errUpstreamAuth, se.Code, se.EnhancedCode)
		}
		return nil, fmt.Errorf("upstream AUTH: %w", printable(err))
	}
	return uc, nil
}

// printable is err with the text of an upstream's reply, if it carries
// one, cut to printable ASCII and bounded: it goes on to the logs and to
// `gateway check`, and a server's octets must not (RFC 5321 §4.2 lets a
// reply's text be anything but CR and LF; a hostile server sends NULs
// and escape sequences).
func printable(err error) error {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return err
	}
	const limit = 200
	text := make([]byte, 0, min(len(se.Message), limit))
	for i := 0; i < len(se.Message) && len(text) < limit; i++ {
		if c := se.Message[i]; c >= 0x20 && c < 0x7f {
			text = append(text, c)
		}
	}
	clean := *se
	clean.Message = string(text)
	return &clean
}

// upstreamConn is a logged-in connection to an upstream.
type upstreamConn struct {
	*smtp.Client
	nc *deadlineConn
	// wire is the connection the Client speaks on, under TLS where there
	// is TLS: message bodies are written to it directly (lineWriter).
	wire io.Writer
}

// abort drops the connection without ending a transaction under way: an
// upstream that did not receive the final "." delivers nothing
// (RFC 5321 §4.1.1.4).
func (uc *upstreamConn) abort() { uc.nc.Close() }

// connect opens the connection, with TLS as configured, and says EHLO.
func (u *Upstream) connect(ctx context.Context) (*upstreamConn, error) {
	d := net.Dialer{Timeout: u.timeout()}
	raw, err := d.DialContext(ctx, "tcp", u.Address)
	if err != nil {
		return nil, err
	}
	// Until the greeting is done, ctx can cut the connection short.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	nc := &deadlineConn{Conn: raw, timeout: u.timeout()}
	tlsConfig := u.tlsConfig()
	localName := cmp.Or(u.LocalName, "localhost")
	var c *smtp.Client
	var wire io.Writer = nc
	switch u.Security {
	case SecurityImplicit:
		tc := tls.Client(nc, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		c, wire = smtp.NewClient(tc), tc
	case SecurityStartTLS:
		tc, err := startTLS(ctx, nc, tlsConfig, localName)
		if err != nil {
			raw.Close()
			return nil, err
		}
		c, wire = smtp.NewClient(&greetedConn{Conn: tc, greeting: []byte("220 TLS started\r\n")}), tc
	default:
		c = smtp.NewClient(nc)
	}
	c.CommandTimeout = u.timeout()
	c.SubmissionTimeout = u.timeout()
	if err := c.Hello(localName); err != nil {
		c.Close()
		return nil, printable(err)
	}
	return &upstreamConn{Client: c, nc: nc, wire: wire}, nil
}

// startTLS reads the greeting, says EHLO and STARTTLS (RFC 3207 §4) and
// returns the connection under TLS. It is done here, not by go-smtp's
// client, because the relay writes message bodies to the TLS connection
// itself, which go-smtp's client does not give out.
func startTLS(ctx context.Context, nc net.Conn, config *tls.Config, localName string) (*tls.Conn, error) {
	// Bounded: the replies before TLS are a greeting and an EHLO list.
	br := bufio.NewReader(io.LimitReader(nc, 64<<10))
	text := textproto.NewReader(br)
	if _, _, err := text.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, err := io.WriteString(nc, "EHLO "+localName+"\r\n"); err != nil {
		return nil, err
	}
	_, ext, err := text.ReadResponse(250)
	if err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	offered := false
	for _, line := range strings.Split(ext, "\n")[1:] {
		offered = offered || strings.EqualFold(strings.TrimSpace(line), "STARTTLS")
	}
	if !offered {
		return nil, errors.New("the server does not offer STARTTLS")
	}
	if _, err := io.WriteString(nc, "STARTTLS\r\n"); err != nil {
		return nil, err
	}
	if _, _, err := text.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	// Anything the server sent after its 220 came before TLS: taking it
	// as TLS data or as replies would let a man in the middle inject
	// replies (the CVE-2011-0411 class, in the client's direction).
	if br.Buffered() > 0 {
		return nil, errors.New("the server sent data before the TLS handshake")
	}
	tc := tls.Client(nc, config)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tc, nil
}

// greetedConn gives go-smtp's client, started on a connection already
// greeted and under TLS, the greeting it waits for; it then says EHLO
// again, as RFC 3207 §4.2 requires after STARTTLS.
type greetedConn struct {
	net.Conn
	greeting []byte
}

func (c *greetedConn) Read(b []byte) (int, error) {
	if len(c.greeting) > 0 {
		n := copy(b, c.greeting)
		c.greeting = c.greeting[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (u *Upstream) tlsConfig() *tls.Config {
	c := u.TLSConfig.Clone()
	if c == nil {
		c = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if c.ServerName == "" {
		host, _, err := net.SplitHostPort(u.Address)
		if err != nil {
			host = u.Address
		}
		c.ServerName = host
	}
	return c
}

// deadlineConn gives every read and write the upstream's timeout, so a
// silent upstream ends the transaction instead of holding it.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	return c.Conn.Read(b)
}

func (c *deadlineConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(b)
}

// xoauth2Client is the XOAUTH2 mechanism of Google and Microsoft: the
// user and the bearer token in one initial response. A refusal comes as
// a challenge carrying an error document, answered with an empty
// response so that the server ends the exchange with its error reply.
type xoauth2Client struct {
	username, token string
}

func (c *xoauth2Client) Start() (string, []byte, error) {
	return XOAuth2, []byte("user=" + c.username + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

func (c *xoauth2Client) Next([]byte) ([]byte, error) { return []byte{}, nil }

// oauthBearerClient is OAUTHBEARER (RFC 7628) with go-sasl's initial
// response. A refusal comes as a challenge carrying an error document
// (§3.2.2), answered with 0x01 (§3.2.3) so that the server ends the
// exchange with its error reply: a 535 then has the token refreshed once.
// go-sasl's own client cancels the exchange instead, with the server's
// document in its error.
type oauthBearerClient struct {
	sasl.Client
	refused bool
}

func (c *oauthBearerClient) Next([]byte) ([]byte, error) {
	if c.refused {
		return nil, errors.New("submission: OAUTHBEARER: a challenge after the error challenge")
	}
	c.refused = true
	return []byte{0x01}, nil
}

// Check logs in to the account's upstream and out again, for `gateway
// check`. For an account with a Mailer it gets the token and, where the
// Mailer is a MailerChecker, asks it; nothing is sent.
func Check(ctx context.Context, acct *Account) error {
	if acct.Mailer != nil {
		if err := checkToken(ctx, acct); err != nil {
			return err
		}
		if c, ok := acct.Mailer.(MailerChecker); ok {
			return c.Check(ctx)
		}
		return nil
	}
	uc, err := dial(ctx, acct)
	if err != nil {
		return err
	}
	uc.Quit()
	uc.Close()
	return nil
}
