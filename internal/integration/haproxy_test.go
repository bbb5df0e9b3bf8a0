package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/proxyproto"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// The balancer connects from 127.0.0.1, the only trusted source; clients
// connect from 127.0.0.2, which Linux also routes to the loopback
// interface, so the gateway can tell the two apart.
var (
	haBalancerIP = net.ParseIP("127.0.0.1")
	haClientIP   = net.ParseIP("127.0.0.2")
)

const (
	haUser = "alice"
	haPass = "alice-pass"
	haMsg  = "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: behind the balancer\r\n\r\nHello through HAProxy.\r\n"
)

// proxiedGateway is a gateway whose listener takes the PROXY protocol
// from 127.0.0.1, in front of an in-memory IMAP server holding one
// message for alice.
type proxiedGateway struct {
	addr string
	log  *testenv.Buffer
}

// startProxiedGateway starts a gateway that takes passwords without TLS:
// its clients, behind the balancer, are never loopback clients.
func startProxiedGateway(t *testing.T) *proxiedGateway {
	return startProxiedGatewayAuth(t, true)
}

func startProxiedGatewayAuth(t *testing.T, allowInsecure bool) *proxiedGateway {
	t.Helper()
	mem := startMem(t, haUser, haPass)
	if err := mem.Append(haUser, "INBOX", []byte(haMsg)); err != nil {
		t.Fatal(err)
	}

	gw := &proxiedGateway{log: new(testenv.Buffer)}
	log := slog.New(slog.NewTextHandler(gw.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	px := proxy.New(&proxy.Config{
		Upstreams: map[string]*proxy.Upstream{"mem": {
			Name:     "mem",
			Server:   upstream.Server{Address: mem.Addr(), Security: upstream.SecurityNone, Timeout: 30 * time.Second},
			Mailbox:  "INBOX",
			OnDelete: upstream.DeleteKeep,
		}},
		Passthrough: &proxy.Passthrough{Upstream: "mem"},
	}, cache.New(16<<20, 1<<20), log)
	srv := &pop3.Server{Backend: px, Logger: log, AllowInsecureAuth: allowInsecure}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gw.addr = ln.Addr().String()
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	go srv.Serve(proxyproto.Wrap(ln, trusted, 2*time.Second))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if t.Failed() {
			t.Logf("gateway log:\n%s", gw.log)
		}
	})
	return gw
}

// sessionEnd waits for the "session end" line of the session whose client
// connected from local and returns it.
func (gw *proxiedGateway) sessionEnd(t *testing.T, local net.Addr) string {
	t.Helper()
	var found string
	testenv.WaitFor(t, func() bool {
		for line := range strings.SplitSeq(gw.log.String(), "\n") {
			if strings.Contains(line, `msg="session end"`) && strings.Contains(line, " remote="+local.String()+" ") {
				found = line
				return true
			}
		}
		return false
	})
	return found
}

// haDialFrom connects to addr from the source address src.
func haDialFrom(t *testing.T, src net.IP, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("connecting to %s from %s: %v", addr, src, err)
	}
	nc.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return nc
}

// haproxyBinary finds haproxy, also in /usr/sbin, which is often not in
// an ordinary user's PATH.
func haproxyBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if fi, err := os.Stat("/usr/sbin/haproxy"); err == nil && !fi.IsDir() {
		return "/usr/sbin/haproxy"
	}
	testenv.Missing(t, "haproxy not found: install the Debian package haproxy")
	return ""
}

