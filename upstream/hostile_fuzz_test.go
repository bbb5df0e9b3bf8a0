package upstream_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/upstream"
)

// rawIMAP is a one-connection IMAP server for fuzzing, where a scripted
// dialogue would be too strict: it greets, answers logging in, SELECT,
// UID SEARCH and LOGOUT politely, and hands every other command line to
// answer, which writes whatever it likes. The connection ends when answer
// says so, or when the client has been silent for a moment after it (it
// is waiting for something the server will never send).
type rawIMAP struct {
	ln   net.Listener
	mu   sync.Mutex
	sent bytes.Buffer // everything the server wrote
	done chan struct{}
}

// answeringSession is a session, logged in with INBOX selected, on a raw
// server that answers every command starting with prefix with response
// ("{tag}" standing for the command's tag), and any other with BAD; and
// that server.
func answeringSession(t *testing.T, ctx context.Context, prefix string, response []byte) (*upstream.Session, *rawIMAP) {
	t.Helper()
	srv := startRawIMAP(t, "* OK [CAPABILITY IMAP4rev1 UIDPLUS] ready\r\n", func(tag, command string, w io.Writer) bool {
		if strings.HasPrefix(strings.ToUpper(command), prefix) {
			w.Write(bytes.ReplaceAll(response, []byte("{tag}"), []byte(tag)))
		} else {
			fmt.Fprintf(w, "%s BAD what\r\n", tag)
		}
		return false
	})
	s, err := upstream.Dial(ctx, &upstream.Server{Address: srv.Addr(), Security: upstream.SecurityNone, Timeout: fuzzTimeout})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx, "u", "p"); err != nil {
		s.Close()
		t.Fatal(err)
	}
	if _, err := s.Select(ctx, "INBOX"); err != nil {
		s.Close()
		t.Fatal(err)
	}
	return s, srv
}

func startRawIMAP(tb testing.TB, greeting string, answer func(tag, command string, w io.Writer) (end bool)) *rawIMAP {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &rawIMAP{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		w := io.MultiWriter(c, &lockedBuffer{&s.mu, &s.sent})
		io.WriteString(w, greeting)
		r := bufio.NewReader(c)
		idle := 5 * time.Second
		for {
			c.SetReadDeadline(time.Now().Add(idle))
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			tag, command, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			handled, end := politeAnswers(tag, command, w)
			if !handled {
				end = answer(tag, command, w)
				// From here on the client may be waiting for what
				// the server will never send.
				idle = 300 * time.Millisecond
			}
			if end {
				return
			}
		}
	}()
	tb.Cleanup(func() { ln.Close(); <-s.done })
	return s
}

func (s *rawIMAP) Addr() string { return s.ln.Addr().String() }

// Sent is what the server wrote, once the connection is over.
func (s *rawIMAP) Sent() []byte {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.sent.Bytes())
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// politeAnswers answers what a session sends around the command under
// test: logging in, asking for capabilities, selecting a mailbox of one
// message, searching and logging out.
func politeAnswers(tag, command string, w io.Writer) (handled, end bool) {
	verb, _, _ := strings.Cut(strings.ToUpper(command), " ")
	switch verb {
	case "LOGIN":
		fmt.Fprintf(w, "%s OK logged in\r\n", tag)
	case "CAPABILITY":
		fmt.Fprintf(w, "* CAPABILITY IMAP4rev1 UIDPLUS\r\n%s OK done\r\n", tag)
	case "NOOP", "ENABLE", "ID":
		fmt.Fprintf(w, "%s OK done\r\n", tag)
	case "SELECT":
		fmt.Fprintf(w, "* 1 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n* OK [UIDNEXT 2] ok\r\n%s OK [READ-WRITE] selected\r\n", tag)
	case "UID":
		if !strings.HasPrefix(strings.ToUpper(command), "UID SEARCH") {
			return false, false
		}
		fmt.Fprintf(w, "* SEARCH 1\r\n%s OK searched\r\n", tag)
	case "LOGOUT":
		fmt.Fprintf(w, "* BYE bye\r\n%s OK logged out\r\n", tag)
		return true, true
	default:
		return false, false
	}
	return true, false
}

const fuzzTimeout = time.Second

