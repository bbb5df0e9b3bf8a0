// Package graphdouble is a stand-in for the mail part of Microsoft Graph,
// for tests: an HTTP server on loopback holding mailboxes in memory and
// answering the requests Microsoft documents with the response shapes
// Microsoft documents. Graph itself cannot run outside Microsoft, so this
// is what the Graph store is tested against; where the pages are silent,
// the double does what Exchange Online is known to do and says so.
//
// Pages (under https://learn.microsoft.com/graph/):
//
//   - api/user-list-messages, paging: GET /me/mailFolders/{id}/messages,
//     $top (default page size 10), @odata.nextLink
//   - api/message-delta, delta-query-messages, delta-query-overview:
//     @odata.nextLink within a round, @odata.deltaLink at its end,
//     "@removed": {"reason": "deleted"}; an expired state answers 410
//     with code syncStateNotFound (errors)
//   - outlook-get-mime-message: GET /me/messages/{id}/$value
//   - outlook-immutable-id: ids given under Prefer: IdType="ImmutableId"
//     survive moves; default ids change with every move
//   - api/message-move (201 and the moved message), api/message-delete
//     (204), api/message-update (200 and the message)
//   - api/mailfolder-get, api/user-list-mailfolders, api/resources/mailfolder
//   - throttling, throttling-limits#outlook-service-limits: 429 with
//     Retry-After; more than 4 requests at once on one mailbox are refused
//     with 429 "ApplicationThrottled"
//   - json-batching: POST /$batch of up to 20 requests, each answered as if
//     sent alone, inside {"responses":[{"id","status","headers","body"}]}
//   - user-sendmail with MIME (outlook-send-mime-message): POST
//     /me/sendMail, text/plain, base64 MIME, 202; the messages are kept
//     for Sent
//   - errors: {"error":{"code","message","innerError":{...}}}; an expired
//     token is 401 InvalidAuthenticationToken "Access token has expired or
//     is not yet valid." with a WWW-Authenticate: Bearer header
//
// Tokens are granted one by one (Grant), or checked by an authorization
// server of the test kit (TokensFrom). Knobs for the faults: PageSize, Throttle, RefuseSend, Unauthorized, ThrottleBatchItems, Expire, ExpireDeltaLinks,
// Mailbox.Remove (another client deletes a message), messages of any
// bytes (bare LF) and generated messages of any size (Mailbox.AddLarge),
// Delay and Override.
package graphdouble

