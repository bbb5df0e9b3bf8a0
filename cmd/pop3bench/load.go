//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/postfix"
)

// loadOptions are the counts of the load workload (flags -load-*).
type loadOptions struct {
	duration    time.Duration
	sessions    int // POP3 session loops at once
	mailboxes   int
	slowloris   int // connections that never finish a command
	submissions int // a minute, through the relay
}

// The load workload's fixed settings. The gateway runs as in a container
// with loadBudget of memory: GOMEMLIMIT is containerShare of it, as the
// gateway sets it itself in a cgroup, cache.memory a quarter of it, and
// cache.in_flight is derived by the gateway from what is left.
const (
	loadBudget      = 256 << 20
	loadCache       = loadBudget / 4
	loadMessages    = 30 // in each mailbox, kept constant by the deleting sessions
	loadBigMessages = 2  // of them of 1 MiB
	loadRetrs       = 3  // RETRs a session
	loadTopLines    = 10
	// loadLoginTimeout is limits.login_timeout: a connection that has not
	// logged in by then is dropped. It is the least the config allows.
	loadLoginTimeout = 10 * time.Second
	// loadKeep is the upstream's keep_connection: an idle upstream
	// connection is logged out after it, so the gateway's goroutines and
	// descriptors are back to their baseline soon after the last session.
	loadKeep = 3 * time.Second
	// loadRuntimeGoroutines is how many goroutines more than the baseline
	// go_goroutines (runtime.NumGoroutine) may count after a load: once it
	// counted one more than before while the goroutine profile listed the
	// same goroutines, at the same places, as at the baseline, so the one
	// more was none of the gateway's. The gateway's own goroutines have to come back to
	// the baseline: one leaked per session or connection shows in the
	// hundreds here, and the gateway's tests check that none of its
	// goroutines outlives a shutdown.
	loadRuntimeGoroutines = 2
	// loadInUseGrace is how long after a session of this bench released a
	// maildrop an [IN-USE] for it still counts as expected.
	loadInUseGrace = 5 * time.Second
	loadSenders    = 10
	loadMsgSize    = 20 << 10 // each submission's body
)

// loadSizes are the sizes of a mailbox's small messages, in turn.
var loadSizes = []int{1 << 10, 3 << 10, 8 << 10, 20 << 10, 50 << 10, 120 << 10}

func loadUser(i int) string   { return fmt.Sprintf("load%03d", i+1) }
func senderUser(i int) string { return fmt.Sprintf("sender%02d@bench.test", i+1) }

// loadMailbox is what the bench knows of one mailbox while sessions run.
type loadMailbox struct {
	user string

	mu       sync.Mutex
	expected int             // messages the next session must list; -1: unknown after a failed QUIT
	deleted  map[string]bool // UIDLs of messages a confirmed QUIT deleted
	pending  int             // logins of this bench under way
	holders  int             // sessions of this bench logged in
	released time.Time       // when the last of them ended
}

// msgInfo is a delivered message as RETR must send it.
type msgInfo struct {
	size  int64
	sum   [32]byte
	class int // the size asked of message(), for a replacement
}

// catalog maps Message-ID to what RETR must send.
type catalog struct {
	mu   sync.RWMutex
	msgs map[string]msgInfo
}

func (c *catalog) add(raw []byte, class int) {
	wire := bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n"))
	id := messageID(wire)
	c.mu.Lock()
	c.msgs[id] = msgInfo{size: int64(len(wire)), sum: sha256.Sum256(wire), class: class}
	c.mu.Unlock()
}

func (c *catalog) get(id string) (msgInfo, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	m, ok := c.msgs[id]
	return m, ok
}

// messageID returns the Message-ID of a message written by message().
func messageID(msg []byte) string {
	i := bytes.Index(msg, []byte("\nMessage-ID: <"))
	if i < 0 {
		return ""
	}
	rest := msg[i+len("\nMessage-ID: <"):]
	j := bytes.IndexByte(rest, '>')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// topOf is what TOP n lines must send for a message RETR sent as msg
// (RFC 1939 §7): the header, the blank line, then lines body lines.
func topOf(msg []byte, lines int) []byte {
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	if end < 0 {
		return msg
	}
	end += 4
	for range lines {
		i := bytes.Index(msg[end:], []byte("\r\n"))
		if i < 0 {
			return msg
		}
		end += i + 2
	}
	return msg[:end]
}

// loadStats is what the load workload counted.
type loadStats struct {
	sessions   atomic.Int64 // completed sessions
	inUse      atomic.Int64 // logins answered [IN-USE] while the bench held the maildrop
	retrs      atomic.Int64
	tops       atomic.Int64
	octets     atomic.Int64
	deleted    atomic.Int64 // messages deleted by a confirmed QUIT
	rsets      atomic.Int64
	lorisConns atomic.Int64
	lorisDrops atomic.Int64

	mu         sync.Mutex
	durations  []time.Duration
	unexpected int
	samples    []string
}

// fail counts an unexpected error and keeps the first few.
func (s *loadStats) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unexpected++
	if len(s.samples) < 10 {
		s.samples = append(s.samples, fmt.Sprintf(format, args...))
	}
}

