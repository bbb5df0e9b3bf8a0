package upstream

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// streamConn is a server's side of a connection, canned: before is
// readable at once, after only once the client has written something (our
// command), so responses to it cannot be read before it was registered.
// Reads return at most chunk octets, to cut responses anywhere.
type streamConn struct {
	net.Conn
	chunk int

	mu      sync.Mutex
	before  []byte
	after   []byte
	wrote   chan struct{}
	written bytes.Buffer
	closed  chan struct{}
	once    sync.Once
}

func newStreamConn(before, after string, chunk int) *streamConn {
	c := &streamConn{chunk: max(chunk, 1), before: []byte(before), wrote: make(chan struct{}), closed: make(chan struct{})}
	if after != "" {
		c.after = []byte(after)
	}
	return c
}

func (c *streamConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.before) == 0 && c.after != nil {
		c.mu.Unlock()
		select {
		case <-c.wrote:
		case <-c.closed:
			return 0, net.ErrClosed
		}
		c.mu.Lock()
		c.before, c.after = c.after, nil
	}
	defer c.mu.Unlock()
	if len(c.before) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.before)
	c.before = c.before[n:]
	return n, nil
}

func (c *streamConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.written.Write(p)
	c.once.Do(func() { close(c.wrote) })
	return len(p), nil
}

func (c *streamConn) Close() error {
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	return nil
}

// splitRun reads everything the IMAP client would get from before and
// after, in reads of the given size, while one command of ours for item
// runs; it returns what the IMAP client got, the values our command got
// by UID, and our command's error.
func splitRun(t testing.TB, before, after, item string, chunk int) (passed string, values map[uint32]string, cmdErr, readErr error) {
	t.Helper()
	conn := newStreamConn(before, after, chunk)
	sc := newSplitConn(conn)
	var out bytes.Buffer
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 7)
		for {
			n, err := sc.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	values = map[uint32]string{}
	closed := make(chan struct{})
	cmdErr = sc.fetchUIDs("1:*", item, closed, func(uid uint32, value []byte) error {
		values[uid] = string(value)
		return nil
	})
	conn.Close()
	select {
	case <-readDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not end")
	}
	if sent := conn.written.String(); sent != "G1 UID FETCH 1:* (UID "+item+")\r\n" && (cmdErr == nil || sent != "") {
		t.Fatalf("sent %q", conn.written.String())
	}
	return out.String(), values, cmdErr, readErr
}

// Unsolicited responses, literals in them, a status text that only looks
// like a literal and a continuation request all reach the IMAP client
// byte for byte, around our command's responses, cut anywhere.
func TestSplitPassesThroughUnchanged(t *testing.T) {
	other := "* 3 EXISTS\r\n" +
		"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n" +
		"* LIST () \"/\" {5}\r\nIN)BX\r\n" +
		"* OK [ALERT] the text ends in {5}\r\n" +
		"+ go on {3}\r\n" +
		"* 2 FETCH (UID 2 BODY[] {12}\r\n* 9 FETCH (\r\n X-UNKNOWN (a \"b\" {1}\r\nc))\r\n"
	ours := []string{
		"* 1 FETCH (UID 7 EMAILID (M6d99ac3275bb4e))\r\n",
		"* 2 fetch (EMAILID (Mabc_-9) MODSEQ (12) UID 8)\r\n",
		"* 3 FETCH (UID 9 EMAILID NIL)\r\n",
		"G1 OK done\r\n",
	}
	// Text that only looks like a literal's announcement, each right
	// before one of ours.
	status, cont, tagged := "* OK [ALERT] the text ends in {5}\r\n", "+ go on {3}\r\n", "T4 NO [ALERT] {2}\r\n"
	after := "* 4 EXISTS\r\nT9 OK later\r\n"
	for _, chunk := range []int{1, 2, 3, 5, 16, 4096} {
		// Unsolicited responses before ours, between them and after.
		stream := other + ours[0] + status + ours[1] + cont + other + ours[2] + tagged + ours[3] + after
		passed, values, cmdErr, _ := splitRun(t, other, stream, "EMAILID", chunk)
		if cmdErr != nil {
			t.Fatalf("chunk %d: command: %v", chunk, cmdErr)
		}
		if want := other + other + status + cont + other + tagged + after; passed != want {
			t.Fatalf("chunk %d: the IMAP client got\n%q\nwant\n%q", chunk, passed, want)
		}
		want := map[uint32]string{7: "(M6d99ac3275bb4e)", 8: "(Mabc_-9)", 9: "NIL"}
		if len(values) != len(want) {
			t.Fatalf("chunk %d: values %v, want %v", chunk, values, want)
		}
		for uid, v := range want {
			if values[uid] != v {
				t.Fatalf("chunk %d: values %v, want %v", chunk, values, want)
			}
		}
	}
}

// A refused command is an error; the stream goes on.
func TestSplitCommandRefused(t *testing.T) {
	passed, _, err, _ := splitRun(t, "", "* 1 EXISTS\r\nG1 BAD no such item\r\n* 2 EXISTS\r\n", "EMAILID", 4096)
	if err == nil || !strings.Contains(err.Error(), "BAD") {
		t.Fatalf("command: %v, want the BAD", err)
	}
	if passed != "* 1 EXISTS\r\n* 2 EXISTS\r\n" {
		t.Fatalf("passed %q", passed)
	}
}

