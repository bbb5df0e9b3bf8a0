package integration

import (
	"bytes"
	"context"
	"encoding/base64"
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
	"golang.org/x/oauth2"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/oauth"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/secrets"
	"github.com/pop3gw/gateway/internal/server"
	"github.com/pop3gw/gateway/internal/testkit/oauthtest"
	"github.com/pop3gw/gateway/internal/testkit/postfix"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// relayFixture is the gateway's submission relay in front of a private
// Postfix (smtpd_forbid_bare_newline = no, exclusions empty): users
// scanner (password upstream), printer (XOAUTH2 upstream) and cutter
// (whose upstream connection is cut in the middle of each message).
type relayFixture struct {
	pf          *postfix.Instance
	submission  string // STARTTLS listener
	submissions string // implicit TLS listener
	logs        *testenv.Buffer
	secrets     []string
	config      string // the gateway's config file
	passFile    string // the upstream password of scanner and cutter
}

const (
	localPass    = "local-pass"
	upstreamPass = "alice-upstream"
)

func startRelay(t *testing.T) *relayFixture {
	t.Helper()
	p := oauthtest.NewProvider(t)
	pf, err := postfix.Start(postfix.Options{
		Users:            map[string]string{"alice@example.com": upstreamPass},
		IntrospectionURL: p.IntrospectionURL(),
		Refuse: map[string]string{
			"tempfail@example.org": "450 4.2.1 Mailbox busy upstream-secret-text",
			"nouser@example.org":   "550 5.1.1 No such user upstream-secret-text",
		},
		RefuseData: map[string]string{
			"defer@example.com":  "451 4.3.0 Later upstream-secret-text",
			"reject@example.com": "554 5.7.1 Rejected upstream-secret-text",
		},
	})
	switch {
	case errors.Is(err, postfix.ErrNotInstalled), errors.Is(err, postfix.ErrNotRoot):
		// CI runs as root with every package installed: there this fails.
		testenv.Missing(t, err.Error())
	case err != nil:
		t.Fatal(err)
	}
	t.Cleanup(pf.Stop)
	cut := newByteCutter(t, pf.Addr(), 200<<10)

	dir := t.TempDir()
	key, keyText, err := secrets.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	keyFile := write("secrets.key", keyText+"\n")
	passFile := write("alice.pass", upstreamPass+"\n")
	clientSecret := write("client-secret", p.ClientSecret+"\n")
	leaf := testenv.NewCA(t).Issue(t, "127.0.0.1", "localhost")
	certFile, keyPEM := write("cert.pem", string(leaf.CertPEM)), write("key.pem", string(leaf.KeyPEM))
	tokenFile := filepath.Join(dir, "printer.token")
	refresh := p.IssueRefreshToken("carol@example.com")
	store := &oauth.Store{Path: tokenFile, Key: key, Context: config.TokenContext("printer")}
	if err := store.Save(&oauth2.Token{RefreshToken: refresh}); err != nil {
		t.Fatal(err)
	}
	hash, err := passwd.Hash(localPass)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
  submission: "127.0.0.1:0"
  submissions: "127.0.0.1:0"
tls:
  cert_file: %[1]s
  key_file: %[2]s
auth:
  min_refusal_time: 0s
limits:
  max_recipients: 3
  login_delay: 10ms
  login_delay_max: 20ms
proxy_protocol:
  listeners: [submission]
  trusted: ["127.0.0.2/32"]
upstreams:
  pf:
    address: "127.0.0.1:9"
    tls: none
    submission: {address: %[3]q, tls: none}
  pfcut:
    address: "127.0.0.1:9"
    tls: none
    submission: {address: %[4]q, tls: none}
  pfoauth:
    address: "127.0.0.1:9"
    tls: none
    auth: xoauth2
    oauth2:
      client_id: %[5]q
      client_secret_file: %[6]s
      token_url: %[7]s
      auth_url: %[8]s
      scopes: [mail]
    submission: {address: %[3]q, tls: none}
users:
  scanner:
    password_hash: %[9]q
    upstream: pf
    upstream_user: alice@example.com
    upstream_password_file: %[10]s
    addresses: [scanner@example.com, defer@example.com, reject@example.com]
  cutter:
    password_hash: %[9]q
    upstream: pfcut
    upstream_user: alice@example.com
    upstream_password_file: %[10]s
  printer:
    password_hash: %[9]q
    upstream: pfoauth
    upstream_user: carol@example.com
    oauth2_token_file: %[11]s
secrets:
  key_file: %[12]s
`, certFile, keyPEM, pf.Addr(), cut.addr(), p.ClientID, clientSecret, p.TokenURL(), p.AuthURL(), hash, passFile, tokenFile, keyFile)
	path := write("gateway.yaml", cfg)
	logs := &testenv.Buffer{}
	level := slog.LevelDebug
	s, err := server.Start(context.Background(), server.Options{Config: path, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))})
	if err != nil {
		t.Fatal(err)
	}
	f := &relayFixture{pf: pf, submission: s.Addrs()["submission"], submissions: s.Addrs()["submissions"], logs: logs,
		secrets: []string{localPass, upstreamPass, refresh, keyText, p.ClientSecret}, config: path, passFile: passFile}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		for _, secret := range f.secrets {
			if strings.Contains(logs.String(), secret) {
				t.Errorf("a secret reached the logs")
			}
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s\npostfix log:\n%s", logs, pf.Log())
		}
	})
	return f
}

// delivered waits until Postfix's queue is empty and returns what it
// delivered.
func (f *relayFixture) delivered(t *testing.T) [][]byte {
	t.Helper()
	f.pf.Flush(20 * time.Second)
	msgs, err := f.pf.Messages()
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// deliveredSince is delivered without the first n messages.
func (f *relayFixture) deliveredSince(t *testing.T, n int) [][]byte {
	t.Helper()
	return f.delivered(t)[n:]
}

// withoutReceived is a delivered message without the Received line
// Postfix adds in front, with CRLF line endings again.
func withoutReceived(t *testing.T, msg []byte) string {
	t.Helper()
	s := string(msg)
	if !strings.HasPrefix(s, "Received: ") {
		t.Fatalf("no Received line first: %q", s)
	}
	// The Received field goes on over continuation lines.
	i := strings.Index(s, "\n")
	for i >= 0 && i+1 < len(s) && (s[i+1] == ' ' || s[i+1] == '\t') {
		i += 1 + strings.Index(s[i+1:], "\n")
	}
	return strings.ReplaceAll(s[i+1:], "\n", "\r\n")
}

func testMessage(from, id string) string {
	return "From: " + from + "\r\nTo: bob@example.org\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\nMessage-ID: <" + id + "@example.com>\r\n" +
		"Subject: scan " + id + "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" +
		"Page one\r\n.leading dot\r\n..two dots\r\n\r\n" + strings.Repeat("0123456789", 70) + "\r\nend\r\n"
}

// testRelayRealClients: swaks and curl (STARTTLS, AUTH PLAIN, a password
// upstream) and msmtp (implicit TLS, a token upstream by XOAUTH2) send
// through the gateway to Postfix, and each message arrives once, octet for octet
// apart from the Received line Postfix adds.
func testRelayRealClients(t *testing.T, f *relayFixture) {
	t.Helper()
	base := len(f.delivered(t))
	for _, bin := range []string{"swaks", "msmtp", "curl"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Missing(t, bin+" not found: install the Debian packages swaks msmtp curl libnet-ssleay-perl libio-socket-ssl-perl")
		}
	}
	_, port, _ := net.SplitHostPort(f.submission)
	swaksMsg := testMessage("scanner@example.com", "swaks")
	cmd := exec.Command("swaks", "--server", "127.0.0.1", "--port", port, "--tls", "--auth", "PLAIN",
		"--auth-user", "scanner", "--auth-password", localPass,
		"--from", "scanner@example.com", "--to", "bob@example.org", "--data", "-")
	cmd.Stdin = strings.NewReader(swaksMsg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	_, sport, _ := net.SplitHostPort(f.submissions)
	msmtpMsg := testMessage("carol@example.com", "msmtp")
	cmd = exec.Command("msmtp", "--host=127.0.0.1", "--port="+sport, "--tls=on", "--tls-starttls=off", "--tls-certcheck=off",
		"--auth=plain", "--user=printer", "--passwordeval=echo "+localPass, "--from=carol@example.com", "bob@example.org")
	cmd.Stdin = strings.NewReader(msmtpMsg)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("msmtp: %v\n%s", err, out)
	}
	curlMsg := testMessage("scanner@example.com", "curl")
	cmd = exec.Command("curl", "-sS", "--ssl-reqd", "-k", "smtp://"+f.submission, "--user", "scanner:"+localPass,
		"--mail-from", "scanner@example.com", "--mail-rcpt", "bob@example.org", "--upload-file", "-")
	cmd.Stdin = strings.NewReader(curlMsg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	msgs := f.deliveredSince(t, base)
	if len(msgs) != 3 {
		t.Fatalf("%d messages delivered, want 3", len(msgs))
	}
	got := map[string]bool{}
	for _, m := range msgs {
		got[withoutReceived(t, m)] = true
	}
	// swaks ends the data it is given with one more CRLF of its own.
	for name, want := range map[string]string{"swaks": swaksMsg + "\r\n", "msmtp": msmtpMsg, "curl": curlMsg} {
		if !got[want] {
			t.Errorf("the %s message did not arrive unchanged; delivered:\n%q", name, msgs)
		}
	}
	if !strings.Contains(f.pf.Log(), "sasl_method=XOAUTH2, sasl_username=carol@example.com") {
		t.Errorf("Postfix did not log an XOAUTH2 login for carol")
	}
}

// testRelayDoubledCR: swaks sends, as it is given, a message whose lines
// end in CR CR LF (a device converting its line endings twice) over
// STARTTLS; Postfix gets it once, each line ending CRLF, and swaks its
// reply at once.
func testRelayDoubledCR(t *testing.T, f *relayFixture) {
	t.Helper()
	base := len(f.delivered(t))
	if _, err := exec.LookPath("swaks"); err != nil {
		testenv.Missing(t, "swaks not found: install the Debian packages swaks libnet-ssleay-perl libio-socket-ssl-perl")
	}
	want := testMessage("scanner@example.com", "doubled-cr")
	// Dot-stuffed, every line ending CR CR LF, and the end of the data
	// after one: the stuffed lines and the end are what go-smtp's reader
	// misses.
	var data strings.Builder
	for line := range strings.SplitSeq(strings.TrimSuffix(want, "\r\n"), "\r\n") {
		if strings.HasPrefix(line, ".") {
			data.WriteString(".")
		}
		data.WriteString(line + "\r\r\n")
	}
	data.WriteString(".\r\n")
	_, port, _ := net.SplitHostPort(f.submission)
	cmd := exec.Command("swaks", "--server", "127.0.0.1", "--port", port, "--tls", "--auth", "PLAIN",
		"--auth-user", "scanner", "--auth-password", localPass, "--timeout", "20",
		"--from", "scanner@example.com", "--to", "bob@example.org", "--no-data-fixup", "--data", "-")
	cmd.Stdin = strings.NewReader(data.String())
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("swaks took %v", d)
	}
	msgs := f.deliveredSince(t, base)
	if len(msgs) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(msgs))
	}
	if got := withoutReceived(t, msgs[0]); got != want {
		t.Errorf("delivered %q, want %q", got, want)
	}
}

// TestRelay runs the relay's cases against one gateway and one Postfix,
// each counting only the messages delivered since it began.
func TestRelay(t *testing.T) {
	f := startRelay(t)
	t.Run("RealClients", func(t *testing.T) { testRelayRealClients(t, f) })
	t.Run("DoubledCR", func(t *testing.T) { testRelayDoubledCR(t, f) })
	t.Run("Refusals", func(t *testing.T) { testRelayRefusals(t, f) })
	t.Run("UpstreamDropsMidData", func(t *testing.T) { testRelayUpstreamDropsMidData(t, f) })
	t.Run("Smuggling", func(t *testing.T) { testRelaySmuggling(t, f) })
	t.Run("AuthNeedsTLSBehindBalancer", func(t *testing.T) { testRelayAuthNeedsTLSBehindBalancer(t, f) })
	t.Run("Check", func(t *testing.T) { testRelayCheck(t, f) })
	t.Run("EHLOFromUpstream", func(t *testing.T) {
		// Postfix announces SIZE 10240000 (message_size_limit) and SMTPUTF8.
		nc, err := net.Dial("tcp", f.submission)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		r := newLineReader(nc)
		r.reply(t)
		fmt.Fprintf(nc, "EHLO device\r\n")
		if got := r.reply(t); !strings.Contains(got, "SIZE 10240000") || !strings.Contains(got, "SMTPUTF8") {
			t.Errorf("EHLO = %q", got)
		}
	})
}

// gatewayClient logs in to the relay's submission listener (loopback: no
// TLS needed) with the go-smtp client.
func (f *relayFixture) client(t *testing.T, user string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(f.submission)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Auth(sasl.NewPlainClient("", user, localPass)); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	return c
}

func wantCode(t *testing.T, what string, err error, code int, ec smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: %v, want %d %v", what, err, code, ec)
	}
	if se.Code != code || se.EnhancedCode != ec {
		t.Errorf("%s: %d %v %q, want %d %v", what, se.Code, se.EnhancedCode, se.Message, code, ec)
	}
	if strings.Contains(se.Message, "upstream-secret-text") {
		t.Errorf("%s: upstream text reached the client: %q", what, se.Message)
	}
}

// testRelayRefusals: the relay's own rules and Postfix's refusals at RCPT
// and after DATA, each with the right code, and nothing delivered.
func testRelayRefusals(t *testing.T, f *relayFixture) {
	t.Helper()
	base := len(f.delivered(t))
	c := f.client(t, "scanner")
	wantCode(t, "wrong sender", c.Mail("ceo@example.com", nil), 553, smtp.EnhancedCode{5, 7, 1})

	if err := c.Mail("scanner@example.com", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"a@example.org", "b@example.org", "c@example.org"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	wantCode(t, "fourth recipient", c.Rcpt("d@example.org", nil), 452, smtp.EnhancedCode{4, 5, 3})
	c.Reset()

	c.Mail("scanner@example.com", nil)
	wantCode(t, "upstream 4xx at RCPT", c.Rcpt("tempfail@example.org", nil), 450, smtp.EnhancedCode{4, 2, 1})
	wantCode(t, "upstream 5xx at RCPT", c.Rcpt("nouser@example.org", nil), 550, smtp.EnhancedCode{5, 1, 1})
	c.Reset()

	for _, tc := range []struct {
		from string
		code int
		ec   smtp.EnhancedCode
	}{{"defer@example.com", 451, smtp.EnhancedCode{4, 3, 0}}, {"reject@example.com", 554, smtp.EnhancedCode{5, 7, 1}}} {
		if err := c.Mail(tc.from, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("bob@example.org", nil); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, testMessage(tc.from, "refused"))
		wantCode(t, "upstream after DATA for "+tc.from, w.Close(), tc.code, tc.ec)
	}
	if msgs := f.deliveredSince(t, base); len(msgs) != 0 {
		t.Fatalf("%d messages delivered", len(msgs))
	}
}

// testRelayUpstreamDropsMidData: the upstream connection is cut in the
// middle of a message: the client gets a 4xx, Postfix delivers nothing,
// and the next message goes through.
func testRelayUpstreamDropsMidData(t *testing.T, f *relayFixture) {
	t.Helper()
	base := len(f.delivered(t))
	c := f.client(t, "cutter")
	big := testMessage("alice@example.com", "big") + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 10000)
	err := c.SendMail("alice@example.com", []string{"bob@example.org"}, strings.NewReader(big))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code/100 != 4 {
		t.Fatalf("DATA: %v, want a 4xx", err)
	}
	if msgs := f.deliveredSince(t, base); len(msgs) != 0 {
		t.Fatalf("%d messages delivered", len(msgs))
	}
	small := testMessage("alice@example.com", "small")
	if err := c.SendMail("alice@example.com", []string{"bob@example.org"}, strings.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	if msgs := f.deliveredSince(t, base); len(msgs) != 1 || withoutReceived(t, msgs[0]) != small {
		t.Fatalf("delivered %q", msgs)
	}
}

// smuggleVariants are the end-of-data sequences of the SMTP smuggling
// publications (CVE-2023-51764 and its kin).
var smuggleVariants = []string{"\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n", "\r\n.\r", "\r.\r", "\n.\r"}

// smuggle sends one carrier message whose body hides a second transaction
// behind end-of-data variant end, over a logged-in connection.
func smuggle(t *testing.T, nc net.Conn, end string) {
	t.Helper()
	r := newLineReader(nc)
	send := func(line, want string) {
		t.Helper()
		fmt.Fprintf(nc, "%s\r\n", line)
		if got := r.reply(t); !strings.HasPrefix(got, want) {
			t.Fatalf("%q: %q, want %s", line, got, want)
		}
	}
	send("MAIL FROM:<alice@example.com>", "250")
	send("RCPT TO:<bob@example.org>", "250")
	send("DATA", "354")
	fmt.Fprintf(nc, "From: alice@example.com\r\nSubject: carrier\r\n\r\nhello%sMAIL FROM:<alice@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nFrom: ceo@example.com\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n", end)
	// A server fooled answers the carrier and then the smuggled commands.
	r.reply(t)
	nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		if _, err := r.r.ReadString('\n'); err != nil {
			break
		}
	}
	nc.SetReadDeadline(time.Time{})
	fmt.Fprintf(nc, "QUIT\r\n")
}

func smuggledCount(t *testing.T, msgs [][]byte) int {
	n := 0
	for _, m := range msgs {
		if bytes.Contains(m, []byte("\nSubject: smuggled")) && !bytes.Contains(m, []byte("Subject: carrier")) {
			n++
		}
	}
	return n
}

// testRelaySmuggling: against a Postfix that does not protect itself
// (smtpd_forbid_bare_newline = no), the published sequences sent
// directly smuggle a second message; through the relay, each carrier
// arrives once and nothing is smuggled.
func testRelaySmuggling(t *testing.T, f *relayFixture) {
	t.Helper()
	base := len(f.delivered(t))
	// Control: the Postfix instance is vulnerable, so the test can fail.
	for _, end := range smuggleVariants {
		nc, err := net.Dial("tcp", f.pf.Addr())
		if err != nil {
			t.Fatal(err)
		}
		r := newLineReader(nc)
		r.reply(t)
		fmt.Fprintf(nc, "EHLO attacker\r\n")
		r.reply(t)
		fmt.Fprintf(nc, "AUTH PLAIN %s\r\n", base64.StdEncoding.EncodeToString([]byte("\x00alice@example.com\x00"+upstreamPass)))
		if got := r.reply(t); !strings.HasPrefix(got, "235") {
			t.Fatalf("direct AUTH: %q", got)
		}
		smuggle(t, nc, end)
		nc.Close()
	}
	direct := f.deliveredSince(t, base)
	if smuggledCount(t, direct) == 0 {
		t.Fatalf("no sequence smuggled a message past Postfix directly: the test cannot tell; delivered %q", direct)
	}
	t.Logf("directly to Postfix: %d messages for %d carriers, %d smuggled", len(direct), len(smuggleVariants), smuggledCount(t, direct))

	for _, end := range smuggleVariants {
		nc, err := net.Dial("tcp", f.submission)
		if err != nil {
			t.Fatal(err)
		}
		r := newLineReader(nc)
		r.reply(t)
		fmt.Fprintf(nc, "EHLO attacker\r\n")
		r.reply(t)
		fmt.Fprintf(nc, "AUTH PLAIN %s\r\n", base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00"+localPass)))
		if got := r.reply(t); !strings.HasPrefix(got, "235") {
			t.Fatalf("AUTH: %q", got)
		}
		smuggle(t, nc, end)
		nc.Close()
	}
	relayed := f.deliveredSince(t, base+len(direct))
	if len(relayed) != len(smuggleVariants) || smuggledCount(t, relayed) != 0 {
		t.Fatalf("through the relay: %d messages for %d carriers, %d smuggled:\n%q", len(relayed), len(smuggleVariants), smuggledCount(t, relayed), relayed)
	}
}

// testRelayAuthNeedsTLSBehindBalancer: a client that a trusted balancer
// announces (PROXY header) is not local: no AUTH before STARTTLS.
func testRelayAuthNeedsTLSBehindBalancer(t *testing.T, f *relayFixture) {
	t.Helper()
	nc := haDialFrom(t, net.ParseIP("127.0.0.2"), f.submission)
	fmt.Fprintf(nc, "PROXY TCP4 192.0.2.7 127.0.0.1 5555 587\r\n")
	r := newLineReader(nc)
	r.reply(t)
	fmt.Fprintf(nc, "EHLO device\r\n")
	if got := r.reply(t); strings.Contains(got, "AUTH") || !strings.Contains(got, "STARTTLS") {
		t.Fatalf("EHLO: %q", got)
	}
	fmt.Fprintf(nc, "AUTH PLAIN %s\r\n", base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00"+localPass)))
	if got := r.reply(t); !strings.HasPrefix(got, "530 5.7.0") {
		t.Fatalf("AUTH before STARTTLS: %q", got)
	}
}

// byteCutter forwards connections to target and cuts each after limit
// octets from the client.
type byteCutter struct {
	ln     net.Listener
	target string
	limit  int64
	wg     sync.WaitGroup
}

func newByteCutter(t *testing.T, target string, limit int64) *byteCutter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &byteCutter{ln: ln, target: target, limit: limit}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				nc.Close()
				continue
			}
			c.wg.Add(2)
			go func() { defer c.wg.Done(); io.Copy(nc, up); nc.Close() }()
			go func() {
				defer c.wg.Done()
				io.CopyN(up, nc, limit)
				up.Close()
				nc.Close()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); c.wg.Wait() })
	return c
}

func (c *byteCutter) addr() string { return c.ln.Addr().String() }

// testRelayCheck: `gateway check` logs in to each mapped user's
// submission endpoint, and reports one that refuses.
func testRelayCheck(t *testing.T, f *relayFixture) {
	t.Helper()
	var out bytes.Buffer
	server.Check(context.Background(), f.config, &out)
	for _, user := range []string{"cutter", "printer", "scanner"} {
		if !strings.Contains(out.String(), "user "+user+" (submission ") || !hasOKLine(out.String(), user) {
			t.Errorf("check output lacks an ok for %s's submission:\n%s", user, &out)
		}
	}
	os.WriteFile(f.passFile, []byte("wrong\n"), 0o600)
	defer os.WriteFile(f.passFile, []byte(upstreamPass+"\n"), 0o600)
	out.Reset()
	if err := server.Check(context.Background(), f.config, &out); !errors.Is(err, server.ErrCheckFailed) ||
		!strings.Contains(out.String(), "user scanner (submission "+f.pf.Addr()+"): FAILED: submission: the upstream refused the credentials") {
		t.Errorf("check with a wrong upstream password: %v\n%s", err, &out)
	}
}

func hasOKLine(out, user string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "user "+user+" (submission ") && strings.HasSuffix(line, "): ok") {
			return true
		}
	}
	return false
}