// loadRun is one run of the load workload.
type loadRun struct {
	b       *bench
	opts    loadOptions
	pop3    string // the gateway's listeners
	smtp    string
	metrics string
	pf      *postfix.Instance

	boxes   []*loadMailbox
	catalog *catalog
	stats   loadStats
	seq     atomic.Int64 // message numbers for replacements
	// sent holds each accepted submission's number.
	sentMu sync.Mutex
	sent   []int
}

// loadResult is the report of a load run.
type loadResult struct {
	opts                         loadOptions
	elapsed                      time.Duration
	sessions, inUse              int64
	retrs, tops, deleted, rsets  int64
	octets                       int64
	p50, p99, pmax               time.Duration
	unexpected                   int
	samples                      []string
	lorisConns, lorisDrops       int64
	submitted, delivered, copies int
	rssBase, rssPeak             int64
	gorBase, gorPeak, gorAfter   int
	fdBase, fdPeak, fdAfter      int
	settle                       time.Duration
	logErrors, logWarnings       int
	logSamples                   []string
	fileLimit                    string
	loadBefore, loadAfter        string // the machine's load averages
	gatewayCPU, benchCPU         time.Duration
	dovecotProblems              int // warnings, errors and fatal errors in Dovecot's log
	dovecotSamples               []string
	peaks                        map[string]float64 // of the metrics named in peaks
	metrics                      map[string]float64 // after the run
}

// failures are the goals the run missed.
func (r *loadResult) failures() []string {
	var f []string
	if r.unexpected > 0 {
		f = append(f, fmt.Sprintf("%d unexpected errors", r.unexpected))
	}
	if r.sessions == 0 {
		f = append(f, "no session completed")
	}
	if r.rssPeak >= loadBudget {
		f = append(f, fmt.Sprintf("peak RSS %.1f MiB is over the budget of %d MiB", float64(r.rssPeak)/(1<<20), loadBudget>>20))
	}
	if r.gorAfter > r.gorBase+loadRuntimeGoroutines {
		f = append(f, fmt.Sprintf("%d goroutines after the run, %d before", r.gorAfter, r.gorBase))
	}
	if r.fdAfter > r.fdBase {
		f = append(f, fmt.Sprintf("%d file descriptors after the run, %d before", r.fdAfter, r.fdBase))
	}
	if r.delivered != r.submitted || r.copies != r.submitted {
		f = append(f, fmt.Sprintf("%d submissions accepted, %d delivered (%d copies)", r.submitted, r.delivered, r.copies))
	}
	if r.lorisConns > 0 && r.lorisDrops == 0 {
		f = append(f, "no slow-loris connection was dropped")
	}
	return f
}

// load: opts.sessions POP3 session loops over opts.mailboxes mailboxes,
// opts.slowloris connections that never finish a command and
// opts.submissions messages a minute through the relay, all at once for
// opts.duration, against a gateway configured for a memory budget; then
// the checks: every session's replies, every submission delivered once,
// the gateway's RSS, goroutines and descriptors.
func (b *bench) load(ctx context.Context) error {
	o := b.loadOpts
	l := &loadRun{b: b, opts: o, catalog: &catalog{msgs: map[string]msgInfo{}}}
	users := map[string]string{}
	for i := range loadSenders {
		users[senderUser(i)] = password
	}
	pf, err := postfix.Start(postfix.Options{Users: users})
	if err != nil {
		return err
	}
	b.pf = pf
	l.pf = pf
	if err := l.seed(ctx); err != nil {
		return err
	}
	conf := filepath.Join(b.tmp, "gateway-load.yaml")
	state := filepath.Join(b.tmp, "load-state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(conf, []byte(loadConfig(b.dc.IMAPAddr(), pf.Addr(), state, o)), 0o600); err != nil {
		return err
	}
	env := []string{fmt.Sprintf("GOMEMLIMIT=%d", loadGoMemLimit)}
	if err := b.gw.restartWith(conf, env, b.profilePath("load")); err != nil {
		return err
	}
	addrs := listeningAddrs(b.gw.logPath)
	l.pop3, l.smtp, l.metrics = addrs["pop3"], addrs["submission"], addrs["http"]
	if l.smtp == "" || l.metrics == "" {
		return fmt.Errorf("gateway listeners %v: no submission or http", addrs)
	}
	res, err := l.run(ctx)
	if err != nil {
		return err
	}
	b.loadResult = res
	return nil
}

