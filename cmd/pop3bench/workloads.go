//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/pop3client"
)

func coldUser(target string, round int) string { return fmt.Sprintf("cold-%s-%d", target, round+1) }
func concUser(i int) string                    { return fmt.Sprintf("conc%d", i+1) }
func idleUser(i int) string                    { return fmt.Sprintf("idle%04d", i+1) }
func memUser(i int) string                     { return fmt.Sprintf("mem%02d", i+1) }

var targetNames = []string{"gateway", "imapc", "direct"}

// users returns the users the selected workloads need, all with password.
func (b *bench) users() map[string]string {
	u := map[string]string{}
	if b.selected["poll"] {
		u["poll"] = password
	}
	if b.selected["cold"] {
		for r := range b.rounds {
			for _, t := range targetNames {
				u[coldUser(t, r)] = password
			}
		}
	}
	if b.selected["big"] {
		u["big"] = password
	}
	if b.selected["concurrent"] {
		for i := range b.sz.concMailboxes {
			u[concUser(i)] = password
		}
	}
	if b.selected["change"] {
		for _, n := range b.sz.changeMsgs {
			u[changeUser(n)] = password
		}
	}
	if b.selected["idle"] {
		for i := range b.sz.idleSessions {
			u[idleUser(i)] = password
		}
	}
	if b.selected["memory"] {
		for i := range b.sz.memSessions {
			u[memUser(i)] = password
		}
	}
	if b.selected["load"] {
		for i := range b.loadOpts.mailboxes {
			u[loadUser(i)] = password
		}
	}
	return u
}

// Expected results, set by seed.
var (
	coldOctets int64
	bigOctets  int64
	concOctets int64
	memOctets  int64
)

// seed writes the mail as maildir files and lets Dovecot index every
// mailbox a timed workload reads, through IMAP.
func (b *bench) seed(ctx context.Context) error {
	start := time.Now()
	var index []string
	deliver := func(user string, msgs [][]byte) error {
		index = append(index, user)
		return b.dc.Deliver(user, msgs...)
	}
	if b.selected["poll"] {
		if err := deliver("poll", messages(1, b.sz.pollMsgs, b.sz.pollSize)); err != nil {
			return err
		}
	}
	if b.selected["cold"] {
		msgs := messages(2, b.sz.coldMsgs, b.sz.coldSize)
		coldOctets = wireSize(msgs)
		for r := range b.rounds {
			for _, t := range targetNames {
				if err := deliver(coldUser(t, r), msgs); err != nil {
					return err
				}
			}
		}
	}
	if b.selected["big"] {
		msgs := messages(3, 1, b.sz.bigSize)
		bigOctets = wireSize(msgs)
		if err := deliver("big", msgs); err != nil {
			return err
		}
	}
	if b.selected["concurrent"] {
		msgs := messages(4, b.sz.concMsgs, b.sz.concSize)
		concOctets = wireSize(msgs)
		for i := range b.sz.concMailboxes {
			if err := deliver(concUser(i), msgs); err != nil {
				return err
			}
		}
	}
	if b.selected["change"] {
		if err := b.seedChange(deliver); err != nil {
			return err
		}
	}
	if b.selected["idle"] {
		msg := messages(5, 1, 1<<10)
		for i := range b.sz.idleSessions {
			if err := b.dc.Deliver(idleUser(i), msg...); err != nil {
				return err
			}
		}
	}
	if b.selected["memory"] {
		msgs := messages(6, 1, b.sz.memSize)
		memOctets = wireSize(msgs)
		for i := range b.sz.memSessions {
			if err := deliver(memUser(i), msgs); err != nil {
				return err
			}
		}
	}
	for _, u := range index {
		if err := imapIndex(ctx, b.dc.IMAPAddr(), u); err != nil {
			return fmt.Errorf("indexing %s: %w", u, err)
		}
	}
	b.logf("seeded and indexed the mail in %v", time.Since(start).Round(time.Millisecond))
	return nil
}

// stats is what one POP3 session did.
type stats struct {
	msgs   int
	octets int64 // RETR bodies after unstuffing, CRLF included
	inUse  int   // logins refused with [IN-USE] before the one that worked
}