import (
	"cmp"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// MailboxConcurrency is Outlook's limit of concurrent requests per app and
// mailbox (throttling-limits#outlook-service-limits).
const MailboxConcurrency = 4

// Server is the double. Its URL is the base URL of the API, such as
// http://127.0.0.1:PORT/v1.0.
type Server struct {
	URL string

	srv *httptest.Server

	mu        sync.Mutex
	mailboxes map[string]*Mailbox // by user
	tokens    map[string]token    // by access token
	pageSize  int
	throttles []throttle
	// itemThrottles apply to requests inside JSON batches.
	itemThrottles []throttle
	delay         time.Duration
	override      func(w http.ResponseWriter, r *http.Request) bool
	deltas        map[string]*deltaState // by $deltatoken or $skiptoken
	issuer        func(token string) (user string, ok bool)
	requests      []string
	inFlight      map[string]int
	maxFlight     map[string]int
	seq           int
	sent          []Sent
	refuseSend    []sendRefusal
	unauthorized  int
}

// Sent is a message sendMail took.
type Sent struct {
	User string // whose token sent it
	MIME []byte // the decoded MIME, as posted
}

type sendRefusal struct {
	status int
	code   string
}

type token struct {
	user    string
	expired bool
}

type throttle struct {
	status     int
	retryAfter string
}

// New starts a double on a loopback port, stopped when the test ends.
func New(t testing.TB) *Server {
	s := &Server{
		mailboxes: map[string]*Mailbox{},
		tokens:    map[string]token{},
		pageSize:  10,
		deltas:    map[string]*deltaState{},
		inFlight:  map[string]int{},
		maxFlight: map[string]int{},
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	s.URL = s.srv.URL + "/v1.0"
	return s
}

// Mailbox returns the user's mailbox, created with the well-known folders
// on first use.
func (s *Server) Mailbox(user string) *Mailbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.mailboxes[user]; m != nil {
		return m
	}
	m := &Mailbox{s: s, user: user, folders: map[string]*folder{}}
	for _, wk := range []string{"inbox", "deleteditems", "recoverableitemsdeletions", "sentitems", "drafts", "junkemail", "archive"} {
		m.addFolder(wk, map[string]string{
			"inbox": "Inbox", "deleteditems": "Deleted Items", "recoverableitemsdeletions": "Deletions",
			"sentitems": "Sent Items", "drafts": "Drafts", "junkemail": "Junk Email", "archive": "Archive",
		}[wk])
	}
	s.mailboxes[user] = m
	return m
}

// Grant makes token a valid access token for the user's mailbox.
func (s *Server) Grant(tok, user string) {
	s.Mailbox(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[tok] = token{user: user}
}

// TokensFrom makes the double accept, besides granted tokens, those an
// authorization server issued: valid names the user of a token it
// issued (an oauthtest provider's), or refuses it.
func (s *Server) TokensFrom(valid func(token string) (user string, ok bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.issuer = valid
}

// Expire makes a granted token expired: requests with it get 401.
func (s *Server) Expire(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[tok]
	t.expired = true
	s.tokens[tok] = t
}

// PageSize sets the page size used when a request has no $top (Graph's
// default is 10) and caps $top.
func (s *Server) PageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageSize = n
}

// Throttle makes the next n requests fail with status (429 or 503) and the
// Retry-After value given ("" for none).
func (s *Server) Throttle(n, status int, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.throttles = append(s.throttles, throttle{status, retryAfter})
	}
}

// ThrottleBatchItems makes the next n requests inside JSON batches
// answer 429 with the Retry-After value given ("" for none).
func (s *Server) ThrottleBatchItems(n int, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.itemThrottles = append(s.itemThrottles, throttle{http.StatusTooManyRequests, retryAfter})
	}
}

// Delay makes every answer wait d before it is written, so that
// concurrent requests overlap.
func (s *Server) Delay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Override lets f answer requests first: when it returns true the request
// is answered.
func (s *Server) Override(f func(w http.ResponseWriter, r *http.Request) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.override = f
}

// ExpireDeltaLinks forgets every delta state: a delta or skip token given
// out so far gets 410 syncStateNotFound.
func (s *Server) ExpireDeltaLinks() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.deltas)
}

// Sent returns the messages sendMail took, in order.
func (s *Server) Sent() []Sent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sent)
}

// RefuseSend makes the next sendMail request fail with status and Graph's
// error code, such as 400 ErrorMimeContentInvalidBase64String or 403
// ErrorSendAsDenied.
func (s *Server) RefuseSend(status int, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuseSend = append(s.refuseSend, sendRefusal{status, code})
}

// Unauthorized makes the next n requests answer 401 InvalidAuthenticationToken
// whatever their token, as Graph does with a token revoked before its
// expiry.
func (s *Server) Unauthorized(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unauthorized += n
}

// Requests returns "METHOD path?query" of every request so far, the path
// without the /v1.0 prefix.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// MaxInFlight is the most requests the user's mailbox had in flight at
// once, a streaming $value counting until its last octet is written.
func (s *Server) MaxInFlight(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxFlight[user]
}

// Mailbox is one user's mailbox.
type Mailbox struct {
	s       *Server
	user    string
	folders map[string]*folder // by folder id
	msgs    []*message         // in arrival order
}

type folder struct {
	id, wellKnown, name string
	parent              string // the parent folder's id; "" at the top
}

type message struct {
	immutable string // the id under Prefer: IdType="ImmutableId"
	rest      string // the default id, new with every move
	folder    string // folder id
	msgID     string
	received  time.Time
	isRead    bool
	version   int // bumped by every change, for delta rounds
	mime      []byte
	large     int64 // > 0: generated content of this size instead of mime
}

// Msg is a message to put in a mailbox.
type Msg struct {
	MessageID string // the Message-ID header's value; internetMessageId
	Received  time.Time
	MIME      []byte // served by $value exactly as given
}

func (m *Mailbox) addFolder(wellKnown, name string) *folder {
	m.s.seq++
	f := &folder{id: fmt.Sprintf("AAMkFolder%03d=", m.s.seq), wellKnown: wellKnown, name: name}
	m.folders[f.id] = f
	return f
}

