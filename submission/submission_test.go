package submission

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pop3gw/gateway/internal/proxyproto"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

const sample = "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: scan\r\n\r\nline one\r\n..leading dot\r\n\r\nlast line"

// TestRelayDeliversOnce: a message reaches the upstream once, octet for
// octet (dot-stuffing undone), after a login with the local password.
func TestRelayDeliversOnce(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	ehlo := c.cmd("EHLO device.example", "250-")
	if !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
		t.Errorf("EHLO on loopback = %q, want AUTH PLAIN LOGIN", ehlo)
	}
	c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00SCANNER\x00local")), "235 2.0.0")
	if got := c.send("scanner@example.com", []string{"bob@example.org"}, sample); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA reply %q", got)
	}
	c.cmd("QUIT", "221 ")
	msgs := up.delivered()
	if len(msgs) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(msgs))
	}
	want := strings.Replace(sample, "\r\n..leading", "\r\n.leading", 1) + "\r\n"
	if got := string(msgs[0].body); got != want {
		t.Errorf("delivered %q\nwant      %q", got, want)
	}
	if msgs[0].from != "scanner@example.com" || len(msgs[0].to) != 1 || msgs[0].to[0] != "bob@example.org" {
		t.Errorf("envelope %q -> %q", msgs[0].from, msgs[0].to)
	}
}

// TestLoginRefusals: a wrong local password and an upstream that refuses
// the account's credentials get the same 535, and nothing else is allowed.
func TestLoginRefusals(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	c.cmd("EHLO device.example", "250-")
	c.cmd("MAIL FROM:<alice@example.com>", "530 5.7.0")
	c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00wrong")), "535 5.7.8")

	up.refuseAuth.Store(true) // the upstream now refuses the account
	c = h.dial()
	c.cmd("EHLO device.example", "250-")
	c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6")
	c.cmd(base64.StdEncoding.EncodeToString([]byte("scanner")), "334 UGFzc3dvcmQ6")
	c.cmd(base64.StdEncoding.EncodeToString([]byte("local")), "535 5.7.8 Authentication credentials invalid")
}

// TestSenderRefused: MAIL FROM must be one of the login's addresses.
func TestSenderRefused(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	got := c.cmd("MAIL FROM:<ceo@example.com>", "553 5.7.1")
	if !strings.Contains(got, "rule: allowed senders") {
		t.Errorf("reply %q does not name the rule", got)
	}
	c.cmd("MAIL FROM:<>", "553 5.7.1")
	c.cmd("MAIL FROM:<Alice@Example.COM>", "250 ")
}

// TestTooManyRecipients: RCPT past limits.max_recipients is refused with
// 452 (RFC 5321 §4.5.3.1.10); the message still goes to the others.
func TestTooManyRecipients(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, func(s *Server) { s.MaxRecipients = 2 })
	c := h.dial()
	c.login()
	c.cmd("MAIL FROM:<alice@example.com>", "250 ")
	c.cmd("RCPT TO:<a@example.org>", "250 ")
	c.cmd("RCPT TO:<b@example.org>", "250 ")
	if got := c.cmd("RCPT TO:<c@example.org>", "452 4.5.3"); !strings.Contains(got, "limits.max_recipients") {
		t.Errorf("reply %q does not name the rule", got)
	}
	c.cmd("DATA", "354 ")
	io.WriteString(c.nc, "Subject: x\r\n\r\nx\r\n.\r\n")
	c.expect("250 ")
	if msgs := up.delivered(); len(msgs) != 1 || len(msgs[0].to) != 2 {
		t.Fatalf("delivered %+v", msgs)
	}
}

// TestMessagesPerHour: past limits.messages_per_hour, MAIL gets 450.
func TestMessagesPerHour(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, func(s *Server) { s.MessagesPerHour = 2 })
	c := h.dial()
	c.login()
	for range 2 {
		if got := c.send("alice@example.com", []string{"b@example.org"}, "Subject: x\r\n\r\nx"); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("DATA reply %q", got)
		}
	}
	if got := c.cmd("MAIL FROM:<alice@example.com>", "450 4.7.1"); !strings.Contains(got, "limits.messages_per_hour") {
		t.Errorf("reply %q does not name the rule", got)
	}
	h.srv.rate.now = func() time.Time { return time.Now().Add(time.Hour + time.Second) }
	c.cmd("MAIL FROM:<alice@example.com>", "250 ")
}