// loadGoMemLimit is what the gateway sets GOMEMLIMIT to in a container
// with loadBudget of memory: 85 %.
const loadGoMemLimit = loadBudget * 85 / 100

func loadConfig(imapAddr, smtpAddr, dataDir string, o loadOptions) string {
	return fmt.Sprintf(`# generated by pop3bench for the load workload
listen:
  pop3: "127.0.0.1:0"
  submission: "127.0.0.1:0"
  http: "127.0.0.1:0"
data_dir: %q
upstreams:
  dovecot:
    address: %q
    tls: none
    on_delete: expunge
    timeout: 60s
    keep_connection: %s
    submission:
      address: %q
      tls: none
passthrough:
  upstream: dovecot
# The memory budget: GOMEMLIMIT is set by the bench to %d MiB, 85 %% of
# %d MiB, as the gateway sets it in a container with that limit.
cache:
  memory: %dMiB
  max_message: 16MiB
limits:
  max_connections: %d
  login_timeout: %s
  # Every client of the bench comes from 127.0.0.1, and %d session loops
  # share each mailbox; senders send more than a device would.
  connections_per_ip: -1
  sessions_per_user: -1
  messages_per_hour: -1
`, dataDir, imapAddr, loadKeep, smtpAddr, loadGoMemLimit>>20, loadBudget>>20, loadCache>>20,
		o.sessions+o.slowloris+100, loadLoginTimeout, (o.sessions+o.mailboxes-1)/o.mailboxes)
}

// seed delivers loadMessages messages to every mailbox, loadBigMessages
// of them of 1 MiB and the others of loadSizes in turn, records each in
// the catalog, and lets Dovecot index them.
func (l *loadRun) seed(ctx context.Context) error {
	start := time.Now()
	l.boxes = make([]*loadMailbox, l.opts.mailboxes)
	for i := range l.boxes {
		l.boxes[i] = &loadMailbox{user: loadUser(i), expected: loadMessages, deleted: map[string]bool{}}
	}
	err := parallel(ctx, len(l.boxes), 2, func(i int) error {
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		msgs := make([][]byte, loadMessages)
		for j := range msgs {
			class := loadSizes[j%len(loadSizes)]
			if j < loadBigMessages {
				class = 1 << 20
			}
			msgs[j] = message(rng, j+1, class)
			l.catalog.add(msgs[j], class)
		}
		// Big and small messages mixed through the mailbox.
		rng.Shuffle(len(msgs), func(a, b int) { msgs[a], msgs[b] = msgs[b], msgs[a] })
		if err := l.b.dc.Deliver(l.boxes[i].user, msgs...); err != nil {
			return err
		}
		return imapIndex(ctx, l.b.dc.IMAPAddr(), l.boxes[i].user)
	})
	if err != nil {
		return err
	}
	l.b.logf("load: seeded %d mailboxes of %d messages in %v", len(l.boxes), loadMessages, time.Since(start).Round(time.Millisecond))
	return nil
}

