// Package dovecot starts a private Dovecot instance on 127.0.0.1 for tests
// and benchmarks: plaintext IMAP and POP3 over maildirs, or, with
// Options.IMAPC, POP3 only, serving the mail of an upstream IMAP server
// (mail_location = imapc:).
//
// Settings that differ from Dovecot's defaults: no SSL, plaintext auth
// allowed, auth_failure_delay = 0, the anvil auth penalty disabled (its
// socket has mode 0), mail_max_userip_connections = 100 (or more, see
// Options.MaxConnections) and auth_username_format = %u (no lowercasing).
// POP3 settings are the defaults; pop3_uidl_format is set explicitly to
// its default %08Xu%08Xv.
package dovecot

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/freeport"
)

// ErrNotInstalled is returned by Start when the dovecot binary is missing.
var ErrNotInstalled = errors.New("dovecot not found: install the Debian packages dovecot-imapd and dovecot-pop3d")

// Options configures an instance.
type Options struct {
	// Users maps user names to passwords. Names must not contain
	// ":/\r\n\x00%"; passwords must not contain ":" or line breaks, nor
	// spaces for an imapc instance.
	Users map[string]string

	// Dir, if set, holds dovecot.conf and the logs and is left in place by
	// Stop. Otherwise they are in the instance's temporary directory.
	Dir string

	// IMAPC, if set, is the host:port of an IMAP server without TLS. The
	// instance then serves only POP3, from that server: each user logs in
	// upstream with the same name and password (mail_location = imapc:,
	// imapc_user = %u, imapc_password from the passwd file).
	IMAPC string

	// MaxConnections raises process, client and per-user connection limits
	// so that this many IMAP or POP3 sessions can be open at once. Zero
	// keeps Dovecot's defaults (1,024 mail processes).
	MaxConnections int

	// Keep leaves the temporary directory in place at Stop.
	Keep bool

	// IMAPMaxLineLength, if set, is imap_max_line_length: the longest IMAP
	// command line Dovecot accepts (64 KiB by default).
	IMAPMaxLineLength int

	// NoTrash leaves out the Trash mailbox marked \Trash that every
	// user otherwise has.
	NoTrash bool
	// TrustedNetworks, if set, is login_trusted_networks: clients from
	// there may report the address of the client they act for (IMAP ID
	// x-originating-ip), which Dovecot then logs and penalises.
	TrustedNetworks string

	// ReuseProcesses selects Dovecot's high-performance process model:
	// login processes serve many connections (service_count = 0) and mail
	// processes serve up to 100 sessions one after another (service_count
	// = 100), with two of each started ahead (process_min_avail = 2).
	// By default every connection gets a new login process and every
	// session a new mail process; where fork and exec are slow, that
	// dominates the time of a short session.
	ReuseProcesses bool
}

// Instance is a running Dovecot.
type Instance struct {
	opts     Options
	dir      string // dovecot.conf and logs
	root     string // mode 0755: run/, state/, home/, passwd
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

	stopOnce sync.Once
	stopErr  error
}

var errAddrInUse = errors.New("address already in use")

// Binary returns the path of the dovecot binary, or "" when it is missing.
func Binary() string {
	if fi, err := os.Stat("/usr/sbin/dovecot"); err == nil && !fi.IsDir() {
		return "/usr/sbin/dovecot"
	}
	if p, err := exec.LookPath("dovecot"); err == nil {
		return p
	}
	return ""
}

// Version returns the output of dovecot --version.
func Version() (string, error) {
	bin := Binary()
	if bin == "" {
		return "", ErrNotInstalled
	}
	out, err := exec.Command(bin, "--version").Output()
	return strings.TrimSpace(string(out)), err
}

// ValidUser reports whether name can be a user of an instance.
func ValidUser(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, ":/\r\n\x00%")
}

