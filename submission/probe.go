package submission

import (
	"context"
	"fmt"
	"sync"
)

// Capabilities are the EHLO extensions of upstream submission servers
// that the relay passes on to its clients (RFC 1870 SIZE, RFC 6531
// SMTPUTF8).
type Capabilities struct {
	// Size is the least SIZE the upstreams announce; 0 when none does.
	Size int64
	// SMTPUTF8 holds when every upstream has it.
	SMTPUTF8 bool
}

// Probe asks each upstream's EHLO, without logging in, and returns what
// all of them offer: EHLO comes before AUTH, so the relay's own EHLO
// cannot know which upstream the client's mail will go to. An upstream
// that cannot be asked makes the answer the least: SIZE without a number
// and no SMTPUTF8; its error is returned beside it.
func Probe(ctx context.Context, upstreams []*Upstream) (Capabilities, error) {
	type result struct {
		size int64
		utf8 bool
		err  error
	}
	results := make([]result, len(upstreams))
	var wg sync.WaitGroup
	for i, u := range upstreams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uc, err := u.connect(ctx)
			if err != nil {
				results[i].err = fmt.Errorf("upstream %s (%s): %w", u.Name, u.Address, err)
				return
			}
			defer uc.Close()
			if n, ok := uc.MaxMessageSize(); ok {
				results[i].size = int64(n)
			}
			results[i].utf8, _ = uc.Extension("SMTPUTF8")
			uc.Quit()
		}()
	}
	wg.Wait()
	caps := Capabilities{SMTPUTF8: len(upstreams) > 0}
	for _, r := range results {
		if r.err != nil {
			return Capabilities{}, r.err
		}
		if r.size > 0 && (caps.Size == 0 || r.size < caps.Size) {
			caps.Size = r.size
		}
		caps.SMTPUTF8 = caps.SMTPUTF8 && r.utf8
	}
	return caps, nil
}