// AddFolder creates a top-level folder with that display name and returns
// its id.
func (m *Mailbox) AddFolder(name string) string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.addFolder("", name).id
}

// AddChildFolder creates a folder with that display name under the folder
// whose id is parent (mailfolder-post-childfolders) and returns its id.
func (m *Mailbox) AddChildFolder(parent, name string) string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	f := m.addFolder("", name)
	f.parent = parent
	return f.id
}

// Add puts a message in the folder (a well-known name or a display name)
// and returns its immutable id.
func (m *Mailbox) Add(folderName string, msg Msg) string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.add(folderName, &message{msgID: msg.MessageID, received: msg.Received, mime: slices.Clone(msg.MIME)})
}

// AddLarge puts a generated message of exactly size octets in the folder:
// a few header lines, then lines of 76 letters, each ending in CRLF, made
// as they are served and never held in memory. Its content is Large(size).
func (m *Mailbox) AddLarge(folderName string, size int64) string {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.add(folderName, &message{msgID: fmt.Sprintf("<large-%d@double.example>", size), received: time.Now().UTC(), large: size})
}

func (m *Mailbox) add(folderName string, msg *message) string {
	f := m.folderByName(folderName)
	if f == nil {
		panic("graphdouble: no folder " + folderName)
	}
	m.s.seq++
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", m.user, m.s.seq)))
	// Graph ids are opaque base64 strings, case-sensitive, often ending
	// in "=" (outlook-immutable-id, api/resources/message examples).
	msg.immutable = "AAkALgAA" + hex.EncodeToString(sum[:12]) + "-_AAA="
	msg.rest = m.newRestID()
	msg.folder = f.id
	msg.version = m.s.seq
	if msg.received.IsZero() {
		msg.received = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(m.s.seq) * time.Minute)
	}
	m.msgs = append(m.msgs, msg)
	return msg.immutable
}

func (m *Mailbox) newRestID() string {
	m.s.seq++
	sum := sha256.Sum256([]byte(fmt.Sprintf("rest/%s/%d", m.user, m.s.seq)))
	return "AAMkAD" + hex.EncodeToString(sum[:12]) + "AAA="
}

func (m *Mailbox) folderByName(name string) *folder {
	for _, f := range m.folders {
		if f.id == name || f.wellKnown == name || (f.wellKnown == "" && f.name == name) {
			return f
		}
	}
	return nil
}

// Remove deletes a message outright, as another client would.
func (m *Mailbox) Remove(id string) {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	m.msgs = slices.DeleteFunc(m.msgs, func(msg *message) bool { return msg.immutable == id || msg.rest == id })
}

// MarkRead sets isRead, as another client would.
func (m *Mailbox) MarkRead(id string) {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	if msg := m.find(id); msg != nil {
		msg.isRead = true
		m.s.seq++
		msg.version = m.s.seq
	}
}

// State reports where a message is (a well-known name, or the display
// name of another folder) and whether it is read; ok is false when the
// mailbox no longer has it.
func (m *Mailbox) State(id string) (folderName string, isRead, ok bool) {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	msg := m.find(id)
	if msg == nil {
		return "", false, false
	}
	f := m.folders[msg.folder]
	if f.wellKnown != "" {
		return f.wellKnown, msg.isRead, true
	}
	return f.name, msg.isRead, true
}

func (m *Mailbox) find(id string) *message {
	for _, msg := range m.msgs {
		if msg.immutable == id || msg.rest == id {
			return msg
		}
	}
	return nil
}

// Large returns the content of a generated message of size octets.
func Large(size int64) io.Reader { return &largeReader{size: size} }

// largeReader makes a generated message as it is read: headers, a blank
// line, then lines of 76 letters and CRLF, the last one cut to fit size.
type largeReader struct {
	size, off int64
}

const largeHeader = "From: generator@double.example\r\nTo: user@double.example\r\nSubject: large\r\nMessage-ID: <large@double.example>\r\n\r\n"

// largeLine is one body line of a generated message; largeBlock many of
// them, copied from as the message is read.
var (
	largeLine  = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwx\r\n"
	largeBlock = []byte(strings.Repeat(largeLine, 840))
)