// session logs in, lists the UIDLs, RETRs every message if retr is set,
// discarding the bodies, and QUITs. A login refused with [IN-USE] is
// retried after 5ms, and counted.
func session(ctx context.Context, addr, user string, retr bool) (stats, error) {
	var st stats
	c, err := login(ctx, addr, user, &st)
	if err != nil {
		return st, err
	}
	defer context.AfterFunc(ctx, func() { c.Close() })()
	defer c.Close()
	if !retr {
		// Counted as read: a session that retrieves nothing needs no
		// entries, and building them would be timed as the server's.
		if st.msgs, err = c.CountUIDL(); err != nil {
			return st, fmt.Errorf("%s: UIDL: %w", user, err)
		}
	} else {
		uidl, err := c.UIDL()
		if err != nil {
			return st, fmt.Errorf("%s: UIDL: %w", user, err)
		}
		st.msgs = len(uidl)
		for _, e := range uidl {
			if _, err := c.OK(fmt.Sprintf("RETR %d", e.Num)); err != nil {
				return st, fmt.Errorf("%s: RETR %d: %w", user, e.Num, err)
			}
			n, err := c.DiscardMulti()
			if err != nil {
				return st, fmt.Errorf("%s: RETR %d: %w", user, e.Num, err)
			}
			st.octets += n
		}
	}
	if err := c.Quit(); err != nil {
		return st, fmt.Errorf("%s: QUIT: %w", user, err)
	}
	return st, nil
}

// login connects and logs in as user, retrying while the maildrop is in
// use, for at most a minute.
func login(ctx context.Context, addr, user string, st *stats) (*pop3client.Client, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c, err := pop3client.Dial(addr)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		stop := context.AfterFunc(ctx, func() { c.Close() })
		err = c.Login(user, password)
		stop()
		if err == nil {
			return c, nil
		}
		c.Close()
		var reply *pop3client.ErrReply
		if !errors.As(err, &reply) || !strings.Contains(reply.Line, "[IN-USE]") || time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: login: %w", user, err)
		}
		st.inUse++
		time.Sleep(5 * time.Millisecond)
	}
}

// record keeps the best time of a workload on a target.
func (b *bench) record(workload, target string, d time.Duration) {
	m := b.results[workload]
	if m == nil {
		m = map[string]time.Duration{}
		b.results[workload] = m
	}
	if old, ok := m[target]; !ok || d < old {
		m[target] = d
	}
	b.logf("  %-10s %-7s %v", workload, target, d.Round(time.Microsecond))
}

func check(what string, st stats, msgs int, octets int64) error {
	if st.msgs != msgs || octets >= 0 && st.octets != octets {
		return fmt.Errorf("%s: %d messages, %d octets; want %d, %d", what, st.msgs, st.octets, msgs, octets)
	}
	return nil
}

// poll: pollSessions sequential sessions of login, UIDL, QUIT on a mailbox
// of pollMsgs messages, after one untimed session per target.
func (b *bench) poll(ctx context.Context) error {
	for _, t := range b.targets {
		st, err := session(ctx, t.addr(), "poll", false)
		if err != nil {
			return err
		}
		if err := check(t.name, st, b.sz.pollMsgs, -1); err != nil {
			return err
		}
	}
	for range b.rounds {
		for _, t := range b.targets {
			start := time.Now()
			for range b.sz.pollSessions {
				st, err := session(ctx, t.addr(), "poll", false)
				if err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
				if err := check(t.name, st, b.sz.pollMsgs, -1); err != nil {
					return err
				}
			}
			b.record("poll", t.name, time.Since(start))
		}
	}
	return nil
}

// coldWarm: per round and target a mailbox never read through any target
// (cold-TARGET-ROUND); one session RETRs every message (cold), then a second
// session does the same again (warm).
func (b *bench) coldWarm(ctx context.Context) error {
	for r := range b.rounds {
		for _, t := range b.targets {
			user := coldUser(t.name, r)
			for _, w := range []string{"cold", "warm"} {
				start := time.Now()
				st, err := session(ctx, t.addr(), user, true)
				if err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
				d := time.Since(start)
				if err := check(t.name, st, b.sz.coldMsgs, coldOctets); err != nil {
					return err
				}
				b.record(w, t.name, d)
			}
		}
	}
	return nil
}