// Start starts Dovecot with opts.Users, each with an empty Maildir INBOX
// (no maildir for an imapc instance). Stop stops it.
//
// Dovecot refuses to access mail as root, so when run as root the mail
// processes run as "nobody" and the maildirs are owned by it; otherwise
// everything runs as the current user. Sockets, maildirs and the passwd
// file are in a world-traversable directory under os.TempDir().
func Start(opts Options) (*Instance, error) {
	bin := Binary()
	if bin == "" {
		return nil, ErrNotInstalled
	}
	for u, p := range opts.Users {
		if !ValidUser(u) {
			return nil, fmt.Errorf("dovecot: unsupported user name %q", u)
		}
		if strings.ContainsAny(p, ":\r\n\x00") || opts.IMAPC != "" && strings.ContainsAny(p, " \t") {
			return nil, fmt.Errorf("dovecot: unsupported password %q for user %q", p, u)
		}
	}
	if opts.IMAPC != "" {
		if _, _, err := net.SplitHostPort(opts.IMAPC); err != nil {
			return nil, fmt.Errorf("dovecot: IMAPC: %w", err)
		}
	}

	s := &Instance{
		opts:  opts,
		users: make(map[string]bool),
		base:  time.Now().Unix(),
	}
	root, err := os.MkdirTemp("", "dovecot")
	if err != nil {
		return nil, err
	}
	s.root = root
	ok := false
	defer func() {
		if !ok {
			s.stop()
			if !opts.Keep {
				os.RemoveAll(root)
			}
		}
	}()
	// Dovecot's unprivileged processes need to traverse this directory.
	if err := os.Chmod(root, 0o755); err != nil {
		return nil, err
	}
	s.dir = cmp.Or(opts.Dir, root)
	s.confPath = filepath.Join(s.dir, "dovecot.conf")
	s.logPath = filepath.Join(s.dir, "dovecot.log")
	s.errPath = filepath.Join(s.dir, "dovecot.stderr")

	var self *user.User
	if os.Geteuid() != 0 {
		self, err = user.Current()
		if err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
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
		return nil, err
	}
	var pw strings.Builder
	for _, u := range slices.Sorted(maps.Keys(opts.Users)) {
		p := opts.Users[u]
		if opts.IMAPC != "" {
			// userdb_ extra fields of the passdb become userdb fields, and
			// a userdb field named like a setting overrides it.
			fmt.Fprintf(&pw, "%s:{PLAIN}%s::::::userdb_imapc_password=%s\n", u, p, p)
		} else {
			fmt.Fprintf(&pw, "%s:{PLAIN}%s\n", u, p)
		}
		s.users[u] = true
		home := filepath.Join(root, "home", u)
		if opts.IMAPC == "" {
			for _, sub := range []string{"cur", "new", "tmp"} {
				if err := os.MkdirAll(filepath.Join(s.Maildir(u), sub), 0o700); err != nil {
					return nil, err
				}
			}
		} else if err := os.Mkdir(home, 0o700); err != nil {
			return nil, err
		}
		if err := s.chownTree(home); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "passwd"), []byte(pw.String()), 0o644); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(root, "state"), 0o755); err != nil {
		return nil, err
	}

	for attempt := 0; ; attempt++ {
		ports, err := freeport.Ports(2)
		if err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
		}
		imapPort, pop3Port := ports[0], ports[1]
		s.pop3Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(pop3Port))
		if opts.IMAPC == "" {
			s.imapAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(imapPort))
		}
		conf := s.config(imapPort, pop3Port, self)
		if err := os.WriteFile(s.confPath, []byte(conf), 0o644); err != nil {
			return nil, err
		}
		err = s.launch(bin)
		if err == nil {
			break
		}
		if errors.Is(err, errAddrInUse) && attempt < 10 {
			continue
		}
		return nil, fmt.Errorf("dovecot: starting: %w\n%s", err, s.logTail())
	}
	ok = true
	return s, nil
}