func (r *largeReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.size-r.off)]
	n := 0
	if r.off < int64(len(largeHeader)) {
		n = copy(p, largeHeader[r.off:])
	}
	for n < len(p) {
		at := (r.off + int64(n) - int64(len(largeHeader))) % int64(len(largeLine))
		n += copy(p[n:], largeBlock[at:])
	}
	r.off += int64(n)
	return n, nil
}

// deltaState is where a delta round stands: for a delta token, the
// versions of the folder's messages when the round that gave it ended;
// for a skip token, the entries still to send in the current round.
type deltaState struct {
	user, folder string
	immutable    bool
	top          int
	seen         map[string]int // immutable id -> version
	pending      []map[string]any
	end          map[string]int // the seen map of the round's delta token
}

// graphError writes Graph's error object (errors).
func graphError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": code, "message": msg,
		"innerError": map[string]any{"request-id": "00000000-0000-0000-0000-000000000000", "date": time.Now().UTC().Format("2006-01-02T15:04:05")},
	}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; odata.metadata=minimal")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	path, ok := strings.CutPrefix(r.URL.EscapedPath(), "/v1.0")
	s.mu.Lock()
	s.requests = append(s.requests, r.Method+" "+path+queryOf(r))
	override, delay := s.override, s.delay
	s.mu.Unlock()
	if override != nil && override(w, r) {
		return
	}
	if !ok {
		graphError(w, http.StatusNotFound, "BadRequest", "Invalid version.")
		return
	}
	auth, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	tok, known := s.tokens[auth]
	issuer := s.issuer
	if s.unauthorized > 0 {
		s.unauthorized--
		tok.expired = true
	}
	s.mu.Unlock()
	if !known && issuer != nil {
		if user, ok := issuer(auth); ok {
			s.Mailbox(user)
			tok, known = token{user: user}, true
		}
	}
	switch {
	case !known:
		w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
		graphError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed, there are no dots (.).")
		return
	case tok.expired:
		w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
		graphError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
		return
	}
	s.mu.Lock()
	s.inFlight[tok.user]++
	n := s.inFlight[tok.user]
	s.maxFlight[tok.user] = max(s.maxFlight[tok.user], n)
	var th *throttle
	if len(s.throttles) > 0 {
		th = &s.throttles[0]
		s.throttles = s.throttles[1:]
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight[tok.user]--
		s.mu.Unlock()
	}()
	if delay > 0 {
		time.Sleep(delay)
	}
	switch {
	case n > MailboxConcurrency:
		w.Header().Set("Retry-After", "1")
		graphError(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		return
	case th != nil:
		if th.retryAfter != "" {
			w.Header().Set("Retry-After", th.retryAfter)
		}
		if th.status == http.StatusServiceUnavailable {
			graphError(w, th.status, "serviceNotAvailable", "The service is not available. Try the request again after a delay.")
		} else {
			graphError(w, th.status, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		}
		return
	}
	s.route(w, r, tok.user, path)
}

func queryOf(r *http.Request) string {
	if r.URL.RawQuery == "" {
		return ""
	}
	return "?" + r.URL.RawQuery
}

// immutableIDs reports whether the request asked for immutable ids
// (outlook-immutable-id); Prefer may hold several preferences.
func immutableIDs(r *http.Request) bool {
	for _, v := range r.Header.Values("Prefer") {
		for p := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.ReplaceAll(strings.TrimSpace(p), " ", ""), `IdType="ImmutableId"`) {
				return true
			}
		}
	}
	return false
}

