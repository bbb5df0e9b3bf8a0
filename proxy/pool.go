package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/upstream"
)

// Pool defaults. A POP3 poller logs in every few minutes; keeping its IMAP
// connection for a while saves a TCP and TLS handshake and a login each
// time. Providers cap connections per account (Gmail at about 15), and a
// maildrop has at most one session at a time, so one idle connection per
// maildrop is all the pool keeps.
const (
	DefaultPoolIdle = upstream.DefaultKeepConnection
	DefaultPoolSize = 1000
)

// waitAfter is how long a kept connection sits before it waits for
// changes (see waiter). A client that logs in again within it, as a
// batch of sessions does, gains nothing from the wait and would pay a
// round trip to start it; a poller's next login, minutes later, finds a
// change applied. A change made before the wait starts is applied when it
// starts (RFC 2177 §3: the server may send updates at once).
const waitAfter = time.Second

// A kept connection that hears of a change while it waits (IMAP: EXISTS or
// EXPUNGE in IDLE) brings the maildrop's remembered listing up to date in
// the background, refreshAfter later, so that changes arriving together
// are listed once: the poller's next login then finds the listing ready,
// and the store has done, on the kept connection, the work its first
// reader of a change pays (Dovecot, for a message written into a maildir
// behind its back, reads its whole UID list: 0.3 s at 200,000 messages).
// A refresh is bounded by refreshTimeout, ends when the connection is
// taken by a login (which waits for it) or closed, and changes nothing a
// login would not: the listing is merged and checked as at a login, and
// is kept only if no session changed the maildrop meanwhile.
//
// A refresh that found the mailbox changed is followed by one more at
// settleTime: a maildir server does not trust a sync of a directory that
// changed within its last clock second, and rescans the directory at the
// first command once that second has passed (Dovecot's MAILDIR_SYNC_SECS,
// 0.3 s at 200,000 messages). The second refresh has that command paid on
// the kept connection, not by the poller's login; on a server that is
// not a maildir (only IMAP sessions wait for changes) it costs a NOOP and
// a STATUS.
const (
	refreshAfter   = 100 * time.Millisecond
	refreshTimeout = time.Minute
)

// settleTime is when a store that changed a maildir directory at t trusts
// that directory again: two of its clock seconds after the second that t
// is in (mtimes count whole seconds; the server's clock is taken to be
// ours), with a margin.
func settleTime(t time.Time) time.Time {
	return t.Truncate(time.Second).Add(2*time.Second + 20*time.Millisecond)
}

// refresher brings a maildrop's remembered listing up to date on a kept
// session (Gateway.prelist).
type refresher func(ctx context.Context, maildrop string, acct *account, sess Session) error

// pool keeps logged-in upstream sessions after their POP3 session ends,
// for the next login to the same maildrop. A session is handed out again
// only to a login that presents the same credentials, so the pool never
// lets anyone skip the upstream's password check: a password the upstream
// has since revoked keeps working for at most the idle time.
type pool struct {
	idle time.Duration
	size int
	// waitAfter is the constant waitAfter; 0 starts the wait before put
	// returns, and refreshes nothing in the background, for tests that
	// script the upstream's every line.
	waitAfter time.Duration
	key       []byte // HMAC key for credential digests, random per process
	// goroutines counts the logouts and idle timers under way, for the
	// gateway's Close to wait for.
	goroutines *goroutines
	// refresh, when set, is run after a kept connection hears of a change;
	// life bounds it.
	refresh refresher
	life    context.Context

	mu      sync.Mutex
	entries map[string]*pooled
}

type pooled struct {
	sess     Session
	upstream *Upstream // the configuration it was opened with
	maildrop string
	acct     *account
	digest   []byte
	timer    *time.Timer
	// wait starts the session's wait for changes, for a waiter kept
	// waitAfter.
	wait *time.Timer

	mu      sync.Mutex // held while the wait starts
	claimed bool       // taken or being closed: the wait must not start
	closing bool       // claimed to be closed: a refresh stops
	broken  bool       // starting the wait or a refresh failed: the session is unfit
	// refreshing is closed when the refresh under way ends, which cancel
	// stops; nil when none is.
	refreshing chan struct{}
	cancel     context.CancelFunc

	// The refresh scheduled, apart from mu: a change is heard on the
	// connection's reader, which a wait starting under mu waits for.
	rmu       sync.Mutex
	scheduled *time.Timer
	due       time.Time // when scheduled fires
	stopped   bool      // claimed: nothing more is scheduled
	heard     time.Time // when the first change since the last refresh was heard
}