// TestUpstreamRepliesCarried: the upstream's refusals at RCPT and after
// DATA reach the client with their code and enhanced code (4xx stays 4xx,
// 5xx stays 5xx), but never with the upstream's text.
func TestUpstreamRepliesCarried(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rcpt, data *smtp.SMTPError
		want       string
	}{
		{"rcpt 4xx", &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "secret upstream text"}, nil, "450 4.2.1"},
		{"rcpt 5xx", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "secret upstream text"}, nil, "550 5.1.1"},
		{"data 4xx", nil, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "secret upstream text"}, "451 4.3.0"},
		{"data 5xx", nil, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "secret upstream text"}, "554 5.6.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newFakeUpstream(t, func(f *fakeUpstream) {
				if tc.rcpt != nil {
					f.rcptErr = func(string) error { return tc.rcpt }
				}
				if tc.data != nil {
					f.dataErr = tc.data
				}
			})
			h := newRelay(t, up, nil)
			c := h.dial()
			c.login()
			c.cmd("MAIL FROM:<alice@example.com>", "250 ")
			var got string
			if tc.rcpt != nil {
				got = c.cmd("RCPT TO:<b@example.org>", tc.want)
			} else {
				c.cmd("RCPT TO:<b@example.org>", "250 ")
				c.cmd("DATA", "354 ")
				io.WriteString(c.nc, "Subject: x\r\n\r\nx\r\n.\r\n")
				got = c.expect(tc.want)
			}
			if strings.Contains(got, "secret") {
				t.Errorf("upstream text reached the client: %q", got)
			}
			if len(up.delivered()) != 0 {
				t.Error("a message was delivered")
			}
			// The session goes on: the next transaction works.
			up.rcptErr, up.dataErr = nil, nil
			c.cmd("RSET", "250 ")
			if got := c.send("alice@example.com", []string{"b@example.org"}, "Subject: y\r\n\r\ny"); !strings.HasPrefix(got, "250 ") {
				t.Fatalf("next transaction: %q", got)
			}
		})
	}
}

// TestUpstreamDropsMidData: an upstream connection lost in the middle of
// the message gives the client a 4xx once it has sent it all, and the
// upstream, which never saw the final ".", delivers nothing.
func TestUpstreamDropsMidData(t *testing.T) {
	up := newFakeUpstream(t, func(f *fakeUpstream) { f.dropAfter = 64 * 1024 })
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	body := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 8*1024)
	if got := c.send("alice@example.com", []string{"b@example.org"}, body); !strings.HasPrefix(got, "451 4.4.2") {
		t.Fatalf("DATA reply %q, want 451 4.4.2", got)
	}
	if n := len(up.delivered()); n != 0 {
		t.Fatalf("%d messages delivered", n)
	}
	// A new upstream connection serves the next message.
	up.dropAfter = 0
	if got := c.send("alice@example.com", []string{"b@example.org"}, "Subject: y\r\n\r\ny"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("next transaction: %q", got)
	}
}

// TestClientDropsMidData: a client gone before the final "." sends
// nothing: the upstream connection is cut before its terminator.
func TestClientDropsMidData(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	c.cmd("MAIL FROM:<alice@example.com>", "250 ")
	c.cmd("RCPT TO:<b@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	io.WriteString(c.nc, "Subject: cut\r\n\r\n"+strings.Repeat(strings.Repeat("x", 98)+"\r\n", 1000))
	testenv.WaitFor(t, func() bool { up.mu.Lock(); defer up.mu.Unlock(); return up.received > 50000 })
	c.nc.Close()
	testenv.WaitFor(t, func() bool { return strings.Contains(h.logs.String(), "message not finished by the client") })
	time.Sleep(100 * time.Millisecond)
	if n := len(up.delivered()); n != 0 {
		t.Fatalf("%d messages delivered", n)
	}
}

// TestSmugglingSequencesRepaired: every end-of-data variant other than
// CRLF.CRLF inside the data, and bare CR and LF, reach the upstream as
// CRLF lines, so a "." line among them goes on dot-stuffed and the
// upstream sees one message whatever line endings it accepts.
func TestSmugglingSequencesRepaired(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	smuggled := "MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil"
	for _, end := range []string{"\n.\n", "\r.\r", "\r\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r", "\n.\r"} {
		c := h.dial()
		c.login()
		body := "Subject: carrier\r\n\r\nbefore" + end + smuggled
		if got := c.send("alice@example.com", []string{"b@example.org"}, body); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("%q: DATA reply %q", end, got)
		}
		c.cmd("QUIT", "221 ")
	}
	msgs := up.delivered()
	if len(msgs) != 7 {
		t.Fatalf("%d messages delivered, want 7", len(msgs))
	}
	for _, m := range msgs {
		if bytes.Contains(bytes.ReplaceAll(m.body, []byte("\r\n"), nil), []byte("\n")) ||
			bytes.Contains(bytes.ReplaceAll(m.body, []byte("\r\n"), nil), []byte("\r")) {
			t.Errorf("a bare CR or LF reached the upstream: %q", m.body)
		}
		if m.from != "alice@example.com" {
			t.Errorf("envelope sender %q", m.from)
		}
	}
}

