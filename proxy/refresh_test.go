package proxy

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/upstream"
)

// rememberedCount is the message count of the one listing the gateway
// remembers, or -1 when it remembers none.
func rememberedCount(g *Gateway) int {
	g.snaps.mu.Lock()
	defer g.snaps.mu.Unlock()
	for _, snap := range g.snaps.lru.Values() {
		return len(snap.entries)
	}
	return -1
}

// refreshing tells whether the kept connection is refreshing its listing.
func refreshing(g *Gateway) bool {
	g.pool.mu.Lock()
	defer g.pool.mu.Unlock()
	for _, e := range g.pool.entries {
		e.mu.Lock()
		r := e.refreshing != nil
		e.mu.Unlock()
		return r
	}
	return false
}

// TestKeptConnectionListsChangesBeforeTheLogin: a kept connection that
// hears of a new message or an expunge while it idles brings the
// remembered listing up to date before the next login, which then lists
// nothing and searches nothing; what it serves is the mailbox as it is.
func TestKeptConnectionListsChangesBeforeTheLogin(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.deliver(alice, corpus...)
	uidls := func() string {
		t.Helper()
		c := e.login("alice", localPassword)
		_, body, err := c.Multi("UIDL")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		return string(body)
	}
	first := uidls()
	waitFor(t, func() bool { return e.proxy.idles.Load() == 1 })
	listings := e.proxy.listings.Load()

	e.deliver(alice, "Subject: new\r\n\r\nnew\r\n")
	// Listed by the kept connection, which then waits again.
	waitFor(t, func() bool { return rememberedCount(e.gw) == 4 && e.proxy.idles.Load() == 2 })
	if n := e.proxy.listings.Load(); n != listings+1 {
		t.Fatalf("%d listings after the delivery, want %d", n, listings+1)
	}
	second := uidls()
	if n := e.proxy.listings.Load(); n != listings+1 {
		t.Errorf("the login listed again: %d listings, want %d", n, listings+1)
	}
	if !strings.HasPrefix(second, first) || strings.Count(second, "\n") != 4 {
		t.Errorf("UIDL after the delivery:\n%s\nbefore:\n%s", second, first)
	}

	waitFor(t, func() bool { return e.proxy.idles.Load() == 3 })
	c := upstreamClient(t, e.mem.Addr())
	if err := c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return rememberedCount(e.gw) == 3 && e.proxy.idles.Load() == 4 })
	searches := e.proxy.searches.Load()
	if searches != 1 {
		t.Fatalf("%d searches after the expunge, want 1", searches)
	}
	third := uidls()
	if n := e.proxy.searches.Load(); n != searches {
		t.Errorf("the login searched again: %d searches, want %d", n, searches)
	}
	lines := strings.Split(second, "\r\n")
	if want := "1 " + strings.Fields(lines[1])[1] + "\r\n"; !strings.HasPrefix(third, want) || strings.Count(third, "\n") != 3 {
		t.Errorf("UIDL after the expunge:\n%s\nwant the first line %q and 3 messages", third, want)
	}
	if n := e.proxy.Accepted(); n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
}

// idlingAfterOneSession is an env whose mailbox holds the corpus, after
// one session whose connection the gateway kept and now idles.
func idlingAfterOneSession(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, envOptions{})
	e.deliver(alice, corpus...)
	c := e.login("alice", localPassword)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.proxy.idles.Load() == 1 })
	return e
}

// TestKeptConnectionSettlesAfterAChange: a refresh that found a change is
// followed, at settleTime, by one more, which finds nothing to list; and
// no more follow.
func TestKeptConnectionSettlesAfterAChange(t *testing.T) {
	e := idlingAfterOneSession(t)
	listings := e.proxy.listings.Load()
	heard := time.Now()
	e.deliver(alice, "Subject: new\r\n\r\nnew\r\n")
	waitFor(t, func() bool { return rememberedCount(e.gw) == 4 && e.proxy.idles.Load() == 2 })
	waitFor(t, func() bool { return e.proxy.idles.Load() == 3 })
	if settled := time.Since(heard); settled < time.Second {
		t.Errorf("the second refresh came %v after the change, want at least a second", settled)
	}
	time.Sleep(time.Until(settleTime(time.Now())) + 500*time.Millisecond)
	if n := e.proxy.idles.Load(); n != 3 {
		t.Errorf("%d waits after the settling refresh, want 3", n)
	}
	if n := e.proxy.listings.Load(); n != listings+1 {
		t.Errorf("%d listings, want %d", n, listings+1)
	}
}

func TestSettleTime(t *testing.T) {
	at := time.Date(2026, 12, 6, 10, 0, 5, 900_000_000, time.UTC)
	if got, want := settleTime(at), time.Date(2026, 12, 6, 10, 0, 7, 20_000_000, time.UTC); !got.Equal(want) {
		t.Errorf("settleTime(%v) = %v, want %v", at, got, want)
	}
}