func (s *Server) route(w http.ResponseWriter, r *http.Request, user, escaped string) {
	var segs []string
	for seg := range strings.SplitSeq(strings.TrimPrefix(escaped, "/"), "/") {
		u, err := url.PathUnescape(seg)
		if err != nil {
			graphError(w, http.StatusBadRequest, "BadRequest", "Bad path.")
			return
		}
		// Graph's own links write mailFolders('id') as one segment.
		if name, key, ok := strings.Cut(u, "("); ok && strings.HasSuffix(key, ")") {
			segs = append(segs, name, "("+key)
			continue
		}
		segs = append(segs, u)
	}
	if r.Method == "POST" && len(segs) == 2 && segs[0] == "me" && segs[1] == "sendMail" {
		s.sendMail(w, r, user)
		return
	}
	if r.Method == "POST" && len(segs) == 1 && segs[0] == "$batch" {
		s.batch(w, r, user)
		return
	}
	if len(segs) == 0 || segs[0] != "me" {
		graphError(w, http.StatusBadRequest, "BadRequest", "Resource not found for the segment.")
		return
	}
	segs = segs[1:]
	s.mu.Lock()
	m := s.mailboxes[user]
	s.mu.Unlock()
	imm := immutableIDs(r)
	switch {
	case r.Method == "GET" && len(segs) == 1 && segs[0] == "mailFolders":
		s.listFolders(w, r, m, "")
	case r.Method == "GET" && len(segs) == 3 && segs[0] == "mailFolders" && segs[2] == "childFolders":
		s.mu.Lock()
		f := m.folderFor(segs[1])
		s.mu.Unlock()
		if f == nil {
			graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
			return
		}
		s.listFolders(w, r, m, f.id)
	case r.Method == "GET" && len(segs) == 2 && segs[0] == "mailFolders":
		s.getFolder(w, m, segs[1])
	case r.Method == "GET" && len(segs) == 3 && segs[0] == "mailFolders" && segs[2] == "messages":
		s.listMessages(w, r, m, segs[1], imm)
	case r.Method == "GET" && len(segs) == 4 && segs[0] == "mailFolders" && segs[2] == "messages" && segs[3] == "delta":
		s.delta(w, r, m, segs[1], imm)
	case r.Method == "GET" && len(segs) == 3 && segs[0] == "messages" && segs[2] == "$value":
		s.value(w, m, segs[1])
	case r.Method == "POST" && len(segs) == 3 && segs[0] == "messages" && segs[2] == "move":
		s.move(w, r, m, segs[1], imm)
	case r.Method == "DELETE" && len(segs) == 2 && segs[0] == "messages":
		s.delete(w, m, segs[1])
	case r.Method == "PATCH" && len(segs) == 2 && segs[0] == "messages":
		s.update(w, r, m, segs[1], imm)
	default:
		graphError(w, http.StatusBadRequest, "BadRequest", "Resource not found for the segment.")
	}
}

// folderFor resolves a folder id or well-known name; mailFolders('id') is
// accepted as Graph's own links write it.
func (m *Mailbox) folderFor(ref string) *folder {
	if in, ok := strings.CutPrefix(ref, "('"); ok {
		ref = strings.TrimSuffix(in, "')")
	}
	for _, f := range m.folders {
		if f.id == ref || (f.wellKnown != "" && strings.EqualFold(f.wellKnown, ref)) {
			return f
		}
	}
	return nil
}

func (m *Mailbox) folderJSON(f *folder) map[string]any {
	children := 0
	for _, c := range m.folders {
		if c.parent == f.id {
			children++
		}
	}
	return map[string]any{"id": f.id, "displayName": f.name, "totalItemCount": m.count(f),
		"parentFolderId": cmp.Or(f.parent, "AAMkRoot="), "childFolderCount": children}
}

func (m *Mailbox) count(f *folder) int {
	n := 0
	for _, msg := range m.msgs {
		if msg.folder == f.id {
			n++
		}
	}
	return n
}

