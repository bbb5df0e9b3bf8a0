package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/clienttest"
	"github.com/pop3gw/gateway/internal/testkit/graphdouble"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
	"github.com/pop3gw/gateway/upstream/graph"
)

// graphGateway serves the double's mailbox of account to the mapped user
// user (password pass) through the Graph store.
func graphGateway(t *testing.T, double *graphdouble.Server, account, user, pass string, mode upstream.DeleteMode) string {
	t.Helper()
	hash, err := passwd.Hash(pass)
	if err != nil {
		t.Fatal(err)
	}
	token := "token-of-" + account
	double.Grant(token, account)
	store := graph.NewStore(graph.Options{BaseURL: double.URL})
	log := testLogger()
	gw := proxy.New(&proxy.Config{
		Upstreams: map[string]*proxy.Upstream{
			"m365": {Name: "m365", Store: proxy.GraphStore(store), Mailbox: "INBOX", OnDelete: mode, Trash: "deleteditems", OAuth2: upstream.Bearer},
		},
		Users: map[string]*proxy.User{
			user: {Name: user, PasswordHash: hash, Upstream: "m365", UpstreamUser: account,
				UpstreamToken: func(context.Context, bool) (string, error) { return token, nil }},
		},
	}, cache.New(64<<20, 4<<20), log)
	addr, _ := serve(t, &pop3.Server{Backend: gw, Logger: log}, gw, "127.0.0.1:0")
	return addr
}

// TestRealClientsThroughGraph: fetchmail and mpop poll a Microsoft 365
// mailbox served from Graph (the double of its documented API) three
// times in each delete mode, with mail arriving between polls: every
// message is delivered once and downloaded from Graph once, and QUIT
// puts the deleted ones where the mode says (Deleted Items, Recoverable
// Items, or left in the inbox and never listed again).
func TestRealClientsThroughGraph(t *testing.T) {
	double := graphdouble.New(t)
	clients := []struct {
		name string
		make func(t testing.TB, addr, user, pass string) clienttest.Client
	}{
		{"fetchmail", clienttest.Fetchmail},
		{"mpop", clienttest.Mpop},
	}
	modes := []struct {
		mode   upstream.DeleteMode
		folder string
	}{
		{upstream.DeleteTrash, "deleteditems"},
		{upstream.DeleteExpunge, "recoverableitemsdeletions"},
		{upstream.DeleteKeep, "inbox"},
	}
	for _, c := range clients {
		for _, m := range modes {
			t.Run(c.name+"/"+string(m.mode), func(t *testing.T) {
				account := c.name + "-" + string(m.mode) + "@contoso.example"
				box := double.Mailbox(account)
				var ids []string
				var msgs [][]byte
				deliver := func(n int) {
					for range n {
						i := len(msgs) + 1
						// Bare LF, as Exchange may store it, and dot lines.
						msg := []byte(fmt.Sprintf("From: a@example.com\nTo: %s\nSubject: message %d for %s\nMessage-ID: <%d.%s>\n\nbody %d\n.\n..dotted\n", account, i, account, i, account, i))
						msgs = append(msgs, msg)
						ids = append(ids, box.Add("inbox", graphdouble.Msg{MessageID: fmt.Sprintf("<%d.%s>", i, account), MIME: msg}))
					}
				}
				addr := graphGateway(t, double, account, "local-"+c.name, "pw "+c.name+";x", m.mode)
				client := c.make(t, addr, "local-"+c.name, "pw "+c.name+";x")
				deliver(2)
				checkMessages(t, "poll 1", client.Fetch(t, false), msgs[:2])
				deliver(1)
				checkMessages(t, "poll 2", client.Fetch(t, false), msgs[2:])
				if got := client.Fetch(t, false); len(got) != 0 {
					t.Fatalf("poll 3 delivered %d messages again", len(got))
				}
				for i, id := range ids {
					if f, _, ok := box.State(id); !ok || f != m.folder {
						t.Errorf("message %d is in %q (there: %v), want %s", i+1, f, ok, m.folder)
					}
				}
				values := 0
				for _, r := range double.Requests() {
					for _, id := range ids {
						if strings.Contains(r, id) && strings.HasSuffix(r, "/$value") {
							values++
						}
					}
				}
				if values != len(ids) {
					t.Errorf("%d message bodies downloaded from Graph for %d messages, want each once", values, len(ids))
				}
			})
		}
	}
}
