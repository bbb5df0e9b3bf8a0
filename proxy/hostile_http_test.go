package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
	"github.com/pop3gw/gateway/upstream/jmap"
)

// Hostile HTTP upstreams: the JMAP and Graph stores behind a server that
// misbehaves once per case at one step of the session, with the outcome
// checks of TestHostileUpstreams (IMAP): the session ends within a few
// timeouts and a bounded heap with [SYS/TEMP] (or a RETR cut before its
// terminator), nothing is deleted, and once the server behaves a new
// session lists the message with its size and serves it byte for byte.
//
// The steps, for JMAP and Graph:
//   - login: the session resource; the mailbox folder.
//   - list: the Email/query and Email/get of the listing; the delta round.
//   - open: the Email/get that finds the blob (JMAP only).
//   - changes: Email/queryChanges at a later login (JMAP only); a failure
//     there costs a full listing, and the session goes on.
//   - measure: $value read at the first login, to learn its size (Graph
//     only).
//   - body: the blob download; $value. A body case first runs a good
//     session, so that Graph's size is measured and known, and the cache
//     keeps no body, so that RETR reads from the server.
var hostileHTTPCases = []struct {
	name  string
	step  string
	only  string // "jmap" or "graph" when the case fits one store
	pop3  hostileOutcome
	heap  int64
	serve func(s *hostileHTTP, w http.ResponseWriter, r *http.Request)
}{
	{name: "HTML page instead of JSON", step: "login", pop3: loginRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<html><body><h1>Welcome to nginx!</h1></body></html>\n")
	}},
	{name: "HTML error page", step: "list", pop3: loginRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "<html><head><title>502 Bad Gateway</title></head><body>upstream sent garbage</body></html>\n")
	}},
	{name: "endless session resource or folder", step: "login", pop3: loginRefused, heap: httpHeap, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		s.flood(w, `{"capabilities":{"x":"`, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
	}},
	{name: "endless method response or page", step: "list", pop3: loginRefused, heap: httpHeap, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		s.flood(w, `{"methodResponses":[["Email/query",{"ids":[`, `"M1","M1","M1","M1","M1","M1","M1","M1","M1","M1","M1","M1","M1",`)
	}},
	{name: "JSON 100 levels deep", step: "login", pop3: loginRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, deepJSON(100))
	}},
	{name: "JSON 10,000 levels deep", step: "list", pop3: loginRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, deepJSON(10000))
	}},
	{name: "headers never come", step: "list", pop3: loginRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		s.hang(r)
	}},
	{name: "body stalls mid-way", step: "login", pop3: loginRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"capabilities":{"urn:ietf:params:jmap:core":{`)
		w.(http.Flusher).Flush()
		s.hang(r)
	}},
	{name: "blob stalls mid-way", step: "body", pop3: retrRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(hostileMessage)))
		io.WriteString(w, hostileMessage[:50])
		w.(http.Flusher).Flush()
		s.hang(r)
	}},
	{name: "blob shorter than its listed size", step: "body", only: "jmap", pop3: retrRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, hostileMessage[:len(hostileMessage)-40])
	}},
	{name: "blob longer than its listed size", step: "body", only: "jmap", pop3: retrRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, hostileMessage+"X-Extra: forty octets no listing counted\r\n")
	}},
	{name: "blob endless", step: "body", pop3: retrRefused, heap: httpHeap, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		s.flood(w, hostileMessage, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n")
	}},
	{name: "endless $value while measured", step: "measure", only: "graph", pop3: loginRefused, heap: httpHeap, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		s.flood(w, hostileMessage, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n")
	}},
	{name: "$value stalls while measured", step: "measure", only: "graph", pop3: loginRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, hostileMessage[:50])
		w.(http.Flusher).Flush()
		s.hang(r)
	}},
	{name: "Email/get for an id not asked for", step: "open", only: "jmap", pop3: retrRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		other := emailObject("M2", "B2", 60)
		fmt.Fprintf(w, `{"methodResponses":[["Email/get",{"state":"e1","list":[%s],"notFound":[]},"g"]],"sessionState":"s1"}`, other)
	}},
	{name: "listing with an object not asked for", step: "list", only: "jmap", pop3: loginRefused, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"methodResponses":[["Email/query",{"queryState":"q1","canCalculateChanges":true,"position":0,"ids":["M1"],"total":1},"q"],`+
			`["Email/get",{"state":"e1","list":[%s,%s],"notFound":[]},"g"]],"sessionState":"s1"}`,
			emailObject("M1", "B1", len(hostileMessage)), emailObject("M2", "B2", 60))
	}},
	{name: "changes with an object not asked for", step: "changes", only: "jmap", pop3: retrServed, serve: func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"methodResponses":[["Email/queryChanges",{"newQueryState":"q2","removed":[],"added":[],"total":1},"c"],`+
			`["Email/get",{"state":"e1","list":[%s],"notFound":[]},"g"]],"sessionState":"s1"}`, emailObject("M2", "B2", 60))
	}},
	{name: "429 with Retry-After of a year", step: "login", pop3: loginRefused, serve: retryAfter(http.StatusTooManyRequests, "31536000")},
	{name: "503 with Retry-After of a year", step: "body", pop3: retrRefused, serve: retryAfter(http.StatusServiceUnavailable, "31536000")},
	{name: "429 with Retry-After a date in the past", step: "list", pop3: loginRefused, serve: retryAfter(http.StatusTooManyRequests, "Sun, 06 Nov 1994 08:49:37 GMT")},
	{name: "503 with Retry-After garbage", step: "login", pop3: loginRefused, serve: retryAfter(http.StatusServiceUnavailable, "soon\x7f; maybe -1")},
}

// retryAfter answers status with a Retry-After of value.
func retryAfter(status int, value string) func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
	return func(s *hostileHTTP, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", value)
		w.WriteHeader(status)
	}
}

func TestHostileJMAPUpstreams(t *testing.T) { testHostileHTTP(t, "jmap") }

func TestHostileGraphUpstreams(t *testing.T) { testHostileHTTP(t, "graph") }

func testHostileHTTP(t *testing.T, store string) {
	for _, tc := range hostileHTTPCases {
		if tc.only != "" && tc.only != store {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			s := &hostileHTTP{step: tc.step, serve: tc.serve, stop: make(chan struct{})}
			var e *hostileEnv
			if store == "jmap" {
				e = s.startJMAP(t, tc.step == "body")
			} else {
				e = s.startGraph(t, tc.step == "body")
			}
			if tc.step == "body" || tc.step == "changes" {
				// A good session first: the message is listed, and
				// Graph's size measured, before the server turns.
				s.good.Store(true)
				e.checkMailIntact(t, &s.deletes)
				s.good.Store(false)
			}
			e.boundedSession(t, tc.pop3, tc.heap)
			if s.hostile.Load() == 0 {
				t.Fatalf("the server was never asked at step %s", tc.step)
			}
			s.good.Store(true)
			e.checkMailIntact(t, &s.deletes)
		})
	}
}

// TestHostileTLSHTTPUpstream: a JMAP or Graph server whose TLS handshake
// fails midway refuses the login with [SYS/TEMP] within the timeout.
func TestHostileTLSHTTPUpstream(t *testing.T) {
	for name, serve := range hostileTLSHandshakes {
		for _, store := range []string{"jmap", "graph"} {
			t.Run(store+"/"+name, func(t *testing.T) {
				up := startHostileIMAP(t, serve, 0)
				e := newHostileGateway(t, hostileHTTPUpstream(t, store, "https://"+up.Addr()), cache.New(4<<20, 1<<20))
				e.timedSession(t, loginRefused)
			})
		}
	}
}

// httpHeap bounds the heap growth of the endless cases: a JSON answer is
// read up to its limit of 16 MiB, which takes about three times that
// while the buffer grows (50 to 56 MiB seen), and a body streams.
const httpHeap = 64 << 20

// hostileMaxMessage is Graph's largest message in these tests, smaller
// than in use so that an endless body ends soon.
const hostileMaxMessage = 8 << 20

// hostileHTTPUpstream is an upstream of the store at url with the
// hostile tests' timeout, made as the wiring makes it; retries back off
// briefly, but a Retry-After is taken at its word up to the store's cap.
func hostileHTTPUpstream(t *testing.T, store, url string) *Upstream {
	t.Helper()
	up := &Upstream{Name: "hostile", Mailbox: "INBOX", OnDelete: upstream.DeleteExpunge, KeepConnection: -1}
	switch store {
	case "jmap":
		s, err := jmap.New(jmap.Options{SessionURL: url, Timeout: hostileTimeout, Backoff: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		up.Store = JMAPStore(s)
	case "graph":
		up.Store = GraphStore(graph.NewStore(graph.Options{BaseURL: url, Timeout: hostileTimeout, Backoff: 20 * time.Millisecond, MaxMessage: hostileMaxMessage}))
		up.OAuth2 = upstream.Bearer
	}
	return up
}

// hostileHTTP misbehaves, through serve, at one step of every session
// until good is set.
type hostileHTTP struct {
	step    string
	serve   func(s *hostileHTTP, w http.ResponseWriter, r *http.Request)
	good    atomic.Bool
	hostile atomic.Int64 // requests answered by serve
	deletes atomic.Int64 // Email/set, DELETE, move and batch requests seen
	stop    chan struct{}
}

// at answers r through serve when it is a request of the hostile step.
func (s *hostileHTTP) at(step string, w http.ResponseWriter, r *http.Request) bool {
	if s.good.Load() || step != s.step {
		return false
	}
	s.hostile.Add(1)
	s.serve(s, w, r)
	return true
}

// hang waits until the client gives up or the test ends.
func (s *hostileHTTP) hang(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-s.stop:
	}
}

// flood sends head, then chunk over and over until the client goes away.
func (s *hostileHTTP) flood(w http.ResponseWriter, head, chunk string) {
	io.WriteString(w, head)
	b := []byte(strings.Repeat(chunk, 1+(32<<10)/len(chunk)))
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		if _, err := w.Write(b); err != nil {
			return
		}
	}
}

// deepJSON is an object nested n levels deep.
func deepJSON(n int) string {
	return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n)
}

func emailObject(id, blob string, size int) string {
	return fmt.Sprintf(`{"id":%q,"blobId":%q,"size":%d,"receivedAt":"2026-01-02T03:04:05Z","messageId":["%s@example.com"],"mailboxIds":{"I1":true}}`, id, blob, size, id)
}

// startJMAP serves a JMAP account (RFC 8620/8621) of one inbox holding
// hostileMessage as Email M1, blob B1; with noCache the gateway keeps no
// body in memory.
func (s *hostileHTTP) startJMAP(t *testing.T, noCache bool) *hostileEnv {
	srv := httptest.NewServer(http.HandlerFunc(s.serveJMAP))
	t.Cleanup(func() {
		close(s.stop)
		srv.CloseClientConnections()
		srv.Close()
	})
	return newHostileGateway(t, hostileHTTPUpstream(t, "jmap", srv.URL), hostileCache(noCache))
}

func hostileCache(none bool) *cache.Cache {
	if none {
		return cache.New(0, 0)
	}
	return cache.New(4<<20, 1<<20)
}

func (s *hostileHTTP) serveJMAP(w http.ResponseWriter, r *http.Request) {
	if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "secret" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	switch {
	case r.URL.Path == "/.well-known/jmap":
		if s.at("login", w, r) {
			return
		}
		io.WriteString(w, `{"capabilities":{"urn:ietf:params:jmap:core":{"maxConcurrentRequests":4,"maxCallsInRequest":16,"maxObjectsInGet":500,"maxObjectsInSet":500},"urn:ietf:params:jmap:mail":{}},`+
			`"primaryAccounts":{"urn:ietf:params:jmap:mail":"A1"},"apiUrl":"/api","downloadUrl":"/download/{accountId}/{blobId}/{name}?type={type}","state":"s1"}`)
	case r.URL.Path == "/api" && r.Method == http.MethodPost:
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		req := string(body)
		if strings.Contains(req, `"Email/set"`) {
			s.deletes.Add(1)
		}
		switch {
		case strings.Contains(req, `"position"`) && s.at("list", w, r):
			return
		case strings.Contains(req, `"Email/get"`) && strings.Contains(req, `"ids":["M1"]`) && s.at("open", w, r):
			return
		case strings.Contains(req, `"Email/queryChanges"`) && s.at("changes", w, r):
			return
		}
		s.jmapAPI(w, body)
	case strings.HasPrefix(r.URL.Path, "/download/A1/B1/"):
		if s.at("body", w, r) {
			return
		}
		io.WriteString(w, hostileMessage)
	default:
		http.NotFound(w, r)
	}
}

// jmapAPI answers method calls well for the account of one message.
func (s *hostileHTTP) jmapAPI(w http.ResponseWriter, body []byte) {
	var req struct {
		MethodCalls [][3]json.RawMessage `json:"methodCalls"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	// The mailbox's state moves on for a changes case, so that the
	// gateway asks for the changes.
	state := "q1"
	if s.step == "changes" && !s.good.Load() {
		state = "q2"
	}
	var out []string
	for _, call := range req.MethodCalls {
		var name, id string
		json.Unmarshal(call[0], &name)
		json.Unmarshal(call[2], &id)
		var res string
		switch name {
		case "Mailbox/get":
			res = `{"state":"m1","list":[{"id":"I1","name":"Inbox","parentId":null,"role":"inbox"}],"notFound":[]}`
		case "Email/query":
			res = `{"queryState":"` + state + `","canCalculateChanges":true,"position":0,"ids":["M1"],"total":1}`
		case "Email/queryChanges":
			res = `{"newQueryState":"` + state + `","removed":[],"added":[],"total":1}`
		case "Email/get":
			res = `{"state":"e1","list":[` + emailObject("M1", "B1", len(hostileMessage)) + `],"notFound":[]}`
		case "Email/set":
			res = `{"oldState":"e1","newState":"e2"}`
		default:
			name, res = "error", `{"type":"unknownMethod"}`
		}
		out = append(out, fmt.Sprintf(`[%q,%s,%q]`, name, res, id))
	}
	fmt.Fprintf(w, `{"methodResponses":[%s],"sessionState":"s1"}`, strings.Join(out, ","))
}

