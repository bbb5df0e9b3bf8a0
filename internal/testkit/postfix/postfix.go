// Package postfix starts a private Postfix on 127.0.0.1 as an upstream
// submission server for tests and benchmarks: SMTP AUTH through a private
// auth-only Dovecot (a passwd-file passdb for passwords, an oauth2 passdb
// asking a token introspection endpoint for XOAUTH2 and OAUTHBEARER), and
// every accepted message delivered by a pipe transport to a script that
// writes it to a file the test reads back.
//
// Settings that differ from Postfix's defaults, as shared/NOTES.md asks:
// no chroot, inet_interfaces = 127.0.0.1, maillog_file inside the
// instance, smtpd_error_sleep_time = 0, and main.cf backdated (Postfix
// waits until it is over a second old). Options.ForbidBareNewline sets
// smtpd_forbid_bare_newline, with its exclusions emptied (they default to
// $mynetworks, which covers loopback).
//
// The instance runs as root only (Postfix's master must); Start returns
// ErrNotRoot otherwise, and ErrNotInstalled without the binaries.
package postfix

import (
	"bufio"
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
	"syscall"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/freeport"
)

// ErrNotInstalled: postfix or dovecot is missing.
var ErrNotInstalled = errors.New("postfix or dovecot not found: install the Debian packages postfix and dovecot-core")

// ErrNotRoot: Postfix's master refuses to run as another user.
var ErrNotRoot = errors.New("postfix: a private Postfix needs root: run the tests as root")

// Options configures an instance.
type Options struct {
	// Users maps login names to passwords for AUTH PLAIN and LOGIN. Names
	// and passwords must not contain ":" or line breaks.
	Users map[string]string
	// IntrospectionURL, when set, enables XOAUTH2 and OAUTHBEARER: Dovecot
	// posts each bearer token there (RFC 7662) and takes the "username"
	// of an active token as the login.
	IntrospectionURL string
	// ForbidBareNewline is smtpd_forbid_bare_newline: "no" (the default
	// of 3.7), "normalize" or "reject".
	ForbidBareNewline string
	// Refuse maps a recipient to the reply Postfix gives at RCPT, such as
	// "450 4.2.1 try later" (check_recipient_access).
	Refuse map[string]string
	// RefuseData maps an envelope sender to the reply Postfix gives after
	// the message's final "." (smtpd_end_of_data_restrictions).
	RefuseData map[string]string
	// MessageSizeLimit is message_size_limit, advertised in EHLO SIZE;
	// 0 keeps Postfix's default.
	MessageSizeLimit int64
	// Discard throws accepted messages away instead of writing them to
	// files, for benchmarks: no process is started per message.
	Discard bool
}

// Instance is a running Postfix with its Dovecot.
type Instance struct {
	dir     string
	addr    string
	outDir  string
	dovecot *exec.Cmd
	dovDone chan struct{}

	stopOnce sync.Once
}

// Available tells whether the binaries are installed.
func Available() bool {
	for _, p := range []string{"/usr/sbin/postfix", "/usr/lib/postfix/sbin/master", "/usr/sbin/dovecot"} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// Start starts Postfix and its Dovecot; Stop stops them.
func Start(opts Options) (*Instance, error) {
	if !Available() {
		return nil, ErrNotInstalled
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		return nil, fmt.Errorf("postfix: %w", err)
	}
	dir, err := os.MkdirTemp("", "postfix")
	if err != nil {
		return nil, err
	}
	s := &Instance{dir: dir, outDir: filepath.Join(dir, "out")}
	ok := false
	defer func() {
		if !ok {
			s.Stop()
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	for _, d := range []string{"etc", "queue", "data", "dovecot", "dovecot/run", "out"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	// Postfix's master and its daemons write data/ as the mail owner.
	if u, err := user.Lookup("postfix"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
			return nil, err
		}
	}
	// The pipe transport runs the script as nobody.
	if err := os.Chmod(s.outDir, 0o777); err != nil {
		return nil, err
	}
	ports, err := freeport.Ports(1)
	if err != nil {
		return nil, err
	}
	port := ports[0]
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := s.writeFiles(opts, port, nobody); err != nil {
		return nil, err
	}
	if err := s.startDovecot(); err != nil {
		return nil, err
	}
	cmd := exec.Command("/usr/sbin/postfix", "-c", filepath.Join(dir, "etc"), "start")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("postfix start: %v: %s%s", err, out, s.tail("maillog"))
	}
	deadline := time.Now().Add(30 * time.Second)
	for !greets(s.addr) {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("postfix: no greeting on %s within 30s\n%s", s.addr, s.tail("maillog"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	ok = true
	return s, nil
}

// Addr is the smtpd listener, host:port, without TLS.
func (s *Instance) Addr() string { return s.addr }

// Dir is the instance's directory (etc/main.cf, maillog, out/).
func (s *Instance) Dir() string { return s.dir }

// Log returns Postfix's log so far.
func (s *Instance) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "maillog"))
	return string(b)
}

// Messages returns the delivered messages, oldest first, as the pipe got
// them: LF line endings, with the Received line Postfix adds.
func (s *Instance) Messages() ([][]byte, error) {
	entries, err := os.ReadDir(s.outDir)
	if err != nil {
		return nil, err
	}
	type msg struct {
		seq  int
		data []byte
	}
	var msgs []msg
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".eml") {
			continue
		}
		seq, _ := strconv.Atoi(strings.SplitN(name, "-", 2)[0])
		data, err := os.ReadFile(filepath.Join(s.outDir, name))
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, msg{seq, data})
	}
	slices.SortFunc(msgs, func(a, b msg) int { return a.seq - b.seq })
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i] = m.data
	}
	return out, nil
}