// haFreePort returns a loopback port that was free a moment ago.
func haFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startHAProxy runs haproxy in the foreground with a TCP frontend on a
// free loopback port, forwarding to backend with the given server option
// (send-proxy or send-proxy-v2). It returns the frontend's address.
func startHAProxy(t *testing.T, backend, sendProxy string) string {
	t.Helper()
	bin := haproxyBinary(t)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", haFreePort(t))
	cfg := fmt.Sprintf(`global
	pidfile %s
	maxconn 64

defaults
	mode tcp
	timeout connect 2s
	timeout client 30s
	timeout server 30s

frontend pop3
	bind %s
	default_backend gateway

backend gateway
	server gw %s %s source %s
`, filepath.Join(dir, "haproxy.pid"), front, backend, sendProxy, haBalancerIP)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	var out testenv.Buffer
	cmd := exec.Command(bin, "-db", "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting haproxy: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("haproxy output:\n%s", &out)
		}
	})

	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("haproxy exited: %v\n%s", cmd.ProcessState, &out)
		default:
		}
		if nc, err := net.DialTimeout("tcp", front, time.Second); err == nil {
			nc.Close()
			return front
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy does not accept on %s\n%s", front, &out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHAProxyPassesClientAddress puts a real HAProxy in front of the
// gateway: the session's log line must show the client's address, not
// the balancer's.
func TestHAProxyPassesClientAddress(t *testing.T) {
	for _, tc := range []struct{ name, option string }{
		{"v2", "send-proxy-v2"},
		{"v1", "send-proxy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := startProxiedGateway(t)
			front := startHAProxy(t, gw.addr, tc.option)

			nc := haDialFrom(t, haClientIP, front)
			c, err := pop3client.New(nc)
			if err != nil {
				t.Fatalf("greeting through haproxy: %v", err)
			}
			if err := c.Login(haUser, haPass); err != nil {
				t.Fatalf("login: %v", err)
			}
			body, err := c.Retr(1)
			if err != nil {
				t.Fatalf("RETR: %v", err)
			}
			if string(body) != haMsg {
				t.Errorf("RETR 1 = %q, want %q", body, haMsg)
			}
			if err := c.Quit(); err != nil {
				t.Fatalf("QUIT: %v", err)
			}

			line := gw.sessionEnd(t, nc.LocalAddr())
			if !strings.Contains(line, " remote=127.0.0.2:") || !strings.Contains(line, "retrieved=1") {
				t.Errorf("session end line %q, want remote=127.0.0.2:... and retrieved=1", line)
			}
		})
	}
}

// TestHAProxyHeaderFromUntrustedClient: only the balancer may send a
// PROXY header. A client connecting directly from another address that
// sends one gets it treated as a command; the balancer's own address
// without a header is not served at all.
func TestHAProxyHeaderFromUntrustedClient(t *testing.T) {
	gw := startProxiedGateway(t)

	t.Run("forged", func(t *testing.T) {
		nc := haDialFrom(t, haClientIP, gw.addr)
		c, err := pop3client.New(nc)
		if err != nil {
			t.Fatalf("greeting: %v", err)
		}
		reply, err := c.Cmd("PROXY TCP4 1.2.3.4 127.0.0.1 1234 110")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(reply, "-ERR") {
			t.Errorf("forged header answered %q, want -ERR", reply)
		}
		if err := c.Quit(); err != nil {
			t.Fatalf("QUIT: %v", err)
		}
		line := gw.sessionEnd(t, nc.LocalAddr())
		if !strings.Contains(line, " remote=127.0.0.2:") || strings.Contains(line, "1.2.3.4") {
			t.Errorf("session end line %q, want remote=127.0.0.2:...", line)
		}
	})

	t.Run("trusted-without-header", func(t *testing.T) {
		nc := haDialFrom(t, haBalancerIP, gw.addr)
		io.WriteString(nc, "CAPA\r\n")
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(nc)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection without a header from the balancer was kept open")
		}
		if len(got) != 0 {
			t.Errorf("connection without a header was served: %q", got)
		}
	})
}

// TestHAProxyClientIsNotLoopback: the header names the client 127.0.0.2,
// a loopback address, but the client came through the balancer: it is not
// local and may not send a password without TLS.
func TestHAProxyClientIsNotLoopback(t *testing.T) {
	gw := startProxiedGatewayAuth(t, false)
	front := startHAProxy(t, gw.addr, "send-proxy-v2")
	nc := haDialFrom(t, haClientIP, front)
	c, err := pop3client.New(nc)
	if err != nil {
		t.Fatalf("greeting through haproxy: %v", err)
	}
	reply, err := c.Cmd("USER " + haUser)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(reply, "-ERR [AUTH] Plaintext authentication disallowed") {
		t.Fatalf("USER through the balancer from %s = %q, want the plaintext refusal", haClientIP, reply)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	if line := gw.sessionEnd(t, nc.LocalAddr()); !strings.Contains(line, " remote=127.0.0.2:") {
		t.Errorf("session end line %q, want remote=127.0.0.2:...", line)
	}
}
