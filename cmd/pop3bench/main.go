//go:build linux

// Command pop3bench measures the gateway side by side with Dovecot, on
// loopback only: the same POP3 workloads run against
//
//   - gateway: the gateway binary, built from this module, in front of
//     Dovecot's IMAP;
//   - imapc: a second Dovecot whose pop3d serves the first one's IMAP
//     mailboxes (mail_location = imapc:), the other way to put POP3 in
//     front of an IMAP server;
//   - direct: Dovecot's own pop3d on the same maildirs.
//
// It needs the Debian packages dovecot-imapd and dovecot-pop3d, and Go to
// build the gateway. Run it from the module:
//
//	go run ./cmd/pop3bench [-quick] [-rounds N] [-only poll,cold,...] [-keep] [-dovecot-defaults]
//
// The load workload runs only when named: it puts sustained load on the
// gateway alone (POP3 sessions, slow-loris connections and submissions
// through the relay to a private Postfix, which needs root) and checks
// every reply, the memory budget and that nothing leaks:
//
//	go run ./cmd/pop3bench -only load [-load-duration 60s] [-load-sessions 1000] [-load-mailboxes 100] [-load-slowloris 500] [-load-submissions 200]
//
// See README.md, "Performance", for what each workload does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/dovecot"
	"github.com/pop3gw/gateway/internal/testkit/postfix"
)

// password is the password of every bench user; the imapc instance passes
// each user's own password upstream, so one common password is not needed
// but keeps the setup short.
const password = "bench-pass"

// workloads in the order they run; all but load run by default.
var workloads = []string{"poll", "cold", "warm", "big", "concurrent", "change", "idle", "memory", "load"}

// compared are the workloads that run against the three targets.
var compared = []string{"poll", "cold", "warm", "big", "concurrent", "change"}

// sizes are the counts of a run.
type sizes struct {
	pollMsgs, pollSessions int
	pollSize               int // octets per message
	coldMsgs, coldSize     int
	bigSize                int
	concMailboxes          int // one session at a time per mailbox
	concSessions           int // sessions per mailbox, one after another
	concMsgs, concSize     int
	idleSessions           int
	idleParallel           int   // logins at a time while opening them
	memSessions, memSize   int   // concurrent RETRs, one message each
	changeMsgs             []int // the change workload's mailboxes
}

var full = sizes{
	pollMsgs: 5000, pollSessions: 30, pollSize: 2 << 10,
	coldMsgs: 400, coldSize: 30 << 10,
	bigSize:       30 << 20,
	concMailboxes: 8, concSessions: 5, concMsgs: 50, concSize: 30 << 10,
	idleSessions: 1000, idleParallel: 8,
	memSessions: 64, memSize: 16 << 20,
	changeMsgs: []int{10000},
}

