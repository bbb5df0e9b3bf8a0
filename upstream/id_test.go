package upstream_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
	"github.com/pop3gw/gateway/upstream"
)

// idServer is a scripted IMAP server that advertises ID (RFC 2971), as
// Dovecot, Gmail and Exchange do, and records each command line it reads.
type idServer struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func (s *idServer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

func startIDServer(t *testing.T, cfg *tls.Config, implicit bool) *idServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &idServer{addr: ln.Addr().String()}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(nc, cfg, implicit)
		}
	}()
	return s
}

func (s *idServer) serve(nc net.Conn, cfg *tls.Config, implicit bool) {
	defer func() { nc.Close() }()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if implicit {
		nc = tls.Server(nc, cfg)
	}
	caps := "IMAP4rev1 ID AUTH=PLAIN"
	greetingCaps := caps
	if cfg != nil && !implicit {
		greetingCaps += " STARTTLS"
	}
	w := func(lines ...string) { nc.Write([]byte(strings.Join(lines, "\r\n") + "\r\n")) }
	w("* OK [CAPABILITY " + greetingCaps + "] scripted server ready")
	r := bufio.NewReader(nc)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		s.mu.Lock()
		s.seen = append(s.seen, line)
		s.mu.Unlock()
		f := strings.Fields(line)
		if len(f) < 2 {
			w("* BAD no command")
			continue
		}
		tag := f[0]
		switch strings.ToUpper(f[1]) {
		case "CAPABILITY":
			w("* CAPABILITY "+caps, tag+" OK done")
		case "STARTTLS":
			w(tag + " OK begin TLS")
			nc = tls.Server(nc, cfg)
			r = bufio.NewReader(nc)
		case "ID":
			w(`* ID ("name" "scripted")`, tag+" OK ID done")
		case "AUTHENTICATE":
			if len(f) == 3 {
				w("+ ")
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
			}
			w(tag + " OK logged in")
		case "LOGIN":
			w(tag + " OK logged in")
		case "LOGOUT":
			w("* BYE bye", tag+" OK done")
			return
		default:
			w(tag + " BAD not scripted")
		}
	}
}

// TestSendClientIP: with SendClientIP the server gets, before the login,
// IMAP ID (RFC 2971) with the POP3 client's address and port, inside the
// TLS it asked for.
func TestSendClientIP(t *testing.T) {
	client := netip.MustParseAddrPort("[::ffff:203.0.113.9]:40000")
	const wantID = ` ID ("x-originating-ip" "203.0.113.9" "x-originating-port" "40000")`
	p := newPKI(t)
	for _, sec := range []upstream.Security{upstream.SecurityNone, upstream.SecurityImplicit, upstream.SecurityStartTLS} {
		t.Run(string(sec), func(t *testing.T) {
			var cfg *tls.Config
			if sec != upstream.SecurityNone {
				cfg = p.server
			}
			fake := startIDServer(t, cfg, sec == upstream.SecurityImplicit)
			srv := &upstream.Server{Address: fake.addr, Security: sec, Timeout: 5 * time.Second, SendClientIP: true,
				TLSConfig: &tls.Config{RootCAs: p.roots, ServerName: "imap.test"}}
			s, err := upstream.Dial(upstream.WithClient(testCtx(t), client), srv)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer s.Close()
			if err := s.Login(testCtx(t), user, password); err != nil {
				t.Fatalf("Login after ID: %v\n%q", err, fake.lines())
			}
			lines := fake.lines()
			id := slices.IndexFunc(lines, func(l string) bool { return strings.HasSuffix(l, wantID) })
			login := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, " AUTHENTICATE PLAIN") })
			if id < 0 || login < 0 || id > login {
				t.Fatalf("want %q before the login; the server read %q", wantID, lines)
			}
			if starttls := slices.IndexFunc(lines, func(l string) bool { return strings.HasSuffix(l, " STARTTLS") }); sec == upstream.SecurityStartTLS && (starttls < 0 || starttls > id) {
				t.Fatalf("ID not inside STARTTLS: %q", lines)
			}
		})
	}

	// A server that does not advertise ID (imapmem hangs up on unknown
	// commands) gets none, and the login goes on.
	t.Run("no ID capability", func(t *testing.T) {
		var dbg testenv.Buffer
		mem := startMem(t, &imapmem.Options{DebugWriter: &dbg})
		srv := plain(mem.Addr())
		srv.SendClientIP = true
		s, err := upstream.Dial(upstream.WithClient(testCtx(t), client), srv)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		defer s.Close()
		if err := s.Login(testCtx(t), user, password); err != nil {
			t.Fatalf("Login: %v\n%s", err, &dbg)
		}
		if strings.Contains(dbg.String(), " ID ") {
			t.Fatalf("ID sent to a server without it:\n%s", &dbg)
		}
	})

	// Not asked for, or no client known: no ID.
	t.Run("off", func(t *testing.T) {
		fake := startIDServer(t, nil, false)
		for _, tc := range []struct {
			ctx  context.Context
			send bool
		}{{upstream.WithClient(testCtx(t), client), false}, {testCtx(t), true}} {
			srv := plain(fake.addr)
			srv.SendClientIP = tc.send
			s, err := upstream.Dial(tc.ctx, srv)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Login(testCtx(t), user, password); err != nil {
				t.Fatal(err)
			}
			s.Close()
		}
		if slices.ContainsFunc(fake.lines(), func(l string) bool { return strings.Contains(l, " ID ") }) {
			t.Fatalf("ID sent although not asked for: %q", fake.lines())
		}
	})
}
