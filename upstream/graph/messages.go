package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/internal/web"
)

// Folder is a mail folder (api/resources/mailfolder).
type Folder struct {
	ID             string `json:"id"`
	DisplayName    string `json:"displayName"`
	TotalItemCount int    `json:"totalItemCount"`
}

// Message is what the client selects of a message: enough to name it, to
// tell it apart from others and to order a listing. Its size is not
// among them: Graph's message resource has none for the MIME form, which
// Exchange makes when $value is asked for; see Open.
type Message struct {
	ID                string    `json:"id"` // immutable (outlook-immutable-id)
	InternetMessageID string    `json:"internetMessageId"`
	ReceivedDateTime  time.Time `json:"receivedDateTime"`
	IsRead            bool      `json:"isRead"`
}

// selected is the $select of listings and delta rounds: user-list-messages
// recommends selecting only what is needed, and delta always returns id.
const selected = "id,internetMessageId,receivedDateTime,isRead"

// wellKnown are the folder names Graph resolves by itself
// (api/resources/mailfolder, "Well-known folder names").
var wellKnown = []string{
	"archive", "clutter", "conflicts", "conversationhistory", "deleteditems", "drafts",
	"inbox", "junkemail", "localfailures", "msgfolderroot", "outbox", "recoverableitemsdeletions",
	"scheduled", "searchfolders", "sentitems", "serverfailures", "syncissues",
}

// WellKnownFolder returns Graph's well-known name for a mailbox name of
// the configuration ("INBOX" in any case is "inbox"), or "" when the name
// is a display name.
func WellKnownFolder(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "inbox"
	}
	if slices.Contains(wellKnown, name) {
		return name
	}
	return ""
}

// Folder finds a folder: by its well-known name (api/mailfolder-get), or
// by display name among the top-level folders (api/user-list-mailfolders
// with $filter=displayName eq '...'); "parent/child" is a child folder of
// a top-level one (api/mailfolder-list-childfolders), as Mailboxes names
// it.
func (c *Client) Folder(ctx context.Context, name string) (Folder, error) {
	f, err := c.folder(ctx, "/me/mailFolders", name)
	if !errors.Is(err, ErrFolderNotFound) || !strings.Contains(name, "/") {
		return f, err
	}
	// A display name may hold a "/" itself: the whole name was tried
	// first.
	parts := strings.Split(name, "/")
	if f, err = c.folder(ctx, "/me/mailFolders", parts[0]); err != nil {
		return Folder{}, err
	}
	for _, part := range parts[1:] {
		if f, err = c.folder(ctx, "/me/mailFolders/"+url.PathEscape(f.ID)+"/childFolders", part); err != nil {
			return Folder{}, fmt.Errorf("%w: %q", ErrFolderNotFound, name)
		}
	}
	return f, nil
}

// folder finds a folder of the collection at path by its display name, or
// a top-level one by its well-known name.
func (c *Client) folder(ctx context.Context, path, name string) (Folder, error) {
	sel := url.Values{"$select": {"id,displayName,totalItemCount"}}
	if wk := WellKnownFolder(name); wk != "" && path == "/me/mailFolders" {
		resp, err := c.do(ctx, request{op: "folder", method: "GET", path: path + "/" + wk + "?" + sel.Encode(), notFound: ErrFolderNotFound})
		if err != nil {
			return Folder{}, err
		}
		defer resp.Body.Close()
		var f Folder
		if err := jsonIn.Decode(resp.Body, maxJSON, &f); err != nil {
			return Folder{}, err
		}
		return f, nil
	}
	// OData string literals double their single quotes.
	sel.Set("$filter", "displayName eq '"+strings.ReplaceAll(name, "'", "''")+"'")
	resp, err := c.do(ctx, request{op: "folder", method: "GET", path: path + "?" + sel.Encode(), notFound: ErrFolderNotFound})
	if err != nil {
		return Folder{}, err
	}
	defer resp.Body.Close()
	var page struct {
		Value []Folder `json:"value"`
	}
	if err := jsonIn.Decode(resp.Body, maxJSON, &page); err != nil {
		return Folder{}, err
	}
	for _, f := range page.Value {
		if f.DisplayName == name {
			return f, nil
		}
	}
	return Folder{}, fmt.Errorf("%w: %q", ErrFolderNotFound, name)
}

