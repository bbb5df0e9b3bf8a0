package imapscript

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeT collects what the server reports, so a failing script can be
// checked without failing this test.
type fakeT struct {
	testing.TB
	errors  []string
	cleanup []func()
}

func (f *fakeT) Errorf(format string, args ...any) {
	f.errors = append(f.errors, format)
}
func (f *fakeT) Cleanup(fn func()) { f.cleanup = append(f.cleanup, fn) }
func (f *fakeT) Helper()           {}
func (f *fakeT) finish() {
	for i := len(f.cleanup) - 1; i >= 0; i-- {
		f.cleanup[i]()
	}
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestPlaysTheTranscript(t *testing.T) {
	s := Start(t, `
		S: * OK ready
		C: {tag} UID FETCH 7 (UID BODY.PEEK[])
		S: * 1 FETCH (UID 7 BODY[] {11}
		S: Subject: x
		S: )
		S: * 1 FETCH (UID 7 BODY[TEXT] {2}
		S: ab\
		S: )
		S: {tag} OK done
	`)
	c, r := dial(t, s.Addr())
	io.WriteString(c, "A1 UID FETCH 7 (UID BODY.PEEK[])\r\nA2 LOGOUT\r\n")
	got, _ := io.ReadAll(r)
	want := "* OK ready\r\n* 1 FETCH (UID 7 BODY[] {11}\r\nSubject: x\r\n)\r\n" +
		"* 1 FETCH (UID 7 BODY[TEXT] {2}\r\nab)\r\nA1 OK done\r\n* BYE\r\nA2 OK LOGOUT completed\r\n"
	if string(got) != want {
		t.Fatalf("server sent\n%q\nwant\n%q", got, want)
	}
	if s.Played() != 1 {
		t.Fatalf("Played = %d", s.Played())
	}
}

func TestReportsAnUnexpectedLine(t *testing.T) {
	ft := &fakeT{TB: t}
	s := Start(ft, "S: * OK ready\nC: {tag} NOOP\nS: {tag} OK\n")
	c, r := dial(t, s.Addr())
	r.ReadString('\n')
	io.WriteString(c, "A1 CAPABILITY\r\n")
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("the server went on after an unexpected line")
	}
	ft.finish()
	fails := s.Failures()
	if len(fails) != 1 || !strings.Contains(fails[0], `want "NOOP", the client sent "CAPABILITY"`) {
		t.Fatalf("failures = %q", fails)
	}
	if len(ft.errors) != 1 {
		t.Fatalf("%d errors reported to the test, want 1", len(ft.errors))
	}
}

func TestReportsExtraAndMissingConnections(t *testing.T) {
	ft := &fakeT{TB: t}
	s := Start(ft, "S: * OK one\n", "S: * OK two\n")
	dial(t, s.Addr())
	ft.finish()
	fails := strings.Join(s.Failures(), "\n")
	if !strings.Contains(fails, "dialogue 2 was never played") {
		t.Fatalf("failures = %q", fails)
	}

	ft = &fakeT{TB: t}
	s = Start(ft, "S: * OK one\n")
	c1, r1 := dial(t, s.Addr())
	r1.ReadString('\n')
	c1.Close()
	_, r2 := dial(t, s.Addr())
	r2.ReadString('\n')
	ft.finish()
	fails = strings.Join(s.Failures(), "\n")
	if !strings.Contains(fails, "connection 2: only 1 dialogues scripted") {
		t.Fatalf("failures = %q", fails)
	}
}
