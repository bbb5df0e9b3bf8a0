//go:build linux

package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// describe says what a workload did, with this run's counts.
func (b *bench) describe(w string) string {
	sz := b.sz
	switch w {
	case "poll":
		return fmt.Sprintf("%d sequential sessions: login, UIDL, QUIT; %s messages", sz.pollSessions, thousands(sz.pollMsgs))
	case "cold":
		return fmt.Sprintf("1 session: login, UIDL, RETR %d × %d KiB (%.1f MB), QUIT; mail never read before", sz.coldMsgs, sz.coldSize>>10, float64(coldOctets)/1e6)
	case "warm":
		return "the same session again right after cold"
	case "big":
		return fmt.Sprintf("1 session: login, UIDL, RETR of one %d MiB message, QUIT", sz.bigSize>>20)
	case "change":
		return "after one new message (new-N) or one expunged by another IMAP client (expunge-N), on a mailbox of N messages of 1 KiB: 1 session: login, UIDL, QUIT; gateway and direct only"
	case "concurrent":
		return fmt.Sprintf("%d mailboxes at once, %d sessions each one after another: login, UIDL, RETR %d × %d KiB, QUIT",
			sz.concMailboxes, sz.concSessions, sz.concMsgs, sz.concSize>>10)
	}
	return ""
}

// rows are the table's rows: the workloads, the change workload by
// mailbox size and kind of change.
func (b *bench) rows() []string {
	var rows []string
	for _, w := range workloads {
		if w == "change" {
			rows = append(rows, b.changeRows()...)
			continue
		}
		rows = append(rows, w)
	}
	return rows
}

func (b *bench) report(out io.Writer) {
	fmt.Fprintf(out, "pop3bench: best of %d round(s); times in seconds; ratios: lower is better for the gateway\n", b.rounds)
	for _, m := range b.machine {
		fmt.Fprintln(out, m)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tgateway\timapc\tdirect\tgateway/imapc\tgateway/direct\t")
	for _, w := range b.rows() {
		r, ok := b.results[w]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", w,
			secs(r["gateway"]), secs(r["imapc"]), secs(r["direct"]),
			ratio(r["gateway"], r["imapc"]), ratio(r["gateway"], r["direct"]))
	}
	tw.Flush()
	fmt.Fprintln(out)
	for _, w := range workloads {
		if _, ok := b.results[w]; ok || w == "change" && b.changed() {
			fmt.Fprintf(out, "  %-10s %s\n", w, b.describe(w))
		}
	}
	if len(b.memory) > 0 {
		fmt.Fprintln(out, "\ngateway memory (VmRSS from /proc, sampled every 10 ms; a fresh gateway per workload):")
		for _, m := range b.memory {
			fmt.Fprintf(out, "  %-34s %7.1f MiB", m.what, float64(m.bytes)/(1<<20))
			if m.extra != "" {
				fmt.Fprintf(out, "  (%s)", m.extra)
			}
			fmt.Fprintln(out)
		}
	}
	for _, n := range b.notes {
		fmt.Fprintln(out, "note:", n)
	}
	for _, p := range b.profiles {
		fmt.Fprintln(out, "gateway CPU profile:", p)
	}
}

func secs(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", d.Seconds())
}

func ratio(a, b time.Duration) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a.Seconds()/b.Seconds())
}

// thousands formats n with commas: 5000 -> "5,000".
func thousands(n int) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// changed tells whether the change workload has results.
func (b *bench) changed() bool {
	for _, row := range b.changeRows() {
		if _, ok := b.results[row]; ok {
			return true
		}
	}
	return false
}
