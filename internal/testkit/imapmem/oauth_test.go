package imapmem

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
)

const (
	goodToken  = "tok-alice"
	otherToken = "tok-bob"
)

// startBearer runs an OAuth2-only server with users alice and bob, where
// goodToken is alice's and otherToken bob's.
func startBearer(t *testing.T) *Server {
	t.Helper()
	tokens := map[string]string{goodToken: "alice", otherToken: "bob"}
	s, err := Start("127.0.0.1:0", &Options{
		Bearer: func(user, token string) bool { return tokens[token] == user },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, u := range []string{"alice", "bob"} {
		if err := s.AddUser(u, "password"); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func dial(t *testing.T, s *Server) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(s.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// xoauth2Client is Google's XOAUTH2: on failure it keeps the server's
// challenge and answers with an empty response.
type xoauth2Client struct {
	user, token string
	challenge   []byte
}

func (x *xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	x.challenge = challenge
	return []byte{}, nil
}

// patientBearerClient is OAUTHBEARER answering an error challenge with the
// 0x01 of RFC 7628 §3.2.2, where go-sasl's client gives up at once.
type patientBearerClient struct {
	sasl.Client
	challenge []byte
}

func (p *patientBearerClient) Next(challenge []byte) ([]byte, error) {
	p.challenge = challenge
	return []byte{0x01}, nil
}

func oauthBearer(user, token string) sasl.Client {
	return sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{
		Username: user, Token: token, Host: "127.0.0.1", Port: 143,
	})
}

func wantAuthFailed(t *testing.T, err error) {
	t.Helper()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo ||
		imapErr.Code != imap.ResponseCodeAuthenticationFailed {
		t.Fatalf("got %v, want NO [AUTHENTICATIONFAILED]", err)
	}
}

func wantChallenge(t *testing.T, challenge []byte, want bearerError) {
	t.Helper()
	var got bearerError
	if err := json.Unmarshal(challenge, &got); err != nil {
		t.Fatalf("challenge %q: %v", challenge, err)
	}
	if got != want {
		t.Errorf("challenge %+v, want %+v", got, want)
	}
}

func TestBearerGoodToken(t *testing.T) {
	for _, tc := range []struct {
		mech   string
		client sasl.Client
	}{
		{XOAuth2, &xoauth2Client{user: "alice", token: goodToken}},
		{OAuthBearer, oauthBearer("alice", goodToken)},
	} {
		t.Run(tc.mech, func(t *testing.T) {
			s := startBearer(t)
			if err := s.Append("alice", "INBOX", []byte("Subject: hi\r\n\r\nhello\r\n")); err != nil {
				t.Fatal(err)
			}
			c := dial(t, s)
			if err := c.Authenticate(tc.client); err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			data, err := c.Select("INBOX", nil).Wait()
			if err != nil {
				t.Fatalf("SELECT: %v", err)
			}
			if data.NumMessages != 1 {
				t.Errorf("INBOX has %d messages, want 1", data.NumMessages)
			}
			if ok, failed := s.BearerLoginsWith(tc.mech); ok != 1 || failed != 0 {
				t.Errorf("BearerLoginsWith(%s) = %d, %d; want 1, 0", tc.mech, ok, failed)
			}
			if ok, failed := s.BearerLogins(); ok != 1 || failed != 0 {
				t.Errorf("BearerLogins() = %d, %d; want 1, 0", ok, failed)
			}
		})
	}
}

func TestBearerBadToken(t *testing.T) {
	for _, tc := range []struct{ name, user, token string }{
		{"unknown token", "alice", "forged"},
		{"someone else's token", "alice", otherToken},
		{"unknown user", "carol", goodToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startBearer(t)

			x := &xoauth2Client{user: tc.user, token: tc.token}
			wantAuthFailed(t, dial(t, s).Authenticate(x))
			wantChallenge(t, x.challenge, bearerError{"401", "Bearer", "https://mail.google.com/"})

			p := &patientBearerClient{Client: oauthBearer(tc.user, tc.token)}
			wantAuthFailed(t, dial(t, s).Authenticate(p))
			wantChallenge(t, p.challenge, bearerError{"invalid_token", "bearer", "https://mail.google.com/"})

			// go-sasl's own client turns the challenge into an error.
			err := dial(t, s).Authenticate(oauthBearer(tc.user, tc.token))
			var bearerErr *sasl.OAuthBearerError
			if !errors.As(err, &bearerErr) || bearerErr.Status != "invalid_token" {
				t.Errorf("go-sasl client: got %v, want OAUTHBEARER invalid_token", err)
			}

			if ok, failed := s.BearerLoginsWith(XOAuth2); ok != 0 || failed != 1 {
				t.Errorf("XOAUTH2 logins = %d, %d; want 0, 1", ok, failed)
			}
			if ok, failed := s.BearerLoginsWith(OAuthBearer); ok != 0 || failed != 2 {
				t.Errorf("OAUTHBEARER logins = %d, %d; want 0, 2", ok, failed)
			}
		})
	}
}

func TestBearerNoPasswords(t *testing.T) {
	s := startBearer(t)
	c := dial(t, s)
	caps := c.Caps()
	for _, want := range []imap.Cap{imap.AuthCap(XOAuth2), imap.AuthCap(OAuthBearer), imap.CapSASLIR} {
		if !caps.Has(want) {
			t.Errorf("capability %s not advertised", want)
		}
	}
	if caps.Has(imap.AuthCap(sasl.Plain)) {
		t.Error("AUTH=PLAIN advertised")
	}
	err := c.Login("alice", "password").Wait()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo {
		t.Errorf("LOGIN: got %v, want NO", err)
	}
	err = c.Authenticate(sasl.NewPlainClient("", "alice", "password"))
	if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo {
		t.Errorf("AUTHENTICATE PLAIN: got %v, want NO", err)
	}
	// The connection is still usable for a bearer login.
	if err := c.Authenticate(&xoauth2Client{user: "alice", token: goodToken}); err != nil {
		t.Fatalf("XOAUTH2 after refusals: %v", err)
	}
}

// wire is a raw IMAP connection, for the exact exchange.
type wire struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialWire(t *testing.T, s *Server) *wire {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	w := &wire{t: t, c: c, br: bufio.NewReader(c)}
	if greeting := w.read(); !strings.HasPrefix(greeting, "* OK") {
		t.Fatalf("greeting %q", greeting)
	}
	return w
}

func (w *wire) send(line string) {
	w.t.Helper()
	if _, err := w.c.Write([]byte(line + "\r\n")); err != nil {
		w.t.Fatal(err)
	}
}

func (w *wire) read() string {
	w.t.Helper()
	line, err := w.br.ReadString('\n')
	if err != nil {
		w.t.Fatalf("read: %v (after %q)", err, line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestBearerWire(t *testing.T) {
	s := startBearer(t)

	t.Run("XOAUTH2 failure", func(t *testing.T) {
		w := dialWire(t, s)
		w.send("a AUTHENTICATE XOAUTH2 " + b64("user=alice\x01auth=Bearer forged\x01\x01"))
		want := "+ " + b64(`{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}`)
		if got := w.read(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
		w.send("") // Google's clients answer with an empty line
		if got := w.read(); !strings.HasPrefix(got, "a NO [AUTHENTICATIONFAILED] ") {
			t.Fatalf("got %q, want tagged NO [AUTHENTICATIONFAILED]", got)
		}
		w.send("b NOOP")
		if got := w.read(); !strings.HasPrefix(got, "b OK") {
			t.Errorf("NOOP after failure: %q", got)
		}
	})

	t.Run("XOAUTH2 abort", func(t *testing.T) {
		w := dialWire(t, s)
		w.send("a AUTHENTICATE XOAUTH2 " + b64("user=alice\x01auth=Bearer forged\x01\x01"))
		if got := w.read(); !strings.HasPrefix(got, "+ ") {
			t.Fatalf("got %q, want a continuation", got)
		}
		w.send("*")
		if got := w.read(); !strings.HasPrefix(got, "a BAD ") {
			t.Fatalf("got %q, want tagged BAD", got)
		}
		w.send("b AUTHENTICATE XOAUTH2 " + b64("user=alice\x01auth=Bearer "+goodToken+"\x01\x01"))
		if got := w.read(); !strings.HasPrefix(got, "b OK ") {
			t.Fatalf("login after abort: %q", got)
		}
	})

	t.Run("OAUTHBEARER failure", func(t *testing.T) {
		w := dialWire(t, s)
		w.send("a AUTHENTICATE OAUTHBEARER " + b64("n,a=alice,\x01host=localhost\x01port=143\x01auth=Bearer forged\x01\x01"))
		want := "+ " + b64(`{"status":"invalid_token","schemes":"bearer","scope":"https://mail.google.com/"}`)
		if got := w.read(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
		w.send(b64("\x01"))
		if got := w.read(); !strings.HasPrefix(got, "a NO [AUTHENTICATIONFAILED] ") {
			t.Fatalf("got %q, want tagged NO [AUTHENTICATIONFAILED]", got)
		}
	})

	t.Run("OAUTHBEARER malformed", func(t *testing.T) {
		w := dialWire(t, s)
		// No authzid: the server cannot tell whose mailbox is meant.
		w.send("a AUTHENTICATE OAUTHBEARER " + b64("n,,\x01auth=Bearer "+goodToken+"\x01\x01"))
		want := "+ " + b64(`{"status":"invalid_request","schemes":"bearer","scope":"https://mail.google.com/"}`)
		if got := w.read(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
		w.send(b64("\x01"))
		if got := w.read(); !strings.HasPrefix(got, "a NO [AUTHENTICATIONFAILED] ") {
			t.Fatalf("got %q, want tagged NO [AUTHENTICATIONFAILED]", got)
		}
	})

	t.Run("OAUTHBEARER without SASL-IR", func(t *testing.T) {
		w := dialWire(t, s)
		w.send("a AUTHENTICATE OAUTHBEARER")
		if got := w.read(); got != "+ " {
			t.Fatalf("got %q, want an empty continuation", got)
		}
		w.send(b64("n,a=alice,\x01host=localhost\x01port=143\x01auth=bearer " + goodToken + "\x01\x01"))
		if got := w.read(); !strings.HasPrefix(got, "a OK ") {
			t.Fatalf("got %q, want tagged OK", got)
		}
		w.send("b SELECT INBOX")
		for {
			got := w.read()
			if strings.HasPrefix(got, "b ") {
				if !strings.HasPrefix(got, "b OK") {
					t.Errorf("SELECT: %q", got)
				}
				break
			}
		}
	})
}

func TestParseBearerResponses(t *testing.T) {
	for _, tc := range []struct {
		parse       func([]byte) (string, string, bool)
		in          string
		user, token string
		ok          bool
	}{
		{parseXOAuth2, "user=a@example.com\x01auth=Bearer T.1\x01\x01", "a@example.com", "T.1", true},
		{parseXOAuth2, "auth=BEARER T\x01user=u\x01\x01", "u", "T", true},
		{parseXOAuth2, "user=u\x01auth=Basic T\x01\x01", "", "", false},
		{parseXOAuth2, "user=u\x01auth=Bearer T\x01", "", "", false},
		{parseXOAuth2, "user=\x01auth=Bearer T\x01\x01", "", "", false},
		{parseOAuthBearer, "n,a=u,\x01auth=Bearer T\x01\x01", "u", "T", true},
		{parseOAuthBearer, "y,a=x=2Cy=3Dz,\x01host=h\x01port=1\x01auth=Bearer T\x01\x01", "x,y=z", "T", true},
		{parseOAuthBearer, "p=tls-unique,a=u,\x01auth=Bearer T\x01\x01", "", "", false},
		{parseOAuthBearer, "n,a=u,\x01host=h\x01\x01", "", "", false},
		{parseOAuthBearer, "\x01", "", "", false},
	} {
		user, token, ok := tc.parse([]byte(tc.in))
		if ok != tc.ok || (ok && (user != tc.user || token != tc.token)) {
			t.Errorf("parse(%q) = %q, %q, %v; want %q, %q, %v", tc.in, user, token, ok, tc.user, tc.token, tc.ok)
		}
	}
}