func (l *loadRun) run(ctx context.Context) (*loadResult, error) {
	r := &loadResult{opts: l.opts, fileLimit: fileLimitNote(l.opts), peaks: map[string]float64{}}
	// Warm up: one session and one submission, then a baseline once the
	// upstream connection they left idle has been logged out.
	if err := l.session(ctx, rand.New(rand.NewPCG(0, 0)), l.boxes[0]); err != nil {
		return nil, fmt.Errorf("warm-up session: %w", err)
	}
	if err := l.submit(0); err != nil {
		return nil, fmt.Errorf("warm-up submission: %w", err)
	}
	l.sent = append(l.sent, 0)
	time.Sleep(loadKeep + time.Second)
	var err error
	if r.gorBase, err = l.goroutines(); err != nil {
		return nil, err
	}
	if r.fdBase, err = l.fds(); err != nil {
		return nil, err
	}
	r.rssBase = l.b.gw.rss.reset()
	r.gorPeak, r.fdPeak = r.gorBase, r.fdBase
	l.b.logf("load: baseline %d goroutines, %d fds, %.1f MiB; running %v: %d sessions over %d mailboxes, %d slow-loris, %d submissions a minute",
		r.gorBase, r.fdBase, float64(r.rssBase)/(1<<20), l.opts.duration, l.opts.sessions, l.opts.mailboxes, l.opts.slowloris, l.opts.submissions)

	r.loadBefore = loadAverage()
	gwCPU, benchCPU := processCPU(l.b.gw.cmd.Process.Pid), selfCPU()
	runCtx, stop := context.WithTimeout(ctx, l.opts.duration)
	defer stop()
	var wg sync.WaitGroup
	start := time.Now()
	for i := range l.opts.sessions {
		wg.Go(func() { l.loop(runCtx, i) })
	}
	for i := range l.opts.slowloris {
		wg.Go(func() { l.loris(runCtx, i) })
	}
	wg.Go(func() { l.submitter(runCtx) })
	// Sample the gateway's goroutines and descriptors while it runs.
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
			}
			if m, err := l.metricsSnapshot(); err == nil {
				for _, k := range peaks {
					r.peaks[k] = max(r.peaks[k], m[k])
				}
				r.gorPeak = max(r.gorPeak, int(m["go_goroutines"]))
			}
			if n, err := l.fds(); err == nil {
				r.fdPeak = max(r.fdPeak, n)
			}
		}
	}()
	wg.Wait()
	<-sampled
	r.elapsed = time.Since(start)
	r.loadAfter = loadAverage()
	r.gatewayCPU, r.benchCPU = processCPU(l.b.gw.cmd.Process.Pid)-gwCPU, selfCPU()-benchCPU
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	l.b.logf("load: ran %v; checking", r.elapsed.Round(time.Millisecond))
	checkStart := time.Now()

	// Every accepted submission delivered once.
	l.pf.Flush(time.Minute)
	r.submitted = len(l.sent)
	r.delivered, r.copies = l.checkDelivered(r.submitted)

	// Every mailbox holds as many messages as at the start.
	for _, mb := range l.boxes {
		n, err := l.b.dc.Count(mb.user)
		if err != nil {
			return nil, err
		}
		mb.mu.Lock()
		want := mb.expected
		mb.mu.Unlock()
		if want >= 0 && n != want {
			l.stats.fail("%s: %d messages in the maildir after the run, want %d", mb.user, n, want)
		}
	}

	// Back to the baseline, once idle upstream connections are logged out.
	settleStart := time.Now()
	for {
		r.gorAfter, err = l.goroutines()
		if err != nil {
			return nil, err
		}
		r.fdAfter, err = l.fds()
		if err != nil {
			return nil, err
		}
		if r.gorAfter <= r.gorBase && r.fdAfter <= r.fdBase || time.Since(settleStart) > loadKeep+30*time.Second {
			// Waits for the baseline itself: the runtime's extra goroutine
			// (loadRuntimeGoroutines) is allowed only once it stays.
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	r.settle = time.Since(settleStart)
	if r.metrics, err = l.metricsSnapshot(); err != nil {
		return nil, err
	}
	if hwm, err := l.b.gw.peakRSS(); err == nil {
		r.rssPeak = hwm
	}
	r.rssPeak = max(r.rssPeak, l.b.gw.rss.max())
	r.logErrors, r.logWarnings, r.logSamples = logLevels(l.b.gw.logPath)
	r.dovecotProblems, r.dovecotSamples = dovecotProblems(filepath.Join(l.b.dc.Dir(), "dovecot.log"))
	l.b.logf("load: checked in %v", time.Since(checkStart).Round(time.Millisecond))

	s := &l.stats
	r.sessions, r.inUse = s.sessions.Load(), s.inUse.Load()
	r.retrs, r.tops, r.deleted, r.rsets, r.octets = s.retrs.Load(), s.tops.Load(), s.deleted.Load(), s.rsets.Load(), s.octets.Load()
	r.lorisConns, r.lorisDrops = s.lorisConns.Load(), s.lorisDrops.Load()
	s.mu.Lock()
	r.unexpected, r.samples = s.unexpected, slices.Clone(s.samples)
	d := slices.Clone(s.durations)
	s.mu.Unlock()
	slices.Sort(d)
	if len(d) > 0 {
		r.p50, r.p99, r.pmax = d[len(d)/2], d[min(len(d)-1, len(d)*99/100)], d[len(d)-1]
	}
	return r, nil
}

// loop runs sessions on mailbox i % mailboxes until ctx ends.
func (l *loadRun) loop(ctx context.Context, i int) {
	mb := l.boxes[i%len(l.boxes)]
	rng := rand.New(rand.NewPCG(uint64(i), 42))
	// Loops start spread over a second, not in one burst.
	if !sleep(ctx, time.Duration(rng.Int64N(int64(time.Second)))) {
		return
	}
	busy := 0
	for ctx.Err() == nil {
		err := l.session(ctx, rng, mb)
		switch {
		case errors.Is(err, errBusy):
			// Another loop holds the maildrop: back off, longer each time.
			busy++
			d := time.Duration(rng.Int64N(int64(min(2*time.Second, 25*time.Millisecond<<min(busy, 7)))))
			sleep(ctx, 25*time.Millisecond+d)
		case err != nil:
			if ctx.Err() == nil {
				l.stats.fail("%s: %v", mb.user, err)
			}
			busy = 0
			sleep(ctx, 100*time.Millisecond)
		default:
			busy = 0
		}
	}
}

var errBusy = errors.New("maildrop in use")

// session is one POP3 session on mb: login, STAT, LIST, UIDL, RETR of
// loadRetrs messages, sometimes TOP, then in some sessions DELE and RSET,
// in others DELE of one or two messages that QUIT applies, after their
// replacements were delivered; QUIT. Every reply is checked. It returns
// errBusy for a login refused with [IN-USE] while another session of this
// bench held the maildrop.
func (l *loadRun) session(ctx context.Context, rng *rand.Rand, mb *loadMailbox) error {
	start := time.Now()
	c, err := pop3client.Dial(l.pop3)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	mb.mu.Lock()
	mb.pending++
	mb.mu.Unlock()
	err = c.Login(mb.user, password)
	mb.mu.Lock()
	mb.pending--
	if err == nil {
		mb.holders++
	}
	busy := mb.holders > 0 || mb.pending > 0 || time.Since(mb.released) < loadInUseGrace
	mb.mu.Unlock()
	if err != nil {
		var reply *pop3client.ErrReply
		if errors.As(err, &reply) && strings.Contains(reply.Line, "[IN-USE]") {
			if !busy {
				return fmt.Errorf("login: %v while no session of the bench held the maildrop", err)
			}
			l.stats.inUse.Add(1)
			if err := c.Quit(); err != nil {
				return fmt.Errorf("QUIT after [IN-USE]: %w", err)
			}
			return errBusy
		}
		return fmt.Errorf("login: %w", err)
	}
	defer func() {
		mb.mu.Lock()
		mb.holders--
		mb.released = time.Now()
		mb.mu.Unlock()
	}()

	count, total, err := c.Stat()
	if err != nil {
		return fmt.Errorf("STAT: %w", err)
	}
	mb.mu.Lock()
	want := mb.expected
	if want < 0 {
		mb.expected = count
	}
	mb.mu.Unlock()
	if want >= 0 && count != want {
		return fmt.Errorf("STAT: %d messages, want %d", count, want)
	}
	sizes, err := c.List()
	if err != nil {
		return fmt.Errorf("LIST: %w", err)
	}
	var sum int64
	for _, s := range sizes {
		sum += s
	}
	if len(sizes) != count || sum != total {
		return fmt.Errorf("LIST: %d messages of %d octets, STAT said %d of %d", len(sizes), sum, count, total)
	}
	uidl, err := c.UIDL()
	if err != nil {
		return fmt.Errorf("UIDL: %w", err)
	}
	if len(uidl) != count {
		return fmt.Errorf("UIDL: %d lines for %d messages", len(uidl), count)
	}
	seen := map[string]bool{}
	mb.mu.Lock()
	for _, e := range uidl {
		if seen[e.Value] || mb.deleted[e.Value] {
			mb.mu.Unlock()
			return fmt.Errorf("UIDL %q listed twice or after its delete", e.Value)
		}
		seen[e.Value] = true
	}
	mb.mu.Unlock()

	picks := rng.Perm(count)[:min(loadRetrs, count)]
	for k, p := range picks {
		n := p + 1
		body, err := c.Retr(n)
		if err != nil {
			return fmt.Errorf("RETR %d: %w", n, err)
		}
		info, ok := l.catalog.get(messageID(body))
		switch {
		case int64(len(body)) != sizes[n]:
			return fmt.Errorf("RETR %d: %d octets, LIST said %d", n, len(body), sizes[n])
		case !ok:
			return fmt.Errorf("RETR %d: a message the bench did not deliver (Message-ID %q)", n, messageID(body))
		case info.size != int64(len(body)) || info.sum != sha256.Sum256(body):
			return fmt.Errorf("RETR %d: %d octets, not the bytes delivered (%d octets, SHA-256 compared)", n, len(body), info.size)
		}
		l.stats.retrs.Add(1)
		l.stats.octets.Add(int64(len(body)))
		if k == 0 && rng.IntN(3) == 0 {
			top, err := c.Top(n, loadTopLines)
			if err != nil {
				return fmt.Errorf("TOP %d: %w", n, err)
			}
			if !bytes.Equal(top, topOf(body, loadTopLines)) {
				return fmt.Errorf("TOP %d %d: %d octets are not the message's header and first lines", n, loadTopLines, len(top))
			}
			l.stats.tops.Add(1)
		}
	}

	var gone []string
	switch r := rng.IntN(10); {
	case r < 2:
		// Delete one or two messages for real; their replacements are
		// delivered now, so the next session lists as many as this one.
		for _, p := range rng.Perm(count)[:min(1+rng.IntN(2), count)] {
			if err := c.Dele(p + 1); err != nil {
				return fmt.Errorf("DELE %d: %w", p+1, err)
			}
			gone = append(gone, uidl[p].Value)
			if err := l.replace(rng, mb, sizes[p+1]); err != nil {
				return err
			}
		}
	case r < 7:
		// Mark one and change its mind: nothing may be deleted.
		n := 1 + rng.IntN(count)
		if err := c.Dele(n); err != nil {
			return fmt.Errorf("DELE %d: %w", n, err)
		}
		if _, err := c.OK("RSET"); err != nil {
			return fmt.Errorf("RSET: %w", err)
		}
		if n2, _, err := c.Stat(); err != nil || n2 != count {
			return fmt.Errorf("STAT after RSET: %d messages, want %d (%v)", n2, count, err)
		}
		l.stats.rsets.Add(1)
	}
	if err := c.Quit(); err != nil {
		if len(gone) > 0 {
			// Whether the deletes happened is unknown: the next session
			// learns the count.
			mb.mu.Lock()
			mb.expected = -1
			mb.mu.Unlock()
		}
		return fmt.Errorf("QUIT: %w", err)
	}
	if len(gone) > 0 {
		mb.mu.Lock()
		for _, u := range gone {
			mb.deleted[u] = true
		}
		mb.mu.Unlock()
		l.stats.deleted.Add(int64(len(gone)))
	}
	d := time.Since(start)
	l.stats.sessions.Add(1)
	l.stats.mu.Lock()
	l.stats.durations = append(l.stats.durations, d)
	l.stats.mu.Unlock()
	return nil
}

// replace delivers a new message of about the size of one being deleted.
func (l *loadRun) replace(rng *rand.Rand, mb *loadMailbox, size int64) error {
	class := loadSizes[0]
	for _, c := range append(slices.Clone(loadSizes), 1<<20) {
		if int64(c) <= size {
			class = c
		}
	}
	msg := message(rng, int(100000+l.seq.Add(1)), class)
	l.catalog.add(msg, class)
	// Listed from the next session on, whose count this session's QUIT
	// brings back to the same.
	return l.b.dc.Deliver(mb.user, msg)
}

// loris holds one slow-loris connection at a time until ctx ends: it
// connects, then sends a byte every 2 to 4 seconds and never ends a line,
// half of them inside an AUTH PLAIN exchange. The gateway must drop each
// at limits.login_timeout; a drop much earlier or later, or any reply but
// -ERR, is an unexpected error.
func (l *loadRun) loris(ctx context.Context, i int) {
	rng := rand.New(rand.NewPCG(uint64(i), 99))
	if !sleep(ctx, time.Duration(rng.Int64N(int64(2*time.Second)))) {
		return
	}
	for ctx.Err() == nil {
		l.lorisOnce(ctx, rng, i%2 == 1)
	}
}

func (l *loadRun) lorisOnce(ctx context.Context, rng *rand.Rand, auth bool) {
	nc, err := net.DialTimeout("tcp", l.pop3, 10*time.Second)
	if err != nil {
		l.stats.fail("slow-loris: connect: %v", err)
		sleep(ctx, time.Second)
		return
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	start := time.Now()
	r := bufio.NewReader(nc)
	nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	greeting, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, "+OK") {
		if ctx.Err() == nil {
			l.stats.fail("slow-loris: greeting %q: %v", greeting, err)
		}
		return
	}
	l.stats.lorisConns.Add(1)
	payload := "USER slow-loris-never-ends-this-line"
	if auth {
		if _, err := io.WriteString(nc, "AUTH PLAIN\r\n"); err != nil {
			l.stats.fail("slow-loris: AUTH: %v", err)
			return
		}
		if line, err := r.ReadString('\n'); err != nil || line != "+ \r\n" {
			if ctx.Err() == nil {
				l.stats.fail("slow-loris: AUTH PLAIN: %q: %v", line, err)
			}
			return
		}
		payload = "AHNsb3ctbG9yaXMAbmV2ZXItZW5kcy10aGlzLWxpbmU"
	}
	for k := 0; ; k++ {
		if _, err := nc.Write([]byte{payload[k%len(payload)]}); err != nil {
			// A write after the drop: the read below tells.
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		} else {
			nc.SetReadDeadline(time.Now().Add(2*time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))))
		}
		line, err := r.ReadString('\n')
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && line == "" {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		// The gateway answered or closed: a drop.
		d := time.Since(start)
		switch {
		case line != "" && !strings.HasPrefix(line, "-ERR"):
			l.stats.fail("slow-loris: unexpected reply %q", line)
		case d < loadLoginTimeout-2*time.Second || d > loadLoginTimeout+15*time.Second:
			l.stats.fail("slow-loris: dropped after %v, login_timeout is %v", d.Round(time.Millisecond), loadLoginTimeout)
		default:
			l.stats.lorisDrops.Add(1)
		}
		return
	}
}

