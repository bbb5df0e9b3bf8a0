// Package export copies an account's mail out of any store the gateway
// serves, through the store seam, into a directory: one .eml file per
// message, a Maildir++ tree or mboxrd files. A state file in the directory
// records each message written whole, keyed by the identity the UIDL store
// uses, so a second run fetches only new mail, a renumbered mailbox
// (UIDVALIDITY) is not exported again, and a run cut short (a signal, a
// kill, a dropped connection) is continued by the next. Every file is
// written under a temporary name, synced and renamed when whole.
package export

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/pop3gw/gateway/internal/durable"
)

// Options are the choices of one export.
type Options struct {
	// Open logs in to the account; Mailbox is the account's default
	// mailbox, exported when neither Folder nor All is set.
	Open    Opener
	Mailbox string
	Dir     string
	Format  Format // EML when empty
	Folder  string // -mailbox
	All     bool
	Since   time.Time // messages that arrived before it are left out
	// Connections is how many sessions fetch at once; 1 when zero.
	Connections int
	// LimitRate bounds the octets read from the store per second; 0: no
	// bound.
	LimitRate int64
	Verify    bool
	// Progress receives a bar when Terminal is set, else a plain line
	// every Interval (10 s when zero).
	Progress io.Writer
	Terminal bool
	Interval time.Duration
	// BatchSize is how many messages one request fetches; 0: 200.
	BatchSize int
	Log       *slog.Logger

	// wrapFile, set by tests, sits under every file written.
	wrapFile func(io.Writer) io.Writer
	// retryPause is the first pause before a batch is tried again; 1 s
	// when zero (tests shorten it).
	retryPause time.Duration
}

// Failure is a message that was not exported; the next run tries again.
type Failure struct {
	Folder string
	UIDL   string
	Reason string
}

func (f Failure) String() string { return fmt.Sprintf("%s %s: %s", f.Folder, f.UIDL, f.Reason) }

// Summary is what a run did.
type Summary struct {
	Folders  int
	Listed   int   // messages in the folders exported
	Known    int   // exported by an earlier run
	Old      int   // left out by Since
	Exported int   // written by this run
	Bytes    int64 // octets read from the store for them
	Fetched  int   // message bodies read from the store (verify included)
	Gone     int   // expunged by someone else before they could be read
	Verified int
	Failures []Failure
	Elapsed  time.Duration
}

// Errors that end a run with one line.
var (
	ErrNoMailbox = errors.New("no such mailbox")
	ErrLocal     = errors.New("writing the export failed")
)

// Run exports the mail. A message the store cannot give is a Failure in
// the summary; a failure to write (a full disk), a refused login or an
// unknown mailbox ends the run with an error, leaving every file written
// so far whole and recorded.
func Run(ctx context.Context, opts Options) (*Summary, error) {
	e, err := newExporter(opts)
	if err != nil {
		return nil, err
	}
	defer e.close()
	return e.run(ctx)
}

type exporter struct {
	opts    Options
	log     *slog.Logger
	tmpDir  string
	limiter *rate.Limiter
	start   time.Time

	mu    sync.Mutex // guards what follows, and commits
	j     *journal
	sum   Summary
	dirty map[string]bool // directories with renames, and mbox files, not yet synced
	// maildirNames are the Maildir files found at the start, by folder
	// and the unique part of their name.
	maildirNames map[string]string
	sources      []*source

	prog *progress

	// jobs takes written messages to the committers; nil for mbox.
	jobs       chan commitJob
	committing sync.WaitGroup
}

