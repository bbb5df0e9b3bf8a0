package pop3

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingBackend refuses every login and keeps the credentials it was
// asked about.
type recordingBackend struct {
	mu     sync.Mutex
	logins []LoginInfo
}

func (b *recordingBackend) Login(_ context.Context, li *LoginInfo) (Maildrop, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logins = append(b.logins, *li)
	return nil, ErrAuthFailed
}

// SASL exchanges that FuzzAuth builds from its arguments.
const (
	plainIR = iota
	plainChallenge
	loginIR
	loginChallenge
	rawExchange
	exchanges
)

// FuzzAuth drives the SASL decoders of AUTH (RFC 5034) with PLAIN
// (RFC 4616) and LOGIN exchanges built from arbitrary credentials, and
// with arbitrary bytes after AUTH. The backend must be asked about
// exactly the credentials the client encoded, or about nothing; never
// about a name or password with NUL, CR or LF (they would travel on in
// an IMAP string); and the session must answer in lines and end.
func FuzzAuth(f *testing.F) {
	f.Add(uint8(plainIR), "", "alice", "secret pass", []byte(nil))
	f.Add(uint8(plainChallenge), "alice", "alice", "", []byte(nil))
	f.Add(uint8(plainIR), "bob", "alice", "pw", []byte(nil))
	f.Add(uint8(loginIR), "", "alice", "pw\r\nA1 LOGOUT", []byte(nil))
	f.Add(uint8(loginChallenge), "", "al\x00ice", "pw", []byte(nil))
	f.Add(uint8(loginChallenge), "", "", "", []byte(nil))
	f.Add(uint8(rawExchange), "", "", "", []byte("PLAIN =\r\n"))
	f.Add(uint8(rawExchange), "", "", "", []byte("LOGIN\r\n*\r\n"))
	f.Add(uint8(rawExchange), "", "", "", []byte("LOGIN YWxpY2U=\r\nAA==\r\n"))
	f.Add(uint8(rawExchange), "", "", "", []byte("PLAIN\r\nAGFsaWNlAHA=\r\n"))
	f.Add(uint8(rawExchange), "", "", "", []byte("XOAUTH2 dXNlcj1hAWF1dGg9QmVhcmVyIHQBAQ==\r\n"))
	f.Add(uint8(rawExchange), "", "", "", []byte("PLAIN !!!\r\n"))
	f.Fuzz(func(t *testing.T, mode uint8, authzid, user, pass string, raw []byte) {
		b64 := base64.StdEncoding.EncodeToString
		orEmpty := func(s string) string {
			if s == "" {
				return "=" // RFC 5034 §4
			}
			return b64([]byte(s))
		}
		plain := b64([]byte(authzid + "\x00" + user + "\x00" + pass))
		var input string
		switch mode % exchanges {
		case plainIR:
			input = "AUTH PLAIN " + plain + "\r\n"
		case plainChallenge:
			input = "AUTH PLAIN\r\n" + plain + "\r\n"
		case loginIR:
			input = "AUTH LOGIN " + orEmpty(user) + "\r\n" + b64([]byte(pass)) + "\r\n"
		case loginChallenge:
			input = "AUTH LOGIN\r\n" + b64([]byte(user)) + "\r\n" + b64([]byte(pass)) + "\r\n"
		case rawExchange:
			input = "AUTH " + string(raw) + "\r\n"
		}
		// What a server must accept: a name and password that can be
		// sent on, and for PLAIN no identity other than the name's own
		// (RFC 4616 §2), on lines no longer than the limits.
		forbidden := "\x00\r\n"
		valid := user != "" && !strings.ContainsAny(user, forbidden) && !strings.ContainsAny(pass, forbidden)
		switch mode % exchanges {
		case plainIR, plainChallenge:
			valid = valid && (authzid == "" || authzid == user)
		case rawExchange:
			valid = false
		}
		if len(input) > maxCommandLine-2 {
			valid = false
		}

		be := &recordingBackend{}
		srv := &Server{Backend: be, Logger: slog.New(slog.DiscardHandler), MaxAuthFailures: 100, AllowInsecureAuth: true}
		a, b := net.Pipe()
		c := srv.newConn(b, nil, false)
		go c.serve()
		a.SetDeadline(time.Now().Add(5 * time.Second))
		go func() {
			a.Write([]byte(input))
			// "*" cancels an exchange still under way (RFC 5034 §4),
			// which would otherwise take QUIT as its next response.
			a.Write([]byte("\r\n*\r\nQUIT\r\n"))
		}()
		out, err := io.ReadAll(a)
		a.Close()
		if err != nil {
			t.Fatalf("the session did not end: %v after %q", err, out)
		}
		if len(out) > 0 && !bytes.HasSuffix(out, []byte("\r\n")) {
			t.Fatalf("output does not end with CRLF: %q", out)
		}
		for _, line := range bytes.Split(out, []byte("\r\n")) {
			if len(line) > 510 {
				t.Fatalf("a reply line of %d octets (RFC 1939 §3: 512 with CRLF)", len(line))
			}
		}
		be.mu.Lock()
		defer be.mu.Unlock()
		for _, li := range be.logins {
			if li.Username == "" || strings.ContainsAny(li.Username, forbidden) || strings.ContainsAny(li.Password, forbidden) {
				t.Fatalf("the backend was asked about %q / %q", li.Username, li.Password)
			}
			if mode%exchanges != rawExchange && (li.Username != user || li.Password != pass) {
				t.Fatalf("the client sent %q / %q, the backend was asked about %q / %q", user, pass, li.Username, li.Password)
			}
		}
		if valid && len(be.logins) != 1 {
			t.Fatalf("%q: the backend was asked %d times, want once; the server said %q", input, len(be.logins), out)
		}
	})
}
