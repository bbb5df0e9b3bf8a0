package graph

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/pop3gw/gateway/upstream"
)

// maxBatch is the most requests one JSON batch may hold (json-batching:
// "currently limited to 20").
const maxBatch = 20

// batchItem and batchAnswer are one request of a JSON batch and its
// answer (json-batching: the requests and responses arrays). The url of
// an item is relative to the version, such as /me/messages/{id}.
type batchItem struct {
	ID      string            `json:"id"`
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	Body    any               `json:"body,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

type batchAnswer struct {
	ID      string            `json:"id"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
}

// batch sends the requests for ids in JSON batches of up to 20, one batch
// at a time. Outlook runs up to 4 requests of a batch at once
// (throttling-limits, "Outlook service limits for JSON batching"), so a
// batch takes every concurrency slot of the client while it is sent.
// Requests a batch answers with 429, 503 or 504 are sent again in the
// next batch after their Retry-After, within the same bounds as single
// requests; a message already gone counts as done.
func (c *Client) batch(ctx context.Context, ids []string, build func(id string) request) error {
	for len(ids) > 0 {
		n := min(len(ids), maxBatch)
		if err := c.batchOnce(ctx, ids[:n], build); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

func (c *Client) batchOnce(ctx context.Context, ids []string, build func(id string) request) error {
	pending := ids
	for attempt := 0; len(pending) > 0; attempt++ {
		var items []batchItem
		reqs := map[string]request{}
		for i, id := range pending {
			r := build(id)
			item := batchItem{ID: strconv.Itoa(i + 1), Method: r.method, URL: r.path, Body: r.body,
				Headers: map[string]string{"Prefer": `IdType="ImmutableId"`}}
			if r.body != nil {
				item.Headers["Content-Type"] = "application/json"
			}
			items = append(items, item)
			reqs[item.ID] = r
		}
		answers, err := c.sendBatch(ctx, items)
		if err != nil {
			return err
		}
		var retry []string
		wait := time.Duration(0)
		waitKnown := false
		for i, item := range items {
			a, ok := answers[item.ID]
			if !ok {
				return fmt.Errorf("%w: the batch did not answer request %s", ErrBadResponse, item.ID)
			}
			r := reqs[item.ID]
			switch s := a.Status; {
			case s/100 == 2, s == http.StatusNotFound:
			case s == http.StatusTooManyRequests || s == http.StatusServiceUnavailable || s == http.StatusGatewayTimeout:
				retry = append(retry, pending[i])
				if d, ok := retryAfter(header(a.Headers, "Retry-After"), time.Now()); ok {
					wait, waitKnown = max(wait, d), true
				}
			case s == http.StatusUnauthorized:
				return &Error{Op: r.op, Status: s, Code: bodyCode(a.Body), kind: upstream.ErrAuthFailed}
			case s >= 500:
				return &Error{Op: r.op, Status: s, Code: bodyCode(a.Body), kind: ErrTemporary}
			default:
				return &Error{Op: r.op, Status: s, Code: bodyCode(a.Body)}
			}
		}
		if len(retry) == 0 {
			return nil
		}
		if !waitKnown {
			wait = c.opts.Backoff << attempt
		}
		if attempt >= c.opts.Retries || wait > c.opts.MaxRetryAfter {
			return &Error{Op: "batch", Status: http.StatusTooManyRequests, kind: ErrTemporary}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		pending = retry
	}
	return nil
}

// sendBatch posts one batch holding every concurrency slot, and returns
// the answers by request id.
func (c *Client) sendBatch(ctx context.Context, items []batchItem) (map[string]batchAnswer, error) {
	c.batchMu.Lock()
	taken := 0
	defer func() {
		for range taken {
			<-c.slots
		}
		c.batchMu.Unlock()
	}()
	// do takes one slot itself.
	for range cap(c.slots) - 1 {
		select {
		case c.slots <- struct{}{}:
			taken++
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	resp, err := c.do(ctx, request{op: "batch", method: "POST", path: "/$batch", body: map[string]any{"requests": items}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Responses []batchAnswer `json:"responses"`
	}
	if err := jsonIn.Decode(resp.Body, maxJSON, &out); err != nil {
		return nil, err
	}
	answers := make(map[string]batchAnswer, len(out.Responses))
	for _, a := range out.Responses {
		answers[a.ID] = a
	}
	return answers, nil
}

// header finds a header of a batch answer; their names come as the
// server wrote them.
func header(h map[string]string, name string) string {
	for k, v := range h {
		if http.CanonicalHeaderKey(k) == name {
			return v
		}
	}
	return ""
}

// bodyCode is the error code in a batch answer's body.
func bodyCode(body json.RawMessage) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if len(body) == 0 || jsonIn.DecodeBytes(body, maxErrorJSON, &e) != nil {
		return ""
	}
	return printable(e.Error.Code, 64)
}
