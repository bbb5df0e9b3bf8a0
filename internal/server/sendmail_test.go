package server

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/submission"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
)

const sendmailUser = "adele@contoso.example"

// sendmailEnv is the relay in front of the Graph double for one mapped
// user, bob, whose upstream is a Graph mailbox without a submission
// endpoint.
type sendmailEnv struct {
	double *graphdouble.Server
	addr   string
	client *smtp.Client

	mu        sync.Mutex
	refreshes int
}

// sendmailGateway is a gateway with one user, bob, whose mail goes
// through Graph with the tokens token gives.
func sendmailGateway(t *testing.T, hash string, token func(context.Context, bool) (string, error)) *proxy.Gateway {
	t.Helper()
	gw := proxy.New(&proxy.Config{
		Upstreams: map[string]*proxy.Upstream{"m365": {Name: "m365", OAuth2: upstream.Bearer}},
		Users: map[string]*proxy.User{"bob": {
			Name: "bob", PasswordHash: hash, Upstream: "m365", UpstreamUser: sendmailUser, UpstreamToken: token,
		}},
	}, cache.New(0, 0), nil)
	t.Cleanup(func() { gw.Close() })
	return gw
}

// sendmailConfig is the config of sendmailGateway, with Graph at url and,
// unless empty, the upstream timeout.
func sendmailConfig(t *testing.T, url, hash, timeout string) *config.Config {
	t.Helper()
	if timeout != "" {
		timeout = "\n    timeout: " + timeout
	}
	cfg, err := config.Parse([]byte(`listen:
  pop3: "127.0.0.1:0"
  submission: "127.0.0.1:0"
secrets:
  key_file: /nonexistent
upstreams:
  m365:
    provider: microsoft365-graph
    address: "` + url + `"` + timeout + `
    oauth2:
      client_id: test
users:
  bob:
    password_hash: "` + hash + `"
    upstream: m365
    upstream_user: ` + sendmailUser + `
    oauth2_token_file: /nonexistent
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newSendmailEnv(t *testing.T) *sendmailEnv {
	t.Helper()
	e := &sendmailEnv{double: graphdouble.New(t)}
	e.double.Grant("token-0", sendmailUser)
	e.double.Grant("token-1", sendmailUser)
	hash, err := passwd.Hash("bob-local")
	if err != nil {
		t.Fatal(err)
	}
	gw := sendmailGateway(t, hash, e.token)
	cfg := sendmailConfig(t, e.double.URL, hash, "")
	routes, err := newRelayRoutes(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := routes.graph["m365"]; !ok || routes.upstreams["m365"] != nil {
		t.Fatalf("a Graph upstream without a submission endpoint is not routed to sendMail: %+v", routes)
	}
	r := &relay{gateway: gw}
	r.routes.Store(routes)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := &submission.Server{Backend: r, Logger: log, MessagesPerHour: -1,
		Capabilities: submissionCapabilities(context.Background(), routes, log)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() {
		if e.client != nil {
			e.client.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return e
}

// token hands out token-0, and token-1 after a refresh.
func (e *sendmailEnv) token(_ context.Context, refresh bool) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if refresh {
		e.refreshes++
	}
	if e.refreshes > 0 {
		return "token-1", nil
	}
	return "token-0", nil
}

// send submits msg with go-smtp's client, on one logged-in connection
// for the whole test, and returns the reply to the first refused command,
// nil when DATA was accepted.
func (e *sendmailEnv) send(t *testing.T, from string, to []string, msg []byte) *smtp.SMTPError {
	t.Helper()
	if e.client == nil {
		c, err := smtp.Dial(e.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Auth(sasl.NewPlainClient("", "bob", "bob-local")); err != nil {
			t.Fatal(err)
		}
		e.client = c
	}
	c := e.client
	err := c.Mail(from, nil)
	for _, rcpt := range to {
		if err == nil {
			err = c.Rcpt(rcpt, nil)
		}
	}
	if err == nil {
		var w io.WriteCloser
		if w, err = c.Data(); err == nil {
			if _, err = w.Write(msg); err == nil {
				err = w.Close()
			}
		}
	}
	if err == nil {
		return nil
	}
	c.Reset()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("not an SMTP reply: %v", err)
	}
	return se
}

func (e *sendmailEnv) sent(t *testing.T, want int) []graphdouble.Sent {
	t.Helper()
	sent := e.double.Sent()
	if len(sent) != want {
		t.Fatalf("sendMail took %d messages, want %d", len(sent), want)
	}
	return sent
}

// TestRelayThroughGraphSendMail: a device submits to the relay for a
// user whose upstream is Graph; the message goes through sendMail with
// the MIME as submitted, its recipient headers made to agree with the
// envelope, and the client is answered with Graph's answer.
func TestRelayThroughGraphSendMail(t *testing.T) {
	e := newSendmailEnv(t)
	msg := []byte("From: Adele <" + sendmailUser + ">\r\nTo: Alex <alex@contoso.example>\r\nSubject: scan\r\n\r\nline one\r\n.dot line\r\n")

	t.Run("swaks", func(t *testing.T) {
		if _, err := exec.LookPath("swaks"); err != nil {
			testenv.Missing(t, "swaks not found: install the Debian package swaks")
		}
		file := filepath.Join(t.TempDir(), "msg.eml")
		// swaks ends the data with CRLF "." CRLF after the file's
		// last octet: what it sends is msg.
		os.WriteFile(file, bytes.TrimSuffix(msg, []byte("\r\n")), 0o600)
		host, port, _ := net.SplitHostPort(e.addr)
		out, err := exec.Command("swaks", "--server", host, "--port", port, "--auth", "PLAIN",
			"--auth-user", "bob", "--auth-password", "bob-local", "--from", sendmailUser,
			"--to", "alex@contoso.example", "--data", "@"+file, "--timeout", "10").CombinedOutput()
		if err != nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "<-  250 2.0.0 OK") {
			t.Fatalf("swaks saw no 250:\n%s", out)
		}
		sent := e.sent(t, 1)
		if sent[0].User != sendmailUser || !bytes.Equal(sent[0].MIME, msg) {
			t.Fatalf("sendMail got %q from %s, want %q", sent[0].MIME, sent[0].User, msg)
		}
	})
	n := len(e.double.Sent())

	t.Run("envelope-only recipient gets a Bcc header", func(t *testing.T) {
		if r := e.send(t, sendmailUser, []string{"alex@contoso.example", "Archive@Contoso.example"}, msg); r != nil {
			t.Fatalf("DATA: %v", r)
		}
		n++
		got := e.sent(t, n)[n-1].MIME
		if want := append([]byte("Bcc: Archive@Contoso.example\r\n"), msg...); !bytes.Equal(got, want) {
			t.Fatalf("sendMail got %q, want %q", got, want)
		}
	})

	t.Run("bare line endings repaired", func(t *testing.T) {
		raw := []byte("To: alex@contoso.example\nSubject: lf\n\nbody\rmore\n")
		if r := e.send(t, sendmailUser, []string{"alex@contoso.example"}, raw); r != nil {
			t.Fatalf("DATA: %v", r)
		}
		n++
		if got, want := string(e.sent(t, n)[n-1].MIME), "To: alex@contoso.example\r\nSubject: lf\r\n\r\nbody\r\nmore\r\n"; got != want {
			t.Fatalf("sendMail got %q, want %q", got, want)
		}
	})

	refusals := []struct {
		name    string
		setup   func()
		from    string
		to      []string
		msg     []byte
		code    int
		enh     smtp.EnhancedCode
		mention string
	}{
		{name: "header recipient not in the envelope", to: []string{"alex@contoso.example"},
			msg:  []byte("To: alex@contoso.example\r\nCc: eve@elsewhere.example\r\n\r\nx\r\n"),
			code: 550, enh: smtp.EnhancedCode{5, 7, 1}, mention: "not given in RCPT TO"},
		{name: "throttled", setup: func() { e.double.Throttle(1, 429, "30") },
			code: 451, enh: smtp.EnhancedCode{4, 4, 2}, mention: "wait 30 seconds"},
		{name: "unavailable", setup: func() { e.double.Throttle(1, 503, "") },
			code: 451, enh: smtp.EnhancedCode{4, 4, 2}},
		{name: "send as denied", setup: func() { e.double.RefuseSend(403, "ErrorSendAsDenied") },
			code: 554, enh: smtp.EnhancedCode{5, 7, 1}, mention: "(ErrorSendAsDenied)"},
		{name: "bad MIME", setup: func() { e.double.RefuseSend(400, "ErrorMimeContentInvalidBase64String") },
			code: 550, enh: smtp.EnhancedCode{5, 6, 0}, mention: "(ErrorMimeContentInvalidBase64String)"},
		{name: "token refused twice", setup: func() { e.double.Unauthorized(2) },
			code: 451, enh: smtp.EnhancedCode{4, 4, 2}},
		{name: "too big", msg: append([]byte("To: alex@contoso.example\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n"), graph.MaxSendMIME/64+1)...),
			code: 552, enh: smtp.EnhancedCode{5, 3, 4}, mention: "limit 3145728 octets"},
		{name: "sender not allowed", from: "someone@contoso.example",
			code: 553, enh: smtp.EnhancedCode{5, 7, 1}},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			from, to, m := cmp.Or(tc.from, sendmailUser), tc.to, tc.msg
			if to == nil {
				to = []string{"alex@contoso.example"}
			}
			if m == nil {
				m = msg
			}
			posts := sendMailPosts(e.double)
			r := e.send(t, from, to, m)
			if strings.HasPrefix(tc.name, "too big") || tc.code == 553 || tc.mention == "not given in RCPT TO" {
				if p := sendMailPosts(e.double); p != posts {
					t.Errorf("refused by the relay, yet sendMail was called")
				}
			}
			if r == nil || r.Code != tc.code || r.EnhancedCode != tc.enh || !strings.Contains(r.Message, tc.mention) {
				t.Fatalf("reply %v, want %d %v mentioning %q", r, tc.code, tc.enh, tc.mention)
			}
			e.sent(t, n)
		})
	}

	t.Run("SIZE offered and enforced at MAIL", func(t *testing.T) {
		c, err := smtp.Dial(e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("device"); err != nil {
			t.Fatal(err)
		}
		if size, ok := c.MaxMessageSize(); !ok || size != graph.MaxSendMIME {
			t.Fatalf("EHLO SIZE %d (%v), want %d", size, ok, graph.MaxSendMIME)
		}
		if err := c.Auth(sasl.NewPlainClient("", "bob", "bob-local")); err != nil {
			t.Fatal(err)
		}
		var se *smtp.SMTPError
		err = c.Mail(sendmailUser, &smtp.MailOptions{Size: graph.MaxSendMIME + 1})
		if !errors.As(err, &se) || se.Code != 552 || se.EnhancedCode != (smtp.EnhancedCode{5, 3, 4}) {
			t.Fatalf("MAIL with SIZE over the limit: %v", err)
		}
	})

	t.Run("token refreshed once after a 401", func(t *testing.T) {
		e.mu.Lock()
		before := e.refreshes
		e.mu.Unlock()
		e.double.Unauthorized(1)
		if r := e.send(t, sendmailUser, []string{"alex@contoso.example"}, msg); r != nil {
			t.Fatalf("DATA: %v", r)
		}
		n++
		if got := e.sent(t, n)[n-1].MIME; !bytes.Equal(got, msg) {
			t.Fatalf("sendMail got %q", got)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.refreshes != before+1 {
			t.Fatalf("%d refreshes, want 1", e.refreshes-before)
		}
	})
}

func sendMailPosts(d *graphdouble.Server) int {
	n := 0
	for _, r := range d.Requests() {
		if r == "POST /me/sendMail" {
			n++
		}
	}
	return n
}

// TestCheckSendMail: `gateway check` asks Graph for each user whose mail
// goes through sendMail, with a request that sends nothing: ok with a
// token Graph takes, FAILED with one it refuses, with none to be had, or
// with Graph out of reach.
func TestCheckSendMail(t *testing.T) {
	double := graphdouble.New(t)
	double.Grant("good-token", sendmailUser)
	hash, err := passwd.Hash("local")
	if err != nil {
		t.Fatal(err)
	}
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downURL := "http://" + down.Addr().String()
	down.Close() // nothing listens there
	for _, tc := range []struct {
		name, url string
		token     func(context.Context, bool) (string, error)
		want      string
	}{
		{"ok", double.URL, func(context.Context, bool) (string, error) { return "good-token", nil }, "): ok"},
		{"refused-token", double.URL, func(context.Context, bool) (string, error) { return "revoked-token", nil }, "): FAILED: "},
		{"no-token", double.URL, func(context.Context, bool) (string, error) {
			return "", fmt.Errorf("token file: %w", proxy.ErrNeedsAuthorization)
		}, "): FAILED: "},
		{"graph-down", downURL, func(context.Context, bool) (string, error) { return "good-token", nil }, "): FAILED: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := sendmailGateway(t, hash, tc.token)
			cfg := sendmailConfig(t, tc.url, hash, "5s")
			var out bytes.Buffer
			failed := checkSubmission(context.Background(), cfg, gw, &out)
			line := strings.TrimSpace(out.String())
			if !strings.HasPrefix(line, "user bob (sendMail "+tc.url+tc.want) {
				t.Errorf("check reported %q, want %q", line, "user bob (sendMail "+tc.url+tc.want+"...")
			}
			if wantFailed := map[bool]int{true: 0, false: 1}[tc.name == "ok"]; failed != wantFailed {
				t.Errorf("%d failed, want %d", failed, wantFailed)
			}
		})
	}
	if sent := double.Sent(); len(sent) != 0 {
		t.Errorf("check sent %d messages", len(sent))
	}
	for _, req := range double.Requests() {
		if !strings.HasPrefix(req, "GET ") {
			t.Errorf("check made a request that is not a GET: %s", req)
		}
	}
}