// submitter sends opts.submissions messages a minute through the relay,
// each from its own connection, until ctx ends.
func (l *loadRun) submitter(ctx context.Context) {
	if l.opts.submissions <= 0 {
		return
	}
	t := time.NewTicker(time.Minute / time.Duration(l.opts.submissions))
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for seq := 1; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wg.Go(func() {
			if err := l.submit(seq); err != nil {
				l.stats.fail("submission %d: %v", seq, err)
				return
			}
			l.sentMu.Lock()
			l.sent = append(l.sent, seq)
			l.sentMu.Unlock()
		})
	}
}

// submission is message seq as the bench sends it, with CRLF line endings.
func submission(seq int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <rcpt%d@dest.test>\r\nSubject: load %d\r\nMessage-ID: <load-%d@pop3bench.example>\r\nX-Load-Seq: %d\r\n\r\n",
		senderUser(seq%loadSenders), seq, seq, seq, seq)
	b.WriteString(".a line that starts with a dot\r\n")
	for i := 0; b.Len() < loadMsgSize; i++ {
		line := fmt.Sprintf("submission %d line %d ", seq, i)
		b.WriteString(line + strings.Repeat("x", 76-len(line)) + "\r\n")
	}
	return b.String()
}

// submit sends message seq through the relay: AUTH, MAIL, RCPT, DATA.
func (l *loadRun) submit(seq int) error {
	nc, err := net.DialTimeout("tcp", l.smtp, 10*time.Second)
	if err != nil {
		return err
	}
	nc.SetDeadline(time.Now().Add(2 * time.Minute))
	c := smtp.NewClient(nc)
	defer c.Close()
	from := senderUser(seq % loadSenders)
	if err := c.Auth(sasl.NewPlainClient("", from, password)); err != nil {
		return fmt.Errorf("AUTH: %w", err)
	}
	if err := c.SendMail(from, []string{fmt.Sprintf("rcpt%d@dest.test", seq)}, strings.NewReader(submission(seq))); err != nil {
		return err
	}
	return c.Quit()
}