// maxFolders bounds the folders Folders lists.
const maxFolders = 10000

// Folders lists the account's folders (api/user-list-mailfolders, then
// api/mailfolder-list-childfolders under each folder that has children)
// with their paths: display names from the top, joined by "/".
func (c *Client) Folders(ctx context.Context) (paths []string, folders []Folder, err error) {
	type listed struct {
		Folder
		ChildFolderCount int `json:"childFolderCount"`
	}
	var walk func(collection, prefix string, depth int) error
	walk = func(collection, prefix string, depth int) error {
		link := collection + "?" + url.Values{"$select": {"id,displayName,totalItemCount,childFolderCount"}, "$top": {"100"}}.Encode()
		for n := 0; link != ""; n++ {
			if n == maxPages || len(folders) > maxFolders || depth > 32 {
				return fmt.Errorf("%w: the folder list does not end", ErrBadResponse)
			}
			resp, err := c.do(ctx, request{op: "folder", method: "GET", path: link})
			if err != nil {
				return err
			}
			var p struct {
				Value    []listed `json:"value"`
				NextLink string   `json:"@odata.nextLink"`
			}
			err = jsonIn.Decode(resp.Body, maxJSON, &p)
			resp.Body.Close()
			if err != nil {
				return err
			}
			for _, f := range p.Value {
				paths, folders = append(paths, prefix+f.DisplayName), append(folders, f.Folder)
				if f.ChildFolderCount > 0 {
					if err := walk("/me/mailFolders/"+url.PathEscape(f.ID)+"/childFolders", prefix+f.DisplayName+"/", depth+1); err != nil {
						return err
					}
				}
			}
			link = p.NextLink
		}
		return nil
	}
	if err := walk("/me/mailFolders", "", 0); err != nil {
		return nil, nil, err
	}
	return paths, folders, nil
}

// page is one page of a collection (paging), a listing's or a delta
// round's; entries a delta round reports removed carry "@removed".
type page struct {
	Value []struct {
		Message
		Removed *struct {
			Reason string `json:"reason"`
		} `json:"@removed"`
	} `json:"value"`
	NextLink  string `json:"@odata.nextLink"`
	DeltaLink string `json:"@odata.deltaLink"`
}

// maxPages bounds the pages of one listing or delta round: 10,000 pages
// of up to 1,000 messages is beyond any mailbox a POP3 client reads.
const maxPages = 10000

// pages fetches a collection page after page, following @odata.nextLink
// as Graph gives it (paging: never build or edit one), calling each for
// every page. It returns the @odata.deltaLink of the last page, if any.
func (c *Client) pages(ctx context.Context, op, first string, notFound error, each func(*page) error) (string, error) {
	link := first
	seen := map[string]bool{}
	for n := 0; ; n++ {
		if n == maxPages || seen[link] {
			return "", fmt.Errorf("%w: %s does not end (%d pages)", ErrBadResponse, op, n)
		}
		seen[link] = true
		resp, err := c.do(ctx, request{op: op, method: "GET", path: link, notFound: notFound})
		if err != nil {
			return "", err
		}
		var p page
		err = jsonIn.Decode(resp.Body, maxJSON, &p)
		resp.Body.Close()
		if err != nil {
			return "", err
		}
		if err := each(&p); err != nil {
			return "", err
		}
		if p.NextLink == "" {
			return p.DeltaLink, nil
		}
		link = p.NextLink
	}
}

