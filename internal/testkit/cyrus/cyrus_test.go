package cyrus_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/internal/testkit/cyrustest"
)

// The kit's instance serves IMAP with OBJECTID and JMAP on the same mail,
// and a recreated mailbox has a new UIDVALIDITY.
func TestInstance(t *testing.T) {
	srv := cyrustest.Start(t, map[string]string{"alice": "secret"})
	srv.Append(t, "alice", []byte("Subject: one\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"))

	c, err := imapclient.DialInsecure(srv.IMAPAddr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	if !c.Caps().Has(imap.Cap("OBJECTID")) {
		t.Fatalf("capabilities %v lack OBJECTID", c.Caps())
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("SELECT: %v, %+v", err, sel)
	}
	c.Logout().Wait()

	req, _ := http.NewRequest("GET", srv.JMAPURL(), nil)
	req.SetBasicAuth("alice", "secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var session struct {
		APIURL       string            `json:"apiUrl"`
		Capabilities map[string]any    `json:"capabilities"`
		Accounts     map[string]any    `json:"accounts"`
		Primary      map[string]string `json:"primaryAccounts"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&session); err != nil || resp.StatusCode != 200 {
		t.Fatalf("JMAP session: %s, %v", resp.Status, err)
	}
	if _, ok := session.Capabilities["urn:ietf:params:jmap:mail"]; !ok || session.APIURL == "" {
		t.Fatalf("JMAP session without mail: %+v", session)
	}

	srv.Recreate(t, "alice")
	c, err = imapclient.DialInsecure(srv.IMAPAddr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	again, err := c.Select("INBOX", nil).Wait()
	if err != nil || again.NumMessages != 0 || again.UIDValidity == sel.UIDValidity {
		t.Fatalf("recreated INBOX: %v, %+v (was UIDVALIDITY %d)", err, again, sel.UIDValidity)
	}
	if !strings.HasPrefix(srv.JMAPURL(), "http://127.0.0.1:") {
		t.Fatalf("JMAP URL %s", srv.JMAPURL())
	}
}
