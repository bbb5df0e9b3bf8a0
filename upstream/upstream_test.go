package upstream_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/internal/testkit/faultproxy"
	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/upstream"
)

const (
	user     = "alice"
	password = "s3cret"
)

// testCtx bounds one test's exchanges with the server.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startMem runs an imapmem server with the user alice and the given
// messages in her INBOX.
func startMem(t *testing.T, opts *imapmem.Options, msgs ...[]byte) *imapmem.Server {
	t.Helper()
	mem, err := imapmem.Start("127.0.0.1:0", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	if err := mem.AddUser(user, password); err != nil {
		t.Fatal(err)
	}
	if err := mem.Append(user, "INBOX", msgs...); err != nil {
		t.Fatal(err)
	}
	return mem
}

func plain(addr string) *upstream.Server {
	return &upstream.Server{Address: addr, Security: upstream.SecurityNone, Timeout: 5 * time.Second}
}

// dial connects and registers the session's Close as a cleanup.
func dial(t *testing.T, srv *upstream.Server) *upstream.Session {
	t.Helper()
	s, err := upstream.Dial(testCtx(t), srv)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// open dials, logs in as alice and selects INBOX.
func open(t *testing.T, srv *upstream.Server) *upstream.Session {
	t.Helper()
	s := dial(t, srv)
	ctx := testCtx(t)
	if err := s.Login(ctx, user, password); err != nil {
		t.Fatalf("Login: %v", err)
	}
	if _, err := s.Select(ctx, "INBOX"); err != nil {
		t.Fatalf("Select: %v", err)
	}
	return s
}

// message returns a message numbered i; a larger i gives a larger message.
func message(i int) []byte {
	return fmt.Appendf(nil, "From: bob@example.com\r\nTo: alice@example.com\r\nSubject: message %d\r\n\r\n%s\r\n",
		i, strings.Repeat("x", 100*i))
}

func messages(n int) [][]byte {
	var msgs [][]byte
	for i := 1; i <= n; i++ {
		msgs = append(msgs, message(i))
	}
	return msgs
}

// client is a second, plain IMAP client on the same server, for what
// upstream has no API for. It logs in as alice and selects mailbox.
func client(t *testing.T, addr, mailbox string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("imapclient login: %v", err)
	}
	if _, err := c.Select(mailbox, nil).Wait(); err != nil {
		t.Fatalf("imapclient select %s: %v", mailbox, err)
	}
	return c
}

// flagDeleted stores \Deleted on the message with uid through a second
// client, as another mail program would.
func flagDeleted(t *testing.T, addr string, uid uint32) {
	t.Helper()
	c := client(t, addr, "INBOX")
	err := c.Store(imap.UIDSetNum(imap.UID(uid)), &imap.StoreFlags{
		Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted},
	}, nil).Close()
	if err != nil {
		t.Fatalf("store \\Deleted on UID %d: %v", uid, err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("logout: %v", err)
	}
}

// state lists a mailbox as "UID:flags" strings in UID order, flags sorted,
// read by a fresh client.
func state(t *testing.T, addr, mailbox string) []string {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatal(err)
	}
	data, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	if data.NumMessages == 0 {
		return out
	}
	var all imap.SeqSet
	all.AddRange(1, 0)
	bufs, err := c.Fetch(all, &imap.FetchOptions{UID: true, Flags: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(bufs, func(a, b *imapclient.FetchMessageBuffer) int { return cmp.Compare(a.UID, b.UID) })
	for _, b := range bufs {
		var flags []string
		for _, f := range b.Flags {
			flags = append(flags, string(f))
		}
		slices.Sort(flags)
		out = append(out, fmt.Sprintf("%d:%s", b.UID, strings.Join(flags, ",")))
	}
	return out
}

func checkState(t *testing.T, addr, mailbox string, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if got := state(t, addr, mailbox); !slices.Equal(got, want) {
		t.Errorf("%s: got %q, want %q", mailbox, got, want)
	}
}

// pki is a throwaway CA and a server certificate for imap.test and
// 127.0.0.1 signed by it.
type pki struct {
	roots  *x509.CertPool
	server *tls.Config
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca := testenv.NewCA(t)
	leaf := ca.Issue(t, "imap.test", "127.0.0.1")
	return &pki{
		roots:  ca.Pool(),
		server: &tls.Config{Certificates: []tls.Certificate{leaf.TLS}, MinVersion: tls.VersionTLS12},
	}
}

func TestDialSecurityNone(t *testing.T) {
	mem := startMem(t, nil, messages(2)...)
	s := open(t, plain(mem.Addr()))
	info := s.Selected()
	if info.Name != "INBOX" || info.Messages != 2 || info.Epoch == "" || info.Epoch == "0" || !strings.HasPrefix(info.State, "3/") {
		t.Errorf("Selected() = %+v", info)
	}
	if !s.Alive() {
		t.Error("session not alive")
	}
}

func TestDialTLS(t *testing.T) {
	p := newPKI(t)
	for _, sec := range []upstream.Security{upstream.SecurityImplicit, upstream.SecurityStartTLS} {
		t.Run(string(sec), func(t *testing.T) {
			var dbg testenv.Buffer
			mem := startMem(t, &imapmem.Options{
				TLSConfig:   p.server,
				ImplicitTLS: sec == upstream.SecurityImplicit,
				DebugWriter: &dbg,
			}, messages(3)...)
			srv := func(name string, roots *x509.CertPool) *upstream.Server {
				return &upstream.Server{
					Address:   mem.Addr(),
					Security:  sec,
					TLSConfig: &tls.Config{RootCAs: roots, ServerName: name},
					Timeout:   5 * time.Second,
				}
			}

			t.Run("trusted", func(t *testing.T) {
				s := open(t, srv("imap.test", p.roots))
				if n := s.Selected().Messages; n != 3 {
					t.Errorf("Messages = %d, want 3", n)
				}
				if sec == upstream.SecurityStartTLS && !strings.Contains(dbg.String(), "STARTTLS\r\n") {
					t.Error("no STARTTLS command seen by the server")
				}
				// The server offers AUTH=PLAIN only over TLS.
				if !strings.Contains(dbg.String(), " AUTHENTICATE PLAIN") {
					t.Error("no AUTHENTICATE PLAIN seen by the server")
				}
			})
			t.Run("server name from address", func(t *testing.T) {
				// The certificate also names 127.0.0.1.
				open(t, srv("", p.roots))
			})
			t.Run("untrusted CA", func(t *testing.T) {
				_, err := upstream.Dial(testCtx(t), srv("imap.test", nil))
				var unknown x509.UnknownAuthorityError
				if !errors.As(err, &unknown) {
					t.Fatalf("Dial with system roots: got %v, want an unknown authority error", err)
				}
			})
			t.Run("wrong server name", func(t *testing.T) {
				_, err := upstream.Dial(testCtx(t), srv("other.test", p.roots))
				var hostErr x509.HostnameError
				if !errors.As(err, &hostErr) {
					t.Fatalf("Dial as other.test: got %v, want a host name error", err)
				}
			})
		})
	}
}

func TestDialStartTLSNotOffered(t *testing.T) {
	mem := startMem(t, nil)
	_, err := upstream.Dial(testCtx(t), &upstream.Server{
		Address: mem.Addr(), Security: upstream.SecurityStartTLS, Timeout: 5 * time.Second,
	})
	if err == nil {
		t.Fatal("STARTTLS to a server without it succeeded")
	}
}

func TestDialImplicitTLSToPlainServer(t *testing.T) {
	mem := startMem(t, nil)
	start := time.Now()
	_, err := upstream.Dial(testCtx(t), &upstream.Server{
		Address: mem.Addr(), Security: upstream.SecurityImplicit, Timeout: time.Second,
	})
	if err == nil {
		t.Fatal("TLS to a cleartext server succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Dial took %v", d)
	}
}

// With TLS configured the server refuses cleartext authentication and
// says so with LOGINDISABLED; that is not a credentials failure.
func TestLoginCleartextRefused(t *testing.T) {
	p := newPKI(t)
	mem := startMem(t, &imapmem.Options{TLSConfig: p.server})
	s := dial(t, plain(mem.Addr()))
	err := s.Login(testCtx(t), user, password)
	if err == nil || errors.Is(err, upstream.ErrAuthFailed) || !strings.Contains(err.Error(), "LOGINDISABLED") {
		t.Fatalf("Login in cleartext: %v", err)
	}
}

func TestLoginMechanism(t *testing.T) {
	for _, tc := range []struct {
		name      string
		loginOnly bool
		want      string // command the server must see
		notWant   string
	}{
		{"AUTH=PLAIN", false, " AUTHENTICATE PLAIN", " LOGIN "},
		{"LOGIN only", true, " LOGIN ", " AUTHENTICATE "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dbg testenv.Buffer
			mem := startMem(t, &imapmem.Options{LoginOnly: tc.loginOnly, DebugWriter: &dbg})
			s := dial(t, plain(mem.Addr()))

			c, err := imapclient.DialInsecure(mem.Addr(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if has := c.Caps().Has(imap.AuthCap("PLAIN")); has == tc.loginOnly {
				t.Fatalf("server advertises AUTH=PLAIN: %v", has)
			}

			if err := s.Login(testCtx(t), user, password); err != nil {
				t.Fatalf("Login: %v", err)
			}
			if _, err := s.Select(testCtx(t), "INBOX"); err != nil {
				t.Fatalf("Select: %v", err)
			}
			traffic := dbg.String()
			if !strings.Contains(traffic, tc.want) {
				t.Errorf("server did not see %q:\n%s", tc.want, traffic)
			}
			if strings.Contains(traffic, tc.notWant) {
				t.Errorf("server saw %q:\n%s", tc.notWant, traffic)
			}
		})
	}
}

func TestLoginRefused(t *testing.T) {
	for _, loginOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("loginOnly=%v", loginOnly), func(t *testing.T) {
			mem := startMem(t, &imapmem.Options{LoginOnly: loginOnly})
			for _, cred := range [][2]string{{user, "wrong"}, {"mallory", password}, {user, ""}} {
				s := dial(t, plain(mem.Addr()))
				err := s.Login(testCtx(t), cred[0], cred[1])
				if !errors.Is(err, upstream.ErrAuthFailed) {
					t.Errorf("Login(%q, %q): got %v, want ErrAuthFailed", cred[0], cred[1], err)
				}
				// The connection stays usable for another attempt.
				if err := s.Login(testCtx(t), user, password); err != nil {
					t.Errorf("Login after a refusal: %v", err)
				}
			}
		})
	}
}

// A CR LF in a credential goes inside a literal or the SASL response and
// cannot end the command early.
func TestLoginCRLFInjection(t *testing.T) {
	const inject = "\r\nA1 DELETE INBOX"
	for _, loginOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("loginOnly=%v", loginOnly), func(t *testing.T) {
			mem := startMem(t, &imapmem.Options{LoginOnly: loginOnly}, messages(2)...)
			for _, cred := range [][2]string{
				{user, "alice" + inject},
				{user + inject, password},
				{user, password + inject},
			} {
				s := dial(t, plain(mem.Addr()))
				err := s.Login(testCtx(t), cred[0], cred[1])
				if !errors.Is(err, upstream.ErrAuthFailed) {
					t.Errorf("Login(%q, %q): got %v, want ErrAuthFailed", cred[0], cred[1], err)
				}
				// The session is still in step with the server.
				if err := s.Login(testCtx(t), user, password); err != nil {
					t.Fatalf("Login after the attempt: %v", err)
				}
				if _, err := s.Select(testCtx(t), "INBOX"); err != nil {
					t.Fatalf("Select: %v", err)
				}
				if n, err := mem.Count(user, "INBOX"); err != nil || n != 2 {
					t.Fatalf("INBOX after the attempt: %d messages, %v", n, err)
				}
			}
		})
	}
}