func newPool(idle time.Duration, size int, goroutines *goroutines) *pool {
	key := make([]byte, 32)
	rand.Read(key)
	return &pool{idle: idle, size: size, waitAfter: waitAfter, key: key, goroutines: goroutines, entries: make(map[string]*pooled)}
}

// claim takes e, already out of the pool's map, for its taker or its
// closer: the timers stop, a wait or a refresh not started never starts,
// and one under way is waited for (a closer stops a refresh first). It
// reports whether the session is still fit.
func (p *pool) claim(e *pooled, closing bool) bool {
	p.stopTimer(e)
	if e.wait != nil && e.wait.Stop() {
		p.goroutines.done()
	}
	e.rmu.Lock()
	e.stopped = true
	if e.scheduled != nil && e.scheduled.Stop() {
		p.goroutines.done()
	}
	e.rmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.claimed = true
	e.closing = e.closing || closing
	for e.refreshing != nil {
		done := e.refreshing
		if e.closing {
			e.cancel()
		}
		e.mu.Unlock()
		<-done
		e.mu.Lock()
	}
	return !e.broken
}

// startWait starts the session's wait for changes, unless e was claimed.
func (e *pooled) startWait(p *pool, w waiter) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.claimed && w.Idle(p.changed(e)) != nil {
		e.broken = true
	}
}

// changed is what a waiting session calls when it hears of a change: it
// schedules a refresh of the maildrop's listing, unless one is scheduled
// already. It never blocks on the connection.
func (p *pool) changed(e *pooled) func() {
	if p.refresh == nil || p.waitAfter <= 0 {
		return nil
	}
	return func() {
		e.rmu.Lock()
		defer e.rmu.Unlock()
		now := time.Now()
		if e.heard.IsZero() {
			e.heard = now
		}
		if e.stopped || e.scheduled != nil && !e.due.After(now.Add(refreshAfter)) {
			return
		}
		// Nothing scheduled, or only a settling refresh, later.
		if e.scheduled != nil && e.scheduled.Stop() {
			p.goroutines.done()
		}
		p.schedule(e, refreshAfter)
	}
}

// schedule has e's listing refreshed after d; e.rmu is held.
func (p *pool) schedule(e *pooled, d time.Duration) {
	e.scheduled = nil
	if !p.goroutines.add() {
		return
	}
	e.due = time.Now().Add(d)
	e.scheduled = time.AfterFunc(d, func() {
		defer p.goroutines.done()
		p.refreshListing(e)
	})
}

// refreshListing brings the maildrop's listing up to date on e's session
// and waits for changes again; a login that takes e meanwhile waits for
// it, a closer stops it.
func (p *pool) refreshListing(e *pooled) {
	e.mu.Lock()
	if e.claimed || e.broken {
		e.mu.Unlock()
		return
	}
	ctx, cancel := context.WithTimeout(p.life, refreshTimeout)
	done := make(chan struct{})
	e.refreshing, e.cancel = done, cancel
	e.mu.Unlock()
	e.rmu.Lock()
	changed := e.heard
	e.heard = time.Time{}
	e.rmu.Unlock()
	if changed.IsZero() {
		changed = time.Now()
	}
	before := e.sess.Selected().State
	err := p.refresh(ctx, e.maildrop, e.acct, e.sess)
	cancel()
	// A change heard from now on schedules another refresh; one found by
	// this refresh has the store settle (see settleTime).
	e.rmu.Lock()
	e.scheduled = nil
	if err == nil && !e.stopped && e.sess.Selected().State != before {
		p.schedule(e, time.Until(settleTime(changed)))
	}
	e.rmu.Unlock()
	e.mu.Lock()
	e.refreshing, e.cancel = nil, nil
	switch {
	case err != nil:
		e.broken = true
	case !e.closing:
		// Waiting again even for a login that took e meanwhile: its
		// Refresh then ends the wait with a NOOP and a STATUS instead of
		// selecting the mailbox again (see upstream.Session.Refresh).
		if w, ok := e.sess.(waiter); ok && w.Idle(p.changed(e)) != nil {
			e.broken = true
		}
	}
	e.mu.Unlock()
	close(done)
}

