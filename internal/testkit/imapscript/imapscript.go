// Package imapscript runs a scripted IMAP server for tests: it plays a
// canned dialogue byte for byte, so a test reads as the transcript it
// checks, and it can say what no well-behaved server would.
//
// A dialogue is one text, a line per step:
//
//	S: * OK ready          the server sends the rest of the line and CRLF
//	C: {tag} SELECT INBOX  the next client line must be exactly this
//
// In a C: line, {tag} matches the client's tag and remembers it; in an S:
// line, {tag} is replaced by the last tag remembered. Consecutive S: lines
// are sent together, joined by CRLF, so a literal reads as it is sent:
//
//	S: * 1 FETCH (UID 7 BODY[] {9}
//	S: Subject:
//	S: )
//
// sends the 9 octets "Subject:\r\n" followed by ")". An S: line ending in
// a backslash is sent without its CRLF (the backslash is dropped), for a
// literal whose message has no final line break. Blank lines and lines
// starting with # are skipped.
//
// A FETCH's or STATUS's list of items matches in any order: clients send
// them in no fixed order, and RFC 9051 §6.4.5 and §6.3.11 give them none.
//
// Each connection plays the next dialogue given to Start; a connection
// beyond them, a client line that differs from the script, or a dialogue
// not played to its end fails the test, naming what the client sent.
// After its last step a dialogue answers LOGOUT and ends.
package imapscript

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a running scripted IMAP server on 127.0.0.1.
type Server struct {
	t         testing.TB
	ln        net.Listener
	dialogues [][]step

	mu       sync.Mutex
	next     int // dialogue for the next connection
	conns    []net.Conn
	finished int      // dialogues played to their end
	failures []string // reported at cleanup, from the test's goroutine
	wg       sync.WaitGroup
}

type step struct {
	client bool   // a line the client must send
	text   string // the line without CRLF, or what the server sends
	line   int    // in the dialogue, for messages
}

// Start listens on a free loopback port and plays dialogues, the first to
// the first connection and so on. It stops at the end of the test and
// fails it if anything went wrong.
func Start(t testing.TB, dialogues ...string) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, ln: ln}
	for _, d := range dialogues {
		steps, err := parse(d)
		if err != nil {
			ln.Close()
			t.Fatalf("imapscript: %v", err)
		}
		s.dialogues = append(s.dialogues, steps)
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Played is the number of connections whose dialogue ran to its end.
func (s *Server) Played() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finished
}

// Accepted is the number of connections so far.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

func parse(dialogue string) ([]step, error) {
	var steps []step
	for n, line := range strings.Split(dialogue, "\n") {
		line = strings.TrimSuffix(line, "\r")
		trimmed := strings.TrimLeft(line, " \t")
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
		case strings.HasPrefix(trimmed, "C: "):
			steps = append(steps, step{client: true, text: trimmed[3:], line: n + 1})
		case strings.HasPrefix(trimmed, "S: ") || trimmed == "S:":
			text := strings.TrimPrefix(strings.TrimPrefix(trimmed, "S:"), " ")
			if t, ok := strings.CutSuffix(text, `\`); ok {
				text = t
			} else {
				text += "\r\n"
			}
			steps = append(steps, step{text: text, line: n + 1})
		default:
			return nil, fmt.Errorf("line %d: %q: every step starts with C: or S: and this one does not", n+1, line)
		}
	}
	return steps, nil
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		i := s.next
		s.next++
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		if i >= len(s.dialogues) {
			s.fail("connection %d: only %d dialogues scripted", i+1, len(s.dialogues))
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			if s.play(i+1, c, s.dialogues[i]) {
				s.mu.Lock()
				s.finished++
				s.mu.Unlock()
			}
		}()
	}
}

// play runs one dialogue and tells whether it ran to its end.
func (s *Server) play(conn int, c net.Conn, steps []step) bool {
	c.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(c)
	tag := ""
	for _, st := range steps {
		if !st.client {
			if _, err := c.Write([]byte(strings.ReplaceAll(st.text, "{tag}", tag))); err != nil {
				s.fail("connection %d, line %d: writing: %v", conn, st.line, err)
				return false
			}
			continue
		}
		got, err := r.ReadString('\n')
		if err != nil {
			s.fail("connection %d, line %d: want %q, the client sent %q and then: %v", conn, st.line, st.text, got, err)
			return false
		}
		got = strings.TrimSuffix(got, "\r\n")
		want := st.text
		if rest, ok := strings.CutPrefix(want, "{tag} "); ok {
			t, after, _ := strings.Cut(got, " ")
			tag, got, want = t, after, rest
		}
		if got != want && fetchItems(got) != fetchItems(want) {
			s.fail("connection %d, line %d: want %q, the client sent %q", conn, st.line, want, got)
			return false
		}
	}
	// The script is done; a client that logs out, or hangs up, is fine.
	line, err := r.ReadString('\n')
	if err != nil {
		return true
	}
	if t, cmd, _ := strings.Cut(strings.TrimSuffix(line, "\r\n"), " "); strings.EqualFold(cmd, "LOGOUT") {
		fmt.Fprintf(c, "* BYE\r\n%s OK LOGOUT completed\r\n", t)
		return true
	}
	s.fail("connection %d: after the end of the script, the client sent %q", conn, line)
	return true
}

func (s *Server) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, fmt.Sprintf(format, args...))
}

// stop closes the listener and every connection, then reports failures.
func (s *Server) stop() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	for i := s.next; i < len(s.dialogues); i++ {
		s.failures = append(s.failures, fmt.Sprintf("dialogue %d was never played: no connection came for it", i+1))
	}
	for _, f := range s.failures {
		s.t.Errorf("imapscript: %s", f)
	}
}

// Failures returns what went wrong so far, for a test that checks the
// script itself.
func (s *Server) Failures() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.failures...)
}

// fetchItems returns a FETCH or STATUS command line with the items of its
// parenthesised list sorted, so two lists that differ only in order are
// equal; any other line is returned as it is.
func fetchItems(line string) string {
	upper := strings.ToUpper(line)
	i := strings.Index(upper, "FETCH ")
	if i < 0 {
		i = strings.Index(upper, "STATUS ")
	}
	if i < 0 || !strings.HasSuffix(line, ")") {
		return line
	}
	open := strings.Index(line[i:], "(")
	if open < 0 {
		return line
	}
	open += i
	list := line[open+1 : len(line)-1]
	var items []string
	depth, start := 0, 0
	for j := 0; j < len(list); j++ {
		switch list[j] {
		case '(', '[':
			depth++
		case ')', ']':
			depth--
		case ' ':
			if depth == 0 {
				items = append(items, list[start:j])
				start = j + 1
			}
		}
	}
	items = append(items, list[start:])
	slices.Sort(items)
	return line[:open+1] + strings.Join(items, " ") + ")"
}
