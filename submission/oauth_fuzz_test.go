package submission

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// FuzzUpstreamOAuthChallenge answers the relay's XOAUTH2 or OAUTHBEARER
// login (RFC 7628 §3.2.2; RFC 4954 §4) with an arbitrary challenge and an
// arbitrary final reply. The login, with its one retry after a refreshed
// token, must end within the timeouts, succeed only on the server's 235,
// and never put the token, or anything but printable text, in its error.
func FuzzUpstreamOAuthChallenge(f *testing.F) {
	f.Add(true, `334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=`, "535 5.7.8 invalid")
	f.Add(false, `334 eyJzdGF0dXMiOiI0MDAifQ==`, "535 no")
	f.Add(true, "235 2.7.0 ok", "")
	f.Add(false, "334 not base64 \x00\x01", "501 bad")
	f.Add(true, "334 eyJ9\r\n334 again", "221 bye")
	f.Add(false, "334 e30=", "454 4.7.0 try later")
	f.Add(true, "334 AQ0KeyJzdGF0dXMiOiI0MDEifQ==", "535-first\r\n535 second")
	f.Add(false, "334-continued\r\n334 e30=", "235 ok")
	f.Add(true, "334 e30=", "535 5.7.8 no\x01\x7f")
	f.Fuzz(func(t *testing.T, bearer bool, challenge, final string) {
		const token = "ya29.SECRET-TOKEN-c2VjcmV0"
		const timeout = time.Second
		srv, sent := startRawSMTP(t, challenge, final)
		mech := XOAuth2
		if bearer {
			mech = OAuthBearer
		}
		acct := &Account{
			Upstream:  &Upstream{Name: "fuzz", Address: srv, Security: SecurityNone, Timeout: timeout},
			Username:  "alice@example.com",
			Token:     func(context.Context, bool) (string, error) { return token, nil },
			Mechanism: mech,
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		uc, err := dial(ctx, acct)
		if d := time.Since(start); d > 10*timeout {
			t.Fatalf("the login took %v with a timeout of %v", d, timeout)
		}
		if err == nil {
			uc.Close()
			if !strings.Contains(sent(), "\n235") && !strings.HasPrefix(sent(), "235") {
				t.Fatalf("logged in without a 235 from the server: %q", sent())
			}
			return
		}
		msg := err.Error()
		if strings.Contains(msg, "SECRET-TOKEN") || strings.Contains(msg, "c2VjcmV0") {
			t.Fatalf("the token is in the error: %q", msg)
		}
		for _, c := range []byte(msg) {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("a control character in the error: %q", msg)
			}
		}
	})
}

// startRawSMTP is an SMTP server on loopback that offers the OAuth2
// mechanisms, answers AUTH with challenge, the client's next line with
// the connection's final reply (the last one given for the connections
// after them), and everything else politely. It returns its address and
// what it has written so far.
func startRawSMTP(t *testing.T, challenge string, finals ...string) (string, func() string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out strings.Builder
	var wg sync.WaitGroup
	serve := func(c net.Conn, final string) {
		defer wg.Done()
		defer c.Close()
		write := func(s string) {
			mu.Lock()
			out.WriteString(s)
			mu.Unlock()
			c.Write([]byte(s))
		}
		write("220 fuzz ready\r\n")
		r := bufio.NewReader(c)
		inAuth := false
		for {
			c.SetDeadline(time.Now().Add(3 * time.Second))
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			verb, _, _ := strings.Cut(strings.ToUpper(strings.TrimSpace(line)), " ")
			switch {
			case inAuth:
				inAuth = false
				write(final + "\r\n")
			case verb == "EHLO":
				write("250-fuzz\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n")
			case verb == "AUTH":
				inAuth = true
				write(challenge + "\r\n")
			case verb == "QUIT":
				write("221 bye\r\n")
				return
			default:
				write("500 what\r\n")
			}
		}
	}
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go serve(c, finals[min(i, len(finals)-1)])
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), func() string {
		mu.Lock()
		defer mu.Unlock()
		return out.String()
	}
}

// TestOAuthBearerRefusalRefreshesToken: an upstream refuses an expired
// token the RFC 7628 way, with an error challenge (§3.2.2) that the client
// acknowledges with 0x01 (§3.2.3) before the server's 535. The relay
// answers the challenge, takes the 535 as a refusal, and logs in again
// with a refreshed token. Found by FuzzUpstreamOAuthChallenge: go-sasl's
// client cancelled the exchange instead, so the refusal looked like an
// unreachable upstream (no refresh), and the server's JSON, control
// characters and all, ended up in the error.
func TestOAuthBearerRefusalRefreshesToken(t *testing.T) {
	challenge := "334 " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token\u0001\r\n","schemes":"bearer"}`))
	srv, sent := startRawSMTP(t, challenge, "535 5.7.8 expired", "235 2.7.0 ok")
	var refreshed []bool
	acct := &Account{
		Upstream: &Upstream{Name: "bearer", Address: srv, Security: SecurityNone, Timeout: 5 * time.Second},
		Username: "alice@example.com",
		Token: func(_ context.Context, refresh bool) (string, error) {
			refreshed = append(refreshed, refresh)
			return "token", nil
		},
		Mechanism: OAuthBearer,
	}
	uc, err := dial(context.Background(), acct)
	if err != nil {
		t.Fatalf("dial: %v; the server sent %q", err, sent())
	}
	uc.Close()
	if len(refreshed) != 2 || refreshed[0] || !refreshed[1] {
		t.Fatalf("tokens asked for with refresh %v, want [false true]", refreshed)
	}

	srv, _ = startRawSMTP(t, challenge, "535 5.7.8 expired")
	acct.Upstream.Address = srv
	_, err = dial(context.Background(), acct)
	if !errors.Is(err, errUpstreamAuth) {
		t.Fatalf("dial: %v, want the upstream's refusal", err)
	}
	if strings.ContainsAny(err.Error(), "\x01\r\n") {
		t.Fatalf("server text in the error: %q", err)
	}
}

// TestUpstreamReplyTextPrintable: the text of an upstream's refusal goes
// on to the logs and to `gateway check` as printable ASCII only, its code
// kept. Found by FuzzUpstreamOAuthChallenge: a NUL in a reply's text
// reached the error.
func TestUpstreamReplyTextPrintable(t *testing.T) {
	srv, _ := startRawSMTP(t, "454 4.7.0 busy\x00\x1b[31m now", "")
	acct := &Account{
		Upstream:  &Upstream{Name: "raw", Address: srv, Security: SecurityNone, Timeout: 5 * time.Second},
		Username:  "alice@example.com",
		Token:     func(context.Context, bool) (string, error) { return "token", nil },
		Mechanism: XOAuth2,
	}
	_, err := dial(context.Background(), acct)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 454 {
		t.Fatalf("dial: %v, want the upstream's 454", err)
	}
	if msg := err.Error(); strings.ContainsAny(msg, "\x00\x1b") || !strings.Contains(msg, "busy[31m now") {
		t.Fatalf("error %q", msg)
	}
}
