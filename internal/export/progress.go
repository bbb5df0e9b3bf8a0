package export

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress shows how far an export is: a bar on a terminal (messages,
// octets, rate, time left), else a plain line every interval.
type progress struct {
	out        io.Writer
	total      int
	totalBytes int64
	start      time.Time
	bar        *progressbar.ProgressBar

	mu       sync.Mutex
	done     int
	failures int
	bytes    int64
	stopped  chan struct{}
	ticker   *time.Ticker
	finished sync.WaitGroup
}

func newProgress(out io.Writer, terminal bool, interval time.Duration, total int, totalBytes int64) *progress {
	p := &progress{out: out, total: total, totalBytes: totalBytes, start: time.Now(), stopped: make(chan struct{})}
	if total == 0 {
		return p
	}
	if terminal {
		p.bar = progressbar.NewOptions64(totalBytes,
			progressbar.OptionSetWriter(out),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionUseIECUnits(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetDescription(p.describe()),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(out) }),
		)
		return p
	}
	p.ticker = time.NewTicker(interval)
	p.finished.Add(1)
	go func() {
		defer p.finished.Done()
		for {
			select {
			case <-p.ticker.C:
				p.line()
			case <-p.stopped:
				return
			}
		}
	}()
	return p
}

func (p *progress) describe() string {
	return fmt.Sprintf("%d/%d messages", p.done, p.total)
}

// line prints where the export is, for logs and pipes.
func (p *progress) line() {
	p.mu.Lock()
	done, bytes, failures := p.done, p.bytes, p.failures
	p.mu.Unlock()
	elapsed := time.Since(p.start)
	rate := float64(bytes) / max(elapsed.Seconds(), 1e-3)
	eta := "?"
	if rate > 0 && p.totalBytes > bytes {
		eta = time.Duration(float64(p.totalBytes-bytes) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(p.out, "export: %d/%d messages, %s of %s, %s/s, %d failed, about %s left\n",
		done, p.total, mib(bytes), mib(p.totalBytes), mib(int64(rate)), failures, eta)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func (p *progress) exported(size int64) {
	p.mu.Lock()
	p.done++
	p.bytes += size
	desc := p.describe()
	p.mu.Unlock()
	if p.bar != nil {
		p.bar.Describe(desc)
		p.bar.Add64(size)
	}
}

func (p *progress) failed() {
	p.mu.Lock()
	p.failures++
	p.mu.Unlock()
}

func (p *progress) stop() {
	if p.bar != nil {
		p.bar.Finish()
		return
	}
	if p.ticker != nil {
		p.ticker.Stop()
		close(p.stopped)
		p.finished.Wait()
	}
}