// TestLoginWaitsForTheRefresh: a login that comes while the kept
// connection refreshes the listing waits for it and takes that
// connection; a reload, which drops kept connections, stops a refresh at
// once, and closing the gateway then leaves no goroutine.
func TestLoginWaitsForTheRefresh(t *testing.T) {
	for _, closing := range []bool{false, true} {
		name := "login"
		if closing {
			name = "reload"
		}
		t.Run(name, func(t *testing.T) {
			e := idlingAfterOneSession(t)
			e.deliver(alice, "Subject: new\r\n\r\nnew\r\n")
			// The server's news gets through; its answer to the refresh
			// does not, until the stall ends.
			time.Sleep(refreshAfter / 5)
			e.proxy.Stall(true)
			waitFor(t, func() bool { return refreshing(e.gw) })
			if closing {
				reloaded := make(chan struct{})
				go func() {
					e.gw.Reload(e.config)
					close(reloaded)
				}()
				select {
				case <-reloaded:
				case <-time.After(5 * time.Second):
					t.Fatalf("Reload has not returned after 5 s:\n%s", strings.Join(gatewayGoroutines(false), "\n\n"))
				}
				e.gw.Close()
				waitFor(t, func() bool { return len(gatewayGoroutines(false)) == 0 })
				return
			}
			c := e.dial()
			logged := make(chan error, 1)
			go func() { logged <- c.Login("alice", localPassword) }()
			time.Sleep(100 * time.Millisecond)
			select {
			case err := <-logged:
				t.Fatalf("the login ended during the refresh: %v", err)
			default:
			}
			e.proxy.Stall(false)
			if err := <-logged; err != nil {
				t.Fatal(err)
			}
			if n, _ := must2(t)(c.Stat()); n != 4 {
				t.Errorf("STAT counted %d messages, want 4", n)
			}
			if n := e.proxy.Accepted(); n != 1 {
				t.Errorf("%d upstream connections, want 1", n)
			}
		})
	}
}

// TestRefreshedListingNotKeptAfterASessionChange: a listing made between
// sessions, without the maildrop's lock, is not remembered if a session
// deleted or hid messages while it was made.
func TestRefreshedListingNotKeptAfterASessionChange(t *testing.T) {
	for _, change := range []string{"forget", "hide"} {
		t.Run(change, func(t *testing.T) {
			s := newSnapshots(nil)
			state := func(n int) snapshot {
				return snapshot{state: stateOf(n), entries: make([]listedEntry, n), ids: make([]string, n), uidls: make([]string, n), hidden: make([]bool, n)}
			}
			first := state(2)
			s.put("md", &first)
			since := s.generation()
			if change == "forget" {
				s.forget("other")
			} else {
				s.forgetAssignment("md")
			}
			refreshed := state(3)
			s.putSince("md", &refreshed, since)
			if got := s.last("md"); got == &refreshed {
				t.Fatal("the listing made meanwhile was remembered")
			}
			since = s.generation()
			s.putSince("md", &refreshed, since)
			if got := s.last("md"); got != &refreshed {
				t.Fatal("a listing made with nothing changed meanwhile was not remembered")
			}
		})
	}
}

func stateOf(n int) upstream.Mailbox {
	return upstream.Mailbox{Name: "INBOX", Epoch: "1", State: strconv.Itoa(n), Messages: n}
}

// TestSharedStateOnlyRefreshes: with a state store shared with other
// processes, asked for every message at each login anyway, a kept
// connection that hears of a change only refreshes (the store does its
// part then); the login lists the change.
func TestSharedStateOnlyRefreshes(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.gw.SetState(sharedMemory{NewMemoryState()})
	e.deliver(alice, corpus...)
	poll := func() int {
		t.Helper()
		c := e.login("alice", localPassword)
		n, _ := must2(t)(c.Stat())
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := poll(); n != 3 {
		t.Fatalf("first poll: %d messages", n)
	}
	waitFor(t, func() bool { return e.proxy.idles.Load() == 1 })
	listings := e.proxy.listings.Load()
	e.deliver(alice, "Subject: new\r\n\r\nnew\r\n")
	waitFor(t, func() bool { return e.proxy.idles.Load() == 2 })
	if n := e.proxy.listings.Load(); n != listings {
		t.Errorf("%d listings between sessions, want none", n-listings)
	}
	if n := poll(); n != 4 {
		t.Fatalf("second poll: %d messages, want 4", n)
	}
	if n := e.proxy.listings.Load(); n != listings+1 {
		t.Errorf("%d listings at the login, want 1", n-listings)
	}
}
