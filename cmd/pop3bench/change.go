//go:build linux

package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The change workload: a poller's next session after one message came,
// and after one went (expunged by another IMAP client), on mailboxes of
// each size in sizes.changeMsgs. A message comes two ways: through
// Dovecot's delivery agent (new-N), as a Dovecot installation delivers
// with LDA or LMTP, which updates the index and the cache at delivery;
// and written into Maildir/new by another program (drop-N), as an MTA's
// own maildir delivery does, which leaves Dovecot's next reader to take
// the file in (its first access to the new file reads the whole UID list,
// 0.3 s at 200,000 messages, for pop3d as for the gateway). Each timed
// session on a target follows an untimed one on that target and the
// change, so every target sees exactly one change since its last session,
// as a poller would; with -change-settle the change is that much older
// when the session starts, as for a poller whose mail arrived a while
// before its poll. The gateway is restarted before each other target's
// sessions, so its kept connection, idling on the mailbox, does not do
// their work. imapc is left out: its listing of a large mailbox takes
// long and it is not what the rows compare.

func changeUser(msgs int) string { return "change" + countLabel(msgs) }

// countLabel is 10000 -> "10k", 200000 -> "200k".
func countLabel(n int) string {
	if n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// changeRows are the change workload's rows, in the order they are shown.
func (b *bench) changeRows() []string {
	var rows []string
	for _, n := range b.sz.changeMsgs {
		for _, settle := range b.settles {
			for _, kind := range changeKinds {
				rows = append(rows, b.changeRow(kind, n, settle))
			}
		}
	}
	return rows
}

// changeRow names the row of a change of kind on a mailbox of n messages,
// timed settle after the change: new-200k, or new-200k@1.5s when the
// bench measures more than one wait.
func (b *bench) changeRow(kind string, n int, settle time.Duration) string {
	row := kind + "-" + countLabel(n)
	if len(b.settles) > 1 {
		row += "@" + settle.String()
	}
	return row
}

// settleList is the -change-settle flag: waits, comma-separated.
type settleList []time.Duration

func (l *settleList) String() string {
	var parts []string
	for _, d := range *l {
		parts = append(parts, d.String())
	}
	return strings.Join(parts, ",")
}

func (l *settleList) Set(v string) error {
	*l = nil
	for part := range strings.SplitSeq(v, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(part))
		if err != nil {
			return err
		}
		if d < 0 || slices.Contains(*l, d) {
			return fmt.Errorf("%v: each wait once, none negative", d)
		}
		*l = append(*l, d)
	}
	return nil
}

// or0 is the waits, or the one wait 0 when none was given.
func (l settleList) or0() []time.Duration {
	if len(l) == 0 {
		return []time.Duration{0}
	}
	return l
}

// changeKinds are the changes, in the order they are made and shown.
var changeKinds = []string{"new", "drop", "expunge"}

// changeSize is the size of a change mailbox's messages.
const changeSize = 1 << 10

// seedChange writes the change mailboxes; Dovecot indexes them with the
// others.
func (b *bench) seedChange(deliver func(string, [][]byte) error) error {
	for i, n := range b.sz.changeMsgs {
		if err := deliver(changeUser(n), messages(uint64(10+i), n, changeSize)); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) change(ctx context.Context) error {
	restarts := 0
	for i, n := range b.sz.changeMsgs {
		user := changeUser(n)
		count := n
		extra := messages(uint64(100+i), b.rounds*len(b.targets)*len(b.settles)*2, changeSize)
		for range b.rounds {
			for _, t := range b.targets {
				if t.name == "imapc" {
					continue
				}
				if t.name != "gateway" {
					// The gateway's kept connection idles on the mailbox,
					// and Dovecot applies a change it sees there to the
					// mailbox's index, for every later reader: the other
					// targets are timed without a gateway, as they would
					// run without one. The gateway's next untimed session
					// lists the mailbox again.
					// Each gateway process writes a profile of its own
					// (FILE.change, FILE.change.1, ...; go tool pprof
					// merges them), so the one that served the gateway's
					// sessions is not overwritten by the next.
					restarts++
					profile := b.profilePath("change")
					if profile != "" {
						profile = fmt.Sprintf("%s.%d", profile, restarts)
						b.profiles = append(b.profiles, profile)
					}
					if err := b.gw.restart(profile); err != nil {
						return err
					}
				}
				for _, settle := range b.settles {
					for _, kind := range changeKinds {
						if err := b.timeChange(ctx, t, user, kind, n, settle, &count, &extra); err != nil {
							return err
						}
					}
				}
			}
		}
	}
	return nil
}

// timeChange makes one change of kind on user's mailbox of n messages,
// count before it, after an untimed session, and times t's next session
// settle after the change; each message delivered is taken from extra.
func (b *bench) timeChange(ctx context.Context, t target, user, kind string, n int, settle time.Duration, count *int, extra *[][]byte) error {
	st, err := session(ctx, t.addr(), user, false)
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	if err := check(t.name, st, *count, -1); err != nil {
		return err
	}
	switch kind {
	case "new", "drop":
		deliver := b.dc.DeliverLDA
		if kind == "drop" {
			deliver = func(user string, msg []byte) error { return b.dc.Deliver(user, msg) }
		}
		if err := deliver(user, (*extra)[0]); err != nil {
			return err
		}
		*extra = (*extra)[1:]
		*count++
	default:
		if err := imapRun(ctx, b.dc.IMAPAddr(), user, "STORE 1 +FLAGS.SILENT (\\Deleted)", "EXPUNGE"); err != nil {
			return fmt.Errorf("expunging: %w", err)
		}
		*count--
	}
	time.Sleep(settle)
	start := time.Now()
	st, err = session(ctx, t.addr(), user, false)
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	d := time.Since(start)
	if err := check(t.name, st, *count, -1); err != nil {
		return err
	}
	b.record(b.changeRow(kind, n, settle), t.name, d)
	return nil
}