func newExporter(opts Options) (*exporter, error) {
	opts.Format = cmp.Or(opts.Format, EML)
	if !slices.Contains(Formats, opts.Format) {
		return nil, fmt.Errorf("unknown format %q (eml, maildir or mbox)", opts.Format)
	}
	opts.Connections = max(opts.Connections, 1)
	opts.BatchSize = cmp.Or(opts.BatchSize, 200)
	opts.Interval = cmp.Or(opts.Interval, 10*time.Second)
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	e := &exporter{opts: opts, log: opts.Log, dirty: make(map[string]bool), maildirNames: make(map[string]string), start: time.Now()}
	if opts.LimitRate > 0 {
		burst := int(min(opts.LimitRate, 1<<20))
		e.limiter = rate.NewLimiter(rate.Limit(opts.LimitRate), burst)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create the export directory: %w", err)
	}
	e.tmpDir = filepath.Join(opts.Dir, ".export-tmp")
	if opts.Format == Maildir {
		e.tmpDir = filepath.Join(opts.Dir, "tmp") // Maildir++ reads any dot directory as a folder
	}
	if err := os.MkdirAll(e.tmpDir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot write to the export directory: %w", err)
	}
	// What a run cut short left half-written.
	old, _ := filepath.Glob(filepath.Join(e.tmpDir, "export-*"))
	for _, p := range old {
		os.Remove(p)
	}
	j, err := openJournal(opts.Dir, opts.Format)
	if errors.Is(err, errFormatMismatch) || errors.Is(err, errBusy) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("cannot write to the export directory: %w", err)
	}
	e.j = j
	if opts.Format != MBox {
		e.startCommitters()
	}
	return e, nil
}

func (e *exporter) close() {
	if e.jobs != nil {
		close(e.jobs)
		e.committing.Wait()
	}
	for _, s := range e.sources {
		if s != nil {
			s.close()
		}
	}
	e.j.close()
}

func (e *exporter) run(ctx context.Context) (*Summary, error) {
	// The account's own mailbox: a mailbox asked for is looked up in the
	// account's list first, which names the ones there are.
	src, err := openSource(ctx, e.opts.Open, e.opts.Mailbox)
	if err != nil {
		return nil, fmt.Errorf("logging in to the store: %w", err)
	}
	e.sources = append(e.sources, src)
	folders, err := e.folders(ctx, src)
	if err != nil {
		return nil, err
	}
	var listings []*listing
	for _, fo := range folders {
		l, err := src.list(ctx, fo)
		if err != nil {
			return nil, fmt.Errorf("listing %q: %w", fo.name, err)
		}
		listings = append(listings, l)
	}
	e.sum.Folders = len(listings)
	todo := make([][]*message, len(listings))
	var total int
	var totalBytes int64
	for i, l := range listings {
		if err := e.checkFiles(l.folder); err != nil {
			return nil, err
		}
		e.sum.Listed += len(l.msgs)
		for k := range l.msgs {
			m := &l.msgs[k]
			switch {
			case e.j.has(l.folder.name, m.identity):
				e.sum.Known++
			case !e.opts.Since.IsZero() && m.date.Before(e.opts.Since):
				e.sum.Old++
			default:
				todo[i] = append(todo[i], m)
				total++
				totalBytes += max(m.size, 0)
			}
		}
	}
	e.prog = newProgress(e.opts.Progress, e.opts.Terminal, e.opts.Interval, total, totalBytes)
	defer e.prog.stop()
	for i, l := range listings {
		if err := e.exportFolder(ctx, l, todo[i]); err != nil {
			e.finish()
			return &e.sum, err
		}
		if e.opts.Verify && ctx.Err() == nil {
			if err := e.verifyFolder(ctx, l); err != nil {
				e.finish()
				return &e.sum, err
			}
		}
	}
	e.finish()
	return &e.sum, ctx.Err()
}

func (e *exporter) finish() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.syncLocked()
	e.sum.Elapsed = time.Since(e.start)
}