// WaitMessages waits up to timeout for at least n delivered messages and
// returns them all.
func (s *Instance) WaitMessages(n int, timeout time.Duration) ([][]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		msgs, err := s.Messages()
		if err != nil || len(msgs) >= n || time.Now().After(deadline) {
			return msgs, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Flush asks the queue manager to deliver what is queued now, and waits
// until the queue is empty or timeout passes.
func (s *Instance) Flush(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		n := 0
		for _, d := range []string{"incoming", "active", "deferred", "maildrop"} {
			filepath.WalkDir(filepath.Join(s.dir, "queue", d), func(_ string, e os.DirEntry, err error) error {
				if err == nil && !e.IsDir() {
					n++
				}
				return nil
			})
		}
		if n == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops Postfix's master and Dovecot by their PIDs and removes the
// directory.
func (s *Instance) Stop() {
	s.stopOnce.Do(func() {
		if pid := readPID(filepath.Join(s.dir, "queue", "pid", "master.pid")); pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(20 * time.Millisecond)
			}
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if s.dovecot != nil {
			s.dovecot.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.dovDone:
			case <-time.After(5 * time.Second):
				syscall.Kill(-s.dovecot.Process.Pid, syscall.SIGKILL)
				<-s.dovDone
			}
		}
		os.RemoveAll(s.dir)
	})
}

func (s *Instance) writeFiles(opts Options, port int, nobody *user.User) error {
	d := s.dir
	forbid := opts.ForbidBareNewline
	if forbid == "" {
		forbid = "no"
	}
	var restrictions strings.Builder
	restrictions.WriteString("permit_sasl_authenticated, reject")
	rcptRestrictions := ""
	if len(opts.Refuse) > 0 {
		rcptRestrictions = "check_recipient_access texthash:" + d + "/etc/refuse_rcpt, "
		if err := writeMap(filepath.Join(d, "etc", "refuse_rcpt"), opts.Refuse); err != nil {
			return err
		}
	}
	eod := ""
	if len(opts.RefuseData) > 0 {
		eod = "smtpd_end_of_data_restrictions = check_sender_access texthash:" + d + "/etc/refuse_data\n"
		if err := writeMap(filepath.Join(d, "etc", "refuse_data"), opts.RefuseData); err != nil {
			return err
		}
	}
	transport := "capture"
	if opts.Discard {
		transport = "discard"
	}
	size := ""
	if opts.MessageSizeLimit > 0 {
		size = fmt.Sprintf("message_size_limit = %d\nmailbox_size_limit = 0\n", opts.MessageSizeLimit)
	}
	mainCF := fmt.Sprintf(`# generated by package postfix
compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
myhostname = upstream.test
mydomain = upstream.test
myorigin = upstream.test
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_host_lookup = native
disable_dns_lookups = yes
default_transport = %[7]s
default_destination_concurrency_limit = 50
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_tls_security_level = none
smtpd_relay_restrictions = %[2]s%[3]s
smtpd_recipient_restrictions =
%[4]ssmtpd_forbid_bare_newline = %[5]s
smtpd_forbid_bare_newline_exclusions =
%[6]sbiff = no
append_dot_mydomain = no
`, d, rcptRestrictions, restrictions.String(), eod, forbid, size, transport)
	masterCF := fmt.Sprintf(`# generated by package postfix
127.0.0.1:%[2]d inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
capture   unix  -       n       n       -       -       pipe
  flags= user=%[3]s argv=%[1]s/deliver ${queue_id}
`, d, port, nobody.Username)
	// tmp, then rename: a test never reads half a message. The counter
	// orders the files by delivery.
	deliver := fmt.Sprintf(`#!/bin/sh
set -e
out=%[1]s/out
n=$(date +%%s%%N)
cat > "$out/tmp.$1"
mv "$out/tmp.$1" "$out/$n-$1.eml"
`, d)
	var passwd strings.Builder
	for _, u := range slices.Sorted(maps.Keys(opts.Users)) {
		fmt.Fprintf(&passwd, "%s:{PLAIN}%s\n", u, opts.Users[u])
	}
	files := map[string]string{
		"etc/main.cf":          mainCF,
		"etc/master.cf":        masterCF,
		"dovecot/passwd":       passwd.String(),
		"dovecot/dovecot.conf": s.dovecotConf(opts),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(d, "deliver"), []byte(deliver), 0o755); err != nil {
		return err
	}
	if opts.IntrospectionURL != "" {
		conf := fmt.Sprintf("introspection_mode = post\nintrospection_url = %s\nusername_attribute = username\nactive_attribute = active\nactive_value = true\n", opts.IntrospectionURL)
		if err := os.WriteFile(filepath.Join(d, "dovecot", "oauth2.conf"), []byte(conf), 0o644); err != nil {
			return err
		}
	}
	// Postfix waits until main.cf is over a second old.
	old := time.Now().Add(-time.Minute)
	return os.Chtimes(filepath.Join(d, "etc", "main.cf"), old, old)
}

func (s *Instance) dovecotConf(opts Options) string {
	d := s.dir
	mechs := "plain login"
	oauth := ""
	if opts.IntrospectionURL != "" {
		mechs += " xoauth2 oauthbearer"
		oauth = fmt.Sprintf("passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = %s/dovecot/oauth2.conf\n}\n", d)
	}
	return fmt.Sprintf(`# generated by package postfix: authentication only, for Postfix's SASL
base_dir = %[1]s/dovecot/run
state_dir = %[1]s/dovecot
instance_name = dovecot-postfix-%[4]d
log_path = %[1]s/dovecot/dovecot.log
protocols = none
ssl = no
disable_plaintext_auth = no
auth_mechanisms = %[2]s
auth_username_format = %%u
auth_failure_delay = 0
auth_verbose = yes
passdb {
  driver = passwd-file
  args = scheme=PLAIN %[1]s/dovecot/passwd
}
%[3]suserdb {
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service auth {
  unix_listener %[1]s/queue/private/auth {
    mode = 0666
  }
}
`, d, mechs, oauth, os.Getpid())
}

func (s *Instance) startDovecot() error {
	// Postfix creates private/ at start; Dovecot's socket must be there
	// first, so the directory is made now, owned as Postfix wants it.
	priv := filepath.Join(s.dir, "queue", "private")
	if err := os.MkdirAll(priv, 0o700); err != nil {
		return err
	}
	if u, err := user.Lookup("postfix"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chown(priv, uid, gid)
	}
	cmd := exec.Command("/usr/sbin/dovecot", "-F", "-c", filepath.Join(s.dir, "dovecot", "dovecot.conf"))
	errf, err := os.Create(filepath.Join(s.dir, "dovecot", "stderr"))
	if err != nil {
		return err
	}
	defer errf.Close()
	cmd.Stdout, cmd.Stderr = errf, errf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.dovecot = cmd
	s.dovDone = make(chan struct{})
	go func() { cmd.Wait(); close(s.dovDone) }()
	sock := filepath.Join(priv, "auth")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-s.dovDone:
			return fmt.Errorf("dovecot exited: %s%s", s.tail("dovecot/stderr"), s.tail("dovecot/dovecot.log"))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dovecot: no auth socket within 20s\n%s", s.tail("dovecot/dovecot.log"))
		}
	}
}

