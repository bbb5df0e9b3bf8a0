package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// On Dovecot, after one new message and after one expunge by another
// client, the gateway's next session lists from its last listing and the
// changes: STAT, LIST and UIDL equal, byte for byte, those of a new
// gateway sharing the state store, which lists every message, and those
// of Dovecot's own pop3d; the gateway never lists every message again,
// and Dovecot sends one message's listing item for the new message and
// none for an expunge. Copies of one message are told apart by rank (see
// proxy's identities): when the first copy goes, the next takes its UIDL,
// which pop3d does not do, so there only the full listing is the
// reference.
func TestListingAfterChangeMatchesDovecot(t *testing.T) {
	dc := dovecottest.Start(t, map[string]string{"poll": "poll-pass"})
	var msgs [][]byte
	for i := range 40 {
		msgs = append(msgs, fmt.Appendf(nil, "Message-ID: <%d@example.com>\nSubject: %d\n\nbody %d\n", i, i, i))
	}
	copyOf := []byte("Subject: a copy\n\nthe same\n")
	msgs = append(msgs, copyOf, copyOf)
	dc.Deliver(t, "poll", msgs...)

	counter := newListingCounter(t, dc.IMAPAddr())
	var ops sync.Map // op -> *atomic.Int64
	observe := func(op string, _ time.Duration, _ error) {
		n, _ := ops.LoadOrStore(op, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	opCount := func(op string) int64 {
		if n, ok := ops.Load(op); ok {
			return n.(*atomic.Int64).Load()
		}
		return 0
	}
	state := proxy.NewMemoryState()
	gw := startObservedGateway(t, counter.Addr(), state, observe)

	cmds := []string{"STAT", "LIST", "UIDL"}
	step := func(name string, wantSizes int64, asPOP3d bool) {
		t.Helper()
		lists, sizes := opCount("list"), counter.sizes.Load()
		got := transcript(t, gw, "poll", "poll-pass", cmds)
		if n := opCount("list") - lists; n != 0 {
			t.Errorf("%s: the gateway listed every message %d times", name, n)
		}
		if n := counter.sizes.Load() - sizes; n != wantSizes {
			t.Errorf("%s: Dovecot sent %d listing items; want %d", name, n, wantSizes)
		}
		full := transcript(t, startObservedGateway(t, dc.IMAPAddr(), state, nil), "poll", "poll-pass", cmds)
		var pop3d [][]byte
		if asPOP3d {
			pop3d = transcript(t, dc.POP3Addr(), "poll", "poll-pass", cmds)
		}
		for i, cmd := range cmds {
			if !bytes.Equal(full[i], got[i]) {
				t.Errorf("%s: %s differs from listing every message %s", name, cmd, firstDifference(full[i], got[i]))
			}
			if asPOP3d && !bytes.Equal(pop3d[i], got[i]) {
				t.Errorf("%s: %s differs from pop3d %s", name, cmd, firstDifference(pop3d[i], got[i]))
			}
		}
	}
	transcript(t, gw, "poll", "poll-pass", cmds)
	if n := opCount("list"); n != 1 {
		t.Fatalf("the first session listed every message %d times", n)
	}
	step("unchanged", 0, true)
	dc.Deliver(t, "poll", copyOf)
	step("one new message", 1, true)

	c, err := imapclient.DialInsecure(dc.IMAPAddr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("poll", "poll-pass").Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	expunge := func(seq uint32) {
		t.Helper()
		if err := c.Store(imap.SeqSetNum(seq), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Expunge().Close(); err != nil {
			t.Fatal(err)
		}
	}
	expunge(5)
	step("one expunge", 0, true)
	expunge(40) // the first copy: the later ones move up a rank
	step("the first copy expunged", 0, false)
	if n := opCount("list-changes"); n != 3 {
		t.Errorf("the gateway listed changes %d times; want 3", n)
	}
}

// startObservedGateway is startGateway with on_delete keep, the given
// state store and the upstream's operations reported to observe.
func startObservedGateway(t *testing.T, imapAddr string, state proxy.StateStore, observe func(string, time.Duration, error)) string {
	t.Helper()
	up := &proxy.Upstream{
		Name:     "dovecot",
		Server:   upstream.Server{Address: imapAddr, Security: upstream.SecurityNone, Timeout: 30 * time.Second, Observe: observe},
		Mailbox:  "INBOX",
		OnDelete: upstream.DeleteKeep,
	}
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	gw := proxy.New(&proxy.Config{
		Upstreams:   map[string]*proxy.Upstream{"dovecot": up},
		Passthrough: &proxy.Passthrough{Upstream: "dovecot"},
	}, cache.New(64<<20, 4<<20), log)
	gw.SetState(state)
	srv := &pop3.Server{Backend: gw, Logger: log}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		gw.Close()
	})
	return ln.Addr().String()
}

// listingCounter passes IMAP through and counts the RFC822.SIZE items
// the server sends: one per message listed.
type listingCounter struct {
	ln     net.Listener
	target string
	sizes  atomic.Int64
}

func newListingCounter(t *testing.T, target string) *listingCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &listingCounter{ln: ln, target: target}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			go func() {
				defer server.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := client.Read(buf)
					server.Write(buf[:n])
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer client.Close()
				token := []byte("RFC822.SIZE ")
				var tail []byte
				buf := make([]byte, 32<<10)
				for {
					n, err := server.Read(buf)
					data := append(tail, buf[:n]...)
					p.sizes.Add(int64(bytes.Count(data, token)))
					tail = append(tail[:0:0], data[len(data)-min(len(token)-1, len(data)):]...)
					if _, werr := client.Write(buf[:n]); werr != nil || err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *listingCounter) Addr() string { return p.ln.Addr().String() }