// folders is what to export: every mailbox, or the one asked for, checked
// against the account's list where the store has one.
func (e *exporter) folders(ctx context.Context, src *source) ([]folder, error) {
	all, err := src.folders(ctx)
	if errors.Is(err, errNoFolderList) && !e.opts.All {
		return []folder{{name: cmp.Or(e.opts.Folder, e.opts.Mailbox)}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing mailboxes: %w", err)
	}
	if e.opts.All {
		return all, nil
	}
	want := cmp.Or(e.opts.Folder, e.opts.Mailbox)
	for _, fo := range all {
		if fo.name == want || strings.EqualFold(fo.name, "INBOX") && strings.EqualFold(want, "INBOX") {
			return []folder{fo}, nil
		}
	}
	// A store may open a mailbox by a name its list does not use (Graph's
	// well-known names, a JMAP inbox by its own name): what opens is
	// there.
	if sess, err := e.opts.Open(ctx, want); err == nil {
		sess.Close()
		return []folder{{name: want}}, nil
	}
	names := make([]string, len(all))
	for i, fo := range all {
		names[i] = fo.name
	}
	return nil, fmt.Errorf("%w %q; the account has: %s", ErrNoMailbox, want, strings.Join(names, ", "))
}

func isInbox(fo folder) bool { return strings.EqualFold(fo.name, "INBOX") }

// folderDir is the directory a folder's files go to (for mbox, the
// directory of its file).
func (e *exporter) folderDir(fo folder) string {
	p := filepath.Join(e.opts.Dir, e.opts.Format.folderPath(fo, isInbox(fo)))
	switch e.opts.Format {
	case Maildir:
		return filepath.Join(p, "cur")
	case MBox:
		return filepath.Dir(p)
	}
	return p
}

// checkFiles forgets the folder's records whose file is gone (a power
// loss before a rename reached the disk, or a file the user removed), so
// the message is exported again, and cuts an mbox back to its last
// recorded message.
func (e *exporter) checkFiles(fo folder) error {
	recs := e.j.folderRecords(fo.name)
	dir := e.folderDir(fo)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return local(err)
	}
	if e.opts.Format == Maildir {
		root := filepath.Dir(dir)
		for _, sub := range []string{"new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(root, sub), 0o700); err != nil {
				return local(err)
			}
		}
		if !isInbox(fo) {
			// Maildir++: a folder is marked by this empty file.
			f, err := os.OpenFile(filepath.Join(root, "maildirfolder"), os.O_CREATE|os.O_WRONLY, 0o600)
			if err != nil {
				return local(err)
			}
			f.Close()
		}
	}
	if e.opts.Format == MBox {
		path := filepath.Join(e.opts.Dir, e.opts.Format.folderPath(fo, isInbox(fo)))
		fi, err := os.Stat(path)
		var size int64
		if err == nil {
			size = fi.Size()
		}
		var end int64
		for _, r := range recs {
			if r.End > size {
				delete(e.j.records, recordKey(r.Folder, r.Identity))
				continue
			}
			end = max(end, r.End)
		}
		if err == nil && size > end {
			if err := os.Truncate(path, end); err != nil {
				return local(err)
			}
		}
		// An empty folder is an empty file, so every folder shows.
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return local(err)
		}
		return f.Close()
	}
	names := make(map[string]bool)
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return local(err)
	}
	for _, de := range ents {
		n := de.Name()
		if e.opts.Format == Maildir {
			base, _, _ := strings.Cut(n, ":")
			e.maildirNames[recordKey(fo.name, base)] = n
			n = base
		}
		names[n] = true
	}
	for _, r := range recs {
		n := filepath.Base(r.File)
		if e.opts.Format == Maildir {
			n, _, _ = strings.Cut(n, ":")
		}
		if !names[n] {
			delete(e.j.records, recordKey(r.Folder, r.Identity))
		}
	}
	return nil
}