// logout closes sess in a goroutine of its own, since a logout waits a
// moment for the server's reply; once the gateway is closing, at once.
func (p *pool) logout(sess Session) {
	if !p.goroutines.start(func() { sess.Close() }) {
		sess.Close()
	}
}

// stopTimer stops e's idle timer; if that keeps the timer from firing, its
// goroutine is no longer waited for.
func (p *pool) stopTimer(e *pooled) {
	if e.timer.Stop() {
		p.goroutines.done()
	}
}

// digest binds a pooled session to the credentials that opened it; the
// name counts by its canonical key, as the maildrop does.
func (p *pool) digest(acct *account) []byte {
	mac := hmac.New(sha256.New, p.key)
	mac.Write([]byte(username.Canonical(acct.username)))
	mac.Write([]byte{0})
	if acct.token != nil {
		// A mapped user's OAuth2 login: the local password was checked,
		// and the token belongs to the account, not to the login.
		mac.Write([]byte{1})
	} else {
		mac.Write([]byte{0})
		mac.Write([]byte(acct.password))
	}
	return mac.Sum(nil)
}

// take returns the idle session for the maildrop if the credentials match.
func (p *pool) take(maildrop string, acct *account) Session {
	if p == nil || p.idle <= 0 {
		return nil
	}
	digest := p.digest(acct)
	p.mu.Lock()
	e := p.entries[maildrop]
	// Other credentials leave the connection where it is: a wrong
	// password must not cost the owner the connection kept for it. A
	// reload replaces every *Upstream, so a connection opened under an
	// older configuration is never handed out.
	if e == nil || e.upstream != acct.upstream || !hmac.Equal(e.digest, digest) {
		p.mu.Unlock()
		return nil
	}
	delete(p.entries, maildrop)
	p.mu.Unlock()
	if !p.claim(e, false) || !e.sess.Alive() {
		p.logout(e.sess)
		return nil
	}
	return e.sess
}

// put keeps a session for later, for as long as its upstream says, or
// closes it when the pool is full.
func (p *pool) put(maildrop string, acct *account, sess Session) {
	if p == nil {
		sess.Close()
		return
	}
	idle := p.idle
	if keep := acct.upstream.KeepConnection; keep != 0 {
		idle = keep
	}
	if idle <= 0 || !sess.Alive() {
		sess.Close()
		return
	}
	// A kept connection waits for changes where the store can, so the
	// next login finds a change already applied (see upstream.Session.Idle);
	// the login's Refresh ends the wait.
	e := &pooled{sess: sess, upstream: acct.upstream, maildrop: maildrop, acct: acct, digest: p.digest(acct)}
	w, waits := sess.(waiter)
	if waits && p.waitAfter <= 0 {
		if err := w.Idle(p.changed(e)); err != nil {
			sess.Close()
			return
		}
		waits = false
	}
	p.mu.Lock()
	old := p.entries[maildrop]
	delete(p.entries, maildrop)
	// A full pool keeps nothing more, and a closing gateway nothing at all.
	if len(p.entries) >= p.size || !p.goroutines.add() {
		p.mu.Unlock()
		p.drop(old)
		sess.Close()
		return
	}
	p.entries[maildrop] = e
	e.timer = time.AfterFunc(idle, func() {
		defer p.goroutines.done()
		p.expire(maildrop, e)
	})
	if waits && p.goroutines.add() {
		e.wait = time.AfterFunc(p.waitAfter, func() {
			defer p.goroutines.done()
			e.startWait(p, w)
		})
	}
	p.mu.Unlock()
	p.drop(old)
}

// drop logs out of a session the pool no longer holds, if any.
func (p *pool) drop(e *pooled) {
	if e == nil {
		return
	}
	p.claim(e, true)
	p.logout(e.sess)
}

func (p *pool) expire(maildrop string, e *pooled) {
	p.mu.Lock()
	if p.entries[maildrop] == e {
		delete(p.entries, maildrop)
	} else {
		e = nil
	}
	p.mu.Unlock()
	if e != nil {
		p.claim(e, true)
		e.sess.Close()
	}
}

// closeAll logs out of every idle session.
func (p *pool) closeAll() {
	if p == nil {
		return
	}
	p.mu.Lock()
	entries := p.entries
	p.entries = make(map[string]*pooled)
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range entries {
		wg.Go(func() {
			p.claim(e, true)
			e.sess.Close()
		})
	}
	wg.Wait()
}

// len returns the number of idle sessions.
func (p *pool) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.entries)
}