// Responses held for our command are bounded: a huge literal announced,
// or a line that never ends, ends the session at once, without waiting
// for the octets or allocating them.
func TestSplitBounded(t *testing.T) {
	for name, after := range map[string]string{
		"huge literal":  "* 1 FETCH (UID 1 EMAILID (M1) BODY[] {99999999999}\r\n",
		"endless line":  "* 1 FETCH (UID 1 X-GM-LABELS (" + strings.Repeat("a ", maxHeldResponse) + ")\r\nG1 OK\r\n",
		"literal chain": "* 1 FETCH (UID 1 X (" + strings.Repeat("{100000}\r\n"+strings.Repeat("x", 100000), 3) + "))\r\nG1 OK\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, _, cmdErr, readErr := splitRun(t, "", after, "EMAILID", 4096)
			if !errors.Is(cmdErr, errSplit) || readErr == nil {
				t.Fatalf("command: %v, reader: %v; want both to fail", cmdErr, readErr)
			}
		})
	}
}

// A literal passed through while no command of ours is under way is
// streamed, however large: bodies are.
func TestSplitStreamsLargeLiterals(t *testing.T) {
	body := strings.Repeat("x", 3*maxHeldResponse)
	resp := "* 1 FETCH (UID 1 BODY[] {" + itoa(len(body)) + "}\r\n" + body + ")\r\nT1 OK\r\n"
	sc := newSplitConn(newStreamConn(resp, "", 1<<20))
	got, err := io.ReadAll(readerFunc(sc.Read))
	if err != nil || string(got) != resp {
		t.Fatalf("passed %d octets, %v; want %d", len(got), err, len(resp))
	}
}

func itoa(n int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		if n /= 10; n == 0 {
			return string(b)
		}
	}
}

func TestParseFetch(t *testing.T) {
	for _, tc := range []struct {
		resp, item string
		uid        uint32
		value      string
		ok, bad    bool
	}{
		{"* 1 FETCH (UID 7 EMAILID (M1))\r\n", "EMAILID", 7, "(M1)", true, false},
		{"* 1 FETCH (X-GM-MSGID 1278455344230334865 UID 3)\r\n", "X-GM-MSGID", 3, "1278455344230334865", true, false},
		{"* 1 FETCH (FLAGS (\\Seen $Junk) UID 3)\r\n", "EMAILID", 3, "", false, false},
		{"* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)]<0> {3}\r\nabc UID 4 EMAILID (E2))\r\n", "EMAILID", 4, "(E2)", true, false},
		{"* 1 FETCH (ENVELOPE (\"a \\\" b\" NIL ((NIL NIL \"x\" \"y\"))) UID 4)\r\n", "EMAILID", 4, "", false, false},
		{"* 1 FETCH (UID 4 EMAILID (M1)\r\n", "EMAILID", 0, "", false, true},
		{"* 1 FETCH (UID 4 EMAILID (M1)) trailing\r\n", "EMAILID", 0, "", false, true},
		{"* 1 FETCH (UID x)\r\n", "EMAILID", 0, "", false, true},
		{"* 1 FETCH (UID 1 B {9}\r\nab)\r\n", "EMAILID", 0, "", false, true},
		{"* 1 EXISTS\r\n", "EMAILID", 0, "", false, true},
	} {
		uid, value, ok, err := parseFetch([]byte(tc.resp), tc.item)
		if (err != nil) != tc.bad || uid != tc.uid || string(value) != tc.value || ok != tc.ok {
			t.Errorf("parseFetch(%q) = %d %q %v %v", tc.resp, uid, value, ok, err)
		}
	}
}

func TestIdentityValue(t *testing.T) {
	for _, tc := range []struct {
		item, value, want string
		bad               bool
	}{
		{"EMAILID", "(M6d99ac3275bb4e)", "M6d99ac3275bb4e", false},
		{"EMAILID", "NIL", "", false},
		{"EMAILID", "(M6d:9)", "", true},
		{"EMAILID", "()", "", true},
		{"EMAILID", "(" + strings.Repeat("a", 256) + ")", "", true},
		{"EMAILID", "M1", "", true},
		{"EMAILID", "M1)", "", true},
		{"X-GM-MSGID", "1278455344230334865", "1278455344230334865", false},
		{"X-GM-MSGID", "0", "", true},
		{"X-GM-MSGID", "12a", "", true},
		{"X-GM-MSGID", "99999999999999999999999", "", true},
	} {
		got, err := identityValue(tc.item, []byte(tc.value))
		if got != tc.want || (err != nil) != tc.bad {
			t.Errorf("identityValue(%s, %q) = %q, %v", tc.item, tc.value, got, err)
		}
	}
}

// FuzzSplit: whatever the server sends, the splitter neither panics nor
// hangs; without a command of ours it passes every octet unchanged; with
// one, the IMAP client gets the octets in order, less whole responses.
func FuzzSplit(f *testing.F) {
	f.Add([]byte("* 1 FETCH (UID 1 EMAILID (M1))\r\nG1 OK\r\n"), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		// No command of ours: everything passes.
		sc := newSplitConn(newStreamConn(string(data), "", int(chunk)))
		got, err := io.ReadAll(io.LimitReader(readerFunc(sc.Read), int64(len(data))+1))
		if !bytes.Equal(got, data) && !(err != nil && bytes.HasPrefix(data, got)) {
			t.Fatalf("passed %q, %v; want %q", got, err, data)
		}
		// With one: whatever is passed is what was sent, less responses.
		passed, _, _, _ := splitRun(t, "", string(data), "EMAILID", int(chunk))
		if !isSubsequence([]byte(passed), data) {
			t.Fatalf("passed %q, not taken from %q", passed, data)
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func isSubsequence(sub, of []byte) bool {
	for _, b := range sub {
		i := bytes.IndexByte(of, b)
		if i < 0 {
			return false
		}
		of = of[i+1:]
	}
	return true
}