// checkDelivered reads Postfix's delivery files: each must be one of the
// accepted messages, whole, and each accepted message must be there once.
// It returns how many accepted messages arrived and the number of files.
func (l *loadRun) checkDelivered(want int) (delivered, copies int) {
	msgs, err := l.pf.WaitMessages(want, time.Minute)
	if err != nil {
		l.stats.fail("reading Postfix's deliveries: %v", err)
		return 0, 0
	}
	count := map[int]int{}
	for _, m := range msgs {
		head, body, ok := bytes.Cut(m, []byte("\n\n"))
		i := bytes.Index(head, []byte("\nX-Load-Seq: "))
		if !ok || i < 0 {
			l.stats.fail("a delivered message without X-Load-Seq")
			continue
		}
		seqLine, _, _ := bytes.Cut(head[i+len("\nX-Load-Seq: "):], []byte("\n"))
		seq, err := strconv.Atoi(string(seqLine))
		if err != nil {
			l.stats.fail("delivered X-Load-Seq %q", seqLine)
			continue
		}
		_, wantBody, _ := strings.Cut(strings.ReplaceAll(submission(seq), "\r\n", "\n"), "\n\n")
		if string(body) != wantBody {
			l.stats.fail("submission %d delivered with a body of %d octets, sent %d", seq, len(body), len(wantBody))
		}
		count[seq]++
	}
	l.sentMu.Lock()
	defer l.sentMu.Unlock()
	accepted := map[int]bool{}
	for _, seq := range l.sent {
		accepted[seq] = true
		switch n := count[seq]; {
		case n == 0:
			l.stats.fail("submission %d accepted but not delivered", seq)
		case n > 1:
			l.stats.fail("submission %d delivered %d times", seq, n)
		}
		if count[seq] > 0 {
			delivered++
		}
	}
	for seq := range count {
		if !accepted[seq] {
			l.stats.fail("submission %d delivered but not accepted", seq)
		}
	}
	return delivered, len(msgs)
}

