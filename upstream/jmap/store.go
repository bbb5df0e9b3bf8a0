package jmap

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pop3gw/gateway/upstream"
)

// Store opens sessions on the accounts of one JMAP server. It keeps, per
// account, the session resource and the ids of the mailboxes it served,
// so that the next login asks for neither again. It is safe for
// concurrent use.
type Store struct {
	opts     Options
	mu       sync.Mutex
	accounts map[string]*account
}

// account is what logins to one account share.
type account struct {
	mu        sync.Mutex
	sess      *session
	mailboxes map[string]string // mailbox name as configured -> Mailbox id
}

// New returns a Store for the server whose session URL (or base URL)
// opts names.
func New(opts Options) (*Store, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	return &Store{opts: opts, accounts: make(map[string]*account)}, nil
}

func (s *Store) account(username string) *account {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.accounts[username]
	if a == nil {
		a = &account{mailboxes: make(map[string]string)}
		s.accounts[username] = a
	}
	return a
}

// Login logs in to the account and opens the mailbox: "INBOX" (in any
// case) is the Mailbox with role inbox (RFC 8621 §2), any other name a
// Mailbox of that name, "/" separating a child from its parent.
// Refused credentials are an error wrapping upstream.ErrAuthFailed.
func (s *Store) Login(ctx context.Context, creds Credentials, mailbox string) (*Session, error) {
	a := s.account(creds.Username)
	a.mu.Lock()
	sess, mbox := a.sess, a.mailboxes[mailbox]
	a.mu.Unlock()
	fresh := sess == nil
	if fresh {
		var err error
		if sess, err = discover(ctx, &s.opts, &creds); err != nil {
			return nil, err
		}
	}
	c := &Session{c: &client{opts: &s.opts, creds: creds, sess: sess}, mailbox: mailbox}
	c.c.stale = func() { a.forget(sess) }
	if mbox != "" {
		c.mailboxID = mbox
		_, err := c.Refresh(ctx)
		switch {
		case err == nil:
			return c, nil
		case errors.Is(err, upstream.ErrAuthFailed):
			a.forget(sess)
			return nil, err
		case !errors.Is(err, ErrNoMailbox):
			return nil, err
		}
		// The mailbox was deleted and perhaps made again: find it anew.
	}
	id, err := c.findMailbox(ctx, mailbox)
	if err != nil {
		if errors.Is(err, upstream.ErrAuthFailed) {
			a.forget(sess)
		}
		return nil, err
	}
	c.mailboxID = id
	if _, err := c.Refresh(ctx); err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.sess == nil || fresh {
		a.sess = sess
	}
	a.mailboxes[mailbox] = id
	a.mu.Unlock()
	return c, nil
}

// forget drops the account's session resource, if it is still sess, and
// the mailbox ids found with it.
func (a *account) forget(sess *session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sess == sess {
		a.sess = nil
		clear(a.mailboxes)
	}
}

// Session is one login's view of the mailbox. Its methods are not
// called concurrently.
type Session struct {
	c         *client
	mailbox   string
	mailboxID string
	info      upstream.Mailbox
	closed    bool
}

type blobInfo struct {
	id   string
	size int64
}

var errClosed = errors.New("jmap: session closed")

// mailboxJSON is a Mailbox (RFC 8621 §2) with the properties asked for.
type mailboxJSON struct {
	ID       string  `json:"id"`
	Name     string  `json:"name"`
	ParentID *string `json:"parentId"`
	Role     *string `json:"role"`
}

type getMailboxes struct {
	List     []mailboxJSON `json:"list"`
	NotFound []string      `json:"notFound"`
}

// mailboxes lists every Mailbox of the account (RFC 8621 §2.1: ids null
// returns all).
func (c *Session) mailboxes(ctx context.Context) ([]mailboxJSON, error) {
	var got getMailboxes
	err := c.c.call(ctx, "mailboxes", []invocation{{"Mailbox/get", map[string]any{
		"accountId": c.c.sess.accountID, "ids": nil, "properties": []string{"id", "name", "parentId", "role"},
	}, "m"}}, &got)
	return got.List, err
}

