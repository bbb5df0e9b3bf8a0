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
	// Bearer is no SASL mechanism: a store spoken to over HTTP (Graph)
	// sends the token in the Authorization header (RFC 6750 §2.1).
	Bearer = "BEARER"
)

// LoginOAuth2 authenticates with an OAuth2 access token through mech,
// XOAuth2 or OAuthBearer. A refused or expired token gives ErrAuthFailed.
// The token never appears in an error.
func (s *Session) LoginOAuth2(ctx context.Context, mech, username, token string) (err error) {
	defer s.timed("login", time.Now(), &err)
	defer s.op(ctx)()
	client := &bearerClient{mech: mech}
	switch mech {
	case XOAuth2:
		// Google's form: "user=U^Aauth=Bearer T^A^A"; a failure's JSON
		// challenge is answered with an empty response.
		client.ir = []byte("user=" + username + "\x01auth=Bearer " + token + "\x01\x01")
		client.ack = []byte{}
	case OAuthBearer:
		// RFC 7628 §3.1; a failure's challenge is answered with 0x01
		// (§3.2.3).
		host, port, _ := net.SplitHostPort(s.address)
		p, _ := strconv.Atoi(port)
		_, client.ir, _ = sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{
			Username: username, Token: token, Host: host, Port: p,
		}).Start()
		client.ack = []byte{0x01}
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
	if client.failed != nil && errors.Is(err, ErrAuthFailed) {
		err = fmt.Errorf("%w (%s)", err, sanitize(client.failed))
	}
	return err
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

// bearerClient sends an OAuth2 bearer token as one initial response. On
// failure the server sends a JSON error as a challenge, which the client
// acknowledges with ack so the server can finish the command with NO.
type bearerClient struct {
	mech   string
	ir     []byte
	ack    []byte
	failed []byte // the server's error challenge
}

func (c *bearerClient) Start() (string, []byte, error) { return c.mech, c.ir, nil }

func (c *bearerClient) Next(challenge []byte) ([]byte, error) {
	if c.failed != nil {
		return nil, &bearerError{challenge: c.failed}
	}
	c.failed = append([]byte{}, challenge...)
	return c.ack, nil
}
