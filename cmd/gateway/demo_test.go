package main

import (
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

func TestClientAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:1110":   "127.0.0.1:1110",
		"[::]:1110":      "127.0.0.1:1110",
		":1110":          "127.0.0.1:1110",
		"127.0.0.1:1110": "127.0.0.1:1110",
		"10.1.2.3:1110":  "10.1.2.3:1110",
	} {
		if got := clientAddr(in); got != want {
			t.Errorf("clientAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// The demo's settings come from GATEWAY_DEMO_ variables when no flag is
// given, as the container image sets them; SIGTERM ends it with status 0.
func TestDemoFromEnvironment(t *testing.T) {
	t.Setenv("GATEWAY_DEMO_LISTEN", "127.0.0.1:0")
	t.Setenv("GATEWAY_DEMO_ALLOW_INSECURE", "true")
	stdout, stderr := &testenv.Buffer{}, &testenv.Buffer{}
	done := make(chan int, 1)
	go func() { done <- run([]string{"demo"}, nil, stdout, stderr) }()
	addrRE := regexp.MustCompile(`demo on (127\.0\.0\.1:\d+) `)
	testenv.WaitFor(t, func() bool { return addrRE.MatchString(stdout.String()) })
	addr := addrRE.FindStringSubmatch(stdout.String())[1]
	if !strings.Contains(stdout.String(), "curl -s pop3://demo:demo@"+addr+"/1") {
		t.Errorf("no ready-to-paste line:\n%s", stdout)
	}
	if !strings.Contains(stderr.String(), "accepts its public password in cleartext from any address") {
		t.Errorf("GATEWAY_DEMO_ALLOW_INSECURE was not warned about:\n%s", stderr)
	}
	c, err := pop3client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("demo", "demo"); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
	if code := <-done; code != 0 {
		t.Fatalf("demo exited %d after SIGTERM:\n%s", code, stderr)
	}
}
