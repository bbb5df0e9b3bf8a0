package submission

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pop3gw/gateway/internal/testkit/faultproxy"
	"github.com/pop3gw/gateway/internal/testkit/leakcheck"
	"github.com/pop3gw/gateway/internal/testkit/postfix"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// The relay's fault matrix: a real Postfix behind a fault proxy (the
// upstream side), a device that speaks through another (the client side),
// and go-smtp's client as the device. Each row breaks one step of one
// transaction and checks what the device was told, what Postfix delivered
// (never a truncated message, never one twice), that the next message on
// a new connection is delivered once, and that the relay's goroutines and
// descriptors are back to what they were before the row.
//
// Rows covered elsewhere: a client or upstream cut against go-smtp's own
// server (TestClientDropsMidData, TestUpstreamDropsMidData), and the same
// upstream cut through the whole gateway (integration TestRelay,
// UpstreamDropsMidData).

const (
	faultUpstreamUser = "alice@example.com"
	faultUpstreamPass = "alice-upstream"
	// faultIdle is the relay's idle timeout in the matrix: short, so that
	// a stalled device is cut off within the test, and shorter than the
	// slow device's DATA, which must not be.
	faultIdle = time.Second
	// faultUpstreamTimeout is the relay's wait for Postfix.
	faultUpstreamTimeout = 5 * time.Second
)

// faultRig is one row's relay: device -> dev proxy -> relay -> up proxy
// -> Postfix.
type faultRig struct {
	pf   *postfix.Instance
	up   *faultproxy.Proxy
	dev  *faultproxy.Proxy
	srv  *Server
	logs *syncBuffer
	base int // messages Postfix had delivered before the row
	leak leakcheck.Baseline
	// devices are the row's client connections, closed before the leak
	// check.
	devices []*smtp.Client
}

func startFaultPostfix(t *testing.T) *postfix.Instance {
	t.Helper()
	pf, err := postfix.Start(postfix.Options{Users: map[string]string{faultUpstreamUser: faultUpstreamPass}})
	switch {
	case errors.Is(err, postfix.ErrNotInstalled), errors.Is(err, postfix.ErrNotRoot):
		// CI runs as root with every package installed: there this fails.
		testenv.Missing(t, err.Error())
	case err != nil:
		t.Fatal(err)
	}
	t.Cleanup(pf.Stop)
	return pf
}

func newFaultRig(t *testing.T, pf *postfix.Instance) *faultRig {
	t.Helper()
	r := &faultRig{pf: pf, logs: &syncBuffer{}}
	r.base = len(r.delivered(t))
	r.up = faultproxy.Start(t, pf.Addr())
	upstream := &Upstream{Name: "postfix", Address: r.up.Addr(), Security: SecurityNone, Timeout: faultUpstreamTimeout}
	r.srv = &Server{
		Backend: backendFunc(func(_ context.Context, l *LoginInfo) (*Account, error) {
			if l.Key != "scanner" || l.Password != "local" {
				return nil, ErrAuthFailed
			}
			return &Account{Key: "postfix/alice", Upstream: upstream, Username: faultUpstreamUser, Password: faultUpstreamPass,
				Senders: []string{faultUpstreamUser}}, nil
		}),
		Logger:        slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		CanonicalName: strings.ToLower,
		IdleTimeout:   faultIdle,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { r.srv.Serve(ln); close(served) }()
	r.dev = faultproxy.Start(t, ln.Addr().String())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.srv.Shutdown(ctx)
		<-served
		if t.Failed() {
			t.Logf("relay log:\n%s\npostfix log:\n%s", r.logs, pf.Log())
		}
	})
	r.leak = leakcheck.Take()
	return r
}

// delivered is every message Postfix delivered so far, once its queue is
// empty, without the Received line it adds and with CRLF line endings
// again.
func (r *faultRig) delivered(t *testing.T) []string {
	t.Helper()
	r.pf.Flush(20 * time.Second)
	msgs, err := r.pf.Messages()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(msgs))
	for i, m := range msgs {
		s := string(m)
		if !strings.HasPrefix(s, "Received: ") {
			t.Fatalf("delivered message without a Received line first: %q", s[:min(len(s), 200)])
		}
		j := strings.Index(s, "\n")
		for j >= 0 && j+1 < len(s) && (s[j+1] == ' ' || s[j+1] == '\t') {
			j += 1 + strings.Index(s[j+1:], "\n")
		}
		out[i] = strings.ReplaceAll(s[j+1:], "\n", "\r\n")
	}
	return out
}

// since is what Postfix delivered during the row.
func (r *faultRig) since(t *testing.T) []string {
	t.Helper()
	return r.delivered(t)[r.base:]
}

