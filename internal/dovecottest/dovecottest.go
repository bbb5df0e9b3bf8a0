// Package dovecottest starts a private Dovecot instance (IMAP and POP3 on
// 127.0.0.1, plaintext) for tests.
//
// Settings that differ from Dovecot's defaults: no SSL, plaintext auth
// allowed, auth_failure_delay = 0, the anvil auth penalty disabled (its
// socket has mode 0), mail_max_userip_connections = 100 and
// auth_username_format = %u (no lowercasing). POP3 settings are the
// defaults; pop3_uidl_format is set explicitly to its default %08Xu%08Xv.
package dovecottest

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testenv"
)

const skipMessage = "dovecot not found: install the Debian packages dovecot-imapd and dovecot-pop3d"

// Server is a running Dovecot instance.
type Server struct {
	dir      string // t.TempDir(): dovecot.conf and logs
	root     string // mode 0755: run/, home/, passwd
	confPath string
	logPath  string
	errPath  string
	imapAddr string
	pop3Addr string

	// Owner of the mail files and of the mail processes.
	uid, gid int

	users map[string]bool

	mu   sync.Mutex
	seq  int64
	base int64

	cmd  *exec.Cmd
	done chan struct{}
}

var errAddrInUse = errors.New("address already in use")

func findDovecot() string {
	if fi, err := os.Stat("/usr/sbin/dovecot"); err == nil && !fi.IsDir() {
		return "/usr/sbin/dovecot"
	}
	if p, err := exec.LookPath("dovecot"); err == nil {
		return p
	}
	return ""
}

// Start starts Dovecot with the given users (name -> password), each with
// an empty Maildir INBOX. It skips the test when dovecot is not installed.
// The server is stopped by t.Cleanup.
//
// Dovecot refuses to access mail as root, so when the test runs as root
// the mail processes run as "nobody" and the maildirs are owned by it;
// otherwise everything runs as the current user. dovecot.conf and the
// logs are in t.TempDir(); sockets, maildirs and the passwd file are in a
// world-traversable directory under os.TempDir(), removed at cleanup.
// User names and passwords must not contain ':' or line breaks.
func Start(t testing.TB, users map[string]string) *Server {
	t.Helper()
	bin := findDovecot()
	if bin == "" {
		testenv.Missing(t, skipMessage)
	}
	for u, p := range users {
		if u == "" || strings.ContainsAny(u, ":/\r\n\x00%") || u == "." || u == ".." {
			t.Fatalf("dovecottest: unsupported user name %q", u)
		}
		if strings.ContainsAny(p, ":\r\n\x00") {
			t.Fatalf("dovecottest: unsupported password %q for user %q", p, u)
		}
	}

	s := &Server{
		dir:   t.TempDir(),
		users: make(map[string]bool),
		base:  time.Now().Unix(),
	}
	root, err := os.MkdirTemp("", "dovecottest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	// Dovecot's unprivileged processes need to traverse this directory;
	// t.TempDir()'s parent has mode 0700.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	s.root = root
	s.confPath = filepath.Join(s.dir, "dovecot.conf")
	s.logPath = filepath.Join(s.dir, "dovecot.log")
	s.errPath = filepath.Join(s.dir, "dovecot.stderr")

	rootless := os.Geteuid() != 0
	var self *user.User
	if rootless {
		self, err = user.Current()
		if err != nil {
			t.Fatalf("dovecottest: %v", err)
		}
		s.uid, s.gid = os.Getuid(), os.Getgid()
	} else {
		s.uid, s.gid = 65534, 65534
		if u, err := user.Lookup("nobody"); err == nil {
			if uid, err := strconv.Atoi(u.Uid); err == nil && uid != 0 {
				s.uid = uid
				if gid, err := strconv.Atoi(u.Gid); err == nil && gid != 0 {
					s.gid = gid
				}
			}
		}
	}

	if err := os.Mkdir(filepath.Join(root, "home"), 0o755); err != nil {
		t.Fatal(err)
	}
	var pw strings.Builder
	for u, p := range users {
		fmt.Fprintf(&pw, "%s:{PLAIN}%s\n", u, p)
		s.users[u] = true
		for _, sub := range []string{"cur", "new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(s.Maildir(u), sub), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.chownTree(filepath.Join(root, "home", u)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "passwd"), []byte(pw.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "state"), 0o755); err != nil {
		t.Fatal(err)
	}

	for attempt := 0; ; attempt++ {
		imapPort, pop3Port, err := freePorts()
		if err != nil {
			t.Fatalf("dovecottest: %v", err)
		}
		s.imapAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(imapPort))
		s.pop3Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(pop3Port))
		conf := s.config(imapPort, pop3Port, self)
		if err := os.WriteFile(s.confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		err = s.launch(bin)
		if err == nil {
			break
		}
		if errors.Is(err, errAddrInUse) && attempt < 10 {
			t.Logf("dovecottest: port conflict, retrying: %v", err)
			continue
		}
		t.Fatalf("dovecottest: starting dovecot: %v\n%s", err, s.logTail())
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("dovecottest: stopping dovecot: %v\n%s", err, s.logTail())
		}
	})
	return s
}

