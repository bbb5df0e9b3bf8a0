package proxy

import (
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

// pool keeps logged-in upstream sessions after their POP3 session ends,
// for the next login to the same maildrop. A session is handed out again
// only to a login that presents the same credentials, so the pool never
// lets anyone skip the upstream's password check: a password the upstream
// has since revoked keeps working for at most the idle time.
type pool struct {
	idle time.Duration
	size int
	// waitAfter is the constant waitAfter; 0 starts the wait before put
	// returns, for tests that script the upstream's every line.
	waitAfter time.Duration
	key       []byte // HMAC key for credential digests, random per process
	// goroutines counts the logouts and idle timers under way, for the
	// gateway's Close to wait for.
	goroutines *goroutines

	mu      sync.Mutex
	entries map[string]*pooled
}

type pooled struct {
	sess     Session
	upstream *Upstream // the configuration it was opened with
	digest   []byte
	timer    *time.Timer
	// wait starts the session's wait for changes, for a waiter kept
	// waitAfter.
	wait *time.Timer

	mu      sync.Mutex // held while the wait starts
	claimed bool       // taken or being closed: the wait must not start
	broken  bool       // starting the wait failed: the session is unfit
}

func newPool(idle time.Duration, size int, goroutines *goroutines) *pool {
	key := make([]byte, 32)
	rand.Read(key)
	return &pool{idle: idle, size: size, waitAfter: waitAfter, key: key, goroutines: goroutines, entries: make(map[string]*pooled)}
}

// claim takes e, already out of the pool's map, for its taker or its
// closer: the timers stop, a wait not started never starts, and one
// starting is waited for. It reports whether the session is still fit.
func (p *pool) claim(e *pooled) bool {
	p.stopTimer(e)
	if e.wait != nil && e.wait.Stop() {
		p.goroutines.done()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.claimed = true
	return !e.broken
}

// startWait starts the session's wait for changes, unless e was claimed.
func (e *pooled) startWait(w waiter) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.claimed && w.Idle() != nil {
		e.broken = true
	}
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
	if !p.claim(e) || !e.sess.Alive() {
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
	w, waits := sess.(waiter)
	if waits && p.waitAfter <= 0 {
		if err := w.Idle(); err != nil {
			sess.Close()
			return
		}
		waits = false
	}
	e := &pooled{sess: sess, upstream: acct.upstream, digest: p.digest(acct)}
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
			e.startWait(w)
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
	p.claim(e)
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
		p.claim(e)
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
			p.claim(e)
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