var quick = sizes{
	pollMsgs: 1000, pollSessions: 10, pollSize: 2 << 10,
	coldMsgs: 100, coldSize: 30 << 10,
	bigSize:       30 << 20,
	concMailboxes: 8, concSessions: 2, concMsgs: 20, concSize: 30 << 10,
	idleSessions: 200, idleParallel: 8,
	memSessions: 64, memSize: 16 << 20,
	changeMsgs: []int{2000},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(fs *flag.FlagSet, w io.Writer) func() {
	return func() {
		fmt.Fprintf(w, "usage: go run ./cmd/pop3bench [flags]\n\nworkloads: %s\n\nflags:\n", strings.Join(workloads, ", "))
		fs.VisitAll(func(f *flag.Flag) {
			if f.Name == "cpuprofile" {
				return
			}
			fmt.Fprintf(w, "  -%s\n    \t%s", f.Name, f.Usage)
			if f.DefValue != "" && f.DefValue != "false" {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
			fmt.Fprintln(w)
		})
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pop3bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usage(fs, stderr)
	rounds := fs.Int("rounds", 3, "rounds per workload and target; the best is reported (1 with -quick unless set)")
	quickRun := fs.Bool("quick", false, "smoke run with small counts and one round, under a minute")
	only := fs.String("only", "", "comma-separated workloads to run (default all)")
	keep := fs.Bool("keep", false, "keep the temporary directories (configs, logs, maildirs)")
	defaults := fs.Bool("dovecot-defaults", false, "run Dovecot with its default process model (a new process per connection and per session) instead of reusing processes")
	changeBig := fs.Bool("change-big", false, "the change workload also on a mailbox of 200,000 messages (writing and indexing it takes a few minutes)")
	var settles settleList
	fs.Var(&settles, "change-settle", "the change workload waits this long between a change and the timed session; a comma-separated list measures each wait, in rows named kind-N@wait")
	cpuprofile := fs.String("cpuprofile", "", "write the gateway's CPU profile per workload to FILE.<workload>")
	var lo loadOptions
	fs.DurationVar(&lo.duration, "load-duration", time.Minute, "how long the load workload runs")
	fs.IntVar(&lo.sessions, "load-sessions", 1000, "load: POP3 session loops at once")
	fs.IntVar(&lo.mailboxes, "load-mailboxes", 100, "load: mailboxes the session loops share")
	fs.IntVar(&lo.slowloris, "load-slowloris", 500, "load: connections that send a byte every few seconds and never log in")
	fs.IntVar(&lo.submissions, "load-submissions", 200, "load: messages a minute through the SMTP relay")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pop3bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	roundsSet := false
	fs.Visit(func(f *flag.Flag) { roundsSet = roundsSet || f.Name == "rounds" })
	sz := full
	if *quickRun {
		sz = quick
		if !roundsSet {
			*rounds = 1
		}
	}
	if *changeBig {
		sz.changeMsgs = append(slices.Clip(sz.changeMsgs), 200000)
	}
	if *rounds < 1 {
		fmt.Fprintln(stderr, "pop3bench: -rounds must be at least 1")
		return 2
	}
	if lo.duration <= 0 || lo.sessions < 1 || lo.mailboxes < 1 || lo.mailboxes > lo.sessions || lo.slowloris < 0 || lo.submissions < 0 {
		fmt.Fprintln(stderr, "pop3bench: -load-duration must be positive, -load-sessions at least -load-mailboxes, which is at least 1")
		return 2
	}
	selected := map[string]bool{}
	if *only == "" {
		for _, w := range workloads {
			selected[w] = w != "load"
		}
	} else {
		for _, w := range strings.Split(*only, ",") {
			w = strings.TrimSpace(w)
			if !slices.Contains(workloads, w) {
				fmt.Fprintf(stderr, "pop3bench: unknown workload %q; known: %s\n", w, strings.Join(workloads, ", "))
				return 2
			}
			selected[w] = true
		}
	}
	// warm is the second pass of the cold sessions.
	if selected["warm"] {
		selected["cold"] = true
	}
	if selected["cold"] {
		selected["warm"] = true
	}
	if dovecot.Binary() == "" {
		fmt.Fprintln(stderr, "pop3bench: dovecot not found: install the Debian packages dovecot-imapd and dovecot-pop3d")
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// A second signal kills the bench at once.
		stop()
	}()

	b := &bench{
		sz:         sz,
		rounds:     *rounds,
		selected:   selected,
		keep:       *keep,
		reuse:      !*defaults,
		cpuprofile: *cpuprofile,
		settles:    settles.or0(),
		loadOpts:   lo,
		log:        stderr,
		results:    map[string]map[string]time.Duration{},
	}
	err := b.run(ctx)
	cerr := b.cleanup()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted (%v)", err)
		}
		fmt.Fprintln(stderr, "pop3bench:", err)
		return 1
	}
	b.report(stdout)
	if cerr != nil {
		fmt.Fprintln(stderr, "pop3bench: cleanup:", cerr)
		return 1
	}
	if r := b.loadResult; r != nil {
		if f := r.failures(); len(f) > 0 {
			fmt.Fprintln(stderr, "pop3bench: load: goals missed:", strings.Join(f, "; "))
			return 1
		}
	}
	return 0
}

// bench is one run: the servers, the gateway and the results.
type bench struct {
	sz         sizes
	rounds     int
	selected   map[string]bool
	keep       bool
	reuse      bool // dovecot.Options.ReuseProcesses
	cpuprofile string
	settles    []time.Duration // between a change and the timed session
	loadOpts   loadOptions
	log        io.Writer

	tmp     string // gateway binary, config and logs
	dc      *dovecot.Instance
	imapc   *dovecot.Instance
	gw      *gateway
	pf      *postfix.Instance // the relay's upstream, for load
	targets []target

	machine  []string
	results  map[string]map[string]time.Duration // workload -> target -> best
	memory   []memLine
	notes    []string
	profiles []string

	loadResult *loadResult
}

type target struct {
	name string
	addr func() string
}

type memLine struct {
	what  string
	bytes int64
	extra string
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "pop3bench: "+format+"\n", args...)
}