// findMailbox resolves a configured mailbox name to its id.
func (c *Session) findMailbox(ctx context.Context, name string) (string, error) {
	list, err := c.mailboxes(ctx)
	if err != nil {
		return "", err
	}
	if strings.EqualFold(name, "INBOX") {
		for _, m := range list {
			if m.Role != nil && *m.Role == "inbox" {
				return m.ID, nil
			}
		}
	}
	if id := byPath(list, name); id != "" {
		return id, nil
	}
	return "", fmt.Errorf("%w: %q", ErrNoMailbox, name)
}

// byPath finds the Mailbox whose names from the top, joined by "/", are
// path; the inbox may be named by its own name or as "INBOX" (see
// Mailboxes).
func byPath(list []mailboxJSON, path string) string {
	paths := mailboxPaths(list)
	for _, m := range list {
		if paths[m.ID] == path || pathOf(list, m, false) == path {
			return m.ID
		}
	}
	return ""
}

// pathOf is the names of m and its parents from the top, joined by "/";
// with inboxAsINBOX the Mailbox of role inbox is named "INBOX".
func pathOf(list []mailboxJSON, m mailboxJSON, inboxAsINBOX bool) string {
	byID := make(map[string]mailboxJSON, len(list))
	for _, m := range list {
		byID[m.ID] = m
	}
	name := func(m mailboxJSON) string {
		if inboxAsINBOX && m.Role != nil && *m.Role == "inbox" {
			return "INBOX"
		}
		return m.Name
	}
	full, cur := name(m), m
	// A parent chain longer than the list is a loop the server made.
	for depth := 0; cur.ParentID != nil && depth < len(list); depth++ {
		parent, ok := byID[*cur.ParentID]
		if !ok {
			break
		}
		full, cur = name(parent)+"/"+full, parent
	}
	return full
}

// mailboxPaths names every Mailbox as Mailboxes does.
func mailboxPaths(list []mailboxJSON) map[string]string {
	out := make(map[string]string, len(list))
	for _, m := range list {
		out[m.ID] = pathOf(list, m, true)
	}
	return out
}

// Mailboxes lists every Mailbox of the account (RFC 8621 §2.1, Mailbox/get
// with ids null) by path: its name and its parents' from the top, joined
// by "/", which Login takes. The inbox (role inbox, RFC 8621 §2) is
// "INBOX", as IMAP names it (RFC 9051 §5.1), whatever the server calls
// it; JMAP has no hierarchy delimiter, so "/" is the delimiter.
func (c *Session) Mailboxes(ctx context.Context) ([]upstream.MailboxName, error) {
	if c.closed {
		return nil, errClosed
	}
	list, err := c.mailboxes(ctx)
	if err != nil {
		return nil, err
	}
	paths := mailboxPaths(list)
	names := make([]upstream.MailboxName, 0, len(list))
	for _, p := range paths {
		names = append(names, upstream.MailboxName{Name: p, Delim: '/'})
	}
	slices.SortFunc(names, func(a, b upstream.MailboxName) int { return strings.Compare(a.Name, b.Name) })
	return names, nil
}

// query is the Email/query that lists the mailbox (RFC 8621 §4.4): the
// order is the listing's, by arrival; ties are broken by id locally.
func (c *Session) query() map[string]any {
	return map[string]any{
		"accountId":       c.c.sess.accountID,
		"filter":          map[string]any{"inMailbox": c.mailboxID},
		"sort":            []map[string]any{{"property": "receivedAt", "isAscending": true}},
		"collapseThreads": false,
		"calculateTotal":  true,
	}
}

type queryJSON struct {
	QueryState          string   `json:"queryState"`
	CanCalculateChanges bool     `json:"canCalculateChanges"`
	Position            int      `json:"position"`
	IDs                 []string `json:"ids"`
	Total               *int     `json:"total"`
}