func (s *Instance) config(imapPort, pop3Port int, self *user.User) string {
	var b strings.Builder
	userip := 100
	if s.opts.MaxConnections > userip {
		userip = s.opts.MaxConnections
	}
	protocols := "imap pop3"
	if s.opts.IMAPC != "" {
		protocols = "pop3"
	}
	fmt.Fprintf(&b, `# generated by package dovecot
base_dir = %[1]s/run
state_dir = %[1]s/state
instance_name = dovecot-%[2]d
log_path = %[3]s
protocols = %[6]s
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %%u
auth_verbose = yes
auth_failure_delay = 0
mail_max_userip_connections = %[7]d
pop3_uidl_format = %%08Xu%%08Xv
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
`, s.root, pop3Port, s.logPath, s.uid, s.gid, protocols, userip)
	if s.opts.IMAPMaxLineLength > 0 {
		fmt.Fprintf(&b, "imap_max_line_length = %d\n", s.opts.IMAPMaxLineLength)
	}
	if s.opts.IMAPC == "" && s.opts.NoTrash {
		b.WriteString(`mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
}
`)
	} else if s.opts.IMAPC == "" {
		b.WriteString(`mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  mailbox Trash {
    special_use = \Trash
    auto = create
  }
}
`)
	} else {
		host, port, _ := net.SplitHostPort(s.opts.IMAPC)
		// rfc822.size: sizes for STAT, LIST and RETR come from RFC822.SIZE;
		// without it Dovecot downloads every message at login to count them.
		// Indexes are kept on disk in the home directory; other POP3
		// settings stay at their defaults.
		fmt.Fprintf(&b, `mail_location = imapc:~/imapc
imapc_host = %s
imapc_port = %s
imapc_user = %%u
imapc_features = rfc822.size
namespace inbox {
  inbox = yes
}
`, host, port)
	}
	if s.opts.TrustedNetworks != "" {
		fmt.Fprintf(&b, "login_trusted_networks = %s\n", s.opts.TrustedNetworks)
	}
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
	mailLimits, loginLimits := "", ""
	if n := s.opts.MaxConnections; n > 0 {
		// Each of the two mail and three login services may run n+100
		// processes; anvil, auth, log and config take a connection from
		// each.
		fmt.Fprintf(&b, "default_process_limit = %d\ndefault_client_limit = %d\n", n+100, 5*(n+100))
		mailLimits = fmt.Sprintf("  process_limit = %d\n", n+100)
	}
	if s.opts.ReuseProcesses {
		mailLimits += "  service_count = 100\n  process_min_avail = 2\n"
		loginLimits = "  service_count = 0\n  process_min_avail = 2\n"
		// auth must take a connection from every process that can serve
		// more than one session: imap, pop3 and three login services.
		fmt.Fprintf(&b, "service auth {\n  client_limit = %d\n}\n", 5*(max(s.opts.MaxConnections, 1024)+100))
	}
	fmt.Fprintf(&b, `service anvil {
%[1]s  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
`, chroot)
	if s.opts.IMAPC == "" {
		fmt.Fprintf(&b, `service imap-login {
%[1]s%[4]s  inet_listener imap {
    address = 127.0.0.1
    port = %[2]d
  }
  inet_listener imaps {
    port = 0
  }
}
service imap {
%[3]s}
`, chroot, imapPort, mailLimits, loginLimits)
	}
	fmt.Fprintf(&b, `service pop3-login {
%[1]s%[4]s  inet_listener pop3 {
    address = 127.0.0.1
    port = %[2]d
  }
  inet_listener pop3s {
    port = 0
  }
}
service pop3 {
%[3]s}
`, chroot, pop3Port, mailLimits, loginLimits)
	return b.String()
}

// launch starts the master process and waits for the greetings. On
// failure the process has exited when launch returns.
func (s *Instance) launch(bin string) error {
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
	ready := map[string]string{s.pop3Addr: "+OK"}
	if s.imapAddr != "" {
		ready[s.imapAddr] = "* OK"
	}
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
			return fmt.Errorf("no greeting on %v within 30s", slices.Sorted(maps.Keys(ready)))
		}
		select {
		case <-done:
			return exited()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
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

// Stop terminates Dovecot (the master stops its children), waits for it
// to exit and removes the temporary directory unless Options.Keep is set.
// Calling it again returns the first result.
func (s *Instance) Stop() error {
	s.stopOnce.Do(func() {
		s.stopErr = s.stop()
		if s.stopErr != nil {
			s.stopErr = fmt.Errorf("%w\n%s", s.stopErr, s.logTail())
		}
		if !s.opts.Keep {
			os.RemoveAll(s.root)
		}
	})
	return s.stopErr
}

func (s *Instance) stop() error {
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

// Pid returns the process id of the master process.
func (s *Instance) Pid() int { return s.cmd.Process.Pid }

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

func (s *Instance) logTail() string {
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

// LogTail returns the last lines of Dovecot's log files.
func (s *Instance) LogTail() string { return s.logTail() }

// Dir returns the directory holding dovecot.conf and the logs.
func (s *Instance) Dir() string { return s.dir }

// IMAPAddr returns the IMAP listener address (127.0.0.1:port), or "" for
// an imapc instance.
func (s *Instance) IMAPAddr() string { return s.imapAddr }

// POP3Addr returns the POP3 listener address (127.0.0.1:port).
func (s *Instance) POP3Addr() string { return s.pop3Addr }

// Maildir returns the path of user's Maildir (the INBOX).
func (s *Instance) Maildir(user string) string {
	return filepath.Join(s.root, "home", user, "Maildir")
}

func (s *Instance) checkUser(user string) error {
	if !s.users[user] {
		return fmt.Errorf("dovecot: unknown user %q", user)
	}
	if s.opts.IMAPC != "" {
		return fmt.Errorf("dovecot: user %q: an imapc instance has no maildirs", user)
	}
	return nil
}

func (s *Instance) chown(path string) error {
	if s.uid == os.Geteuid() && s.gid == os.Getegid() {
		return nil
	}
	return os.Lchown(path, s.uid, s.gid)
}

func (s *Instance) chownTree(dir string) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return s.chown(p)
	})
}

