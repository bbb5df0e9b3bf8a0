// Package clienttest runs real POP3 clients (fetchmail, mpop, getmail6,
// curl) against a POP3 server on loopback, in plaintext with USER/PASS
// (curl: see Curl), and returns the messages they delivered.
//
// Every client keeps its state (UIDL memory, config) in a directory that
// lives as long as the Client value. Each Fetch delivers into a fresh
// directory and returns what that call delivered, in server order.
//
// Fetch(t, true) leaves the messages on the server; clients that remember
// UIDLs (RemembersUIDL) return only messages they have not retrieved
// before. Fetch(t, false) retrieves all messages on the server, including
// ones seen before, and deletes them.
//
// Clients alter the bytes they deliver; see the constructors. All of them
// undo POP3 dot-stuffing. Messages end with a newline because the server
// sends one before the terminating ".".
package clienttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// Timeout bounds every client command.
const Timeout = 60 * time.Second

// networkTimeout is the clients' own I/O timeout, below Timeout so that
// the client reports a hang itself.
const networkTimeout = 50

// Client is a POP3 client bound to one server account.
type Client interface {
	// Name returns the client program's name.
	Name() string
	// Fetch runs the client once and returns the raw bytes of the
	// messages this run delivered, in order. It fails the test on error.
	Fetch(t testing.TB, keep bool) [][]byte
	// TryFetch is Fetch returning the error (and the messages delivered
	// before it) instead of failing the test.
	TryFetch(keep bool) ([][]byte, error)
	// RemembersUIDL reports whether Fetch(t, true) skips messages that
	// were retrieved by an earlier Fetch on the same value.
	RemembersUIDL() bool
}

// base holds what all clients share.
type base struct {
	name       string
	bin        string
	host, port string
	user, pass string
	dir        string // state directory
	deliver    string // delivery script

	mu    sync.Mutex
	calls int
}

// deliverScript writes its stdin to the next numbered file in "$1".
const deliverScript = `#!/bin/sh
set -e
n=$(ls -- "$1" | wc -l)
f=$(printf '%s/%06d' "$1" $((n+1)))
cat > "$1/.tmp"
mv "$1/.tmp" "$f"
`

// safePath matches paths that need no quoting in any client's config
// (no %, $, quotes, blanks or backslashes).
var safePath = regexp.MustCompile(`^[A-Za-z0-9/._+,=@-]+$`)

func newBase(t testing.TB, name, pkg, addr, user, pass string) *base {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		testenv.Missing(t, fmt.Sprintf("%s not found: install the Debian package %s", name, pkg))
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("clienttest: bad address %q: %v", addr, err)
	}
	if strings.ContainsAny(user+pass, "\r\n\x00") {
		t.Fatalf("clienttest: user or password contains CR, LF or NUL")
	}
	dir := t.TempDir()
	if !safePath.MatchString(dir) {
		// t.TempDir() contains the test name, which may hold % or $.
		dir, err = os.MkdirTemp("", "clienttest")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if !safePath.MatchString(dir) {
			t.Fatalf("clienttest: temp dir %q needs quoting; set TMPDIR", dir)
		}
	}
	b := &base{
		name: name, bin: bin,
		host: host, port: port,
		user: user, pass: pass,
		dir:     dir,
		deliver: filepath.Join(dir, "deliver.sh"),
	}
	if err := os.WriteFile(b.deliver, []byte(deliverScript), 0o755); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *base) Name() string { return b.name }

// newOut creates the delivery directory for one Fetch call.
func (b *base) newOut() (string, int, error) {
	b.mu.Lock()
	b.calls++
	n := b.calls
	b.mu.Unlock()
	out := filepath.Join(b.dir, fmt.Sprintf("out%d", n))
	return out, n, os.Mkdir(out, 0o700)
}