func (s *Server) config(imapPort, pop3Port int, self *user.User) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# generated by dovecottest
base_dir = %[1]s/run
state_dir = %[1]s/state
instance_name = dovecottest-%[2]d
log_path = %[3]s
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %%u
auth_verbose = yes
auth_failure_delay = 0
mail_max_userip_connections = 100
mail_location = maildir:~/Maildir
pop3_uidl_format = %%08Xu%%08Xv
namespace inbox {
  inbox = yes
  mailbox Trash {
    special_use = \Trash
    auto = create
  }
}
first_valid_uid = %[4]d
first_valid_gid = %[5]d
passdb {
  driver = passwd-file
  args = scheme=PLAIN %[1]s/passwd
}
userdb {
  driver = static
  args = uid=%[4]d gid=%[5]d home=%[1]s/home/%%u
}
`, s.root, imapPort, s.logPath, s.uid, s.gid)
	chroot := ""
	if self != nil {
		// Without root, nothing can chroot.
		grp := self.Username
		if g, err := user.LookupGroupId(self.Gid); err == nil {
			grp = g.Name
		}
		fmt.Fprintf(&b, "default_internal_user = %s\ndefault_internal_group = %s\ndefault_login_user = %s\n",
			self.Username, grp, self.Username)
		chroot = "  chroot =\n"
	}
	fmt.Fprintf(&b, `service anvil {
%[1]s  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service imap-login {
%[1]s  inet_listener imap {
    address = 127.0.0.1
    port = %[2]d
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
%[1]s  inet_listener pop3 {
    address = 127.0.0.1
    port = %[3]d
  }
  inet_listener pop3s {
    port = 0
  }
}
`, chroot, imapPort, pop3Port)
	return b.String()
}

// freePorts returns two distinct ports that were free on 127.0.0.1.
func freePorts() (int, int, error) {
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer l1.Close()
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer l2.Close()
	return l1.Addr().(*net.TCPAddr).Port, l2.Addr().(*net.TCPAddr).Port, nil
}

// launch starts the master process and waits for both greetings. On
// failure the process has exited when launch returns.
func (s *Server) launch(bin string) error {
	errf, err := os.OpenFile(s.errPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer errf.Close()
	// Log lines of a failed attempt must not be mistaken for this one's.
	logStart := fileSize(s.logPath)
	errStart := fileSize(s.errPath)

	cmd := exec.Command(bin, "-F", "-c", s.confPath)
	cmd.Stdout = errf
	cmd.Stderr = errf
	cmd.Dir = s.dir
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	exited := func() error {
		msg := readFrom(s.logPath, logStart) + readFrom(s.errPath, errStart)
		if strings.Contains(msg, "Address already in use") {
			return fmt.Errorf("%w: %s", errAddrInUse, strings.TrimSpace(msg))
		}
		return fmt.Errorf("dovecot exited: %v", cmd.ProcessState)
	}

	deadline := time.Now().Add(30 * time.Second)
	ready := map[string]string{s.imapAddr: "* OK", s.pop3Addr: "+OK"}
	for len(ready) > 0 {
		for addr, prefix := range ready {
			select {
			case <-done:
				return exited()
			default:
			}
			if greeting(addr, prefix) {
				delete(ready, addr)
			}
		}
		if len(ready) == 0 {
			break
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("no greeting on %v within 30s", keys(ready))
		}
		select {
		case <-done:
			return exited()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func keys(m map[string]string) []string {
	var r []string
	for k := range m {
		r = append(r, k)
	}
	return r
}

func greeting(addr, prefix string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, prefix)
}

// stop terminates the master process (which stops its children) and
// waits for it to exit.
func (s *Server) stop() error {
	if s.cmd == nil {
		return nil
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	s.cmd.Process.Signal(terminateSignal)
	select {
	case <-s.done:
		return nil
	case <-time.After(20 * time.Second):
	}
	killProcessGroup(s.cmd)
	<-s.done
	return errors.New("dovecot did not exit within 20s after SIGTERM; killed")
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

func (s *Server) logTail() string {
	var b strings.Builder
	for _, p := range []string{s.errPath, s.logPath} {
		data, err := os.ReadFile(p)
		if err != nil || len(data) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "--- tail of %s ---\n%s\n", p, strings.Join(lines, "\n"))
	}
	return b.String()
}

// LogTail returns the last lines of Dovecot's log files, for test
// failure messages.
func (s *Server) LogTail() string { return s.logTail() }

// IMAPAddr returns the IMAP listener address (127.0.0.1:port).
func (s *Server) IMAPAddr() string { return s.imapAddr }

// POP3Addr returns the POP3 listener address (127.0.0.1:port).
func (s *Server) POP3Addr() string { return s.pop3Addr }

// Maildir returns the path of user's Maildir (the INBOX).
func (s *Server) Maildir(user string) string {
	return filepath.Join(s.root, "home", user, "Maildir")
}

func (s *Server) checkUser(t testing.TB, user string) {
	t.Helper()
	if !s.users[user] {
		t.Fatalf("dovecottest: unknown user %q", user)
	}
}

func (s *Server) chown(path string) error {
	if s.uid == os.Geteuid() && s.gid == os.Getegid() {
		return nil
	}
	return os.Lchown(path, s.uid, s.gid)
}

func (s *Server) chownTree(dir string) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return s.chown(p)
	})
}

// Deliver stores each message unchanged in user's Maildir/new. Messages
// get increasing file names, so the delivery order is the IMAP UID order
// and the POP3 message order.
func (s *Server) Deliver(t testing.TB, user string, msgs ...[]byte) {
	t.Helper()
	s.checkUser(t, user)
	md := s.Maildir(user)
	for _, m := range msgs {
		s.mu.Lock()
		s.seq++
		n := s.seq
		s.mu.Unlock()
		name := fmt.Sprintf("%d.M%dP%dQ%d.dovecottest", s.base+n, n, os.Getpid(), n)
		tmp := filepath.Join(md, "tmp", name)
		if err := os.WriteFile(tmp, m, 0o600); err != nil {
			t.Fatalf("dovecottest: deliver: %v", err)
		}
		if err := s.chown(tmp); err != nil {
			t.Fatalf("dovecottest: deliver: %v", err)
		}
		if err := os.Rename(tmp, filepath.Join(md, "new", name)); err != nil {
			t.Fatalf("dovecottest: deliver: %v", err)
		}
	}
}

// Count returns the number of messages in user's Maildir (cur and new).
func (s *Server) Count(t testing.TB, user string) int {
	t.Helper()
	s.checkUser(t, user)
	n := 0
	for _, sub := range []string{"cur", "new"} {
		ents, err := os.ReadDir(filepath.Join(s.Maildir(user), sub))
		if err != nil {
			t.Fatalf("dovecottest: count: %v", err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") && e.Type().IsRegular() {
				n++
			}
		}
	}
	return n
}

// Messages returns the raw contents of user's messages in Maildir order
// (UID order for messages delivered with Deliver).
func (s *Server) Messages(t testing.TB, user string) [][]byte {
	t.Helper()
	s.checkUser(t, user)
	type ent struct {
		key  int64
		name string
		path string
	}
	var ents []ent
	for _, sub := range []string{"cur", "new"} {
		dir := filepath.Join(s.Maildir(user), sub)
		des, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("dovecottest: messages: %v", err)
		}
		for _, e := range des {
			if strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
				continue
			}
			secs, _, _ := strings.Cut(e.Name(), ".")
			k, _ := strconv.ParseInt(secs, 10, 64)
			ents = append(ents, ent{k, e.Name(), filepath.Join(dir, e.Name())})
		}
	}
	slices.SortFunc(ents, func(a, b ent) int {
		return cmp.Or(cmp.Compare(a.key, b.key), strings.Compare(a.name, b.name))
	})
	var out [][]byte
	for _, e := range ents {
		b, err := os.ReadFile(e.path)
		if err != nil {
			t.Fatalf("dovecottest: messages: %v", err)
		}
		out = append(out, b)
	}
	return out
}