// TestAuthNeedsTLSBehindBalancer: a client whose address comes from a
// PROXY header is not local, however loopback the header says it is:
// EHLO offers no AUTH, AUTH gets 530 (RFC 3207 §4), and after STARTTLS the
// login works.
func TestAuthNeedsTLSBehindBalancer(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	srv := &Server{Backend: h.srv.Backend, Logger: h.srv.Logger, TLSConfig: testenv.ServerTLS(t, "127.0.0.1"), CanonicalName: strings.ToLower}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(proxyproto.Wrap(ln, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, 2*time.Second))
	t.Cleanup(func() { srv.Shutdown(context.Background()) })

	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "PROXY TCP4 127.0.0.1 127.0.0.1 40000 587\r\n")
	c := &rawClient{t: t, nc: nc}
	c.r = newReader(nc)
	c.expect("220 ")
	ehlo := c.cmd("EHLO device.example", "250-")
	if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO behind a balancer without TLS = %q", ehlo)
	}
	c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00local")), "530 5.7.0")
	c.cmd("STARTTLS", "220 ")
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
	c.nc, c.r = tc, newReader(tc)
	if ehlo := c.cmd("EHLO device.example", "250-"); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
		t.Fatalf("EHLO after STARTTLS = %q", ehlo)
	}
	c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00local")), "235 ")
}

// TestMessageStreams: the upstream receives the start of a 50 MiB message
// (8 MiB under the race detector)
// before the client has sent the rest, so the relay never holds it
// whole; the whole message arrives once.
func TestMessageStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB")
	}
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	c.cmd("MAIL FROM:<alice@example.com>", "250 ")
	c.cmd("RCPT TO:<b@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	line := strings.Repeat("y", 1022) + "\r\n"
	chunk := strings.Repeat(line, 1024) // 1 MiB
	chunks := 50
	if raceEnabled {
		chunks = 8
	}
	c.nc.SetDeadline(time.Now().Add(2 * time.Minute))
	io.WriteString(c.nc, "Subject: big\r\n\r\n")
	for i := range chunks {
		if _, err := io.WriteString(c.nc, chunk); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			// Until the upstream has most of the first MiB, the rest is
			// held back: a relay that read the message whole first would
			// never get there.
			testenv.WaitFor(t, func() bool { up.mu.Lock(); defer up.mu.Unlock(); return up.received >= 1<<20 })
		}
	}
	io.WriteString(c.nc, ".\r\n")
	c.expect("250 ")
	msgs := up.delivered()
	if len(msgs) != 1 || len(msgs[0].body) != len("Subject: big\r\n\r\n")+chunks*len(chunk) {
		t.Fatalf("delivered %d messages", len(msgs))
	}
}

// TestUpstreamSizeEnforced: a message larger than the upstream's SIZE is
// refused at MAIL when announced, and cut off (nothing delivered) when
// not.
func TestUpstreamSizeEnforced(t *testing.T) {
	up := newFakeUpstream(t, func(f *fakeUpstream) { f.sizeLimit = 1000 })
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	c.cmd("MAIL FROM:<alice@example.com> SIZE=5000", "552 5.3.4")
	if got := c.send("alice@example.com", []string{"b@example.org"}, "Subject: x\r\n\r\n"+strings.Repeat("z\r\n", 1000)); !strings.HasPrefix(got, "552 5.3.4") {
		t.Fatalf("DATA reply %q", got)
	}
	if len(up.delivered()) != 0 {
		t.Fatal("delivered")
	}
}

