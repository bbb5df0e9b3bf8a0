package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/emersion/go-sasl"
)

// SASL mechanisms that carry an OAuth2 access token.
const (
	// XOAuth2 is Google's mechanism, also offered by Microsoft and Yahoo.
	XOAuth2 = "XOAUTH2"
	// OAuthBearer is the standard mechanism of RFC 7628.
	OAuthBearer = "OAUTHBEARER"
)

// LoginOAuth2 authenticates with an OAuth2 access token through mech,
// XOAuth2 or OAuthBearer. A refused or expired token gives ErrAuthFailed.
// The token never appears in an error.
func (s *Session) LoginOAuth2(ctx context.Context, mech, username, token string) (err error) {
	defer s.timed("login", time.Now(), &err)
	defer s.op(ctx)()
	var client sasl.Client
	switch mech {
	case XOAuth2:
		client = &xoauth2Client{username: username, token: token}
	case OAuthBearer:
		host, port, _ := net.SplitHostPort(s.address)
		p, _ := strconv.Atoi(port)
		client = &oauthBearerClient{username: username, token: token, host: host, port: p}
	default:
		return fmt.Errorf("upstream: unknown OAuth2 mechanism %q", mech)
	}
	err = s.client.Authenticate(client)
	if err == nil {
		return nil
	}
	var fail *bearerError
	if errors.As(err, &fail) {
		return fmt.Errorf("%w: %s", ErrAuthFailed, fail.Error())
	}
	err = classifyLoginError(err)
	if challenge := failedChallenge(client); challenge != nil && errors.Is(err, ErrAuthFailed) {
		err = fmt.Errorf("%w (%s)", err, sanitize(challenge))
	}
	return err
}

func failedChallenge(c sasl.Client) []byte {
	switch c := c.(type) {
	case *xoauth2Client:
		return c.failed
	case *oauthBearerClient:
		return c.failed
	}
	return nil
}

// bearerError is the server's JSON error challenge of a failed bearer
// login (RFC 7628 §3.2.2), kept only for the error text.
type bearerError struct{ challenge []byte }

func (e *bearerError) Error() string {
	return "token refused: " + sanitize(e.challenge)
}

// sanitize keeps printable ASCII of a server's message, bounded.
func sanitize(b []byte) string {
	const limit = 200
	out := make([]byte, 0, min(len(b), limit))
	for _, c := range b {
		if len(out) == limit {
			break
		}
		if c >= 0x20 && c < 0x7f {
			out = append(out, c)
		}
	}
	return string(out)
}

// xoauth2Client is the XOAUTH2 mechanism as Google documents it: one
// initial response "user=U^Aauth=Bearer T^A^A". On failure the server sends
// a JSON error as a challenge, to be answered with an empty response, after
// which it completes the command with NO.
type xoauth2Client struct {
	username, token string
	failed          []byte
}

func (c *xoauth2Client) Start() (string, []byte, error) {
	return XOAuth2, []byte("user=" + c.username + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	if c.failed != nil {
		return nil, &bearerError{challenge: c.failed}
	}
	c.failed = append([]byte{}, challenge...)
	return []byte{}, nil
}

// oauthBearerClient is OAUTHBEARER (RFC 7628 §3.1). On failure the server
// sends a JSON error challenge, which the client answers with a single
// 0x01 (§3.2.3) so the server can finish the exchange with NO.
type oauthBearerClient struct {
	username, token string
	host            string
	port            int
	failed          []byte
}

func (c *oauthBearerClient) Start() (string, []byte, error) {
	_, ir, err := sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{
		Username: c.username, Token: c.token, Host: c.host, Port: c.port,
	}).Start()
	return OAuthBearer, ir, err
}

func (c *oauthBearerClient) Next(challenge []byte) ([]byte, error) {
	if c.failed != nil {
		return nil, &bearerError{challenge: c.failed}
	}
	c.failed = append([]byte{}, challenge...)
	return []byte{0x01}, nil
}