// batches cuts the messages into requests of at most BatchSize messages
// and about 32 MiB.
func (e *exporter) batches(msgs []*message) [][]*message {
	var out [][]*message
	var cur []*message
	var size int64
	for _, m := range msgs {
		if len(cur) > 0 && (len(cur) >= e.opts.BatchSize || size+m.size > 32<<20) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, m)
		size += max(m.size, 0)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// exportFolder fetches the folder's messages on Connections sessions.
func (e *exporter) exportFolder(ctx context.Context, l *listing, msgs []*message) error {
	if len(msgs) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan []*message)
	var wg sync.WaitGroup
	for w := range e.opts.Connections {
		if w >= len(e.sources) {
			e.sources = append(e.sources, nil)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range work {
				if err := e.exportBatch(ctx, w, l, batch); err != nil {
					cancel(err)
				}
			}
		}()
	}
	for _, b := range e.batches(msgs) {
		select {
		case work <- b:
			continue
		case <-ctx.Done():
		}
		break
	}
	close(work)
	wg.Wait()
	e.mu.Lock()
	err := e.syncLocked()
	e.mu.Unlock()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// session is worker w's session, in the folder; a broken one is replaced.
func (e *exporter) session(ctx context.Context, w int, l *listing) (*source, error) {
	e.mu.Lock()
	s := e.sources[w]
	e.mu.Unlock()
	if s != nil && !s.alive() {
		s.close()
		s = nil
	}
	if s == nil {
		var err error
		if s, err = openSource(ctx, e.opts.Open, l.folder.name); err != nil {
			return nil, err
		}
		e.mu.Lock()
		e.sources[w] = s
		e.mu.Unlock()
	}
	return s, s.enter(ctx, l)
}

// maxAttempts bounds the tries of one batch.
const maxAttempts = 6

// exportBatch fetches a batch and writes each message, retrying what a
// broken connection or a throttling store left, with growing pauses. Only
// a local failure (writing) is returned: it ends the run.
func (e *exporter) exportBatch(ctx context.Context, w int, l *listing, batch []*message) error {
	left := slices.Clone(batch)
	var lastErr error
	// suspect is the message whose body the last tries were cut in,
	// cuts of them in a row.
	var suspect *message
	var cuts int
	for attempt := 0; len(left) > 0; attempt++ {
		if ctx.Err() != nil {
			return nil
		}
		if attempt > 0 {
			if attempt >= maxAttempts {
				// Said so, the line tells a store that keeps failing from
				// one that failed once.
				reason := fmt.Sprintf("not read in %d tries: %v", maxAttempts, lastErr)
				if suspect != nil && cuts >= 2 && len(left) > 1 {
					// One message the store cannot send whole (or a link
					// that cannot carry it) fails alone: the messages
					// after it in the batch would otherwise fail with it
					// on every run. The rest get tries of their own.
					e.fail(l.folder, suspect, reason)
					left = slices.DeleteFunc(left, func(m *message) bool { return m == suspect })
					suspect, cuts, attempt = nil, 0, -1
					continue
				}
				for _, m := range left {
					e.fail(l.folder, m, reason)
				}
				return nil
			}
			pause := cmp.Or(e.opts.retryPause, time.Second) << (attempt - 1)
			if isThrottled(lastErr) {
				pause *= 5
			}
			e.log.Warn("fetch failed; trying again", "mailbox", l.folder.name, "pause", pause, "err", lastErr)
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				return nil
			}
		}
		src, err := e.session(ctx, w, l)
		if errors.Is(err, errListingStale) {
			for _, m := range left {
				e.fail(l.folder, m, err.Error())
			}
			return nil
		}
		if err != nil {
			lastErr = err
			suspect, cuts = nil, 0
			continue
		}
		done := make(map[*message]bool)
		pend := &pending{}
		var reading *message
		err = src.fetch(ctx, left, func(m *message, body io.Reader) error {
			if done[m] {
				return nil
			}
			reading = m
			err := e.save(ctx, l.folder, m, body, pend)
			done[m] = err == nil
			return err
		})
		if perr := pend.wait(); perr != nil {
			return local(perr)
		}
		if errors.Is(err, ErrLocal) {
			return local(err) // without what the store's layer added
		}
		left = slices.DeleteFunc(left, func(m *message) bool { return done[m] })
		if err != nil {
			lastErr = err
			switch {
			case reading == nil || done[reading]:
				suspect, cuts = nil, 0 // not inside a body
			case reading == suspect:
				cuts++
			default:
				suspect, cuts = reading, 1
			}
			continue
		}
		// What the batch did not give: ask for each alone, to learn why.
		defer e.syncBatch()
		for _, m := range left {
			body, err := src.fetchOne(ctx, m)
			switch {
			case errors.Is(err, errGone):
				e.mu.Lock()
				e.sum.Gone++
				e.mu.Unlock()
			case errors.Is(err, errNoBody):
				e.fail(l.folder, m, "the store sent no body")
			case err != nil:
				e.fail(l.folder, m, err.Error())
			default:
				err = e.save(ctx, l.folder, m, body, pend)
				body.Close()
				if perr := pend.wait(); perr != nil {
					return local(perr)
				}
				if errors.Is(err, ErrLocal) {
					return err
				}
			}
		}
		return nil
	}
	return nil
}

func (e *exporter) fail(fo folder, m *message, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sum.Failures = append(e.sum.Failures, Failure{Folder: fo.name, UIDL: m.uidl, Reason: reason})
	e.prog.failed()
}