// device logs in to the relay through the device-side proxy.
func (r *faultRig) device(t *testing.T) (*smtp.Client, error) {
	t.Helper()
	c, err := smtp.Dial(r.dev.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r.devices = append(r.devices, c)
	return c, c.Auth(sasl.NewPlainClient("", "scanner", "local"))
}

// send runs one transaction; inData is called once DATA has been
// accepted, and again with half the message written.
func send(c *smtp.Client, msg string, inData func(half bool)) error {
	if err := c.Mail(faultUpstreamUser, nil); err != nil {
		return err
	}
	if err := c.Rcpt("bob@example.org", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if inData != nil {
		inData(false)
	}
	half := len(msg) / 2
	_, err = io.WriteString(w, msg[:half])
	if inData != nil {
		inData(true)
	}
	if err == nil {
		_, err = io.WriteString(w, msg[half:])
	}
	if cerr := w.Close(); err == nil || isSMTPError(cerr) {
		err = cerr
	}
	return err
}

// faultMessage is a message of about size octets, CRLF lines, named by id.
func faultMessage(id string, size int) string {
	head := "From: alice@example.com\r\nTo: bob@example.org\r\nMessage-ID: <" + id + "@example.com>\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\nSubject: " + id +
		"\r\n\r\nfirst line\r\n.leading dot\r\n"
	var b strings.Builder
	b.WriteString(head)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%s line %05d %s\r\n", id, i, strings.Repeat("x", 60))
	}
	b.WriteString("end\r\n")
	return b.String()
}

// wantReply checks the device's reply: its code, enhanced code and, if
// text is set, words of it.
func wantReply(t *testing.T, what string, err error, code int, ec smtp.EnhancedCode, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: %v, want %d %v", what, err, code, ec)
	}
	if se.Code != code || se.EnhancedCode != ec || !strings.Contains(se.Message, text) {
		t.Errorf("%s: %d %v %q, want %d %v %q", what, se.Code, se.EnhancedCode, se.Message, code, ec, text)
	}
}

// finish sends the next message on a new connection with no fault armed,
// checks that Postfix delivered exactly want and then that message, each
// once and whole, and that the relay's goroutines and descriptors came
// back to the row's baseline.
func (r *faultRig) finish(t *testing.T, want ...string) {
	t.Helper()
	r.up.Down(false)
	next := faultMessage(fmt.Sprintf("next-%d", time.Now().UnixNano()), 2<<10)
	c, err := r.device(t)
	if err != nil {
		t.Fatalf("the next connection's AUTH: %v", err)
	}
	if err := send(c, next, nil); err != nil {
		t.Fatalf("the next message: %v", err)
	}
	c.Quit()
	for _, d := range r.devices {
		d.Close()
	}
	want = append(want, next)
	got := r.since(t)
	// Postfix's deliveries may finish in any order.
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Postfix delivered %d messages, want %d:", len(got), len(want))
		for _, m := range got {
			t.Errorf("  delivered %d octets: %q...", len(m), m[:min(len(m), 120)])
		}
		for _, m := range want {
			t.Errorf("  wanted %d octets: %q...", len(m), m[:min(len(m), 120)])
		}
	}
	r.leak.Check(t)
}

