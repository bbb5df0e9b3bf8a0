package proxy

import "sync"

// goroutines counts the goroutines the gateway starts (batches fetched
// ahead, logouts, the timers of idle connections), so that Close can wait
// for every one of them. Once Close has begun, none starts: the caller
// does the work itself, or not at all.
type goroutines struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// add counts one goroutine about to start, unless the gateway is closing.
func (g *goroutines) add() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *goroutines) done() { g.wg.Done() }

// start runs f in a counted goroutine, or reports false when the gateway
// is closing.
func (g *goroutines) start(f func()) bool {
	if !g.add() {
		return false
	}
	go func() {
		defer g.done()
		f()
	}()
	return true
}

// close lets no more goroutines start.
func (g *goroutines) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// wait waits for the goroutines counted.
func (g *goroutines) wait() { g.wg.Wait() }