// startGraph serves a Graph mailbox of one message, hostileMessage, on
// the double (internal/testkit/graphdouble); with noCache the gateway
// keeps no body in memory.
func (s *hostileHTTP) startGraph(t *testing.T, noCache bool) *hostileEnv {
	double := graphdouble.New(t)
	double.Mailbox("alice").Add("inbox", graphdouble.Msg{MIME: []byte(hostileMessage)})
	double.Grant("secret", "alice")
	double.Override(func(w http.ResponseWriter, r *http.Request) bool {
		p := r.URL.Path
		if r.Method == http.MethodDelete || strings.HasSuffix(p, "/move") || strings.HasSuffix(p, "/$batch") || r.Method == http.MethodPatch {
			s.deletes.Add(1)
		}
		switch {
		case strings.HasSuffix(p, "/me/mailFolders/inbox"):
			return s.at("login", w, r)
		case strings.HasSuffix(p, "/messages/delta"):
			return s.at("list", w, r)
		case strings.HasSuffix(p, "/$value"):
			return s.at("body", w, r) || s.at("measure", w, r)
		}
		return false
	})
	t.Cleanup(func() { close(s.stop) })
	return newHostileGateway(t, hostileHTTPUpstream(t, "graph", double.URL), hostileCache(noCache))
}