// Refresh reports the mailbox's state now, in one request: the Mailbox
// still there (a recreated one has another id) and its query's state and
// total (RFC 8620 §5.5: limit 0 lists no ids).
func (c *Session) Refresh(ctx context.Context) (upstream.Mailbox, error) {
	if c.closed {
		return upstream.Mailbox{}, errClosed
	}
	var mb getMailboxes
	var q queryJSON
	args := c.query()
	args["limit"] = 0
	calls := []invocation{
		{"Mailbox/get", map[string]any{"accountId": c.c.sess.accountID, "ids": []string{c.mailboxID}, "properties": []string{"id"}}, "m"},
		{"Email/query", args, "q"},
	}
	if err := c.callSplit(ctx, "refresh", calls, &mb, &q); err != nil {
		return upstream.Mailbox{}, err
	}
	if len(mb.List) != 1 || mb.List[0].ID != c.mailboxID {
		return upstream.Mailbox{}, fmt.Errorf("%w: %q (id %s) is gone", ErrNoMailbox, c.mailbox, c.mailboxID)
	}
	if q.Total == nil || q.QueryState == "" {
		return upstream.Mailbox{}, &Error{Op: "refresh", Type: "no total or queryState", kind: ErrBadResponse}
	}
	c.info = upstream.Mailbox{
		Name: c.mailbox,
		// A Mailbox id is never reused (RFC 8620 §1.2): a mailbox
		// deleted and made again has another, and so another epoch.
		Epoch:    c.c.sess.accountID + "/" + c.mailboxID,
		State:    q.QueryState,
		Messages: *q.Total,
	}
	if !q.CanCalculateChanges {
		// Changes would be refused; "" says the state promises nothing.
		c.info.State = ""
	}
	return c.info, nil
}

// callSplit is call, one call per request when the server takes fewer
// calls per request than given (maxCallsInRequest). The calls must not
// refer to each other.
func (c *Session) callSplit(ctx context.Context, op string, calls []invocation, out ...any) error {
	if len(calls) <= c.c.sess.maxCalls {
		return c.c.call(ctx, op, calls, out...)
	}
	for i := range calls {
		if err := c.c.call(ctx, op, calls[i:i+1], out[i]); err != nil {
			return err
		}
	}
	return nil
}

// Selected is the mailbox's state as the login or the last Refresh found
// it.
func (c *Session) Selected() upstream.Mailbox { return c.info }

// emailJSON is an Email (RFC 8621 §4.1) with the properties listed.
type emailJSON struct {
	ID         string          `json:"id"`
	BlobID     string          `json:"blobId"`
	Size       int64           `json:"size"`
	ReceivedAt time.Time       `json:"receivedAt"`
	MessageID  []string        `json:"messageId"`
	MailboxIDs map[string]bool `json:"mailboxIds"`
}

var emailProperties = []string{"id", "blobId", "size", "receivedAt", "messageId", "mailboxIds"}

type getEmails struct {
	State    string      `json:"state"`
	List     []emailJSON `json:"list"`
	NotFound []string    `json:"notFound"`
}

// Snapshot lists every message of the mailbox: Email/query and Email/get
// in one request per page, the ids passed by back-reference (RFC 8620
// §3.7), pages no larger than maxObjectsInGet.
func (c *Session) Snapshot(ctx context.Context) ([]upstream.Entry, error) {
	if c.closed {
		return nil, errClosed
	}
	page := min(maxPage, c.c.sess.maxGet)
	// Pages of one listing must come from one state: a change between
	// two pages shifts the positions (RFC 8620 §5.5), so the listing
	// starts again, a few times at most.
	for attempt := 0; ; attempt++ {
		emails, state, err := c.pages(ctx, page)
		if err != nil {
			return nil, err
		}
		if state != "" {
			if state != c.info.State && c.info.State != "" {
				// The mailbox changed since its state was taken: the
				// listing is of now, and so is the state from here on.
				c.info.State, c.info.Messages = state, len(emails)
			}
			return c.entries(emails), nil
		}
		if attempt == 2 {
			return nil, fmt.Errorf("%w: the mailbox changed while it was listed, three times", ErrTemporary)
		}
	}
}

