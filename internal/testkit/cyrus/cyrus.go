// Package cyrus starts a private Cyrus IMAP instance on 127.0.0.1 for
// tests: IMAP with RFC 8474 OBJECTID (EMAILID is the JMAP Email id, a
// content hash), and JMAP over HTTP on the same mail.
//
// Debian's cyrus-imapd conflicts with dovecot-imapd (both provide
// imap-server), so only cyrus-common (the master, cyrus-caldav's httpd)
// and sasl2-bin are installed; the imapd binary comes from the
// cyrus-imapd package unpacked privately: from $CYRUS_IMAPD_ROOT if set
// (a directory holding usr/lib/cyrus/bin/imapd), else from a cache
// directory (os.UserCacheDir()/pop3gw-testkit/cyrus-imapd-VERSION),
// filled on first use with `apt-get download cyrus-imapd=VERSION` and
// `dpkg-deb -x`, VERSION being cyrus-common's.
//
// The instance runs from a temporary directory with its own imapd.conf
// and cyrus.conf: httpmodules jmap and conversations on (JMAP needs
// both), allowplaintext (HTTP Basic without TLS), munge8bit off (8-bit
// header octets stay as they are), and smtp_backend pointed at a dead
// loopback port (so nothing runs the system's sendmail). Users have
// passwords in a private sasldb; their mailboxes are created over IMAP
// by the admin, since the Cyrus tools refuse to run as root. The master
// starts with -d (otherwise it signals its whole process group when it
// stops) and is stopped by the PID it writes. Cyrus logs only to syslog.
package cyrus

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pop3gw/gateway/internal/testkit/freeport"
)

// ErrNotInstalled is returned by Start when a program Cyrus needs is
// missing.
var ErrNotInstalled = errors.New("cyrus not found: install the Debian packages cyrus-common cyrus-caldav sasl2-bin, and let the test kit unpack cyrus-imapd (apt-get download cyrus-imapd; dpkg-deb -x) or set CYRUS_IMAPD_ROOT to where it is unpacked")

const (
	master     = "/usr/sbin/cyrmaster"
	httpd      = "/usr/lib/cyrus/bin/httpd"
	saslpasswd = "/usr/sbin/saslpasswd2"
	imapdPath  = "usr/lib/cyrus/bin/imapd" // in the unpacked package
	serverName = "cyrustest"
	adminUser  = "admin"
)

// Options configures an instance.
type Options struct {
	// Users maps user names to passwords; each gets an empty INBOX.
	// Names are letters, digits, '.', '_' and '-'; passwords have no
	// line break.
	Users map[string]string
	// Keep leaves the temporary directory in place at Stop.
	Keep bool
}

// Instance is a running Cyrus.
type Instance struct {
	opts          Options
	root          string
	adminPassword string
	imapAddr      string
	httpAddr      string
	pidFile       string
	pid           int

	stopOnce sync.Once
	stopErr  error
}

// Start starts Cyrus with opts.Users. Stop stops it.
func Start(opts Options) (*Instance, error) {
	for _, p := range []string{master, httpd, saslpasswd} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%w (%s is missing)", ErrNotInstalled, p)
		}
	}
	imapd, err := findIMAPD()
	if err != nil {
		return nil, err
	}
	for u, p := range opts.Users {
		if !validUser(u) || strings.ContainsAny(p, "\r\n\x00") {
			return nil, fmt.Errorf("cyrus: unsupported user %q or password", u)
		}
	}
	root, err := os.MkdirTemp("", "cyrus")
	if err != nil {
		return nil, err
	}
	s := &Instance{opts: opts, root: root, adminPassword: "admin-" + strconv.FormatInt(time.Now().UnixNano(), 36), pidFile: filepath.Join(root, "master.pid")}
	ok := false
	defer func() {
		if !ok {
			s.stop()
			if !opts.Keep {
				os.RemoveAll(root)
			}
		}
	}()
	for _, d := range []string{"db", "socket", "log", "proc", "lock", "sieve", "msg", "ptclient", "sync", "quota", "user", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, "conf", d), 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"spool", "bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, err
		}
	}
	// The cache may lie where the cyrus user cannot reach (root's home).
	if imapd, err = copyFile(imapd, filepath.Join(root, "bin", "imapd")); err != nil {
		return nil, err
	}
	users := maps.Clone(opts.Users)
	if users == nil {
		users = map[string]string{}
	}
	users[adminUser] = s.adminPassword
	for _, u := range slices.Sorted(maps.Keys(users)) {
		cmd := exec.Command(saslpasswd, "-p", "-c", "-f", filepath.Join(root, "sasldb2"), "-u", serverName, u)
		cmd.Stdin = strings.NewReader(users[u])
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("cyrus: saslpasswd2 %s: %v: %s", u, err, out)
		}
	}

	for attempt := 0; ; attempt++ {
		ports, err := freeport.Ports(2)
		if err != nil {
			return nil, fmt.Errorf("cyrus: %w", err)
		}
		imapPort, httpPort := ports[0], ports[1]
		s.imapAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(imapPort))
		s.httpAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
		if err := s.writeConfig(imapd); err != nil {
			return nil, err
		}
		err = s.launch()
		if err == nil {
			break
		}
		if attempt < 2 {
			s.stop()
			continue
		}
		return nil, fmt.Errorf("cyrus: starting: %w", err)
	}
	for _, u := range slices.Sorted(maps.Keys(opts.Users)) {
		if err := s.createMailbox(u); err != nil {
			return nil, err
		}
	}
	ok = true
	return s, nil
}