// silentServer accepts connections and never writes to them.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

func TestDialNoGreeting(t *testing.T) {
	addr := silentServer(t)
	for _, sec := range []upstream.Security{upstream.SecurityNone, upstream.SecurityImplicit, upstream.SecurityStartTLS} {
		t.Run(string(sec), func(t *testing.T) {
			const timeout = 300 * time.Millisecond
			start := time.Now()
			s, err := upstream.Dial(testCtx(t), &upstream.Server{Address: addr, Security: sec, Timeout: timeout})
			d := time.Since(start)
			if err == nil {
				s.Close()
				t.Fatal("Dial succeeded without a greeting")
			}
			if d < timeout/2 || d > 5*time.Second {
				t.Errorf("Dial failed after %v, timeout %v: %v", d, timeout, err)
			}
		})
	}
}

func TestDialContextCancelled(t *testing.T) {
	addr := silentServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := upstream.Dial(ctx, &upstream.Server{Address: addr, Security: upstream.SecurityNone, Timeout: time.Minute})
	if err == nil {
		t.Fatal("Dial succeeded without a greeting")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Dial returned after %v", d)
	}
}

// Between operations the connection may idle beyond the timeout.
func TestIdleBeyondTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	mem := startMem(t, nil, messages(3)...)
	srv := plain(mem.Addr())
	srv.Timeout = timeout
	s := open(t, srv)
	time.Sleep(2 * timeout)
	entries, err := s.Snapshot(testCtx(t))
	if err != nil {
		t.Fatalf("Snapshot after idling: %v", err)
	}
	if len(entries) != 3 {
		t.Fatalf("Snapshot: %d entries", len(entries))
	}
	time.Sleep(2 * timeout)
	rc, err := s.Fetch(testCtx(t), uidOf(entries[0].ID))
	if err != nil {
		t.Fatalf("Fetch after idling: %v", err)
	}
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, message(1)) {
		t.Errorf("Fetch returned %q", got)
	}
	time.Sleep(2 * timeout)
	if err := s.Delete(testCtx(t), []uint32{uidOf(entries[0].ID)}, upstream.DeleteExpunge, ""); err != nil {
		t.Fatalf("Delete after idling: %v", err)
	}
	if !s.Alive() {
		t.Error("session died while idle")
	}
}

