// Package redistest starts a private redis-server on 127.0.0.1 for tests:
// no persistence, its working directory in t.TempDir(), a free port, and
// stopped by t.Cleanup.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pop3gw/gateway/internal/testkit/freeport"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// missingMsg is the skip (or, in CI, failure) message when redis-server
// is not installed.
const missingMsg = "redis-server not found: install the Debian package redis-server"

// Binary returns the path of redis-server, or "" when it is missing.
func Binary() string {
	if fi, err := os.Stat("/usr/bin/redis-server"); err == nil && !fi.IsDir() {
		return "/usr/bin/redis-server"
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p
	}
	return ""
}

// Start starts redis-server and returns its address (127.0.0.1:port). It
// skips the test when redis-server is not installed (fails it when CI is
// set). The server is stopped by t.Cleanup.
func Start(t testing.TB) (addr string) {
	t.Helper()
	addr, _ = StartStoppable(t)
	return addr
}

// StartStoppable is Start that also returns stop, which kills the server
// and waits for it to exit, so that a test can see Redis go away. stop may
// be called more than once; t.Cleanup calls it too.
func StartStoppable(t testing.TB) (addr string, stop func()) {
	t.Helper()
	bin := Binary()
	if bin == "" {
		testenv.Missing(t, missingMsg)
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		srv, err := launch(bin, dir)
		if err == nil {
			t.Cleanup(srv.stop)
			return srv.addr, srv.stop
		}
		lastErr = err
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	t.Fatalf("redistest: %v", lastErr)
	return "", nil
}

var errAddrInUse = errors.New("address already in use")

type server struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

// launch starts redis-server on a port that was just free and waits until
// it answers PING. On failure the process has exited.
func launch(bin, dir string) (*server, error) {
	ports, err := freeport.Ports(1)
	if err != nil {
		return nil, err
	}
	port := ports[0]
	logPath := filepath.Join(dir, "redis.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()

	cmd := exec.Command(bin,
		"--save", "",
		"--appendonly", "no",
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(port),
		"--dir", dir,
	)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{
		addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		cmd:  cmd,
		done: make(chan struct{}),
	}
	go func() {
		cmd.Wait()
		close(s.done)
	}()

	exited := func() error {
		out, _ := os.ReadFile(logPath)
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "Address already in use") {
			return fmt.Errorf("%w: %s", errAddrInUse, msg)
		}
		return fmt.Errorf("redis-server exited: %v\n%s", cmd.ProcessState, msg)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !ping(s.addr) {
		if time.Now().After(deadline) {
			s.stop()
			out, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("redis-server did not answer PING within 10s\n%s", out)
		}
		select {
		case <-s.done:
			return nil, exited()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return s, nil
}

// stop kills the server and waits for it to exit.
func (s *server) stop() {
	s.once.Do(func() {
		s.cmd.Process.Kill()
		<-s.done
	})
}

// ping reports whether a Redis server at addr answers PING.
func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}
