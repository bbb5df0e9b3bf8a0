package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/redistest"
)

// buildGateway compiles the gateway binary into the test's directory.
func buildGateway(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gateway")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/pop3gw/gateway/cmd/gateway").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// replica is a `gateway serve` process.
type replica struct {
	cmd  *exec.Cmd
	addr string // POP3

	mu  sync.Mutex
	log strings.Builder
}

func (r *replica) logs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}

var listening = regexp.MustCompile(`msg=listening listener=pop3 addr=(\S+)`)

// startReplica runs the gateway with config and waits for its POP3
// listener.
func startReplica(t *testing.T, bin, config string) *replica {
	t.Helper()
	r := &replica{cmd: exec.Command(bin, "serve", "-config", config, "-log-level", "debug")}
	r.cmd.Env = append(os.Environ(), "ALICE_UPSTREAM=upstream-pass")
	stderr, err := r.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		r.cmd.Wait()
	})
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			r.mu.Lock()
			r.log.WriteString(sc.Text() + "\n")
			r.mu.Unlock()
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				addrc <- m[1]
			}
		}
	}()
	select {
	case r.addr = <-addrc:
	case <-time.After(20 * time.Second):
		t.Fatalf("the replica did not start listening:\n%s", r.logs())
	}
	return r
}

// login tries alice's login on a replica; the client is open on success.
func login(addr, password string) (*pop3client.Client, error) {
	c, err := pop3client.Dial(addr)
	if err != nil {
		return nil, err
	}
	if err := c.Login("alice", password); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// startMem runs an in-memory IMAP server with the account user until the
// end of the test.
func startMem(t *testing.T, user, password string) *imapmem.Server {
	t.Helper()
	mem, err := imapmem.Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	if err := mem.AddUser(user, password); err != nil {
		t.Fatal(err)
	}
	return mem
}

// TestReplicasShareStateThroughRedis runs two gateway processes with one
// Redis: the [IN-USE] lock and the login-failure counters hold across
// them, and a killed replica's lock expires.
func TestReplicasShareStateThroughRedis(t *testing.T) {
	redisAddr := redistest.Start(t)
	bin := buildGateway(t)
	mem := startMem(t, "alice@example.com", "upstream-pass")
	mem.Append("alice@example.com", "INBOX", []byte("Subject: shared\r\n\r\nhello\r\n"))

	const lockTTL = 3 * time.Second // the least the config allows
	config := aliceConfig(t, mem.Addr(), fmt.Sprintf(`limits:
  login_delay: 200ms
  login_delay_max: 200ms
redis:
  address: %q
  lock_ttl: %s
`, redisAddr, lockTTL))
	one := startReplica(t, bin, config)
	two := startReplica(t, bin, config)

	// Failed logins on one replica delay the next attempt on the other.
	if _, err := login(one.addr, "wrong"); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	if strings.Contains(two.logs(), "delaying login") {
		t.Fatal("replica two delayed a login before any failure")
	}
	held, err := login(two.addr, "local-pass")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if !strings.Contains(two.logs(), "delaying login") {
		t.Fatalf("replica two did not delay the login after replica one's failure:\n%s", two.logs())
	}

	// The maildrop is held on replica two: replica one says [IN-USE].
	if _, err := login(one.addr, "local-pass"); err == nil || !strings.Contains(err.Error(), "[IN-USE]") {
		t.Fatalf("second session on the other replica: %v, want -ERR [IN-USE]", err)
	}
	// The name in another case is the same user and maildrop.
	if c, err := pop3client.Dial(one.addr); err != nil {
		t.Fatal(err)
	} else if err := c.Login("ALICE", "local-pass"); err == nil || !strings.Contains(err.Error(), "[IN-USE]") {
		t.Fatalf("ALICE on the other replica: %v, want -ERR [IN-USE]", err)
	} else {
		c.Close()
	}

	// Replica two dies with the session open. Its lock outlives it for at
	// most the lock's TTL, then the maildrop is usable again.
	two.cmd.Process.Kill()
	two.cmd.Wait()
	killed := time.Now()
	if _, err := login(one.addr, "local-pass"); err == nil || !strings.Contains(err.Error(), "[IN-USE]") {
		t.Fatalf("login right after the holder died: %v, want -ERR [IN-USE] until the lock expires", err)
	}
	for {
		c, err := login(one.addr, "local-pass")
		if err == nil {
			if n, _, err := c.Stat(); err != nil || n != 1 {
				t.Fatalf("STAT after the lock expired: %d, %v", n, err)
			}
			c.Quit()
			break
		}
		if !strings.Contains(err.Error(), "[IN-USE]") {
			t.Fatalf("login while the dead replica's lock expires: %v", err)
		}
		if time.Since(killed) > lockTTL+5*time.Second {
			t.Fatalf("the dead replica's lock did not expire within %v", time.Since(killed))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if waited := time.Since(killed); waited > lockTTL+2*time.Second {
		t.Errorf("the maildrop was usable %v after the holder died; the lock TTL is %v", waited, lockTTL)
	}
}

// TestCheckReportsRedis: `gateway check` says whether the shared Redis
// answers.
func TestCheckReportsRedis(t *testing.T) {
	redisAddr, stop := redistest.StartStoppable(t)
	bin := buildGateway(t)
	config := filepath.Join(t.TempDir(), "gateway.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
upstreams:
  mem:
    address: "127.0.0.1:1"
    tls: none
passthrough:
  upstream: mem
redis:
  address: %q
`, redisAddr)), 0o600)
	out, err := exec.Command(bin, "check", "-config", config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "redis "+redisAddr+": ok") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	stop()
	out, err = exec.Command(bin, "check", "-config", config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "redis "+redisAddr+": FAILED") {
		t.Fatalf("check with Redis down: %v\n%s", err, out)
	}
}

// aliceConfig writes a gateway config file for the mapped user alice
// (local password local-pass, upstream password from ALICE_UPSTREAM) in
// front of the IMAP server at imapAddr, with extra appended, and returns
// its path.
func aliceConfig(t *testing.T, imapAddr, extra string) string {
	t.Helper()
	hash, err := passwd.Hash("local-pass")
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "gateway.yaml")
	text := fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
upstreams:
  mem:
    address: %q
    tls: none
    keep_connection: 0s
users:
  alice:
    password_hash: %q
    upstream: mem
    upstream_user: alice@example.com
    upstream_password_env: ALICE_UPSTREAM
`, imapAddr, hash) + extra
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return config
}

// TestReplicasShareThePassthroughBudget: the refused passthrough logins
// that reach an upstream are counted for both replicas together, so a
// guesser spreading logins over replicas meets one budget, not one each.
func TestReplicasShareThePassthroughBudget(t *testing.T) {
	redisAddr := redistest.Start(t)
	bin := buildGateway(t)
	mem := startMem(t, "bob@example.com", "bobs-pass")
	config := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`listen:
  pop3: "127.0.0.1:0"
upstreams:
  mem:
    address: %q
    tls: none
    keep_connection: 0s
    passthrough_failures: 2
passthrough:
  upstream: mem
auth:
  min_refusal_time: 10ms
limits:
  login_delay: 10ms
  login_delay_max: 10ms
redis:
  address: %q
`, mem.Addr(), redisAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	one := startReplica(t, bin, config)
	two := startReplica(t, bin, config)
	bob := func(addr, password string) error {
		c, err := pop3client.Dial(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Login("bob@example.com", password); err != nil {
			return err
		}
		return c.Quit()
	}
	// One refusal on each replica: two of two.
	for _, r := range []*replica{one, two} {
		if err := bob(r.addr, "guess"); err == nil || !strings.Contains(err.Error(), "[AUTH]") {
			t.Fatalf("a wrong password: %v, want -ERR [AUTH]", err)
		}
	}
	// Replica one alone has refused one of two, but the budget is spent:
	// even bob's own password is not forwarded.
	if err := bob(one.addr, "bobs-pass"); err == nil || !strings.Contains(err.Error(), "[SYS/TEMP]") {
		t.Fatalf("a login over the shared budget: %v, want -ERR [SYS/TEMP]", err)
	}
	// The replica logs it before it answers; the log is read from its
	// stderr meanwhile.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(one.logs(), "passthrough failure budget spent"); {
		if time.Now().After(deadline) {
			t.Fatalf("replica one did not log the spent budget:\n%s", one.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