// writeSecret writes a config file readable only by its owner, as
// fetchmail and mpop require.
func writeSecret(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

func (b *base) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "FETCHMAILHOME", "FETCHMAILUSER", "XDG_CONFIG_HOME",
			"LC_ALL", "LANG", "LANGUAGE", "MAIL", "NETRC", "CURL_HOME":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+b.dir, "XDG_CONFIG_HOME="+b.dir, "LC_ALL=C")
}

// run executes the client with Timeout and returns its combined output.
func (b *base) run(env []string, args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.bin, args...)
	cmd.Env = env
	cmd.Dir = b.dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	setupKill(cmd)
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), -1, fmt.Errorf("%s timed out after %v\n%s", b.name, Timeout, out.String())
	}
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return out.String(), -1, fmt.Errorf("%s: %v", b.name, err)
		}
		code = ee.ExitCode()
	}
	return out.String(), code, nil
}

// readOut returns the files delivered into dir, in delivery order.
func readOut(dir string) ([][]byte, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var msgs [][]byte
	for _, e := range ents { // sorted by the zero-padded names
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		m, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func fetch(t testing.TB, c Client, keep bool) [][]byte {
	t.Helper()
	msgs, err := c.TryFetch(keep)
	if err != nil {
		t.Fatalf("clienttest: %s (keep=%v): %v", c.Name(), keep, err)
	}
	return msgs
}

// quoteMpop quotes an mpop configuration argument. mpop strips the
// enclosing double quotes and has no escapes.
func quoteMpop(s string) string { return `"` + s + `"` }

// quoteRC quotes s as a double-quoted string with backslash escapes, for
// fetchmail and curl configuration files.
func quoteRC(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

// Fetchmail returns a fetchmail client. Configuration: plaintext (sslproto
// set to the empty string), "auth password" (USER/PASS), uidl with an idfile in the
// state directory, "invisible" (no Received: header), "no rewrite" (no
// address rewriting), "no envelope", "bad-header accept", and an MDA.
//
// Alterations observed with fetchmail 6.4: every CR is removed (stripcr,
// the default with an MDA), also CRs inside lines, so lines end in LF; a
// message whose first line is not a header line gets an empty line after
// that first line. No header is added. In keep mode fetchmail retrieves
// with "TOP n 99999999" instead of RETR; with keep=false it uses RETR and
// DELE. Exit status 1 ("no mail") counts as success.
func Fetchmail(t testing.TB, addr, user, pass string) Client {
	t.Helper()
	return &fetchmail{newBase(t, "fetchmail", "fetchmail", addr, user, pass)}
}

type fetchmail struct{ *base }

func (c *fetchmail) RemembersUIDL() bool                    { return true }
func (c *fetchmail) Fetch(t testing.TB, keep bool) [][]byte { t.Helper(); return fetch(t, c, keep) }

func (c *fetchmail) TryFetch(keep bool) ([][]byte, error) {
	out, _, err := c.newOut()
	if err != nil {
		return nil, err
	}
	local := "root"
	if u, err := user.Current(); err == nil && u.Username != "" {
		local = u.Username
	}
	disposal := "  keep\n"
	if !keep {
		disposal = "  no keep\n  fetchall\n"
	}
	rc := fmt.Sprintf(`set no syslog
set no bouncemail
set invisible
poll %s protocol pop3 service %s uidl auth password no envelope timeout %d bad-header accept
  user %s there with password %s is %s here
  sslproto ''
%s  no rewrite
  mda %s
`, quoteRC(c.host), c.port, networkTimeout,
		quoteRC(c.user), quoteRC(c.pass), quoteRC(local),
		disposal, quoteRC(fmt.Sprintf("'%s' '%s'", c.deliver, out)))
	rcPath := filepath.Join(c.dir, "fetchmailrc")
	if err := writeSecret(rcPath, rc); err != nil {
		return nil, err
	}
	env := append(c.env(), "FETCHMAILHOME="+c.dir)
	log, code, err := c.run(env, "-v", "-f", rcPath,
		"-i", filepath.Join(c.dir, "fetchids"),
		"--pidfile", filepath.Join(c.dir, "fetchmail.pid"))
	msgs, rerr := readOut(out)
	if err == nil && code != 0 && code != 1 {
		err = fmt.Errorf("fetchmail exited with status %d\n%s", code, log)
	}
	return msgs, errors.Join(err, rerr)
}

// Mpop returns an mpop client. Configuration: tls off, tls_starttls off,
// "auth user" (USER/PASS), received_header off, a uidls_file in the state
// directory, delivery via an MDA, pipelining left at its default (auto:
// mpop pipelines commands when the server's CAPA lists PIPELINING).
//
// Alterations observed with mpop 1.4: CRLF line ends become LF; lone CRs
// inside lines are kept. No header is added.
func Mpop(t testing.TB, addr, user, pass string) Client {
	t.Helper()
	return &mpop{newBase(t, "mpop", "mpop", addr, user, pass)}
}

type mpop struct{ *base }

func (c *mpop) RemembersUIDL() bool                    { return true }
func (c *mpop) Fetch(t testing.TB, keep bool) [][]byte { t.Helper(); return fetch(t, c, keep) }

func (c *mpop) TryFetch(keep bool) ([][]byte, error) {
	out, _, err := c.newOut()
	if err != nil {
		return nil, err
	}
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	rc := fmt.Sprintf(`defaults
account test
host %s
port %s
timeout %d
tls off
tls_starttls off
auth user
user %s
password %s
received_header off
uidls_file %s
delivery mda %s
keep %s
only_new %s
`, quoteMpop(c.host), c.port, networkTimeout, quoteMpop(c.user), quoteMpop(c.pass),
		quoteMpop(filepath.Join(c.dir, "uidls")),
		quoteMpop(fmt.Sprintf("'%s' '%s'", c.deliver, out)),
		onOff(keep), onOff(keep))
	rcPath := filepath.Join(c.dir, "mpoprc")
	if err := writeSecret(rcPath, rc); err != nil {
		return nil, err
	}
	log, code, err := c.run(c.env(), "-d", "-C", rcPath, "test")
	msgs, rerr := readOut(out)
	if err == nil && code != 0 {
		err = fmt.Errorf("mpop exited with status %d\n%s", code, log)
	}
	return msgs, errors.Join(err, rerr)
}

// Getmail returns a getmail6 client: SimplePOP3Retriever (USER/PASS),
// MDA_external destination (allow_root_commands, unixfrom false), options
// delivered_to and received false, read_all = !keep, delete = !keep; the
// oldmail file is in the state directory.
//
// Alterations observed with getmail 6.18: a "Return-Path: <unknown>"
// header is prepended to every message; line ends become LF and a lone CR
// inside a line becomes LF too; long header lines are refolded; a
// message whose first line is not a header gets an empty line before it
// (after Return-Path). 8-bit bytes are kept.
func Getmail(t testing.TB, addr, user, pass string) Client {
	t.Helper()
	b := newBase(t, "getmail", "getmail6", addr, user, pass)
	if strings.TrimSpace(pass) != pass || strings.TrimSpace(user) != user {
		t.Fatalf("clienttest: getmail cannot use a user or password with leading or trailing blanks")
	}
	return &getmail{b}
}

type getmail struct{ *base }

func (c *getmail) RemembersUIDL() bool                    { return true }
func (c *getmail) Fetch(t testing.TB, keep bool) [][]byte { t.Helper(); return fetch(t, c, keep) }

func (c *getmail) TryFetch(keep bool) ([][]byte, error) {
	out, _, err := c.newOut()
	if err != nil {
		return nil, err
	}
	boolStr := func(b bool) string { return strconv.FormatBool(b) }
	rc := fmt.Sprintf(`[retriever]
type = SimplePOP3Retriever
server = %s
port = %s
username = %s
password = %s
timeout = %d

[destination]
type = MDA_external
path = %s
arguments = (%s,)
allow_root_commands = true
unixfrom = false

[options]
verbose = 1
read_all = %s
delete = %s
delivered_to = false
received = false
`, c.host, c.port, c.user, c.pass, networkTimeout, c.deliver, strconv.Quote(out),
		boolStr(!keep), boolStr(!keep))
	rcPath := filepath.Join(c.dir, "getmailrc")
	if err := writeSecret(rcPath, rc); err != nil {
		return nil, err
	}
	state := filepath.Join(c.dir, "getmail")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	log, code, err := c.run(c.env(), "--getmaildir="+state, "--rcfile="+rcPath)
	msgs, rerr := readOut(out)
	if err == nil && code != 0 {
		err = fmt.Errorf("getmail exited with status %d\n%s", code, log)
	}
	return msgs, errors.Join(err, rerr)
}

// Curl returns a curl client. It lists messages with
// "curl pop3://host:port/" (LIST), retrieves them in one session with
// pop3://host:port/N (RETR N), and with keep=false deletes them with
// "-X DELE -I" (highest number first). curl authenticates with AUTH PLAIN
// when the server's CAPA lists "SASL PLAIN", otherwise with USER/PASS.
//
// curl has no UIDL memory: every Fetch returns all messages on the server
// (RemembersUIDL is false). Messages are returned as sent on the wire
// (CRLF line ends) minus the dot-stuffing; nothing is added.
func Curl(t testing.TB, addr, user, pass string) Client {
	t.Helper()
	b := newBase(t, "curl", "curl", addr, user, pass)
	if strings.Contains(user, ":") {
		t.Fatalf("clienttest: curl cannot use a user name containing ':'")
	}
	return &curl{b}
}

type curl struct{ *base }

func (c *curl) RemembersUIDL() bool                    { return false }
func (c *curl) Fetch(t testing.TB, keep bool) [][]byte { t.Helper(); return fetch(t, c, keep) }

func (c *curl) url(n int) string {
	u := "pop3://" + net.JoinHostPort(c.host, c.port) + "/"
	if n > 0 {
		u += strconv.Itoa(n)
	}
	return u
}

func (c *curl) args(extra ...string) []string {
	cfg := filepath.Join(c.dir, "curlrc")
	return append([]string{"-q", "-sS", "--max-time", strconv.Itoa(networkTimeout),
		"--config", cfg}, extra...)
}

func (c *curl) TryFetch(keep bool) ([][]byte, error) {
	out, _, err := c.newOut()
	if err != nil {
		return nil, err
	}
	// Credentials go through a config file, not the command line.
	cfg := "user = " + quoteRC(c.user+":"+c.pass) + "\n"
	if err := writeSecret(filepath.Join(c.dir, "curlrc"), cfg); err != nil {
		return nil, err
	}
	list, code, err := c.run(c.env(), c.args(c.url(0))...)
	if err == nil && code != 0 {
		err = fmt.Errorf("curl LIST exited with status %d\n%s", code, list)
	}
	if err != nil {
		return nil, err
	}
	var nums []int
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.Atoi(f[0])
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("curl: unexpected LIST line %q", line)
		}
		nums = append(nums, n)
	}
	if len(nums) == 0 {
		return nil, nil
	}
	var retr []string
	for i, n := range nums {
		retr = append(retr, c.url(n), "-o", filepath.Join(out, fmt.Sprintf("%06d", i+1)))
	}
	log, code, err := c.run(c.env(), c.args(retr...)...)
	if err == nil && code != 0 {
		err = fmt.Errorf("curl RETR exited with status %d\n%s", code, log)
	}
	msgs, rerr := readOut(out)
	if err != nil || rerr != nil || keep {
		return msgs, errors.Join(err, rerr)
	}
	dele := []string{"-X", "DELE", "-I"}
	for i := len(nums) - 1; i >= 0; i-- {
		dele = append(dele, c.url(nums[i]))
	}
	log, code, err = c.run(c.env(), c.args(dele...)...)
	if err == nil && code != 0 {
		err = fmt.Errorf("curl DELE exited with status %d\n%s", code, log)
	}
	return msgs, err
}