// FuzzFetchResponse answers a body fetch with a FETCH response whose
// UID, announced literal size, octets and whatever follows are arbitrary.
// The fetch must end within the timeout, never panic, and a body read to
// its end without an error must be a literal the server sent, whole, for
// the UID asked: never a cut or a different message passed off as whole.
func FuzzFetchResponse(f *testing.F) {
	msg := []byte("Subject: a\r\n\r\nbody\r\n")
	f.Add(uint32(1), int64(len(msg)), msg, []byte(")\r\n{tag} OK done\r\n"))
	f.Add(uint32(1), int64(len(msg)+5), msg, []byte(")\r\n{tag} OK done\r\n"))
	f.Add(uint32(1), int64(3), msg, []byte(")\r\n{tag} OK done\r\n"))
	f.Add(uint32(2), int64(len(msg)), msg, []byte(")\r\n{tag} OK done\r\n"))
	f.Add(uint32(1), int64(2<<30), msg, []byte(")\r\n{tag} OK done\r\n"))
	f.Add(uint32(1), int64(len(msg)), msg, []byte(")\r\n{tag} NO [UNAVAILABLE] later\r\n"))
	f.Add(uint32(1), int64(len(msg)), msg, []byte(" FLAGS (\\Seen))\r\n* 1 FETCH (UID 1 BODY[] {2}\r\nxy)\r\n{tag} OK done\r\n"))
	f.Add(uint32(1), int64(len(msg)), msg, []byte(")\r\n* BYE going\r\n"))
	f.Add(uint32(1), int64(len(msg)), msg, []byte(""))
	f.Add(uint32(7), int64(-1), []byte("NIL"), []byte("{tag} OK done\r\n"))
	f.Fuzz(func(t *testing.T, uid uint32, size int64, body, tail []byte) {
		var response []byte
		if size < 0 {
			response = fmt.Appendf(nil, "* 1 FETCH (UID %d BODY[] %s", uid, body)
		} else {
			response = fmt.Appendf(nil, "* 1 FETCH (UID %d BODY[] {%d}\r\n%s", uid, size, body)
		}
		response = append(response, tail...)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		s, srv := answeringSession(t, ctx, "UID FETCH", response)
		defer s.Close()
		rc, err := s.Fetch(ctx, 1)
		var got []byte
		whole := false
		if err == nil {
			// The gateway takes a body read to its end as whole (what
			// Close reports after it concerns the rest of the response).
			got, err = io.ReadAll(rc)
			whole = err == nil
			rc.Close()
		}
		s.Close()
		if d := time.Since(start); d > 5*fuzzTimeout {
			t.Fatalf("the fetch took %v with a timeout of %v", d, fuzzTimeout)
		}
		if !whole {
			return
		}
		sent := srv.Sent()
		// The IMAP client also takes a bare LF after a literal's size.
		literal := fmt.Appendf(nil, "{%d}\r\n%s", len(got), got)
		bareLF := fmt.Appendf(nil, "{%d}\n%s", len(got), got)
		if !bytes.Contains(sent, literal) && !bytes.Contains(sent, bareLF) {
			t.Fatalf("served %q as a whole message; it is no literal the server sent: %q", got, sent)
		}
		if uid != 1 && !bytes.Contains(tail, []byte("UID 1 ")) && !bytes.Contains(body, []byte("UID 1 ")) {
			t.Fatalf("served the body of UID %d for UID 1: %q", uid, got)
		}
	})
}

// FuzzOAuthChallenge answers an OAUTHBEARER or XOAUTH2 login with an
// arbitrary error challenge (RFC 7628 §3.2.2) and an arbitrary final
// line. The login must end within the timeout, succeed only on the
// server's OK, and never put the token, or anything but printable text,
// in its error.
func FuzzOAuthChallenge(f *testing.F) {
	f.Add(true, []byte(`eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=`), []byte("{tag} NO [AUTHENTICATIONFAILED] invalid"))
	f.Add(false, []byte(`eyJzdGF0dXMiOiI0MDAifQ==`), []byte("{tag} NO bad"))
	f.Add(true, []byte(""), []byte("{tag} OK welcome"))
	f.Add(false, []byte("not base64 \x00\x01"), []byte("{tag} BAD no"))
	f.Add(true, []byte("eyJ9\r\n+ again"), []byte("* BYE"))
	f.Add(false, []byte("e30="), []byte("{tag} NO [UNAVAILABLE] try later"))
	f.Add(true, []byte("AQ0KeyJzdGF0dXMiOiI0MDEifQ=="), []byte("{tag} NO no"))
	f.Fuzz(func(t *testing.T, bearer bool, challenge, final []byte) {
		const token = "ya29.SECRET-TOKEN-c2VjcmV0"
		mech := upstream.XOAuth2
		if bearer {
			mech = upstream.OAuthBearer
		}
		authTag, loginTag := "", ""
		srv := startRawIMAP(t, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER] ready\r\n", func(tag, command string, w io.Writer) bool {
			switch {
			case strings.HasPrefix(strings.ToUpper(command), "AUTHENTICATE"):
				authTag, loginTag = tag, tag
				fmt.Fprintf(w, "+ %s\r\n", challenge)
			case authTag != "":
				// The client's answer to the challenge: the command's
				// end is up to the fuzzer.
				w.Write(bytes.ReplaceAll(final, []byte("{tag}"), []byte(authTag)))
				w.Write([]byte("\r\n"))
				authTag = ""
			default:
				fmt.Fprintf(w, "%s BAD what\r\n", tag)
			}
			return false
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		s, err := upstream.Dial(ctx, &upstream.Server{Address: srv.Addr(), Security: upstream.SecurityNone, Timeout: fuzzTimeout})
		if err != nil {
			t.Fatal(err)
		}
		err = s.LoginOAuth2(ctx, mech, "alice@example.com", token)
		s.Close()
		if d := time.Since(start); d > 5*fuzzTimeout {
			t.Fatalf("the login took %v with a timeout of %v", d, fuzzTimeout)
		}
		sent := srv.Sent()
		if err == nil {
			if loginTag == "" || !bytes.Contains(sent, []byte("\n"+loginTag+" OK")) {
				t.Fatalf("logged in without an OK from the server: %q", sent)
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