// metricsSnapshot reads the gateway's metrics, on a connection of its
// own that is closed after the answer, so the reading leaves nothing open
// in the gateway. It maps each sample's name with its labels to its value.
func (l *loadRun) metricsSnapshot() (map[string]float64, error) {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + l.metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// goroutines reads go_goroutines from the gateway's metrics.
func (l *loadRun) goroutines() (int, error) {
	m, err := l.metricsSnapshot()
	if err != nil {
		return 0, err
	}
	n, ok := m["go_goroutines"]
	if !ok {
		return 0, errors.New("no go_goroutines in the gateway's metrics")
	}
	return int(n), nil
}

// peaks are the metrics whose highest value the load report shows.
var peaks = []string{
	"go_goroutines",
	"go_memstats_heap_inuse_bytes",
	"go_memstats_stack_inuse_bytes",
	"pop3gw_cache_bytes",
	"pop3gw_memory_budget_used_bytes",
}

// fds counts the gateway's open file descriptors.
func (l *loadRun) fds() (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", l.b.gw.cmd.Process.Pid))
	return len(ents), err
}

// logLevels counts the ERROR and WARN records of the gateway's JSON log
// and returns the first few of them.
func logLevels(path string) (errs, warns int, samples []string) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, `"level":"ERROR"`):
			errs++
		case strings.Contains(line, `"level":"WARN"`):
			warns++
		default:
			continue
		}
		if len(samples) < 5 {
			samples = append(samples, line)
		}
	}
	return errs, warns, samples
}

