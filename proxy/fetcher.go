package proxy

import (
	"context"
	"errors"
	"io"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// Fetching ahead: after a message is served, the next ones the cache can
// hold are fetched in the background in one request (IMAP: one UID
// FETCH) where the store can, up to
// prefetchCount messages or prefetchBytes, so the server's transfers
// overlap the client's and cost one round trip per batch. The first RETR
// that finds its message uncached starts a batch with it: that message is
// handed straight to the RETR, the others go to the cache.
const (
	prefetchCount = 16
	prefetchBytes = 4 << 20
)

// errLargerThanListed stops a batch at a message larger than its listed
// size allows to cache; RETR streams it instead.
var errLargerThanListed = errors.New("message larger than listed")

// fetcher runs a maildrop's batches fetched ahead, one at a time. A batch
// runs under the fetcher's context, which ends with the POP3 session or
// when the gateway closes, whichever comes first, so a session that is
// gone, or a drain that is over, never leaves a transfer behind. Every use
// of the maildrop's upstream session waits for the batch first; the batch
// touches nothing but the cache, the channels in ready, handoff, and err
// before closing done.
type fetcher struct {
	m      *maildrop
	ctx    context.Context
	cancel context.CancelFunc
	stop   func() bool // unties ctx from the gateway's

	done    chan struct{}         // closed when the batch ends; nil: none under way
	ready   map[int]chan struct{} // closed when that message is cached or handed off, or the batch ends
	handoff chan fetched          // the message the batch was started for
	err     error
	// notAhead holds the messages a batch ended without: they are
	// fetched alone when asked for, never in another batch.
	notAhead map[int]bool
}

// fetched is a message read whole and the part of the budget it holds.
type fetched struct {
	index int
	body  []byte
	res   *reservation
}

func newFetcher(session context.Context, m *maildrop) *fetcher {
	ctx, cancel := context.WithCancel(context.WithoutCancel(session))
	stopSession := context.AfterFunc(session, cancel)
	stopGateway := context.AfterFunc(m.g.life, cancel)
	return &fetcher{m: m, ctx: ctx, cancel: cancel, stop: func() bool {
		a, b := stopSession(), stopGateway()
		return a && b
	}}
}

// start begins a batch from message i on, of the messages not cached yet,
// unless a batch is already under way or the budget has no room for it,
// and tells whether message i is in the batch it started. With handOff,
// message i goes to take rather than to the cache. Each message holds its
// part of the batch's reservation until the cache or the client has it.
func (f *fetcher) start(i int, handOff bool) bool {
	m := f.m
	if !m.g.prefetch || m.up.NoFetchAhead || m.broken || !m.sess.Alive() || f.ctx.Err() != nil {
		return false
	}
	if f.done != nil {
		select {
		case <-f.done:
			f.end()
		default:
			return false
		}
	}
	limit := m.g.cache.MaxMessage()
	var (
		ids   []upstream.ID
		keys  = make(map[upstream.ID]cache.Key)
		sizes = make(map[upstream.ID]int64)
		ready = make(map[int]chan struct{})
		index = make(map[upstream.ID]int)
		total int64
	)
	for j := i; j < len(m.entries) && len(ids) < prefetchCount; j++ {
		size := m.size(j)
		if size > limit || total+size > prefetchBytes && len(ids) > 0 {
			break
		}
		k := m.key(j)
		if _, cached := m.g.cache.Peek(k); cached || f.notAhead[j] {
			continue
		}
		id := m.id(j)
		ids = append(ids, id)
		keys[id], sizes[id] = k, size
		ready[j] = make(chan struct{})
		index[id] = j
		total += size
	}
	if len(ids) == 0 {
		return false
	}
	var reserved int64
	for _, id := range ids {
		reserved += bufferSize(sizes[id], limit)
	}
	if !m.g.budget.Reserve(reserved) {
		return false
	}
	want := -1
	if handOff {
		want = i
	}
	done := make(chan struct{})
	handoff := make(chan fetched, 1)
	sess := m.sess
	started := m.g.goroutines.start(func() {
		defer close(done)
		defer func() {
			for _, j := range index {
				close(ready[j])
			}
		}()
		batch := &reservation{budget: m.g.budget, n: reserved}
		defer batch.release()
		f.err = fetchEach(f.ctx, sess, ids, func(id upstream.ID, body io.Reader) error {
			j, ok := index[id]
			if !ok {
				return nil
			}
			share := bufferSize(sizes[id], limit)
			res := &reservation{budget: m.g.budget, n: share}
			batch.n -= share
			defer res.release()
			data, whole, err := readUpTo(pop3.NewCRLFReader(body), sizes[id], limit, res.fit)
			if err != nil {
				return err
			}
			if !whole {
				return errLargerThanListed
			}
			if len(data) == 0 && sizes[id] > 0 {
				return nil // no message: RETR fetches it again
			}
			if j == want {
				handoff <- fetched{index: j, body: data, res: &reservation{budget: m.g.budget, n: res.n}}
				res.n = 0
			} else {
				m.g.cache.Add(keys[id], data)
				m.recordSize(j, int64(len(data)))
			}
			delete(index, id)
			close(ready[j])
			return nil
		})
	})
	if !started {
		// The gateway is closing.
		m.g.budget.Release(reserved)
		return false
	}
	f.done, f.ready, f.handoff = done, ready, handoff
	_, ok := ready[i]
	return ok
}

// take waits for message i of the batch under way and returns it, if the
// batch was started for it and delivered it.
func (f *fetcher) take(i int) (fetched, bool) {
	f.waitMessage(i)
	select {
	case got := <-f.handoff:
		if got.index == i {
			return got, true
		}
		got.res.release()
	default:
	}
	return fetched{}, false
}

// waitMessage waits until message i, if it is being fetched ahead, is in
// the cache or handed off, or its batch has failed.
func (f *fetcher) waitMessage(i int) {
	if ch, ok := f.ready[i]; ok {
		<-ch
	}
}

// wait lets a batch fetched ahead finish before the session is used again.
func (f *fetcher) wait() {
	if f.done == nil {
		return
	}
	<-f.done
	f.end()
}

func (f *fetcher) end() {
	m := f.m
	select {
	case got := <-f.handoff:
		got.res.release()
	default:
	}
	for j := range f.ready {
		if _, ok := m.g.cache.Peek(m.key(j)); !ok {
			if f.notAhead == nil {
				f.notAhead = make(map[int]bool)
			}
			f.notAhead[j] = true
		}
	}
	f.done, f.ready, f.handoff = nil, nil, nil
	if err := f.err; err != nil {
		f.err = nil
		m.log.Debug("fetching ahead failed", "err", err)
		if !m.sess.Alive() {
			m.broken = true
		}
	}
}

// close waits for the batch under way, if any, and lets go of the context.
func (f *fetcher) close() {
	f.wait()
	f.stop()
	f.cancel()
}

// bufferSize is what readUpTo first allocates for a message listed at size.
func bufferSize(size, limit int64) int64 { return min(size+2, limit) + 1 }