// A server that stops answering during an operation ends the session
// within about the timeout.
func TestStallDuringOperation(t *testing.T) {
	const timeout = 300 * time.Millisecond
	t.Run("snapshot", func(t *testing.T) {
		mem := startMem(t, nil, messages(3)...)
		p := faultproxy.Start(t, mem.Addr())
		srv := plain(p.Addr())
		srv.Timeout = timeout
		s := open(t, srv)
		p.Stall(true)
		start := time.Now()
		_, err := s.Snapshot(testCtx(t))
		if err == nil {
			t.Fatal("Snapshot succeeded through a frozen connection")
		}
		// One timeout, not one per read attempt of the IMAP decoder.
		if d := time.Since(start); d > 3*timeout {
			t.Errorf("Snapshot failed after %v, timeout %v", d, timeout)
		}
		waitDead(t, s)
	})
	t.Run("fetch", func(t *testing.T) {
		mem := startMem(t, nil, bigMessage(1<<16)) // 1.1 MiB
		p := faultproxy.Start(t, mem.Addr())
		srv := plain(p.Addr())
		srv.Timeout = timeout
		s := open(t, srv)
		p.StallServerAfter(200_000)
		rc, err := s.Fetch(testCtx(t), 1)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n, err := io.Copy(io.Discard, rc)
		if err == nil || n >= 200_000 {
			t.Fatalf("read %d octets through a connection frozen after 200000: %v", n, err)
		}
		if d := time.Since(start); d > 3*timeout {
			t.Errorf("stalled read ended after %v, timeout %v", d, timeout)
		}
		closeBounded(t, rc)
		waitDead(t, s)
	})
}

