package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/jmap"
)

// jmapRecorder records the HTTP requests a JMAP store sends: for an API
// request, the names of its method calls joined by "+".
type jmapRecorder struct {
	mu       sync.Mutex
	requests []string
}

func (r *jmapRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	what := req.Method + " " + req.URL.Path
	if req.Body != nil && req.Method == http.MethodPost {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		var calls struct {
			MethodCalls [][]json.RawMessage `json:"methodCalls"`
		}
		json.Unmarshal(body, &calls)
		var names []string
		for _, c := range calls.MethodCalls {
			var name string
			json.Unmarshal(c[0], &name)
			names = append(names, name)
		}
		what = strings.Join(names, "+")
	}
	r.mu.Lock()
	r.requests = append(r.requests, what)
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// since returns the requests recorded from the n-th on.
func (r *jmapRecorder) since(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.requests[min(n, len(r.requests)):]...)
}

func (r *jmapRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.requests)
}

// jmapGateway serves POP3 on loopback in front of Cyrus's JMAP, passing
// logins through, and returns the POP3 address and the store's requests.
func jmapGateway(t *testing.T, cy *cyrustest.Server, onDelete upstream.DeleteMode) (string, *jmapRecorder) {
	t.Helper()
	rec := &jmapRecorder{}
	store, err := jmap.New(jmap.Options{SessionURL: cy.JMAPURL(), HTTPClient: &http.Client{Transport: rec}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return startGatewayFor(t, &proxy.Upstream{Name: "jmap", Mailbox: "INBOX", OnDelete: onDelete, Trash: "Trash", Store: proxy.JMAPStore(store)}), rec
}

// crlfCorpus is the tricky corpus as Cyrus can store it: CRLF lines only
// (it stores no bare LF), no two messages alike octet for octet (a JMAP
// Email is its content: two copies would be one Email).
func crlfCorpus() ([]string, [][]byte) {
	var names []string
	var raws [][]byte
	seen := map[string]bool{}
	for _, m := range trickyCorpus() {
		raw := strings.ReplaceAll(strings.ReplaceAll(m.raw, "\r\n", "\n"), "\n", "\r\n")
		if seen[raw] {
			continue
		}
		seen[raw] = true
		names, raws = append(names, m.name), append(raws, []byte(raw))
	}
	return names, raws
}

// TestJMAPMatchesIMAP reads one Cyrus mailbox through the gateway twice,
// once through Cyrus's IMAP and once through its JMAP, and requires
// STAT, LIST, RETR and TOP to be identical byte for byte. UIDLs differ by
// design (UIDs and EMAILIDs against Email ids), so they are only counted.
// Each message arrives a second after the one before, so both stores
// list them in the same order.
func TestJMAPMatchesIMAP(t *testing.T) {
	const user, pass = "diff", "diff-pass"
	cy := cyrustest.Start(t, map[string]string{user: pass})
	names, raws := crlfCorpus()
	first := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	// Cyrus refuses some of the corpus at APPEND (a header without its
	// colon, 8-bit octets in some headers): those are left out.
	var kept []string
	var stored [][]byte
	for i, raw := range raws {
		if err := cy.Instance().AppendDated(user, first.Add(time.Duration(i)*time.Second), raw); err != nil {
			t.Logf("Cyrus refuses %q: %v", names[i], err)
			continue
		}
		kept, stored = append(kept, names[i]), append(stored, raw)
	}
	names, raws = kept, stored
	if len(raws) < 10 {
		t.Fatalf("Cyrus stored only %d messages of the corpus", len(raws))
	}
	viaIMAP := startGateway(t, cy.IMAPAddr(), upstream.DeleteKeep)
	viaJMAP, _ := jmapGateway(t, cy, upstream.DeleteKeep)

	cmds := []string{"STAT", "LIST"}
	for i := range raws {
		n := i + 1
		cmds = append(cmds, fmt.Sprintf("TOP %d 0", n), fmt.Sprintf("TOP %d 2", n), fmt.Sprintf("TOP %d 2000", n))
	}
	for i := range raws {
		n := i + 1
		cmds = append(cmds, fmt.Sprintf("LIST %d", n), fmt.Sprintf("RETR %d", n), fmt.Sprintf("TOP %d 0", n), fmt.Sprintf("TOP %d 3", n), fmt.Sprintf("RETR %d", n))
	}
	cmds = append(cmds, "STAT", "LIST")
	want := transcript(t, viaIMAP, user, pass, cmds)
	got := transcript(t, viaJMAP, user, pass, cmds)
	for i, cmd := range cmds {
		if !bytes.Equal(want[i], got[i]) {
			var n int
			fmt.Sscanf(strings.Fields(cmd + " 0")[1], "%d", &n)
			name := ""
			if n >= 1 && n <= len(names) {
				name = names[n-1]
			}
			t.Errorf("%s (%s) differs %s", cmd, name, strings.Replace(firstDifference(want[i], got[i]), "dovecot", "imap", 1))
		}
	}
	if !strings.HasPrefix(firstLine(got[0]), fmt.Sprintf("+OK %d ", len(raws))) {
		t.Fatalf("STAT through JMAP: %q, want %d messages", firstLine(got[0]), len(raws))
	}
	if u := popUIDLs(t, viaJMAP, user, pass); len(u) != len(raws) {
		t.Errorf("%d UIDLs through JMAP, want %d", len(u), len(raws))
	}
}

// expungeIMAP removes the user's n-th message over IMAP, as another mail
// program would.
func expungeIMAP(t *testing.T, addr, user, pass string, n uint32) {
	t.Helper()
	c, _ := imapInbox(t, addr, user, pass)
	defer c.Close()
	if err := c.Store(imap.SeqSetNum(n), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
}

// TestJMAPMessageGoneAndChanges: a message destroyed by another client
// between LIST and RETR gets -ERR and the session goes on, QUIT deleting
// the others; an unchanged mailbox costs one small request per login;
// new mail and a message gone are merged from Email/queryChanges.
func TestJMAPMessageGoneAndChanges(t *testing.T) {
	const user, pass = "gone", "gone-pass"
	cy := cyrustest.Start(t, map[string]string{user: pass})
	msg := func(i int) []byte {
		return []byte(fmt.Sprintf("From: a@example.com\r\nSubject: message %d\r\nMessage-ID: <%d@example.com>\r\n\r\nbody %d\r\n", i, i, i))
	}
	first := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	for i := 1; i <= 4; i++ {
		cy.AppendDated(t, user, first.Add(time.Duration(i)*time.Second), msg(i))
	}
	addr, rec := jmapGateway(t, cy, upstream.DeleteExpunge)

	// A first session leaves everything, so the gateway remembers the
	// listing.
	if u := popUIDLs(t, addr, user, pass); len(u) != 4 {
		t.Fatalf("UIDLs %v", u)
	}
	// Unchanged: one request.
	n := rec.count()
	popUIDLs(t, addr, user, pass)
	if got := rec.since(n); len(got) != 1 || got[0] != "Mailbox/get+Email/query" {
		t.Errorf("a login to an unchanged mailbox sent %q, want one Mailbox/get+Email/query", got)
	}

	// New mail, and message 1 gone: merged from the changes.
	cy.AppendDated(t, user, first.Add(5*time.Second), msg(5))
	expungeIMAP(t, cy.IMAPAddr(), user, pass, 1)
	n = rec.count()
	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.Login(user, pass); err != nil {
		t.Fatal(err)
	}
	list, err := c.List()
	if err != nil || len(list) != 4 {
		t.Fatalf("LIST after the changes: %v, %v", list, err)
	}
	if got := rec.since(n); len(got) != 2 || got[1] != "Email/queryChanges+Email/get" {
		t.Errorf("the login after a change sent %q, want the refresh and one Email/queryChanges+Email/get", got)
	}
	// Now messages 2, 3, 4, 5. Message 3 goes between LIST and RETR.
	expungeIMAP(t, cy.IMAPAddr(), user, pass, 2)
	if line, err := c.Cmd("RETR 2"); err != nil || !strings.HasPrefix(line, "-ERR") {
		t.Fatalf("RETR of a message destroyed since LIST: %q, %v", line, err)
	}
	for _, i := range []int{1, 3, 4} {
		body, err := c.Retr(i)
		if err != nil {
			t.Fatalf("RETR %d after the -ERR: %v", i, err)
		}
		if want := fmt.Sprintf("Subject: message %d", map[int]int{1: 2, 3: 4, 4: 5}[i]); !bytes.Contains(body, []byte(want)) {
			t.Errorf("RETR %d: %q lacks %q", i, body, want)
		}
		if err := c.Dele(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if u := popUIDLs(t, addr, user, pass); len(u) != 0 {
		t.Errorf("after QUIT the mailbox lists %d messages, want none", len(u))
	}
}

// TestJMAPRealClients: fetchmail and mpop read a Cyrus mailbox through
// JMAP, leaving mail there and deleting it, and nothing is downloaded
// twice across three polls.
func TestJMAPRealClients(t *testing.T) {
	clients := []struct {
		name string
		make func(t testing.TB, addr, user, pass string) clienttest.Client
	}{
		{"fetchmail", clienttest.Fetchmail},
		{"mpop", clienttest.Mpop},
	}
	users := map[string]string{}
	for _, c := range clients {
		users[c.name+"-keep"], users[c.name+"-delete"] = "pw-"+c.name, "pw-"+c.name
	}
	cy := cyrustest.Start(t, users)
	keepAddr, _ := jmapGateway(t, cy, upstream.DeleteKeep)
	deleteAddr, _ := jmapGateway(t, cy, upstream.DeleteExpunge)
	// Messages arrive a second apart: JMAP lists by arrival, then by
	// Email id, a content hash.
	deliver := func(t *testing.T, user string, msgs [][]byte, from int) {
		for i, m := range msgs {
			cy.AppendDated(t, user, time.Date(2026, 3, 1, 8, 0, from+i, 0, time.UTC), m)
		}
	}
	msgs := func(user string, from, to int) [][]byte {
		var out [][]byte
		for i := from; i <= to; i++ {
			out = append(out, []byte(fmt.Sprintf(
				"From: a@example.com\r\nTo: %s@example.com\r\nSubject: message %d for %s\r\nMessage-ID: <%d.%s@example.com>\r\n\r\nbody %d\r\n.\r\n..dotted\r\n",
				user, i, user, i, user, i)))
		}
		return out
	}
	for _, c := range clients {
		for _, mode := range []string{"keep", "delete"} {
			t.Run(c.name+"-"+mode, func(t *testing.T) {
				user := c.name + "-" + mode
				addr := map[string]string{"keep": keepAddr, "delete": deleteAddr}[mode]
				client := c.make(t, addr, user, users[user])
				deliver(t, user, msgs(user, 1, 3), 1)
				checkMessages(t, "first poll", client.Fetch(t, mode == "keep"), fixLF(msgs(user, 1, 3)))
				deliver(t, user, msgs(user, 4, 4), 4)
				checkMessages(t, "second poll", client.Fetch(t, mode == "keep"), fixLF(msgs(user, 4, 4)))
				if again := client.Fetch(t, mode == "keep"); len(again) != 0 {
					t.Fatalf("third poll fetched %d messages again", len(again))
				}
				left := len(popUIDLs(t, addr, user, users[user]))
				if want := map[string]int{"keep": 4, "delete": 0}[mode]; left != want {
					t.Fatalf("%d messages left upstream, want %d", left, want)
				}
			})
		}
	}
}

// fixLF turns CRLF into LF, as checkMessages expects of the originals.
func fixLF(msgs [][]byte) [][]byte {
	var out [][]byte
	for _, m := range msgs {
		out = append(out, bytes.ReplaceAll(m, []byte("\r\n"), []byte("\n")))
	}
	return out
}
