package graphdouble

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// get asks the double for path with the token, with or without immutable
// ids, and decodes the JSON answer.
func get(t *testing.T, s *Server, method, path, body string, immutable bool) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer tok")
	if immutable {
		req.Header.Set("Prefer", `IdType="ImmutableId"`)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

// Default ids change when a message moves; immutable ids do not
// (outlook-immutable-id, message-move).
func TestIDsAcrossAMove(t *testing.T) {
	s := New(t)
	s.Grant("tok", "u")
	imm := s.Mailbox("u").Add("inbox", Msg{MIME: []byte("Subject: x\r\n\r\n")})
	_, page := get(t, s, "GET", "/me/mailFolders/inbox/messages", "", false)
	rest := page["value"].([]any)[0].(map[string]any)["id"].(string)
	if rest == imm {
		t.Fatalf("default id %q equals the immutable one", rest)
	}
	code, moved := get(t, s, "POST", "/me/messages/"+rest+"/move", `{"destinationId":"archive"}`, false)
	if code != http.StatusCreated || moved["id"] == rest {
		t.Errorf("move: %d, id %v; want 201 and a new default id", code, moved["id"])
	}
	code, again := get(t, s, "POST", "/me/messages/"+imm+"/move", `{"destinationId":"inbox"}`, true)
	if code != http.StatusCreated || again["id"] != imm {
		t.Errorf("move with immutable ids: %d, id %v; want 201 and %s", code, again["id"], imm)
	}
	if code, _ := get(t, s, "GET", "/me/messages/"+rest+"/move", "", false); code != http.StatusBadRequest {
		t.Errorf("GET on move: %d", code)
	}
	if code, _ := get(t, s, "DELETE", "/me/messages/"+rest, "", false); code != http.StatusNotFound {
		t.Errorf("the old default id still names the message after its move: %d", code)
	}
}

func TestErrorShapes(t *testing.T) {
	s := New(t)
	s.Grant("tok", "u")
	s.Expire("tok")
	code, body := get(t, s, "GET", "/me/mailFolders/inbox", "", true)
	e, _ := body["error"].(map[string]any)
	if code != http.StatusUnauthorized || e["code"] != "InvalidAuthenticationToken" || e["innerError"] == nil {
		t.Errorf("expired token: %d %v", code, body)
	}
}