// TestRelayFaults runs the relay's fault matrix against one Postfix.
func TestRelayFaults(t *testing.T) {
	pf := startFaultPostfix(t)
	for _, row := range []struct {
		name string
		run  func(t *testing.T, r *faultRig)
	}{
		// The upstream side.
		{"UpstreamDownAtConnect", func(t *testing.T, r *faultRig) {
			r.up.Down(true)
			_, err := r.device(t)
			wantReply(t, "AUTH", err, 454, smtp.EnhancedCode{4, 7, 0}, "")
			r.finish(t)
		}},
		{"UpstreamResetAtAuth", func(t *testing.T, r *faultRig) {
			r.up.ResetOnCommand([]byte("AUTH "))
			_, err := r.device(t)
			wantReply(t, "AUTH", err, 454, smtp.EnhancedCode{4, 7, 0}, "")
			r.finish(t)
		}},
		{"UpstreamResetOnceAtMail", func(t *testing.T, r *faultRig) {
			// The relay takes a lost upstream connection for one the
			// upstream closed while idle and opens one more: the device
			// never knows.
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			r.up.ResetOnCommand([]byte("MAIL FROM"))
			msg := faultMessage("mail-once", 4<<10)
			if err := send(c, msg, nil); err != nil {
				t.Fatalf("DATA: %v, want it delivered on a new upstream connection", err)
			}
			if r.up.Fired() != 1 {
				t.Fatalf("the reset did not fire")
			}
			r.finish(t, msg)
		}},
		{"UpstreamGoneAtMail", func(t *testing.T, r *faultRig) {
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			r.up.ResetOnCommand([]byte("MAIL FROM"))
			r.up.Down(true)
			err = send(c, faultMessage("mail-gone", 4<<10), nil)
			wantReply(t, "MAIL", err, 451, smtp.EnhancedCode{4, 4, 2}, "nothing was sent")
			r.finish(t)
		}},
		{"UpstreamGoneAtRcpt", func(t *testing.T, r *faultRig) {
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			r.up.ResetOnCommand([]byte("RCPT TO"))
			err = send(c, faultMessage("rcpt-gone", 4<<10), nil)
			wantReply(t, "RCPT", err, 451, smtp.EnhancedCode{4, 4, 2}, "nothing was sent")
			r.finish(t)
		}},
		{"UpstreamCutMidData", func(t *testing.T, r *faultRig) {
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			msg := faultMessage("data-cut", 256<<10)
			err = send(c, msg, func(half bool) {
				if !half {
					// Counted from here: the middle of the body.
					r.up.CutClientAfter(int64(len(msg) / 2))
				}
			})
			// Whether the relay wrote the final "." before it learnt of
			// the cut depends on the socket buffers, so it may only say
			// that the message may not have been sent; Postfix, which got
			// no terminator, delivers nothing either way.
			wantReply(t, "DATA", err, 451, smtp.EnhancedCode{4, 4, 2}, "")
			if r.up.Fired() != 1 {
				t.Fatalf("the cut did not fire")
			}
			r.finish(t)
		}},
		{"UpstreamSilentAfterFinalDot", func(t *testing.T, r *faultRig) {
			// Postfix has the whole message and queues it; its reply
			// never reaches the relay. Without a spool the relay cannot
			// know: the device is told it may not have been sent, and
			// Postfix delivers it once.
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			msg := faultMessage("final-dot", 16<<10)
			err = send(c, msg, func(half bool) {
				if !half {
					r.up.ResetAfterCommand([]byte("\r\n.\r\n"))
				}
			})
			wantReply(t, "DATA", err, 451, smtp.EnhancedCode{4, 4, 2}, "may not have been sent")
			if r.up.Fired() != 1 {
				t.Fatalf("the reset did not fire")
			}
			r.finish(t, msg)
		}},
		{"UpstreamStallsAfterFinalDot", func(t *testing.T, r *faultRig) {
			// The same, but Postfix's reply is held rather than the
			// connection reset: the relay's upstream timeout ends the
			// wait.
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var seen []byte
			watching := true
			r.up.Watch(func(toServer bool, chunk []byte) {
				mu.Lock()
				defer mu.Unlock()
				if !toServer || !watching {
					return
				}
				seen = append(seen[max(0, len(seen)-4):], chunk...)
				if strings.HasSuffix(string(seen), "\r\n.\r\n") {
					r.up.Stall(true)
				}
			})
			msg := faultMessage("final-dot-stall", 16<<10)
			start := time.Now()
			err = send(c, msg, nil)
			wantReply(t, "DATA", err, 451, smtp.EnhancedCode{4, 4, 2}, "may not have been sent")
			if d := time.Since(start); d < faultUpstreamTimeout {
				t.Errorf("answered after %v, before the upstream timeout (%v)", d, faultUpstreamTimeout)
			}
			mu.Lock()
			watching = false
			mu.Unlock()
			r.up.Stall(false)
			r.finish(t, msg)
		}},
		// The device side.
		{"DeviceDropsMidData", func(t *testing.T, r *faultRig) {
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			msg := faultMessage("device-drop", 256<<10)
			err = send(c, msg, func(half bool) {
				if !half {
					r.dev.CutClientAfter(int64(len(msg) / 2))
				}
			})
			if err == nil {
				t.Fatal("DATA accepted from a device cut off mid-message")
			}
			testenv.WaitFor(t, func() bool { return strings.Contains(r.logs.String(), "message not finished by the client") })
			r.finish(t)
		}},
		{"DeviceStallsMidData", func(t *testing.T, r *faultRig) {
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			msg := faultMessage("device-stall", 64<<10)
			var stalled time.Time
			err = send(c, msg, func(half bool) {
				if half {
					r.dev.StallCommands(true)
					stalled = time.Now()
				}
			})
			// The relay gives up after its idle timeout and says so; a
			// device stalled for good never reads it, one that comes back
			// reads a temporary failure, never a 5xx.
			wantReply(t, "DATA", err, 451, smtp.EnhancedCode{4, 4, 2}, "nothing was sent")
			if d := time.Since(stalled); d < faultIdle/2 {
				t.Errorf("cut off %v after the stall, before the idle timeout (%v)", d, faultIdle)
			}
			if !strings.Contains(r.logs.String(), "message not finished by the client") {
				t.Errorf("the relay did not log the unfinished message")
			}
			r.dev.StallCommands(false)
			r.finish(t)
		}},
		{"DeviceDripsSlowly", func(t *testing.T, r *faultRig) {
			// 256 octets every 100 ms: the message takes about three idle
			// timeouts, each read well within one.
			r.dev.Drip(256, 100*time.Millisecond)
			c, err := r.device(t)
			if err != nil {
				t.Fatal(err)
			}
			msg := faultMessage("drip", 6<<10)
			start := time.Now()
			if err := send(c, msg, nil); err != nil {
				t.Fatalf("DATA: %v", err)
			}
			if d := time.Since(start); d < 2*faultIdle {
				t.Fatalf("the transaction took %v, not longer than the idle timeout: the test proves nothing", d)
			}
			c.Quit()
			r.dev.Drip(0, 0)
			r.finish(t, msg)
		}},
	} {
		t.Run(row.name, func(t *testing.T) { row.run(t, newFaultRig(t, pf)) })
	}
}