// readErr remembers a failed read, which is the store's, so that a copy
// can tell it from a failed write, which is local.
type readErr struct {
	r   io.Reader
	err error
	n   int64
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += int64(n)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// limited reads at most the limiter's rate.
type limited struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (r limited) Read(p []byte) (int, error) {
	if len(p) > r.l.Burst() {
		p = p[:r.l.Burst()]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.l.WaitN(r.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// headCapture keeps the first octets read, for the Subject.
type headCapture struct {
	r    io.Reader
	head []byte
}

const headLimit = 64 << 10

func (h *headCapture) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if room := headLimit - len(h.head); room > 0 {
		h.head = append(h.head, p[:min(n, room)]...)
	}
	return n, err
}

// written is a message in a temporary file, still open.
type written struct {
	f       *os.File
	tmp     string
	size    int64 // octets in the file
	digest  string
	subject string
}

// errEmpty: the store sent a body of no octets.
var errEmpty = errors.New("the store sent an empty body")

// write puts a message into a temporary file, converted for the format,
// and syncs it. A read that fails is the store's error; a write that
// fails wraps ErrLocal.
func (e *exporter) write(ctx context.Context, m *message, body io.Reader) (*written, error) {
	f, err := os.CreateTemp(e.tmpDir, "export-*")
	if err != nil {
		return nil, local(err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	var out io.Writer = f
	if e.opts.wrapFile != nil {
		out = e.opts.wrapFile(out)
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(out, h)}
	if e.limiter != nil {
		body = limited{ctx: ctx, r: body, l: e.limiter}
	}
	rd := &readErr{r: body}
	hc := &headCapture{r: rd}
	var in io.Reader = hc
	if e.opts.Format == MBox {
		if _, err := io.WriteString(cw, mboxFrom(m.date)); err != nil {
			return nil, local(err)
		}
	}
	if e.opts.Format == EML {
		_, err = io.Copy(cw, in)
	} else {
		err = convert(cw, in, true, e.opts.Format == MBox)
	}
	switch {
	case rd.err != nil:
		return nil, rd.err
	case err != nil:
		return nil, local(err)
	case rd.n == 0:
		return nil, errEmpty
	}
	ok = true
	return &written{f: f, tmp: f.Name(), size: cw.n, digest: hex.EncodeToString(h.Sum(nil)), subject: subjectOf(hc.head)}, nil
}

// finish closes the temporary file, synced when sync is set: only a file
// whose octets are on the disk is renamed into place. (A message bound
// for an mbox is copied, and the mbox synced.)
func (wr *written) finish(sync bool) error {
	var err error
	if sync {
		err = wr.f.Sync()
	}
	if cerr := wr.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(wr.tmp)
		return local(err)
	}
	return nil
}

// discard removes a temporary file that will not be committed.
func (wr *written) discard() {
	wr.f.Close()
	os.Remove(wr.tmp)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// save writes one message and has it committed: at once for mbox, whose
// messages are appended in order, else by a committer, so that the next
// message is read while this one is synced (syncs, not the network, bound
// the rate of small messages). A failed read of the body is returned as
// is (the batch is tried again); an empty body is a failure of that
// message only; a failed write wraps ErrLocal, and so does a failed
// commit of an earlier message of the batch.
func (e *exporter) save(ctx context.Context, fo folder, m *message, body io.Reader, pend *pending) error {
	if err := pend.failed(); err != nil {
		return err
	}
	wr, err := e.write(ctx, m, body)
	if errors.Is(err, errEmpty) {
		e.fail(fo, m, err.Error())
		return nil
	}
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.sum.Fetched++
	e.mu.Unlock()
	if e.jobs == nil {
		return e.commit(fo, m, wr)
	}
	pend.wg.Add(1)
	select {
	case e.jobs <- commitJob{fo: fo, m: m, wr: wr, pend: pend}:
		return nil
	case <-ctx.Done():
		pend.wg.Done()
		wr.discard()
		return ctx.Err()
	}
}

// commit syncs a written message, moves it into place and records it.
func (e *exporter) commit(fo folder, m *message, wr *written) error {
	if err := wr.finish(e.opts.Format != MBox); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.commitLocked(fo, m, wr); err != nil {
		os.Remove(wr.tmp)
		return local(err)
	}
	e.sum.Exported++
	e.sum.Bytes += wr.size
	e.prog.exported(wr.size)
	return nil
}

// committers is how many messages are synced at once.
const committers = 8

type commitJob struct {
	fo   folder
	m    *message
	wr   *written
	pend *pending
}

// pending is the commits of one fetch still under way, and the first
// that failed.
type pending struct {
	wg  sync.WaitGroup
	mu  sync.Mutex
	err error
}

func (p *pending) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *pending) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// wait waits for the commits and returns the first failure.
func (p *pending) wait() error {
	p.wg.Wait()
	return p.failed()
}

func (e *exporter) startCommitters() {
	e.jobs = make(chan commitJob, committers)
	for range committers {
		e.committing.Add(1)
		go func() {
			defer e.committing.Done()
			for j := range e.jobs {
				if err := e.commit(j.fo, j.m, j.wr); err != nil {
					j.pend.fail(err)
				}
				j.pend.wg.Done()
			}
		}()
	}
}

// commitLocked moves a written message into place and records it.
func (e *exporter) commitLocked(fo folder, m *message, wr *written) error {
	rel := e.opts.Format.folderPath(fo, isInbox(fo))
	r := record{Folder: fo.name, Identity: m.identity, Size: wr.size, SHA256: wr.digest}
	switch e.opts.Format {
	case EML:
		r.File = filepath.Join(rel, emlName(m, wr.subject))
	case Maildir:
		r.File = filepath.Join(rel, "cur", maildirName(m))
		// A file of the message from a run whose record was lost, or
		// that -verify found damaged, may carry other flags: it goes.
		if old, ok := e.maildirNames[recordKey(fo.name, maildirBase(m))]; ok && old != filepath.Base(r.File) {
			os.Remove(filepath.Join(e.opts.Dir, rel, "cur", old))
		}
	case MBox:
		r.File = rel
		return e.appendMBoxLocked(r, wr)
	}
	final := filepath.Join(e.opts.Dir, r.File)
	if err := os.Rename(wr.tmp, final); err != nil {
		return err
	}
	e.dirty[filepath.Dir(final)] = true
	return e.j.add(r)
}

// appendMBoxLocked appends a written message to its folder's mbox and
// records it: the record says where the file ends.
func (e *exporter) appendMBoxLocked(r record, wr *written) error {
	defer os.Remove(wr.tmp)
	path := filepath.Join(e.opts.Dir, r.File)
	mb, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer mb.Close()
	end, err := mb.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	tmp, err := os.Open(wr.tmp)
	if err != nil {
		return err
	}
	defer tmp.Close()
	var out io.Writer = mb
	if e.opts.wrapFile != nil {
		out = e.opts.wrapFile(out)
	}
	if _, err := io.Copy(out, tmp); err != nil {
		mb.Truncate(end) // the next run would cut it too
		return err
	}
	// Synced with the others before the records are: should a power
	// loss keep a record but not its octets, the next run sees the file
	// short of the record's end and writes the message again.
	e.dirty[path] = true
	e.dirty[filepath.Dir(path)] = true
	r.Offset, r.End = end, end+wr.size
	return e.j.add(r)
}

// syncBatch makes a batch's messages durable, bounding what a power loss
// can take back to the batch under way.
func (e *exporter) syncBatch() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.syncLocked(); err != nil {
		e.log.Warn("syncing the export", "err", err)
	}
}

// syncLocked makes the files, renames and records so far durable, the
// records last.
func (e *exporter) syncLocked() error {
	for dir := range e.dirty {
		if err := durable.Sync(dir); err != nil {
			return local(err)
		}
		delete(e.dirty, dir)
	}
	if err := e.j.sync(); err != nil {
		return local(err)
	}
	return nil
}

// localError is a failure to write the export.
type localError struct{ err error }

func (e *localError) Error() string { return "writing the export failed: " + e.err.Error() }

func (e *localError) Unwrap() []error { return []error{ErrLocal, e.err} }

func local(err error) error {
	if le := (*localError)(nil); errors.As(err, &le) {
		return le
	}
	return &localError{err: err}
}

// IsDiskFull tells whether err is a full disk or quota.
func IsDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
