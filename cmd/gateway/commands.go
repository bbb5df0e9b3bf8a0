package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/pop3gw/gateway/internal/demo"
	"github.com/pop3gw/gateway/internal/logging"
	"github.com/pop3gw/gateway/internal/server"
)

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	lvl, err := logging.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: logging.ReplaceAttr}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format: %q is not json or text", format)
}

func serveCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (YAML)")
	logFormat := fs.String("log-format", "text", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: trace (every command and status line, passwords redacted), debug, info, warn or error")
	drain := fs.Duration("drain", server.DefaultDrain, "on SIGTERM, how long sessions may go on before they are closed (deleting nothing)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "gateway serve: -config FILE is required")
		return 2
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "gateway serve:", err)
		return 2
	}
	slog.SetDefault(log)
	opts := server.Options{
		Config:            *configPath,
		Logger:            log,
		Drain:             *drain,
		Version:           version,
		MemoryLimitSource: server.LimitMemory(),
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := server.Run(ctx, opts, hup); err != nil {
		log.Error("gateway stopped", "err", err)
		return 1
	}
	return 0
}

func demoCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// The flags default to environment variables, so a container image can
	// set them for `docker run IMAGE demo` (docker/Dockerfile does).
	listen := fs.String("listen", envOr("GATEWAY_DEMO_LISTEN", server.DefaultDemoListen), "POP3 address to listen on (env GATEWAY_DEMO_LISTEN)")
	httpAddr := fs.String("http", os.Getenv("GATEWAY_DEMO_HTTP"), "also serve GET /healthz and /readyz on this address, for a container's health check (env GATEWAY_DEMO_HTTP)")
	insecure, _ := strconv.ParseBool(os.Getenv("GATEWAY_DEMO_ALLOW_INSECURE"))
	allowInsecure := fs.Bool("allow-insecure", insecure, "accept the demo's public password in cleartext from any address, not only loopback: for a published container port (env GATEWAY_DEMO_ALLOW_INSECURE)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	err := server.Demo(ctx, server.DemoOptions{
		Listen:        *listen,
		HTTP:          *httpAddr,
		AllowInsecure: *allowInsecure,
		Version:       version,
		Logger:        log,
		Ready: func(addr, _ string) {
			fmt.Fprintf(stdout, "POP3 gateway demo on %s (user demo, password demo), in front of an in-memory IMAP server with %d sample messages.\n", addr, len(demo.Messages()))
			fmt.Fprintf(stdout, "Try:\n  curl -s pop3://demo:demo@%s/1\n", clientAddr(addr))
			fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
		},
	})
	if err != nil {
		fmt.Fprintln(stderr, "gateway demo:", err)
		return 1
	}
	return 0
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// clientAddr is the address a client on this machine dials for a
// listening address: loopback for an unspecified host (0.0.0.0, ::).
func clientAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

func checkCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (YAML)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "gateway check: -config FILE is required")
		return 2
	}
	if err := server.Check(context.Background(), *configPath, stdout); err != nil {
		if !errors.Is(err, server.ErrCheckFailed) {
			fmt.Fprintln(stderr, err)
		}
		return 1
	}
	return 0
}

const oauth2Usage = `usage: gateway oauth2 login -config FILE -user NAME [-flow auto|device|code] [-no-check]

Authorises the gateway to read the mailbox of a mapped user on an upstream
with auth xoauth2 or oauthbearer, and stores the refresh token, sealed, in
the user's oauth2_token_file.
`

// oauth2Cmd runs the first authorisation of a mapped user's upstream
// account.
func oauth2Cmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "login" {
		fmt.Fprint(stderr, oauth2Usage)
		return 2
	}
	var opts server.OAuth2Login
	fs := flag.NewFlagSet("oauth2 login", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&opts.Config, "config", "", "config file (YAML)")
	fs.StringVar(&opts.User, "user", "", "the mapped user (a key of users in the config)")
	fs.StringVar(&opts.Flow, "flow", "auto", "auto: the device grant where the provider offers one, else the code grant; device; code")
	fs.BoolVar(&opts.NoCheck, "no-check", false, "do not log in upstream with the new token")
	fs.DurationVar(&opts.Timeout, "timeout", 15*time.Minute, "give up waiting for the approval after this long")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if opts.Config == "" || opts.User == "" {
		fmt.Fprint(stderr, oauth2Usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := server.AuthorizeOAuth2(ctx, opts, stdin, stdout); err != nil {
		fmt.Fprintln(stderr, "gateway oauth2 login:", err)
		return 1
	}
	return 0
}

const secretsUsage = `usage:
  gateway secrets new-key [-out FILE]
      create a key for the secrets section (prints it, or writes FILE with mode 0600)
  gateway secrets set-password -config FILE -user NAME < password
      seal a mapped user's upstream password into its upstream_password_file
`

func secretsCmd(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, secretsUsage)
		return 2
	}
	switch args[0] {
	case "new-key":
		fs := flag.NewFlagSet("secrets new-key", flag.ContinueOnError)
		fs.SetOutput(stderr)
		out := fs.String("out", "", "write the key to this file (mode 0600; an existing file is not replaced)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if err := server.NewKey(*out, stdout); err != nil {
			fmt.Fprintln(stderr, "gateway secrets new-key:", err)
			return 1
		}
		return 0
	case "set-password":
		fs := flag.NewFlagSet("secrets set-password", flag.ContinueOnError)
		fs.SetOutput(stderr)
		configPath := fs.String("config", "", "config file (YAML)")
		userName := fs.String("user", "", "the mapped user (a key of users in the config)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if *configPath == "" || *userName == "" {
			fmt.Fprint(stderr, secretsUsage)
			return 2
		}
		if err := server.SetPassword(*configPath, *userName, stdin, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "gateway secrets set-password:", err)
			return 1
		}
		return 0
	}
	fmt.Fprint(stderr, secretsUsage)
	return 2
}

// healthcheckCmd asks a running gateway's HTTP listener whether it is up,
// for container health checks in images that have no shell or curl.
func healthcheckCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:9110/healthz", "the address to ask")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := server.Healthcheck(*url, *timeout, stdout); err != nil {
		fmt.Fprintln(stderr, "gateway healthcheck:", err)
		return 1
	}
	return 0
}