func (s *Server) getFolder(w http.ResponseWriter, m *Mailbox, ref string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := m.folderFor(ref)
	if f == nil {
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	writeJSON(w, http.StatusOK, m.folderJSON(f))
}

// listFolders answers $filter=displayName eq '...' (the one filter the
// client uses), or lists every folder, of the folders under parent (""
// for the top-level ones).
func (s *Server) listFolders(w http.ResponseWriter, r *http.Request, m *Mailbox, parent string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	filter := r.URL.Query().Get("$filter")
	want, byName := "", false
	if filter != "" {
		v, ok := strings.CutPrefix(filter, "displayName eq '")
		// An OData string literal doubles its single quotes; a lone one
		// ends the literal early.
		if !ok || !strings.HasSuffix(v, "'") || strings.Contains(strings.ReplaceAll(strings.TrimSuffix(v, "'"), "''", ""), "'") {
			graphError(w, http.StatusBadRequest, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
			return
		}
		want, byName = strings.ReplaceAll(strings.TrimSuffix(v, "'"), "''", "'"), true
	}
	var value []map[string]any
	for _, f := range m.sortedFolders() {
		if f.parent == parent && (!byName || f.name == want) {
			value = append(value, m.folderJSON(f))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"value": value})
}

func (m *Mailbox) sortedFolders() []*folder {
	var fs []*folder
	for _, f := range m.folders {
		fs = append(fs, f)
	}
	slices.SortFunc(fs, func(a, b *folder) int { return strings.Compare(a.id, b.id) })
	return fs
}

// messageJSON is a message with the properties $select names (all the
// client knows of when $select is empty). Without immutable ids the id is
// the default one.
func messageJSON(msg *message, sel string, imm bool) map[string]any {
	id := msg.rest
	if imm {
		id = msg.immutable
	}
	all := map[string]any{
		"@odata.etag":       fmt.Sprintf(`W/"CQAAABYAAA%d"`, msg.version),
		"id":                id,
		"internetMessageId": msg.msgID,
		"receivedDateTime":  msg.received.UTC().Format(time.RFC3339),
		"isRead":            msg.isRead,
		"subject":           "",
		"parentFolderId":    msg.folder,
	}
	if sel == "" {
		return all
	}
	out := map[string]any{"id": id, "@odata.etag": all["@odata.etag"]}
	for p := range strings.SplitSeq(sel, ",") {
		if v, ok := all[strings.TrimSpace(p)]; ok {
			out[strings.TrimSpace(p)] = v
		}
	}
	return out
}

func (s *Server) top(r *http.Request) int {
	n := s.pageSize
	if v := r.URL.Query().Get("$top"); v != "" {
		t, err := strconv.Atoi(v)
		if err == nil && t > 0 && t < n {
			n = t
		}
	}
	return n
}

// base is the API's base URL as the client reached it: links name the
// host asked, as Graph's do, so that a client going through a proxy is
// sent back through it.
func (s *Server) base(r *http.Request) string {
	if r.Host == "" {
		return s.URL
	}
	return "http://" + r.Host + "/v1.0"
}

// listMessages pages with $skip in @odata.nextLink, the way
// user-list-messages describes its links.
func (s *Server) listMessages(w http.ResponseWriter, r *http.Request, m *Mailbox, ref string, imm bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := m.folderFor(ref)
	if f == nil {
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	q := r.URL.Query()
	top := s.top(r)
	skip, _ := strconv.Atoi(q.Get("$skip"))
	var in []*message
	for _, msg := range m.msgs {
		if msg.folder == f.id {
			in = append(in, msg)
		}
	}
	body := map[string]any{"@odata.context": s.base(r) + "/$metadata#users('" + m.user + "')/mailFolders('" + f.id + "')/messages"}
	value := []map[string]any{}
	for i := skip; i < len(in) && i < skip+top; i++ {
		value = append(value, messageJSON(in[i], q.Get("$select"), imm))
	}
	body["value"] = value
	if skip+top < len(in) {
		next := url.Values{"$top": {strconv.Itoa(top)}, "$skip": {strconv.Itoa(skip + top)}}
		if sel := q.Get("$select"); sel != "" {
			next.Set("$select", sel)
		}
		body["@odata.nextLink"] = s.base(r) + "/me/mailFolders/" + url.PathEscape(f.id) + "/messages?" + next.Encode()
	}
	writeJSON(w, http.StatusOK, body)
}

// delta runs rounds as delta-query-messages shows them: the first round
// lists the folder; a delta token's round lists what changed since, and
// the messages gone with "@removed".
func (s *Server) delta(w http.ResponseWriter, r *http.Request, m *Mailbox, ref string, imm bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := m.folderFor(ref)
	if f == nil {
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	q := r.URL.Query()
	var st *deltaState
	switch {
	case q.Get("$skiptoken") != "" || q.Get("$deltatoken") != "":
		tok := q.Get("$skiptoken") + q.Get("$deltatoken")
		st = s.deltas[tok]
		if st == nil || st.user != m.user || st.folder != f.id {
			graphError(w, http.StatusGone, "syncStateNotFound", "The sync state generation is not found.")
			return
		}
		if q.Get("$deltatoken") != "" {
			// A new round from a finished one: the changes since.
			st = m.startRound(f, st.seen, st.top, imm)
		}
	default:
		st = m.startRound(f, nil, s.top(r), imm)
	}
	n := min(st.top, len(st.pending))
	value := st.pending[:n]
	rest := st.pending[n:]
	body := map[string]any{"@odata.context": s.base(r) + "/$metadata#Collection(message)", "value": value}
	s.seq++
	tok := fmt.Sprintf("GwcBoT%06d", s.seq)
	link := s.base(r) + "/me/mailFolders('" + f.id + "')/messages/delta?"
	if len(rest) > 0 {
		s.deltas[tok] = &deltaState{user: m.user, folder: f.id, immutable: imm, top: st.top, pending: rest, end: st.end}
		body["@odata.nextLink"] = link + url.Values{"$skiptoken": {tok}}.Encode()
	} else {
		s.deltas[tok] = &deltaState{user: m.user, folder: f.id, immutable: imm, top: st.top, seen: st.end}
		body["@odata.deltaLink"] = link + url.Values{"$deltatoken": {tok}}.Encode()
	}
	writeJSON(w, http.StatusOK, body)
}

// startRound lists the changes of the folder since seen (every message
// when seen is nil) and records the state the round ends in.
func (m *Mailbox) startRound(f *folder, seen map[string]int, top int, imm bool) *deltaState {
	st := &deltaState{user: m.user, folder: f.id, immutable: imm, top: top, end: map[string]int{}}
	ids := map[string]string{} // immutable -> the id a removal names
	for _, msg := range m.msgs {
		if msg.folder != f.id {
			continue
		}
		st.end[msg.immutable] = msg.version
		if v, ok := seen[msg.immutable]; !ok || v != msg.version {
			st.pending = append(st.pending, messageJSON(msg, "id,internetMessageId,receivedDateTime,isRead", imm))
		}
	}
	for _, msg := range m.msgs {
		ids[msg.immutable] = msg.rest
	}
	var gone []string
	for id := range seen {
		if _, ok := st.end[id]; !ok {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	for _, id := range gone {
		name := id
		if !imm && ids[id] != "" {
			name = ids[id]
		}
		st.pending = append(st.pending, map[string]any{"@odata.type": "#microsoft.graph.message", "id": name, "@removed": map[string]any{"reason": "deleted"}})
	}
	return st
}

// value streams a message's MIME content, keeping the mailbox's request
// in flight until the last octet is written.
func (s *Server) value(w http.ResponseWriter, m *Mailbox, id string) {
	s.mu.Lock()
	msg := m.find(id)
	var content io.Reader
	var size int64
	if msg != nil {
		if msg.large > 0 {
			content, size = Large(msg.large), msg.large
		} else {
			content, size = strings.NewReader(string(msg.mime)), int64(len(msg.mime))
		}
	}
	s.mu.Unlock()
	if msg == nil {
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	if size < 1<<20 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	io.Copy(w, content)
}

func (s *Server) readBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(v); err != nil {
		graphError(w, http.StatusBadRequest, "RequestBodyRead", "Invalid JSON body.")
		return false
	}
	return true
}

func (s *Server) move(w http.ResponseWriter, r *http.Request, m *Mailbox, id string, imm bool) {
	var req struct {
		DestinationID string `json:"destinationId"`
	}
	if !s.readBody(w, r, &req) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := m.find(id)
	if msg == nil {
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	dest := m.folderFor(req.DestinationID)
	if dest == nil {
		graphError(w, http.StatusBadRequest, "ErrorInvalidIdMalformed", "Id is malformed.")
		return
	}
	// message-move: "a new copy of the message in the destination folder";
	// only the immutable id stays (outlook-immutable-id).
	msg.folder = dest.id
	msg.rest = m.newRestID()
	s.seq++
	msg.version = s.seq
	writeJSON(w, http.StatusCreated, messageJSON(msg, "", imm))
}

// delete is message-delete. The page does not say where the message goes;
// Exchange Online soft-deletes it into Recoverable Items, so the double
// moves it to recoverableitemsdeletions, a folder no listing of the
// client's shows.
func (s *Server) delete(w http.ResponseWriter, m *Mailbox, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := m.find(id)
	if msg == nil {
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	msg.folder = m.folderFor("recoverableitemsdeletions").id
	s.seq++
	msg.version = s.seq
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) update(w http.ResponseWriter, r *http.Request, m *Mailbox, id string, imm bool) {
	var req map[string]any
	if !s.readBody(w, r, &req) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := m.find(id)
	if msg == nil {
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	if v, ok := req["isRead"].(bool); ok {
		msg.isRead = v
	}
	s.seq++
	msg.version = s.seq
	writeJSON(w, http.StatusOK, messageJSON(msg, "", imm))
}

// maxBatch is the most requests a JSON batch may hold (json-batching).
const maxBatch = 20

// batch answers a JSON batch (json-batching): each request is answered
// as if sent alone, and the answers come back together, in any order
// the service likes; the double keeps the requests' order.
func (s *Server) batch(w http.ResponseWriter, r *http.Request, user string) {
	var req struct {
		Requests []struct {
			ID      string            `json:"id"`
			Method  string            `json:"method"`
			URL     string            `json:"url"`
			Body    json.RawMessage   `json:"body"`
			Headers map[string]string `json:"headers"`
		} `json:"requests"`
	}
	if !s.readBody(w, r, &req) {
		return
	}
	if len(req.Requests) == 0 || len(req.Requests) > maxBatch {
		graphError(w, http.StatusBadRequest, "BadRequest", "Number of requests must be between 1 and 20.")
		return
	}
	var responses []map[string]any
	for _, item := range req.Requests {
		u, err := url.Parse(item.URL)
		if item.ID == "" || err != nil || !strings.HasPrefix(u.Path, "/") {
			graphError(w, http.StatusBadRequest, "BadRequest", "Invalid request in the batch.")
			return
		}
		sub := httptest.NewRequest(item.Method, s.URL+item.URL, strings.NewReader(string(item.Body)))
		for k, v := range item.Headers {
			sub.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		s.mu.Lock()
		s.requests = append(s.requests, "BATCH "+item.Method+" "+item.URL)
		var th *throttle
		if len(s.itemThrottles) > 0 {
			th = &s.itemThrottles[0]
			s.itemThrottles = s.itemThrottles[1:]
		}
		s.mu.Unlock()
		if th != nil {
			if th.retryAfter != "" {
				rec.Header().Set("Retry-After", th.retryAfter)
			}
			graphError(rec, th.status, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		} else {
			s.route(rec, sub, user, u.EscapedPath())
		}
		headers := map[string]string{}
		for k := range rec.Header() {
			headers[k] = rec.Header().Get(k)
		}
		answer := map[string]any{"id": item.ID, "status": rec.Code, "headers": headers}
		if body := rec.Body.Bytes(); len(body) > 0 {
			answer["body"] = json.RawMessage(body)
		}
		responses = append(responses, answer)
	}
	writeJSON(w, http.StatusOK, map[string]any{"responses": responses})
}

// maxSendRequest is Graph's 4 MB request limit (user-sendmail).
const maxSendRequest = 4 << 20

// sendMail is user-sendmail with a MIME body ("Send a new message using
// MIME format"; outlook-send-mime-message): Content-Type text/plain, the
// MIME in base64, 202 Accepted with no body. A JSON message is not
// served by the double.
func (s *Server) sendMail(w http.ResponseWriter, r *http.Request, user string) {
	s.mu.Lock()
	var refusal *sendRefusal
	if len(s.refuseSend) > 0 {
		refusal = &s.refuseSend[0]
		s.refuseSend = s.refuseSend[1:]
	}
	s.mu.Unlock()
	if refusal != nil {
		graphError(w, refusal.status, refusal.code, "Refused by the test.")
		return
	}
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); !strings.EqualFold(strings.TrimSpace(ct), "text/plain") {
		graphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "The double serves MIME sendMail only.")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxSendRequest+1))
	if err != nil {
		graphError(w, http.StatusBadRequest, "BadRequest", "Unreadable body.")
		return
	}
	if len(body) > maxSendRequest {
		graphError(w, http.StatusRequestEntityTooLarge, "ErrorRequestEntityTooLarge", "The request is too large.")
		return
	}
	mime, err := base64.StdEncoding.DecodeString(string(body))
	if err != nil || len(mime) == 0 {
		graphError(w, http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
		return
	}
	s.mu.Lock()
	s.sent = append(s.sent, Sent{User: user, MIME: mime})
	s.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}