func validUser(name string) bool {
	if name == "" || name == adminUser {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// findIMAPD returns the path of an unpacked cyrus-imapd's imapd,
// unpacking it into the cache directory first if needed.
func findIMAPD() (string, error) {
	if dir := os.Getenv("CYRUS_IMAPD_ROOT"); dir != "" {
		p := filepath.Join(dir, imapdPath)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: CYRUS_IMAPD_ROOT=%s has no %s", ErrNotInstalled, dir, imapdPath)
		}
		return p, nil
	}
	if p := "/" + imapdPath; fileExists(p) {
		return p, nil // cyrus-imapd installed for real
	}
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "cyrus-common").Output()
	version := strings.TrimSpace(string(out))
	if err != nil || version == "" {
		return "", fmt.Errorf("%w (cyrus-common's version unknown: %v)", ErrNotInstalled, err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "pop3gw-testkit", "cyrus-imapd-"+strings.NewReplacer(":", "_", "/", "_").Replace(version))
	p := filepath.Join(dir, imapdPath)
	if fileExists(p) {
		return p, nil
	}
	if err := unpack(dir, version); err != nil {
		return "", fmt.Errorf("%w: unpacking cyrus-imapd %s: %v", ErrNotInstalled, version, err)
	}
	return p, nil
}

// unpack downloads the cyrus-imapd package of the given version and
// unpacks it as dir, atomically: test binaries running at once may race.
func unpack(dir, version string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp(filepath.Dir(dir), "unpack")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// apt runs the download as _apt, which must be able to write here.
	os.Chmod(work, 0o777)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "apt-get", "download", "cyrus-imapd="+version)
	cmd.Dir = work
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download: %v: %s", err, bytes.TrimSpace(out))
	}
	debs, _ := filepath.Glob(filepath.Join(work, "cyrus-imapd_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download left %d packages", len(debs))
	}
	tree := filepath.Join(work, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], tree).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x: %v: %s", err, bytes.TrimSpace(out))
	}
	os.Chmod(tree, 0o755)
	if err := os.Rename(tree, dir); err != nil && !fileExists(filepath.Join(dir, imapdPath)) {
		return err
	}
	return nil
}