// TestCapabilitiesFromUpstreams: EHLO offers the least SIZE of the
// upstreams and SMTPUTF8 only when all have it, and an upstream that
// cannot be asked leaves the least of all.
func TestCapabilitiesFromUpstreams(t *testing.T) {
	a := newFakeUpstream(t, func(f *fakeUpstream) { f.sizeLimit = 5000; f.smtputf8 = true })
	b := newFakeUpstream(t, func(f *fakeUpstream) { f.sizeLimit = 3000; f.smtputf8 = true })
	c := newFakeUpstream(t, func(f *fakeUpstream) { f.sizeLimit = 9000 })
	up := func(f *fakeUpstream) *Upstream {
		return &Upstream{Name: f.addr, Address: f.addr, Security: SecurityNone, Timeout: 5 * time.Second}
	}
	ctx := context.Background()
	caps, err := Probe(ctx, []*Upstream{up(a), up(b)})
	if err != nil || caps != (Capabilities{Size: 3000, SMTPUTF8: true}) {
		t.Errorf("a, b: %+v, %v", caps, err)
	}
	caps, err = Probe(ctx, []*Upstream{up(a), up(c)})
	if err != nil || caps != (Capabilities{Size: 5000}) {
		t.Errorf("a, c: %+v, %v", caps, err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	if caps, err := Probe(ctx, []*Upstream{up(a), {Name: "dead", Address: dead, Security: SecurityNone}}); err == nil || caps != (Capabilities{}) {
		t.Errorf("with an unreachable upstream: %+v, %v", caps, err)
	}

	h := newRelay(t, a, func(s *Server) { s.Capabilities = Capabilities{Size: 3000, SMTPUTF8: true} })
	if ehlo := h.dial().cmd("EHLO device.example", "250-"); !strings.Contains(ehlo, "SIZE 3000") || !strings.Contains(ehlo, "SMTPUTF8") {
		t.Errorf("EHLO = %q", ehlo)
	}
	h = newRelay(t, a, nil)
	if ehlo := h.dial().cmd("EHLO device.example", "250-"); strings.Contains(ehlo, "SIZE 3000") || strings.Contains(ehlo, "SMTPUTF8") {
		t.Errorf("EHLO without capabilities = %q", ehlo)
	}
}

// TestSlowDeviceOverImplicitTLS: the idle timeout bounds each silence in
// DATA under TLS too (the deadline is renewed below the TLS layer): a
// message sent in pieces over several idle timeouts is relayed once, and
// a device that stops halfway gets 451 4.4.2 and nothing is relayed.
func TestSlowDeviceOverImplicitTLS(t *testing.T) {
	const idle = 300 * time.Millisecond
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	srv := &Server{Backend: h.srv.Backend, Logger: h.srv.Logger, TLSConfig: testenv.ServerTLS(t, "127.0.0.1"),
		CanonicalName: strings.ToLower, IdleTimeout: idle}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	dial := func() *rawClient {
		nc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		nc.SetDeadline(time.Now().Add(20 * time.Second))
		c := &rawClient{t: t, nc: nc, r: newReader(nc)}
		c.expect("220 ")
		c.login()
		c.cmd("MAIL FROM:<alice@example.com>", "250 ")
		c.cmd("RCPT TO:<b@example.org>", "250 ")
		c.cmd("DATA", "354 ")
		return c
	}
	body := "Subject: slow\r\n\r\n" + strings.Repeat("a line of the slow message\r\n", 10)
	c := dial()
	c.drip(body, idle)

	c = dial()
	io.WriteString(c.nc, body[:len(body)/2])
	if got := c.reply(); !strings.HasPrefix(got, "451 4.4.2 ") {
		t.Fatalf("stalled device: %q, want 451 4.4.2", got)
	}
	if msgs := up.delivered(); len(msgs) != 1 || !strings.Contains(string(msgs[0].body), "Subject: slow") {
		t.Fatalf("relayed %d messages, want the slow one once", len(msgs))
	}
}

// TestUpstreamTLS: over STARTTLS and implicit TLS to the upstream, a
// message reaches it under TLS octet for octet, the body written to the
// TLS connection by the relay itself; one larger than a copy buffer too.
func TestUpstreamTLS(t *testing.T) {
	big := sample + "\r\n" + strings.Repeat("..a line that starts with a dot, stuffed by the client\r\n", 2000) + "end"
	for _, implicit := range []bool{false, true} {
		t.Run(map[bool]string{false: "starttls", true: "implicit"}[implicit], func(t *testing.T) {
			ca := testenv.NewCA(t)
			leaf := ca.Issue(t, "127.0.0.1")
			up := newFakeUpstream(t, func(f *fakeUpstream) {
				f.tls = &tls.Config{Certificates: []tls.Certificate{leaf.TLS}, MinVersion: tls.VersionTLS12}
				f.implicit, f.roots = implicit, ca.Pool()
			})
			h := newRelay(t, up, nil)
			c := h.dial()
			c.login()
			for _, body := range []string{sample, big} {
				if got := c.send("scanner@example.com", []string{"bob@example.org"}, body); !strings.HasPrefix(got, "250 ") {
					t.Fatalf("DATA reply %q", got)
				}
			}
			c.cmd("QUIT", "221 ")
			msgs := up.delivered()
			if len(msgs) != 2 {
				t.Fatalf("%d messages delivered, want 2", len(msgs))
			}
			for i, body := range []string{sample, big} {
				want := strings.ReplaceAll(body, "\r\n..", "\r\n.") + "\r\n"
				if got := string(msgs[i].body); got != want {
					t.Errorf("message %d: delivered %d octets, want %d: %q...", i, len(got), len(want), got[:min(len(got), 200)])
				}
				if !msgs[i].tls {
					t.Errorf("message %d delivered without TLS", i)
				}
			}
		})
	}
}

// TestUpstreamSTARTTLSInjection: a reply sent with the upstream's 220 to
// STARTTLS, before the handshake, could come from a man in the middle:
// the relay does not take it, it gives up on that upstream.
func TestUpstreamSTARTTLSInjection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(nc)
		io.WriteString(nc, "220 upstream ESMTP\r\n")
		r.ReadString('\n') // EHLO
		io.WriteString(nc, "250-upstream\r\n250 STARTTLS\r\n")
		r.ReadString('\n') // STARTTLS
		io.WriteString(nc, "220 2.0.0 Ready\r\n250 2.0.0 injected\r\n")
		r.ReadString('\n')
	}()
	u := &Upstream{Name: "mitm", Address: ln.Addr().String(), Security: SecurityStartTLS, Timeout: 5 * time.Second}
	uc, err := u.connect(context.Background())
	if err == nil {
		uc.Close()
		t.Fatal("connected through a STARTTLS reply with data after it")
	}
	if !strings.Contains(err.Error(), "before the TLS handshake") {
		t.Errorf("error %v, want data before the TLS handshake", err)
	}
}