// pages lists the mailbox page by page; state is its queryState, or ""
// when it changed between two pages.
func (c *Session) pages(ctx context.Context, page int) (emails []emailJSON, state string, err error) {
	for position := 0; ; {
		args := c.query()
		args["position"], args["limit"] = position, page
		var q queryJSON
		var got getEmails
		if c.c.sess.maxCalls >= 2 {
			err = c.c.call(ctx, "list", []invocation{
				{"Email/query", args, "q"},
				{"Email/get", map[string]any{"accountId": c.c.sess.accountID, "#ids": ref{"q", "Email/query", "/ids"}, "properties": emailProperties}, "g"},
			}, &q, &got)
		} else {
			if err = c.c.call(ctx, "list", []invocation{{"Email/query", args, "q"}}, &q); err == nil {
				err = c.c.call(ctx, "list", []invocation{{"Email/get", map[string]any{"accountId": c.c.sess.accountID, "ids": q.IDs, "properties": emailProperties}, "g"}}, &got)
			}
		}
		if err != nil {
			return nil, "", err
		}
		if q.QueryState == "" {
			return nil, "", &Error{Op: "list", Type: "no queryState", kind: ErrBadResponse}
		}
		if position > 0 && q.QueryState != state {
			return nil, "", nil
		}
		state = q.QueryState
		if err := askedFor(got.List, q.IDs); err != nil {
			return nil, "", &Error{Op: "list", kind: err}
		}
		emails = append(emails, got.List...)
		position += len(q.IDs)
		// A server may return fewer ids than the limit asked for
		// (RFC 8620 §5.5): only the total, or an empty page, ends the
		// listing.
		if len(q.IDs) == 0 || (q.Total != nil && position >= *q.Total) || (q.Total == nil && len(q.IDs) < page) {
			return emails, state, nil
		}
	}
}

// askedFor checks that every Email a server returned is one of the ids
// asked for, once (RFC 8620 §5.1: Email/get returns the records of the
// ids given). Another would be listed, and perhaps deleted at QUIT, though
// it may be in no mailbox the gateway serves: the whole answer is
// refused.
func askedFor(list []emailJSON, ids []string) error {
	asked := make(map[string]bool, len(ids))
	for _, id := range ids {
		asked[id] = true
	}
	for _, e := range list {
		if !asked[e.ID] {
			return fmt.Errorf("%w: Email/get returned %q, which was not asked for", ErrBadResponse, printable(e.ID, 64))
		}
		delete(asked, e.ID)
	}
	return nil
}

// entries turns Emails into the listing's entries, sorted by (receivedAt,
// id).
func (c *Session) entries(emails []emailJSON) []upstream.Entry {
	slices.SortFunc(emails, func(a, b emailJSON) int {
		return cmp.Or(a.ReceivedAt.Compare(b.ReceivedAt), cmp.Compare(a.ID, b.ID))
	})
	entries := make([]upstream.Entry, 0, len(emails))
	for _, e := range emails {
		if e.ID == "" {
			continue
		}
		id := upstream.ID(e.ID)
		entry := upstream.Entry{
			ID: id, Size: e.Size,
			// The Email id is immutable and never reused (RFC 8620
			// §1.2), so it is a UIDL as it is when it fits RFC 1939 §7;
			// the gateway replaces one that does not.
			UIDL:         e.ID,
			Identity:     "jmap:" + e.ID,
			InternalDate: e.ReceivedAt,
		}
		if len(e.MessageID) > 0 {
			entry.MessageID = "<" + e.MessageID[0] + ">"
		}
		entries = append(entries, entry)
	}
	return entries
}

// blob finds a message's blob with an Email/get, asked at each Open: a
// server may keep serving the blob of an Email destroyed since the
// listing (Cyrus does, until its clean-up), and a message no longer in
// the mailbox is gone, as it is over IMAP.
func (c *Session) blob(ctx context.Context, id upstream.ID) (blobInfo, error) {
	var got getEmails
	err := c.c.call(ctx, "open", []invocation{{"Email/get", map[string]any{
		"accountId": c.c.sess.accountID, "ids": []string{string(id)}, "properties": []string{"id", "blobId", "size", "mailboxIds"},
	}, "g"}}, &got)
	if err != nil {
		return blobInfo{}, err
	}
	if err := askedFor(got.List, []string{string(id)}); err != nil {
		// Not "gone": a server answering for another message says
		// nothing of this one.
		return blobInfo{}, &Error{Op: "open", kind: err}
	}
	if len(got.List) != 1 || !got.List[0].MailboxIDs[c.mailboxID] {
		return blobInfo{}, fmt.Errorf("jmap: Email %s: %w", id, upstream.ErrMessageGone)
	}
	return blobInfo{id: got.List[0].BlobID, size: got.List[0].Size}, nil
}