func (s *Instance) tail(name string) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, name))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func writeMap(path string, m map[string]string) error {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "%s %s\n", k, m[k])
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func greets(addr string) bool {
	nc, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(nc).ReadString('\n')
	if err == nil {
		fmt.Fprintf(nc, "QUIT\r\n")
	}
	return err == nil && strings.HasPrefix(line, "220 ")
}

// CPU is the user and system CPU time used so far by Postfix's master
// and its children (smtpd, cleanup, qmgr, the delivery agents), those
// running and those the master reaped, read from /proc. Zero where /proc
// cannot be read.
func (s *Instance) CPU() time.Duration {
	master := readPID(filepath.Join(s.dir, "queue", "pid", "master.pid"))
	if master <= 0 {
		return 0
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var ticks int64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// proc(5): "pid (comm) state ppid ... utime stime ...", comm
		// perhaps holding spaces or parentheses.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if pid != master && ppid != master {
			continue
		}
		// utime, stime, and for the master cutime and cstime: the
		// children it reaped.
		last := 12
		if pid == master {
			last = 14
		}
		for _, v := range f[11 : last+1] {
			n, _ := strconv.ParseInt(v, 10, 64)
			ticks += n
		}
	}
	// USER_HZ is 100 on Linux (proc(5), "clock ticks").
	return time.Duration(ticks) * 10 * time.Millisecond
}