// TestSTARTTLSInjection: commands sent in the same packet as STARTTLS,
// before the handshake, are discarded (RFC 3207 §4.2, CVE-2011-0411):
// an injected AUTH does not log the TLS session in, and no reply to it
// comes after the handshake.
func TestSTARTTLSInjection(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, func(s *Server) { s.TLSConfig = testenv.ServerTLS(t, "127.0.0.1") })
	c := h.dial()
	c.cmd("EHLO device.example", "250-")
	io.WriteString(c.nc, "STARTTLS\r\nAUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00scanner\x00local"))+"\r\n")
	c.expect("220 ")
	tc := tls.Client(c.nc, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake after STARTTLS: %v", err)
	}
	c.nc, c.r = tc, newReader(tc)
	c.cmd("EHLO device.example", "250-") // a reply to the injected AUTH would come first
	c.cmd("MAIL FROM:<alice@example.com>", "530 5.7.0")
}

// TestLongLineRefused: a message with a line longer than go-smtp's limit
// (2000 octets) is refused for good, not with a 4xx a device would retry
// forever; nothing is sent, and the connection is closed.
func TestLongLineRefused(t *testing.T) {
	up := newFakeUpstream(t, nil)
	h := newRelay(t, up, nil)
	c := h.dial()
	c.login()
	reply := c.send("alice@example.com", []string{"b@example.org"}, "Subject: x\r\n\r\n"+strings.Repeat("<p>html</p>", 250)+"\r\nend")
	if !strings.HasPrefix(reply, "554 5.6.0 ") {
		t.Fatalf("reply %q, want 554 5.6.0", reply)
	}
	if n := len(up.delivered()); n != 0 {
		t.Fatalf("%d messages upstream", n)
	}
	c.cmd("QUIT", "500 ")
}