// Open streams the message's raw octets, its blob (RFC 8621 §4.1.1:
// blobId is the raw RFC 5322 message): whole when n < 0, otherwise at
// most n octets from offset on.
func (c *Session) Open(ctx context.Context, id upstream.ID, offset, n int64) (io.ReadCloser, error) {
	if c.closed {
		return nil, errClosed
	}
	b, err := c.blob(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.c.download(ctx, b.id, b.size, offset, n)
}

type setJSON struct {
	NotDestroyed map[string]methodError `json:"notDestroyed"`
	NotUpdated   map[string]methodError `json:"notUpdated"`
	NotCreated   map[string]methodError `json:"notCreated"`
	Created      map[string]struct {
		ID string `json:"id"`
	} `json:"created"`
}

// notDone is the first failure of a set other than notFound: a message
// already gone is already deleted.
func notDone(failed map[string]methodError) error {
	for id, e := range failed {
		if e.Type != "notFound" {
			return fmt.Errorf("jmap: Email %s: %s", printable(id, 64), printable(e.Type, 64))
		}
	}
	return nil
}

// DeleteJournaled applies a delete mode with Email/set (RFC 8621 §4.6),
// at most maxObjectsInSet messages per call: expunge destroys the Emails,
// trash moves them by patching mailboxIds (RFC 8620 §5.3), seen sets the
// $seen keyword. A move is one update, whole or not at all, so copied is
// called once every move is done.
func (c *Session) DeleteJournaled(ctx context.Context, ids []upstream.ID, mode upstream.DeleteMode, trash string, copied func() error) error {
	if c.closed {
		return errClosed
	}
	var patch map[string]any
	switch mode {
	case upstream.DeleteKeep:
		return nil
	case upstream.DeleteExpunge:
	case upstream.DeleteSeen:
		patch = map[string]any{"keywords/$seen": true}
	case upstream.DeleteTrash:
		t, err := c.trash(ctx, trash, true)
		if err != nil {
			return err
		}
		patch = map[string]any{"mailboxIds/" + c.mailboxID: nil, "mailboxIds/" + t: true}
	default:
		return fmt.Errorf("jmap: unknown delete mode %q", mode)
	}
	for chunk := range slices.Chunk(ids, c.c.sess.maxSet) {
		args := map[string]any{"accountId": c.c.sess.accountID}
		if patch == nil {
			args["destroy"] = chunk
		} else {
			update := make(map[string]any, len(chunk))
			for _, id := range chunk {
				update[string(id)] = patch
			}
			args["update"] = update
		}
		var got setJSON
		if err := c.c.call(ctx, "delete", []invocation{{"Email/set", args, "s"}}, &got); err != nil {
			return err
		}
		if err := errors.Join(notDone(got.NotDestroyed), notDone(got.NotUpdated)); err != nil {
			return err
		}
	}
	if mode == upstream.DeleteTrash && copied != nil {
		return copied()
	}
	return nil
}

// trash finds the Mailbox deleted messages go to: the one with role
// trash (RFC 8621 §2), else the one named configured, made when create
// is set and there is none.
func (c *Session) trash(ctx context.Context, configured string, create bool) (string, error) {
	t, id, err := c.findTrash(ctx, configured)
	if err != nil {
		return "", err
	}
	if t.Served {
		return "", upstream.ErrTrashIsServed
	}
	if id != "" {
		return id, nil
	}
	if !create || configured == "" || strings.Contains(configured, "/") {
		return "", upstream.ErrNoTrash
	}
	var got setJSON
	err = c.c.call(ctx, "create trash", []invocation{{"Mailbox/set", map[string]any{
		"accountId": c.c.sess.accountID, "create": map[string]any{"t": map[string]any{"name": configured, "parentId": nil}},
	}, "s"}}, &got)
	if err != nil {
		return "", err
	}
	if got.Created["t"].ID == "" {
		return "", fmt.Errorf("jmap: creating the trash mailbox %q refused", configured)
	}
	return got.Created["t"].ID, nil
}

func (c *Session) findTrash(ctx context.Context, configured string) (upstream.Trash, string, error) {
	list, err := c.mailboxes(ctx)
	if err != nil {
		return upstream.Trash{}, "", err
	}
	for _, m := range list {
		if m.Role != nil && *m.Role == "trash" {
			return upstream.Trash{Mailbox: m.Name, Marked: true, Exists: true, Served: m.ID == c.mailboxID}, m.ID, nil
		}
	}
	if configured == "" {
		return upstream.Trash{}, "", upstream.ErrNoTrash
	}
	id := byPath(list, configured)
	return upstream.Trash{Mailbox: configured, Exists: id != "", Served: id != "" && id == c.mailboxID}, id, nil
}

// FindTrash tells where DeleteTrash would move messages, for `gateway
// check`.
func (c *Session) FindTrash(ctx context.Context, configured string) (upstream.Trash, error) {
	t, _, err := c.findTrash(ctx, configured)
	return t, err
}

type queryChangesJSON struct {
	NewQueryState string   `json:"newQueryState"`
	Removed       []string `json:"removed"`
	Added         []struct {
		ID string `json:"id"`
	} `json:"added"`
	Total *int `json:"total"`
}

// Changes lists what came to the mailbox and what left it since the
// state since: Email/queryChanges on the listing's query (RFC 8620
// §5.6), and Email/get of what came by back-reference, in one request. A
// server that cannot tell (cannotCalculateChanges, tooManyChanges) gives
// ErrCannotCalculateChanges: the gateway then lists everything.
func (c *Session) Changes(ctx context.Context, since upstream.Mailbox) (upstream.Changes, error) {
	if c.closed {
		return upstream.Changes{}, errClosed
	}
	if since.Epoch != c.info.Epoch || since.State == "" || c.info.State == "" {
		return upstream.Changes{}, fmt.Errorf("%w: another epoch or no state", ErrCannotCalculateChanges)
	}
	if c.c.sess.maxCalls < 2 {
		return upstream.Changes{}, fmt.Errorf("%w: the server takes one call per request", ErrCannotCalculateChanges)
	}
	args := c.query()
	args["sinceQueryState"] = since.State
	args["maxChanges"] = c.c.sess.maxGet
	var qc queryChangesJSON
	var got getEmails
	err := c.c.call(ctx, "changes", []invocation{
		{"Email/queryChanges", args, "c"},
		{"Email/get", map[string]any{"accountId": c.c.sess.accountID, "#ids": ref{"c", "Email/queryChanges", "/added/*/id"}, "properties": emailProperties}, "g"},
	}, &qc, &got)
	if err != nil {
		return upstream.Changes{}, err
	}
	asked := make([]string, len(qc.Added))
	for i, a := range qc.Added {
		asked[i] = a.ID
	}
	if err := askedFor(got.List, asked); err != nil {
		return upstream.Changes{}, &Error{Op: "changes", kind: err}
	}
	if qc.NewQueryState != c.info.State {
		return upstream.Changes{}, fmt.Errorf("%w: the mailbox changed again since its state was taken", ErrCannotCalculateChanges)
	}
	ch := upstream.Changes{Added: c.entries(got.List)}
	added := make(map[string]bool, len(qc.Added))
	for _, a := range qc.Added {
		added[a.ID] = true
	}
	// An id both removed and added is in the results now (RFC 8620 §5.6
	// lets a server list an added id as removed too, and Cyrus does): it
	// is new, or one the gateway listed before whose position may have
	// moved. Only the first is right for the merge; for the second the
	// merge finds the id listed already and lists everything again.
	for _, id := range qc.Removed {
		if !added[id] {
			ch.Removed = append(ch.Removed, upstream.ID(id))
		}
	}
	return ch, nil
}

// Alive tells whether the session can still be used: it holds no
// connection of its own.
func (c *Session) Alive() bool { return !c.closed }

// Close ends the session.
func (c *Session) Close() error {
	c.closed = true
	return nil
}