// copyFile copies the executable from to to and returns to.
func copyFile(from, to string) (string, error) {
	data, err := os.ReadFile(from)
	if err != nil {
		return "", fmt.Errorf("cyrus: %w", err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		return "", fmt.Errorf("cyrus: %w", err)
	}
	return to, nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

func (s *Instance) writeConfig(imapd string) error {
	conf := filepath.Join(s.root, "conf")
	imapdConf := fmt.Sprintf(`# generated by package cyrus
configdirectory: %[1]s
partition-default: %[2]s
defaultpartition: default
servername: %[3]s
admins: %[4]s
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: %[5]s
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
httpmodules: jmap
conversations: yes
munge8bit: no
smtp_backend: host
smtp_host: %[6]s
unixhierarchysep: yes
virtdomains: off
syslog_prefix: cyrustest
`, conf, filepath.Join(s.root, "spool"), serverName, adminUser, filepath.Join(s.root, "sasldb2"), deadAddr())
	confPath := filepath.Join(s.root, "imapd.conf")
	if err := os.WriteFile(confPath, []byte(imapdConf), 0o644); err != nil {
		return err
	}
	cyrusConf := fmt.Sprintf(`# generated by package cyrus
START {
}
SERVICES {
  imap cmd="%[1]s -C %[2]s" listen="%[3]s" prefork=0
  http cmd="%[4]s -C %[2]s" listen="%[5]s" prefork=0
}
EVENTS {
}
`, imapd, confPath, s.imapAddr, httpd, s.httpAddr)
	if err := os.WriteFile(filepath.Join(s.root, "cyrus.conf"), []byte(cyrusConf), 0o644); err != nil {
		return err
	}
	return s.chownTree()
}

// deadAddr is a loopback address where nothing listens.
func deadAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:9"
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// chownTree gives the instance's files to the cyrus user when running as
// root: the master then runs its services as that user.
func (s *Instance) chownTree() error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("cyrus")
	if err != nil {
		return fmt.Errorf("cyrus: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chmod(s.root, 0o755); err != nil {
		return err
	}
	return filepath.Walk(s.root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// launch starts the master in daemon mode and waits until both services
// answer.
func (s *Instance) launch() error {
	os.Remove(s.pidFile)
	cmd := exec.Command(master, "-d", "-C", filepath.Join(s.root, "imapd.conf"), "-M", filepath.Join(s.root, "cyrus.conf"), "-p", s.pidFile)
	cmd.Dir = s.root
	setProcessGroup(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s -d: %v: %s", master, err, bytes.TrimSpace(out))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s.pid == 0 {
			if b, err := os.ReadFile(s.pidFile); err == nil {
				s.pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
		}
		if s.pid != 0 && !running(s.pid) {
			return errors.New("the master exited (Cyrus logs only to syslog)")
		}
		if s.pid != 0 && greeting(s.imapAddr) && answers(s.httpAddr) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no IMAP greeting on %s and HTTP on %s within 10s", s.imapAddr, s.httpAddr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func greeting(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "* OK")
}

func answers(addr string) bool {
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get("http://" + addr + "/.well-known/jmap")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// Stop stops the master (which stops its services), waits for it to go
// and removes the temporary directory unless Options.Keep is set.
// Calling it again returns the first result.
func (s *Instance) Stop() error {
	s.stopOnce.Do(func() {
		s.stopErr = s.stop()
		if !s.opts.Keep {
			os.RemoveAll(s.root)
		}
	})
	return s.stopErr
}

func (s *Instance) stop() error {
	if s.pid == 0 {
		if b, err := os.ReadFile(s.pidFile); err == nil {
			s.pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	if s.pid == 0 {
		return nil
	}
	pid := s.pid
	s.pid = 0
	terminate(pid)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if !running(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	kill(pid)
	return errors.New("cyrus master did not exit within 10s after SIGTERM; killed")
}

// Dir is the instance's directory (imapd.conf, cyrus.conf, mail).
func (s *Instance) Dir() string { return s.root }

// IMAPAddr is the IMAP listener (127.0.0.1:port), plaintext.
func (s *Instance) IMAPAddr() string { return s.imapAddr }

// HTTPAddr is the HTTP listener (127.0.0.1:port) that serves JMAP.
func (s *Instance) HTTPAddr() string { return s.httpAddr }

// JMAPURL is the JMAP session URL (RFC 8620 §2.2), which answers with a
// redirect to the session resource; the client authenticates with HTTP
// Basic as a user.
func (s *Instance) JMAPURL() string { return "http://" + s.httpAddr + "/.well-known/jmap" }

// Admin returns the administrator's name and password.
func (s *Instance) Admin() (name, password string) { return adminUser, s.adminPassword }

func (s *Instance) dial(name, password string) (*imapclient.Client, error) {
	c, err := imapclient.DialInsecure(s.imapAddr, nil)
	if err != nil {
		return nil, fmt.Errorf("cyrus: %w", err)
	}
	if err := c.Login(name, password).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("cyrus: login as %s: %w", name, err)
	}
	return c, nil
}

func (s *Instance) createMailbox(name string) error {
	c, err := s.dial(adminUser, s.adminPassword)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Create("user/"+name, nil).Wait(); err != nil {
		return fmt.Errorf("cyrus: CREATE user/%s: %w", name, err)
	}
	return c.Logout().Wait()
}

// Recreate deletes the user's INBOX and everything in it and creates it
// again, empty, under a new UIDVALIDITY: a mailbox restored or migrated.
func (s *Instance) Recreate(name string) error {
	c, err := s.dial(adminUser, s.adminPassword)
	if err != nil {
		return err
	}
	defer c.Close()
	mbox := "user/" + name
	// An admin may administer every mailbox, but must give itself the
	// right to delete one (RFC 4314 "x").
	if err := c.SetACL(mbox, adminUser, imap.RightModificationReplace, imap.RightSet("lrswipkxtecda")).Wait(); err != nil {
		return fmt.Errorf("cyrus: SETACL %s: %w", mbox, err)
	}
	if err := c.Delete(mbox).Wait(); err != nil {
		return fmt.Errorf("cyrus: DELETE %s: %w", mbox, err)
	}
	if err := c.Create(mbox, nil).Wait(); err != nil {
		return fmt.Errorf("cyrus: CREATE %s: %w", mbox, err)
	}
	return c.Logout().Wait()
}

// Append stores each message in the user's INBOX with APPEND, in order,
// so UIDs follow the order given. Cyrus stores neither bare LF nor NUL:
// give CRLF-only messages.
func (s *Instance) Append(name string, msgs ...[]byte) error {
	return s.AppendDated(name, time.Time{}, msgs...)
}

// AppendDated is Append with date as every message's INTERNALDATE; the
// zero time leaves it to the server (now).
func (s *Instance) AppendDated(name string, date time.Time, msgs ...[]byte) error {
	password, ok := s.opts.Users[name]
	if !ok {
		return fmt.Errorf("cyrus: unknown user %q", name)
	}
	c, err := s.dial(name, password)
	if err != nil {
		return err
	}
	defer c.Close()
	for i, m := range msgs {
		cmd := c.Append("INBOX", int64(len(m)), &imap.AppendOptions{Time: date})
		_, werr := io.Copy(cmd, bytes.NewReader(m))
		cerr := cmd.Close()
		if _, err := cmd.Wait(); err != nil || werr != nil || cerr != nil {
			return fmt.Errorf("cyrus: APPEND message %d: %v", i+1, errors.Join(err, werr, cerr))
		}
	}
	return c.Logout().Wait()
}