// big: one session RETRs one message of bigSize octets.
func (b *bench) big(ctx context.Context) error {
	base := b.gw.rss.reset()
	for range b.rounds {
		for _, t := range b.targets {
			start := time.Now()
			st, err := session(ctx, t.addr(), "big", true)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			d := time.Since(start)
			if err := check(t.name, st, 1, bigOctets); err != nil {
				return err
			}
			b.record("big", t.name, d)
		}
	}
	b.memory = append(b.memory, memLine{"fresh gateway, before big", base, ""},
		memLine{"peak during big", b.gw.rss.max(), ""})
	return nil
}

// concurrent: concMailboxes mailboxes at once, each read by concSessions
// sessions one after another (login, UIDL, RETR all, QUIT), so
// concMailboxes sessions run at any time.
func (b *bench) concurrent(ctx context.Context) error {
	base := b.gw.rss.reset()
	for range b.rounds {
		for _, t := range b.targets {
			var (
				wg    sync.WaitGroup
				inUse atomic.Int64
				mu    sync.Mutex
				errs  []error
			)
			start := time.Now()
			for i := range b.sz.concMailboxes {
				wg.Go(func() {
					for range b.sz.concSessions {
						st, err := session(ctx, t.addr(), concUser(i), true)
						inUse.Add(int64(st.inUse))
						if err == nil {
							err = check(t.name, st, b.sz.concMsgs, concOctets)
						}
						if err != nil {
							mu.Lock()
							errs = append(errs, fmt.Errorf("%s: %w", t.name, err))
							mu.Unlock()
							return
						}
					}
				})
			}
			wg.Wait()
			d := time.Since(start)
			if err := errors.Join(errs...); err != nil {
				return err
			}
			b.record("concurrent", t.name, d)
			if n := inUse.Load(); n > 0 {
				b.notes = append(b.notes, fmt.Sprintf("concurrent: %s answered [IN-USE] %d times (retried after 5 ms)", t.name, n))
			}
		}
	}
	b.memory = append(b.memory, memLine{"fresh gateway, before concurrent", base, ""},
		memLine{"peak during concurrent", b.gw.rss.max(), ""})
	return nil
}

