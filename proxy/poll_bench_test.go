package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/state/redisstate"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/redistest"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

// BenchmarkPollAfterChange is the gateway's own part of the bench's
// change rows: a poller's session (login, UIDL, QUIT) after one new
// message or one expunge, on a mailbox of 10,000 and 200,000 messages, in
// front of a store that answers at once and lists its changes as the IMAP
// store does (new messages from UIDNEXT on, and after an expunge a Kept
// predicate over the UIDs present). In the fetched rows the poller also
// downloads the new message, as most do, which the next poll must not pay
// for message by message. What grows from 10k to 200k is the gateway's
// work and the UIDL reply's octets.
func BenchmarkPollAfterChange(b *testing.B) {
	for _, n := range []int{10_000, 200_000} {
		for _, kind := range []string{"new", "expunge", "fetched"} {
			b.Run(fmt.Sprintf("%s-%dk", kind, n/1000), func(b *testing.B) {
				benchPollAfterChange(b, n, kind, nil)
			})
		}
	}
}

// BenchmarkPollAfterChangeRedis is BenchmarkPollAfterChange's new rows
// with the UIDL store in Redis, as replicas share it: a login asks Redis
// for the new messages only, while no replica wrote the maildrop's state
// since (proxy.GenerationStore).
func BenchmarkPollAfterChangeRedis(b *testing.B) {
	addr := redistest.Start(b)
	for i, n := range []int{10_000, 200_000} {
		b.Run(fmt.Sprintf("new-%dk", n/1000), func(b *testing.B) {
			s, err := redisstate.New(context.Background(), redisstate.Options{Addr: addr, KeyPrefix: fmt.Sprintf("b%d:", i)})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			benchPollAfterChange(b, n, "new", s)
		})
	}
}

// benchPollAfterChange times polls after each change of kind, with the
// state store state (nil: the gateway's own, in memory).
func benchPollAfterChange(b *testing.B, n int, kind string, state proxy.StateStore) {
	store := newUIDStore(n)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := &proxy.Config{
		Upstreams: map[string]*proxy.Upstream{
			"uids": {Name: "uids", Store: store, Mailbox: "INBOX", OnDelete: upstream.DeleteKeep},
		},
		Passthrough: &proxy.Passthrough{Upstream: "uids"},
	}
	gw := proxy.New(cfg, cache.New(256<<20, 16<<20), log)
	// The budget of a gateway whose file sets no cache.in_flight, which
	// bounds the listings it remembers too.
	gw.SetBudget(cache.NewBudget(128 << 20))
	if state != nil {
		gw.SetState(state)
	}
	srv := &pop3.Server{Backend: gw, Logger: log}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		gw.Close()
	}()
	poll := func() {
		c, err := pop3client.Dial(ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Login("poller", "secret"); err != nil {
			b.Fatal(err)
		}
		if _, err := c.OK("UIDL"); err != nil {
			b.Fatal(err)
		}
		if _, err := c.DiscardMulti(); err != nil {
			b.Fatal(err)
		}
		if kind == "fetched" {
			count, _, err := c.Stat()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Retr(count); err != nil {
				b.Fatal(err)
			}
		}
		if err := c.Quit(); err != nil {
			b.Fatal(err)
		}
	}
	poll()
	for b.Loop() {
		b.StopTimer()
		if kind != "expunge" {
			store.add()
		} else {
			store.expunge()
		}
		b.StartTimer()
		poll()
	}
}

// uidStore is one mailbox of messages named by increasing UIDs, which
// lists its changes at the cost of the changes, as an IMAP server with
// ESEARCH does.
type uidStore struct {
	mu      sync.Mutex
	uids    []uint32 // present, increasing
	uidNext uint32
}

func newUIDStore(n int) *uidStore {
	s := &uidStore{uidNext: 1}
	for range n {
		s.add()
	}
	return s
}

func (s *uidStore) add() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.uids = append(s.uids, s.uidNext)
	s.uidNext++
}

// expunge removes the first message, as the bench's other client does.
func (s *uidStore) expunge() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.uids = append(s.uids[:0:0], s.uids[1:]...)
}

func (s *uidStore) state() upstream.Mailbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	return upstream.Mailbox{Name: "INBOX", Epoch: "1", State: fmt.Sprintf("%d/%d", s.uidNext, len(s.uids)), Messages: len(s.uids)}
}

func (s *uidStore) entry(uid uint32) upstream.Entry {
	return upstream.Entry{
		ID: upstream.ID(strconv.FormatUint(uint64(uid), 10)), UIDL: upstream.DovecotUIDL(1, uid), Size: 1100,
		MessageID: fmt.Sprintf("<%d@bench>", uid), InternalDate: time.Unix(1_700_000_000+int64(uid), 0),
	}
}

func (s *uidStore) Login(ctx context.Context, login proxy.StoreLogin) (proxy.Session, error) {
	if login.Password != "secret" {
		return nil, upstream.ErrAuthFailed
	}
	return &uidSession{store: s, info: s.state()}, nil
}

type uidSession struct {
	store  *uidStore
	info   upstream.Mailbox
	closed bool
}

func (c *uidSession) Refresh(context.Context) (upstream.Mailbox, error) {
	c.info = c.store.state()
	return c.info, nil
}

func (c *uidSession) Selected() upstream.Mailbox { return c.info }

func (c *uidSession) Snapshot(context.Context) ([]upstream.Entry, error) {
	c.store.mu.Lock()
	uids := c.store.uids
	c.store.mu.Unlock()
	entries := make([]upstream.Entry, len(uids))
	for i, uid := range uids {
		entries[i] = c.store.entry(uid)
	}
	return entries, nil
}

func (c *uidSession) Changes(_ context.Context, since upstream.Mailbox) (upstream.Changes, error) {
	prevNext, prevCount, ok := parseUIDState(since.State)
	if !ok {
		return upstream.Changes{}, errors.New("uidstore: unknown state")
	}
	c.store.mu.Lock()
	uids := c.store.uids
	c.store.mu.Unlock()
	var ch upstream.Changes
	first := len(uids)
	for first > 0 && uids[first-1] >= prevNext {
		first--
	}
	for _, uid := range uids[first:] {
		ch.Added = append(ch.Added, c.store.entry(uid))
	}
	if first != int(prevCount) {
		kept := uids[:first]
		ch.Kept = func(id upstream.ID) bool {
			uid, err := strconv.ParseUint(string(id), 10, 32)
			if err != nil {
				return false
			}
			_, found := slices.BinarySearch(kept, uint32(uid))
			return found
		}
	}
	return ch, nil
}

func parseUIDState(state string) (next, count uint32, ok bool) {
	var n, c uint32
	if _, err := fmt.Sscanf(state, "%d/%d", &n, &c); err != nil {
		return 0, 0, false
	}
	return n, c, true
}

func (c *uidSession) Open(context.Context, upstream.ID, int64, int64) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(benchBody)), nil
}

// benchBody is every message of a uidStore, of the size it lists.
var benchBody = "Subject: bench\r\n\r\n" + strings.Repeat("x", 1100-20) + "\r\n"

func (c *uidSession) DeleteJournaled(context.Context, []upstream.ID, upstream.DeleteMode, string, func() error) error {
	return nil
}

func (c *uidSession) Alive() bool { return !c.closed }

func (c *uidSession) Close() error {
	c.closed = true
	return nil
}
