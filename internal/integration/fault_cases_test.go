package integration

import (
	"fmt"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/pop3client"
)

// The cases the fault matrices of every store share, written once: each
// constructor returns the table entry, named as the matrices name it, and
// takes what differs between stores (the request a reset is armed on,
// where a transfer is cut). The cases only one store has stay in its
// file.

// expectLoginRefused opens a session directly and checks that PASS is
// refused with [SYS/TEMP]; it returns the client.
func expectLoginRefused(t *testing.T, r *faultRig) *pop3client.Client {
	t.Helper()
	c := r.dial(r.addr)
	if _, err := c.OK("USER " + r.user); err != nil {
		t.Fatal(err)
	}
	expectErr(t, c, "PASS "+r.pass, "-ERR [SYS/TEMP]")
	return c
}

// nextIntact checks that the next session finds every message as before.
func (r *faultRig) nextIntact() {
	r.t.Helper()
	c, _ := r.next(nil, nil, 0)
	c.Quit()
}

func downAtLogin() faultCase {
	return faultCase{"upstream down at login", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		r.up.Down(true)
		c := expectLoginRefused(t, r)
		r.ended(c)
		r.up.Down(false)
		r.nextIntact()
	}}
}

// resetDuringListing resets the upstream connection on the request of
// the login's listing that carries pattern: the login is refused.
func resetDuringListing(pattern string) faultCase {
	return faultCase{"reset during the listing", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		r.up.ResetOnCommand([]byte(pattern))
		c := expectLoginRefused(t, r)
		if r.up.Fired() != 1 {
			t.Fatal("the listing was not reset")
		}
		r.ended(c)
		r.nextIntact()
	}}
}

// resumedRetr cuts message 4's transfer once, after octets: the store
// resumes it from where it was cut, and the client gets it whole.
func resumedRetr(after int64) faultCase {
	return faultCase{"reset during RETR streamed, once", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(false)
		r.up.CutServerAfter(after)
		retrWhole(t, c, 4, r.msgs[3])
		if r.up.Fired() != 1 {
			t.Fatal("the transfer was not cut")
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		r.ended(c)
		r.nextIntact()
	}}
}

// cutEveryRetr cuts message 4's transfer after first octets, and every
// resumed one after then more: the client is cut off before the
// terminating line, and the DELE before the cut is not carried out.
func cutEveryRetr(first, then int64) faultCase {
	return faultCase{"reset during RETR streamed, every time", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(false)
		if err := c.Dele(1); err != nil {
			t.Fatal(err)
		}
		r.up.CutServerRepeatedly(first, then, -1)
		expectCutRetr(t, c, 4, r.msgs[3])
		r.ended(c)
		r.up.CutServerRepeatedly(0, 0, 0)
		r.nextIntact()
	}}
}

// resetCachedRetr kills the upstream connection and lets no new one be
// made: message 1, under the cache's ceiling, is served from the cache.
// With readFirst it is read once before, which puts it there; without,
// the login put it there.
func resetCachedRetr(readFirst bool) faultCase {
	return faultCase{"reset during RETR cached", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(false)
		if readFirst {
			retrWhole(t, c, 1, r.msgs[0])
		}
		r.up.Down(true)
		r.up.ResetAll()
		retrWhole(t, c, 1, r.msgs[0])
		r.ended(c)
		r.up.Down(false)
		r.nextIntact()
	}}
}

// quitReset is a quitWithFault case: the upstream connection is reset on
// (or, with after, just after) the request that carries pattern, and the
// next session is on the same gateway or, with restarted, on one that saw
// nothing of it.
func quitReset(name, pattern string, after, restarted bool, gone, maybe []int) faultCase {
	return faultCase{name, faultRigOptions{}, func(t *testing.T, r *faultRig) {
		quitWithFault(t, r, func() {
			if after {
				r.up.ResetAfterCommand([]byte(pattern))
			} else {
				r.up.ResetOnCommand([]byte(pattern))
			}
		}, restarted, gone, maybe)
	}}
}

// stallPastTimeout stalls the upstream before RETR retr: the gateway
// answers [SYS/TEMP] once its upstream timeout has passed and ends the
// session.
func stallPastTimeout(retr int) faultCase {
	return faultCase{"stall past the upstream timeout", faultRigOptions{timeout: faultTimeout}, func(t *testing.T, r *faultRig) {
		c := r.login(false)
		r.up.Stall(true)
		expectErr(t, c, fmt.Sprintf("RETR %d", retr), "-ERR [SYS/TEMP]")
		expectClosed(t, c)
		r.ended(c)
		r.up.Stall(false)
		r.nextIntact()
	}}
}

// stallMidRetr stalls message 4's transfer after octets: the client is
// cut off before the terminating line once the upstream timeout has
// passed.
func stallMidRetr(after int64) faultCase {
	return faultCase{"stall mid-RETR past the upstream timeout", faultRigOptions{timeout: faultTimeout}, func(t *testing.T, r *faultRig) {
		c := r.login(false)
		r.up.StallServerAfter(after)
		expectCutRetr(t, c, 4, r.msgs[3])
		r.ended(c)
		r.up.Stall(false)
		r.nextIntact()
	}}
}

// mailboxChanged has another mail program deliver one message and
// remove message 2 mid-session (change), then checks that the listing
// stays as it was (RFC 1939 §4: the maildrop is fixed for the session),
// what RETR serves (served), and that the next session lists the change.
func mailboxChanged(change func(t *testing.T, r *faultRig), served func(t *testing.T, r *faultRig, c *pop3client.Client)) faultCase {
	return faultCase{"mailbox changed by another client", faultRigOptions{}, func(t *testing.T, r *faultRig) {
		c := r.login(false)
		before, err := c.List()
		if err != nil {
			t.Fatal(err)
		}
		change(t, r)
		after, err := c.List()
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("LIST changed mid-session: %v, then %v", before, after)
		}
		served(t, r, c)
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		r.ended(c)
		c, _ = r.next([]int{2}, nil, 1)
		c.Quit()
	}}
}

// servedButRemoved is what a store that reads each message at RETR
// serves once message 2 is gone: -ERR for it, the others whole.
func servedButRemoved(t *testing.T, r *faultRig, c *pop3client.Client) {
	expectErr(t, c, "RETR 2", "-ERR")
	retrWhole(t, c, 1, r.msgs[0])
	retrWhole(t, c, 3, r.msgs[2])
	retrWhole(t, c, 4, r.msgs[3])
}