// Deliver stores each message unchanged in user's Maildir/new. Messages
// get increasing file names, so the delivery order is the IMAP UID order
// and the POP3 message order. It is safe for concurrent use.
func (s *Instance) Deliver(user string, msgs ...[]byte) error {
	if err := s.checkUser(user); err != nil {
		return err
	}
	md := s.Maildir(user)
	for _, m := range msgs {
		s.mu.Lock()
		s.seq++
		n := s.seq
		s.mu.Unlock()
		name := fmt.Sprintf("%d.M%dP%dQ%d.dovecot", s.base+n, n, os.Getpid(), n)
		tmp := filepath.Join(md, "tmp", name)
		if err := os.WriteFile(tmp, m, 0o600); err != nil {
			return fmt.Errorf("dovecot: deliver: %w", err)
		}
		if err := s.chown(tmp); err != nil {
			return fmt.Errorf("dovecot: deliver: %w", err)
		}
		if err := os.Rename(tmp, filepath.Join(md, "new", name)); err != nil {
			return fmt.Errorf("dovecot: deliver: %w", err)
		}
	}
	return nil
}

// LDA returns the path of Dovecot's local delivery agent, or "" when it
// is missing.
func LDA() string {
	for _, p := range []string{"/usr/lib/dovecot/dovecot-lda", "/usr/libexec/dovecot/dovecot-lda"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath("dovecot-lda"); err == nil {
		return p
	}
	return ""
}

// DeliverLDA stores msg in user's INBOX through Dovecot's local delivery
// agent, as an installation of Dovecot delivers mail (LDA or LMTP): the
// index, the UID list and the cache are updated at delivery. Deliver
// instead writes into Maildir/new behind Dovecot's back, as an MTA's own
// maildir delivery does, and leaves that work to Dovecot's next reader.
func (s *Instance) DeliverLDA(user string, msg []byte) error {
	if err := s.checkUser(user); err != nil {
		return err
	}
	lda := LDA()
	if lda == "" {
		return fmt.Errorf("dovecot: deliver: dovecot-lda: %w", ErrNotInstalled)
	}
	cmd := exec.Command(lda, "-c", s.confPath, "-d", user)
	cmd.Stdin = bytes.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dovecot: deliver with dovecot-lda: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Count returns the number of messages in user's Maildir (cur and new).
func (s *Instance) Count(user string) (int, error) {
	if err := s.checkUser(user); err != nil {
		return 0, err
	}
	n := 0
	for _, sub := range []string{"cur", "new"} {
		ents, err := os.ReadDir(filepath.Join(s.Maildir(user), sub))
		if err != nil {
			return 0, fmt.Errorf("dovecot: count: %w", err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") && e.Type().IsRegular() {
				n++
			}
		}
	}
	return n, nil
}

// Messages returns the raw contents of user's messages in Maildir order
// (UID order for messages delivered with Deliver).
func (s *Instance) Messages(user string) ([][]byte, error) {
	if err := s.checkUser(user); err != nil {
		return nil, err
	}
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
			return nil, fmt.Errorf("dovecot: messages: %w", err)
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
			return nil, fmt.Errorf("dovecot: messages: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}
