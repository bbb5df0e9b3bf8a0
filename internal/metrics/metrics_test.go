package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pop3gw/gateway/pop3"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// TestErrorRepliesByCode checks that -ERR replies are counted by the code
// they were given, and those without one as "none".
func TestErrorRepliesByCode(t *testing.T) {
	m := New()
	for _, code := range []pop3.Code{pop3.CodeAuth, pop3.CodeAuth, pop3.CodeSysTemp, pop3.CodeInUse, pop3.CodeSysPerm, pop3.CodeNone} {
		m.ErrorReply(code)
	}
	got := scrape(t, m)
	for _, want := range []string{
		`pop3gw_error_replies_total{code="AUTH"} 2`,
		`pop3gw_error_replies_total{code="SYS/TEMP"} 1`,
		`pop3gw_error_replies_total{code="IN-USE"} 1`,
		`pop3gw_error_replies_total{code="SYS/PERM"} 1`,
		`pop3gw_error_replies_total{code="none"} 1`,
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}