// idle: idleSessions sessions to the gateway, one user each, logged in
// (idleParallel logins at a time) and left idle; then the RSS is read, a
// STAT on every session checks they all still work, and all QUIT.
func (b *bench) idle(ctx context.Context) error {
	base := b.gw.rss.reset()
	n := b.sz.idleSessions
	clients := make([]*pop3client.Client, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	start := time.Now()
	if err := parallel(ctx, n, b.sz.idleParallel, func(i int) error {
		var st stats
		c, err := login(ctx, b.gw.addr, idleUser(i), &st)
		clients[i] = c
		return err
	}); err != nil {
		return err
	}
	logins := time.Since(start)
	time.Sleep(time.Second)
	rss := b.gw.rss.now()
	peak := b.gw.rss.max()
	if err := parallel(ctx, n, b.sz.idleParallel, func(i int) error {
		if _, _, err := clients[i].Stat(); err != nil {
			return fmt.Errorf("%s: STAT after idling: %w", idleUser(i), err)
		}
		return clients[i].Quit()
	}); err != nil {
		return err
	}
	b.memory = append(b.memory,
		memLine{"fresh gateway, before idle", base, ""},
		memLine{fmt.Sprintf("%s idle logged-in sessions", thousands(n)), rss,
			fmt.Sprintf("%+.1f KiB per session; peak %.1f MiB; logins took %v, %d at a time",
				float64(rss-base)/float64(n)/1024, float64(peak)/(1<<20), logins.Round(time.Millisecond), b.sz.idleParallel)})
	return nil
}

// parallel runs fn(0..n-1) on at most width goroutines and returns the
// first error.
func parallel(ctx context.Context, n, width int, fn func(int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range width {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// memoryMaxMessage is max_message for the memory workload: large enough
// that every message of it could be held whole.
const memoryMaxMessage = "64MiB"

// memWaves is how many times all the memory sessions RETR at once: the
// first wave finds the cache empty, the later ones a full cache beside the
// bodies in flight, which is the gateway's heaviest state.
const memWaves = 4

// containerLimit is the memory limit of the Kubernetes manifest, and
// containerGoMemLimit what the gateway sets GOMEMLIMIT to in a cgroup with
// that limit.
const (
	containerLimit      = 512 << 20
	containerGoMemLimit = containerLimit * 85 / 100
)

// memoryBound: memSessions mailboxes of one memSize message; all log in,
// then all RETR message 1 at once, memWaves times, with max_message 64MiB
// and cache.memory 256MiB. It runs twice, each time on a fresh gateway:
// with no memory limit, and with GOMEMLIMIT as the gateway sets it in a
// 512 MiB container. The gateway's peak is its VmHWM.
func (b *bench) memoryBound(ctx context.Context) error {
	for _, v := range []struct {
		what string
		env  []string
	}{
		{"no memory limit", nil},
		{"GOMEMLIMIT of a 512 MiB container", []string{fmt.Sprintf("GOMEMLIMIT=%d", containerGoMemLimit)}},
	} {
		if err := b.gw.restartWith(b.gw.memoryConf, v.env, ""); err != nil {
			return err
		}
		base := b.gw.rss.reset()
		d, err := b.concurrentRetrs(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", v.what, err)
		}
		peak, err := b.gw.peakRSS()
		if err != nil {
			return err
		}
		bounds := "no memory bounds logged"
		if rec := b.gw.logRecord("memory bounds"); rec != nil {
			bounds = fmt.Sprintf("in_flight %s, GOMEMLIMIT %s", mib(rec["in_flight"]), mib(rec["gomemlimit"]))
		}
		b.logf("  memory     %s: peak %.1f MiB, %d waves of %d RETRs in %v", v.what, float64(peak)/(1<<20), memWaves, b.sz.memSessions, d.Round(time.Millisecond))
		b.memory = append(b.memory,
			memLine{"fresh gateway, before memory", base, ""},
			memLine{"peak during memory, " + v.what, peak,
				fmt.Sprintf("VmHWM; %s; %d waves of %d RETRs took %v", bounds, memWaves, b.sz.memSessions, d.Round(time.Millisecond))})
		if v.env != nil && peak > containerLimit {
			b.notes = append(b.notes, fmt.Sprintf("memory: the gateway peaked at %.1f MiB, over the %d MiB container limit", float64(peak)/(1<<20), containerLimit>>20))
		}
		if err := b.gw.stop(); err != nil {
			return err
		}
	}
	// The workload loop stops the gateway it started.
	return b.gw.restart("")
}

// concurrentRetrs logs in to every memory mailbox, then RETRs message 1
// on all of them at once, memWaves times, checks the octets and QUITs.
func (b *bench) concurrentRetrs(ctx context.Context) (time.Duration, error) {
	n := b.sz.memSessions
	clients := make([]*pop3client.Client, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := parallel(ctx, n, 16, func(i int) error {
		var st stats
		c, err := login(ctx, b.gw.addr, memUser(i), &st)
		clients[i] = c
		return err
	}); err != nil {
		return 0, err
	}
	start := time.Now()
	for range memWaves {
		if err := parallel(ctx, n, n, func(i int) error {
			c := clients[i]
			if _, err := c.OK("RETR 1"); err != nil {
				return fmt.Errorf("%s: RETR 1: %w", memUser(i), err)
			}
			got, err := c.DiscardMulti()
			if err != nil {
				return fmt.Errorf("%s: RETR 1: %w", memUser(i), err)
			}
			if got != memOctets {
				return fmt.Errorf("%s: RETR 1: %d octets, want %d", memUser(i), got, memOctets)
			}
			return nil
		}); err != nil {
			return 0, err
		}
	}
	d := time.Since(start)
	for i, c := range clients {
		if err := c.Quit(); err != nil {
			return 0, fmt.Errorf("%s: QUIT: %w", memUser(i), err)
		}
	}
	return d, nil
}

// mib formats a JSON number of bytes from the gateway's log in MiB.
func mib(v any) string {
	f, ok := v.(float64)
	if !ok {
		return fmt.Sprint(v)
	}
	return fmt.Sprintf("%.0f MiB", f/(1<<20))
}