func (b *bench) run(ctx context.Context) error {
	want := b.sz.idleSessions*2 + 1000
	if b.selected["load"] {
		want = max(want, 2*b.loadOpts.sessions+b.loadOpts.slowloris+1000)
	}
	if err := raiseFileLimit(want); err != nil {
		b.logf("warning: %v", err)
	}
	var err error
	b.tmp, err = os.MkdirTemp("", "pop3bench")
	if err != nil {
		return err
	}
	b.machine = machineInfo()

	users := b.users()
	b.logf("starting Dovecot (%d users)", len(users))
	// The load workload's sessions can each hold an IMAP connection, and
	// a login refused [IN-USE] may open one before it is refused.
	conns := b.sz.idleSessions + 200
	if b.selected["load"] {
		conns = max(conns, b.loadOpts.sessions+200)
	}
	b.dc, err = dovecot.Start(dovecot.Options{
		Users:          users,
		MaxConnections: conns,
		ReuseProcesses: b.reuse,
		Keep:           b.keep,
	})
	if err != nil {
		return err
	}
	comparing := slices.ContainsFunc(compared, func(w string) bool { return b.selected[w] })
	if comparing {
		b.imapc, err = dovecot.Start(dovecot.Options{
			Users:          users,
			IMAPC:          b.dc.IMAPAddr(),
			ReuseProcesses: b.reuse,
			Keep:           b.keep,
		})
		if err != nil {
			return err
		}
	}
	b.logf("building the gateway")
	b.gw, err = buildGateway(ctx, b.tmp, b.dc.IMAPAddr(), b.cpuprofile != "")
	if err != nil {
		return err
	}
	model := "Dovecot processes: reused (service_count = 0 for login, 100 for imap and pop3; process_min_avail = 2)"
	if !b.reuse {
		model = "Dovecot processes: defaults (a new login process per connection, a new mail process per session)"
	}
	b.machine = append(b.machine, "gateway: "+b.gw.version, model)
	if comparing {
		b.targets = []target{
			{"gateway", func() string { return b.gw.addr }},
			{"imapc", b.imapc.POP3Addr},
			{"direct", b.dc.POP3Addr},
		}
	}
	if err := b.seed(ctx); err != nil {
		return err
	}
	for _, w := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"poll", b.poll},
		{"cold", b.coldWarm},
		{"big", b.big},
		{"concurrent", b.concurrent},
		{"change", b.change},
		{"idle", b.idle},
		{"memory", b.memoryBound},
		{"load", b.load},
	} {
		if !b.selected[w.name] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// A fresh gateway per workload: empty cache, no pooled
		// connections, and an RSS that belongs to this workload.
		if err := b.gw.restart(b.profilePath(w.name)); err != nil {
			return err
		}
		b.logf("workload %s", w.name)
		start := time.Now()
		if err := w.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
		b.logf("workload %s done in %v", w.name, time.Since(start).Round(time.Millisecond))
		if err := b.gw.stop(); err != nil {
			return err
		}
		if p := b.profilePath(w.name); p != "" {
			b.profiles = append(b.profiles, p)
		}
	}
	return nil
}

func (b *bench) profilePath(workload string) string {
	if b.cpuprofile == "" {
		return ""
	}
	return b.cpuprofile + "." + workload
}

// cleanup stops everything that was started, in reverse order.
func (b *bench) cleanup() error {
	var errs []error
	if b.gw != nil {
		errs = append(errs, b.gw.stop())
	}
	if b.pf != nil {
		b.pf.Stop()
	}
	if b.imapc != nil {
		errs = append(errs, b.imapc.Stop())
	}
	if b.dc != nil {
		errs = append(errs, b.dc.Stop())
	}
	if b.tmp != "" {
		if b.keep {
			b.logf("kept %s", b.tmp)
			if b.dc != nil {
				b.logf("kept %s (Dovecot)", b.dc.Dir())
			}
			if b.imapc != nil {
				b.logf("kept %s (imapc Dovecot)", b.imapc.Dir())
			}
		} else {
			errs = append(errs, os.RemoveAll(b.tmp))
		}
	}
	return errors.Join(errs...)
}

func machineInfo() []string {
	model := "unknown"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown"
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(data))
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if v, ok := statusField(string(data), "MemTotal"); ok {
			mem = fmt.Sprintf(", %.0f GiB RAM", float64(v)/(1<<30))
		}
	}
	dv, err := dovecot.Version()
	if err != nil {
		dv = "unknown: " + err.Error()
	}
	return []string{
		fmt.Sprintf("machine: %d × %s%s, Linux %s", runtime.NumCPU(), model, mem, kernel),
		fmt.Sprintf("Go: %s %s/%s; Dovecot: %s", runtime.Version(), runtime.GOOS, runtime.GOARCH, dv),
	}
}

// raiseFileLimit raises RLIMIT_NOFILE to its hard limit; the gateway and
// Dovecot inherit it.
func raiseFileLimit(want int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < uint64(want) {
		return fmt.Errorf("open file limit %d is below the %d the idle workload needs", lim.Cur, want)
	}
	return nil
}