// List returns every message of a folder (user-list-messages: GET
// /me/mailFolders/{id}/messages, paged by @odata.nextLink).
func (c *Client) List(ctx context.Context, folderID string) ([]Message, error) {
	q := url.Values{"$select": {selected}, "$top": {strconv.Itoa(c.opts.PageSize)}}
	var msgs []Message
	_, err := c.pages(ctx, "list", "/me/mailFolders/"+url.PathEscape(folderID)+"/messages?"+q.Encode(), ErrFolderNotFound, func(p *page) error {
		for _, m := range p.Value {
			if m.ID == "" {
				return fmt.Errorf("%w: a message without id", ErrBadResponse)
			}
			msgs = append(msgs, m.Message)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return msgs, nil
}

// Delta is one round of a folder's delta query.
type Delta struct {
	// Changed are the messages added to the folder, or changed in it,
	// since the round the link came from; every message of the folder in
	// a first round.
	Changed []Message
	// Removed are the ids of messages gone from the folder: deleted, or
	// moved elsewhere ("@removed").
	Removed []string
	// Link is the @odata.deltaLink to start the next round with.
	Link string
}

// Delta runs one round of the folder's delta query (message-delta,
// delta-query-messages): from the start when link is "", else from a
// Link an earlier round returned. Pages within the round are followed by
// @odata.nextLink until a page brings @odata.deltaLink. A link Graph no
// longer knows gives ErrDeltaExpired: list the folder again and start a
// new round.
func (c *Client) Delta(ctx context.Context, folderID, link string) (*Delta, error) {
	op := "delta"
	if link == "" {
		op = "list" // the whole folder
		q := url.Values{"$select": {selected}, "$top": {strconv.Itoa(c.opts.PageSize)}}
		link = "/me/mailFolders/" + url.PathEscape(folderID) + "/messages/delta?" + q.Encode()
	}
	// A message may show up twice in a round (changed, then removed):
	// the last word counts.
	var order []string
	changed := map[string]*Message{}
	removed := map[string]bool{}
	next, err := c.pages(ctx, op, link, ErrFolderNotFound, func(p *page) error {
		for _, m := range p.Value {
			if m.ID == "" {
				return fmt.Errorf("%w: a delta entry without id", ErrBadResponse)
			}
			if _, ok := changed[m.ID]; !ok && !removed[m.ID] {
				order = append(order, m.ID)
			}
			if m.Removed != nil {
				delete(changed, m.ID)
				removed[m.ID] = true
				continue
			}
			msg := m.Message
			changed[m.ID] = &msg
			delete(removed, m.ID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if next == "" {
		return nil, fmt.Errorf("%w: a delta round without @odata.deltaLink", ErrBadResponse)
	}
	d := &Delta{Link: next}
	for _, id := range order {
		switch {
		case changed[id] != nil:
			d.Changed = append(d.Changed, *changed[id])
		case removed[id]:
			d.Removed = append(d.Removed, id)
		}
	}
	return d, nil
}

// Body is a message's MIME octets as Graph serves them, streamed: it holds
// one of the mailbox's concurrency slots until closed.
type Body struct {
	body *web.Body
	max  int64
}

// Read fails once the body runs past the largest message there can be
// (Options.MaxMessage): an endless body ends there.
func (b *Body) Read(p []byte) (int, error) {
	if left := b.max - b.body.N(); int64(len(p)) > left+1 {
		p = p[:left+1]
	}
	n, err := b.body.Read(p)
	if over := b.body.N() - b.max; over > 0 {
		return n - int(over), fmt.Errorf("%w: a message of more than %d octets", ErrBadResponse, b.max)
	}
	return n, err
}

func (b *Body) Close() error { return b.body.Close() }

// N is the number of octets read so far; after io.EOF, the size of the
// message as served. Graph announces no size before (no property of the
// message resource is the MIME size, and $value may come chunked), so the
// exact size of a message is only known by reading it once.
func (b *Body) N() int64 { return b.body.N() }

// Open streams a message's MIME content (outlook-get-mime-message: GET
// /me/messages/{id}/$value), octet for octet: bare LF stays bare LF. It is
// never held whole in memory. A message removed since it was listed gives
// upstream.ErrMessageGone. A transfer cut short fails with
// io.ErrUnexpectedEOF from Read, never with a clean io.EOF.
func (c *Client) Open(ctx context.Context, id string) (*Body, error) {
	resp, err := c.do(ctx, request{op: "open", method: "GET", path: "/me/messages/" + url.PathEscape(id) + "/$value", notFound: upstream.ErrMessageGone})
	if err != nil {
		return nil, err
	}
	return &Body{body: resp.Body.(*web.Body), max: c.opts.MaxMessage}, nil
}

// Remove applies a delete mode to messages: in JSON batches of up to 20
// requests (json-batching), or with one request each, as many at once as
// the concurrency limit allows, when Options.NoBatch is set or there is
// one message. A message already gone counts as done.
//
//   - upstream.DeleteTrash moves each to trash (message-move), a folder id
//     or well-known name; "" is "deleteditems", the Deleted Items folder.
//     With immutable ids the message keeps its id there.
//   - upstream.DeleteExpunge sends DELETE (message-delete), which removes
//     the message from every folder the user sees. The page does not say
//     where it goes, and this was not checked against a real tenant:
//     Exchange Online is reported to soft-delete it into Recoverable Items
//     ("recoverableitemsdeletions"), where the user can recover it with
//     "Recover deleted items" for the tenant's deleted-item retention (14
//     days by default) before it is purged; personal Outlook.com
//     accounts are reported to put it in Deleted Items. The documented
//     permanent delete is message-permanentdelete (POST .../permanentDelete,
//     into the hidden Purges folder); it is not used: a POP3 client's
//     DELE should stay recoverable.
//   - upstream.DeleteSeen sets isRead (message-update); nothing moves.
//   - upstream.DeleteKeep does nothing.
func (c *Client) Remove(ctx context.Context, ids []string, mode upstream.DeleteMode, trash string) error {
	var build func(id string) request
	switch mode {
	case upstream.DeleteKeep:
		return nil
	case upstream.DeleteTrash:
		dest, err := c.destination(ctx, trash)
		if err != nil {
			return err
		}
		build = func(id string) request {
			return request{op: "move", method: "POST", path: "/me/messages/" + url.PathEscape(id) + "/move", body: map[string]string{"destinationId": dest}, notFound: upstream.ErrMessageGone}
		}
	case upstream.DeleteExpunge:
		build = func(id string) request {
			return request{op: "delete", method: "DELETE", path: "/me/messages/" + url.PathEscape(id), notFound: upstream.ErrMessageGone}
		}
	case upstream.DeleteSeen:
		build = func(id string) request {
			return request{op: "mark-read", method: "PATCH", path: "/me/messages/" + url.PathEscape(id), body: map[string]bool{"isRead": true}, notFound: upstream.ErrMessageGone}
		}
	default:
		return fmt.Errorf("graph: unknown delete mode %q", mode)
	}
	if len(ids) > 1 && !c.opts.NoBatch {
		return c.batch(ctx, ids, build)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan string)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range min(len(ids), cap(c.slots)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				err := c.simple(ctx, build(id))
				if err == nil || errors.Is(err, upstream.ErrMessageGone) {
					continue
				}
				mu.Lock()
				if first == nil {
					first = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, id := range ids {
		select {
		case work <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return first
}

// destination is the destinationId of a move to trash: a well-known name
// as it is, a display name resolved to the folder's id.
func (c *Client) destination(ctx context.Context, trash string) (string, error) {
	if trash == "" {
		return "deleteditems", nil
	}
	if wk := WellKnownFolder(trash); wk != "" {
		return wk, nil
	}
	f, err := c.Folder(ctx, trash)
	if err != nil {
		return "", err
	}
	return f.ID, nil
}

// simple sends a request whose answer is not read.
func (c *Client) simple(ctx context.Context, req request) error {
	resp, err := c.do(ctx, req)
	if err != nil {
		return err
	}
	c.release(resp)
	return nil
}

func jsonBody(v any) ([]byte, error) { return json.Marshal(v) }

var _ io.ReadCloser = (*Body)(nil)
