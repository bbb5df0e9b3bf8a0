//go:build linux

package main

import (
	"fmt"
	"io"
	"runtime"
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
		return "after one new message delivered by Dovecot's LDA (new-N) or written into Maildir/new by another program (drop-N), or one expunged by another IMAP client (expunge-N), on a mailbox of N messages of 1 KiB (@D: the session D after the change): 1 session: login, UIDL, QUIT; gateway and direct only"
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
	if len(b.results) == 0 && len(b.memory) == 0 && b.loadResult != nil {
		// The load workload alone.
		for _, m := range b.machine {
			fmt.Fprintln(out, m)
		}
		b.loadReport(out)
		return
	}
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
	if b.loadResult != nil {
		b.loadReport(out)
	}
}

// loadReport prints the load workload's results as a Markdown table.
func (b *bench) loadReport(out io.Writer) {
	r := b.loadResult
	o := r.opts
	secs := r.elapsed.Seconds()
	mb := func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
	fmt.Fprintf(out, "\nload: %s POP3 session loops over %d mailboxes, %s slow-loris connections, %d submissions a minute, for %v\n\n",
		thousands(o.sessions), o.mailboxes, thousands(o.slowloris), o.submissions, o.duration)
	rows := [][2]string{
		{"sessions completed", fmt.Sprintf("%s in %.1f s: %.1f a second", thousands(int(r.sessions)), secs, float64(r.sessions)/secs)},
		{"session time p50 / p99 / max", fmt.Sprintf("%s / %s / %s", ms(r.p50), ms(r.p99), ms(r.pmax))},
		{"logins answered [IN-USE] (another loop held the maildrop; retried)", thousands(int(r.inUse))},
		{"RETR (each checked against the delivered bytes) / TOP", fmt.Sprintf("%s (%.0f MB) / %s", thousands(int(r.retrs)), float64(r.octets)/1e6, thousands(int(r.tops)))},
		{"messages deleted at QUIT (and replaced) / DELE then RSET", fmt.Sprintf("%s / %s", thousands(int(r.deleted)), thousands(int(r.rsets)))},
		{"unexpected errors", fmt.Sprint(r.unexpected)},
		{"slow-loris connections / dropped at login_timeout", fmt.Sprintf("%s / %s", thousands(int(r.lorisConns)), thousands(int(r.lorisDrops)))},
		{"submissions delivered once / accepted", fmt.Sprintf("%d / %d (%d delivery files)", r.delivered, r.submitted, r.copies)},
		{"gateway RSS: baseline / peak / budget", fmt.Sprintf("%s / %s / %d MiB", mb(r.rssBase), mb(r.rssPeak), loadBudget>>20)},
		{"gateway heap in use / stacks / cached bodies / bodies in flight (peaks, sampled each second)", fmt.Sprintf("%s / %s / %s / %s",
			mb(int64(r.peaks["go_memstats_heap_inuse_bytes"])), mb(int64(r.peaks["go_memstats_stack_inuse_bytes"])),
			mb(int64(r.peaks["pop3gw_cache_bytes"])), mb(int64(r.peaks["pop3gw_memory_budget_used_bytes"])))},
		{"upstream logins / selects / fetches (IMAP)", fmt.Sprintf("%s / %s / %s",
			thousands(int(r.metrics[`pop3gw_upstream_duration_seconds_count{operation="login"}`])),
			thousands(int(r.metrics[`pop3gw_upstream_duration_seconds_count{operation="select"}`])),
			thousands(int(r.metrics[`pop3gw_upstream_duration_seconds_count{operation="fetch"}`]+r.metrics[`pop3gw_upstream_duration_seconds_count{operation="fetch-batch"}`])))},
		{"gateway goroutines: baseline / peak / after", fmt.Sprintf("%d / %d / %d", r.gorBase, r.gorPeak, r.gorAfter)},
		{"gateway file descriptors: baseline / peak / after", fmt.Sprintf("%d / %d / %d (after %.1f s)", r.fdBase, r.fdPeak, r.fdAfter, r.settle.Seconds())},
		{"gateway log records ERROR / WARN", fmt.Sprintf("%d / %d", r.logErrors, r.logWarnings)},
		{"Dovecot log warnings and errors", fmt.Sprint(r.dovecotProblems)},
		{"open file limit", r.fileLimit},
		{"CPU time of the gateway / of the bench's clients (of cores × the run)", fmt.Sprintf("%.1f s / %.1f s (%.0f s)",
			r.gatewayCPU.Seconds(), r.benchCPU.Seconds(), float64(runtime.NumCPU())*secs)},
		{"machine load average (1, 5, 15 min) before / after", r.loadBefore + " / " + r.loadAfter},
	}
	fmt.Fprintln(out, "| load | |")
	fmt.Fprintln(out, "| --- | ---: |")
	for _, row := range rows {
		fmt.Fprintf(out, "| %s | %s |\n", row[0], row[1])
	}
	fmt.Fprintf(out, "\nbudget: the gateway runs as in a container of %d MiB (GOMEMLIMIT %d MiB, 85 %% of it, cache.memory %d MiB, cache.in_flight derived, limits.max_connections %d); the peak is VmHWM, the whole process\n",
		loadBudget>>20, loadGoMemLimit>>20, loadCache>>20, o.sessions+o.slowloris+100)
	fmt.Fprintf(out, "Dovecot: process and client limits raised for %s connections (-load-sessions + 200); limits.login_timeout %v, keep_connection %v\n",
		thousands(o.sessions+200), loadLoginTimeout, loadKeep)
	for _, s := range r.samples {
		fmt.Fprintln(out, "unexpected:", s)
	}
	for _, s := range r.logSamples {
		fmt.Fprintln(out, "gateway log:", s)
	}
	for _, s := range r.dovecotSamples {
		fmt.Fprintln(out, "Dovecot log:", s)
	}
	if f := r.failures(); len(f) > 0 {
		fmt.Fprintln(out, "goals missed:", strings.Join(f, "; "))
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