// dovecotProblems counts the warnings, errors and fatal errors in
// Dovecot's log, such as a process or client limit reached, and returns
// each kind (the text after the level) with its count.
func dovecotProblems(path string) (n int, kinds []string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, []string{err.Error()}
	}
	counts := map[string]int{}
	for line := range strings.SplitSeq(string(data), "\n") {
		for _, level := range []string{": Warning: ", ": Error: ", ": Fatal: ", ": Panic: "} {
			if _, text, ok := strings.Cut(line, level); ok {
				n++
				counts[strings.TrimPrefix(level, ": ")+text]++
				break
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		kinds = append(kinds, fmt.Sprintf("%d × %s", counts[k], k))
	}
	return n, kinds
}

// processCPU is the CPU time, user and system, process pid has used.
func processCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields 14 and 15 (utime, stime), after the command in parentheses.
	_, rest, _ := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	// USER_HZ is 100 on Linux.
	return time.Duration(u+st) * 10 * time.Millisecond
}

// selfCPU is the CPU time the bench itself has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadAverage is the machine's load averages over 1, 5 and 15 minutes:
// other work on the machine slows every party of the run.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// fileLimitNote says whether the open file limit is enough for the run.
func fileLimitNote(o loadOptions) string {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return "unknown: " + err.Error()
	}
	// Both ends of every client connection are on this machine, and the
	// gateway has an upstream connection per session besides.
	need := uint64(2*o.sessions + o.slowloris + 1000)
	if lim.Cur < need {
		return fmt.Sprintf("%d, below the %d this run needs: raise the hard limit (ulimit -Hn)", lim.Cur, need)
	}
	return strconv.FormatUint(lim.Cur, 10)
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// listeningAddrs finds every listener's address in the gateway's JSON log.
func listeningAddrs(logPath string) map[string]string {
	addrs := map[string]string{}
	f, err := os.Open(logPath)
	if err != nil {
		return addrs
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec struct{ Msg, Listener, Addr string }
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "listening" {
			addrs[rec.Listener] = rec.Addr
		}
	}
	return addrs
}
