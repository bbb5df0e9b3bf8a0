package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/proxy"
)

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
	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(stdout, "warning:", w)
	}
	pc, err := newSetup(*configPath, slog.New(slog.DiscardHandler)).gatewayConfig(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "config:", err)
		return 1
	}
	fmt.Fprintf(stdout, "config %s: ok (%d upstreams, %d users)\n", *configPath, len(pc.Upstreams), len(pc.Users))
	gw := proxy.New(pc, cache.New(0, 0), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	failed := 0
	if cfg.Redis != nil {
		if shared, err := sharedState(ctx, cfg, slog.New(slog.DiscardHandler)); err != nil {
			failed++
			fmt.Fprintf(stdout, "redis %s: FAILED: %v\n", cfg.Redis.Address, err)
		} else {
			shared.Close()
			fmt.Fprintf(stdout, "redis %s: ok\n", cfg.Redis.Address)
		}
	}
	for _, r := range gw.Check(ctx) {
		if r.Err != nil {
			failed++
			fmt.Fprintf(stdout, "user %s (upstream %s): FAILED: %v\n", r.User, r.Upstream, r.Err)
			continue
		}
		fmt.Fprintf(stdout, "user %s (upstream %s): ok, %d messages; deleted messages are %s\n", r.User, r.Upstream, r.Messages, r.Deletes)
	}
	if failed > 0 {
		return 1
	}
	return 0
}