// closeBounded closes rc and fails if that takes more than 5 seconds.
func closeBounded(t *testing.T, rc io.Closer) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- rc.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs")
		return nil
	}
}

// waitDead fails unless the session reports itself dead within 5 seconds.
func waitDead(t *testing.T, s *upstream.Session) {
	t.Helper()
	testenv.WaitFor(t, func() bool { return !s.Alive() })
}

// fakeServer answers commands with canned responses, for what imapmem
// cannot produce. reply gets a command line without its tag and returns
// the untagged lines to send before the tagged OK.
func fakeServer(t *testing.T, reply func(cmd string) []string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				defer c.Close()
				w := bufio.NewWriter(c)
				fmt.Fprintf(w, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n")
				w.Flush()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
					for _, l := range reply(cmd) {
						fmt.Fprintf(w, "%s\r\n", l)
					}
					fmt.Fprintf(w, "%s OK done\r\n", tag)
					w.Flush()
					if strings.EqualFold(cmd, "LOGOUT") {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// idOf is the IMAP store's ID of the message with the UID.
func idOf(uid uint32) upstream.ID { return upstream.ID(strconv.FormatUint(uint64(uid), 10)) }

// uidOf is the UID that the IMAP store's ID names.
func uidOf(id upstream.ID) uint32 {
	uid, err := strconv.ParseUint(string(id), 10, 32)
	if err != nil {
		panic(fmt.Sprintf("ID %q is no UID: %v", id, err))
	}
	return uint32(uid)
}
