package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/proxy"
)

// ErrCheckFailed is returned by Check when an account or the shared
// Redis failed; the report says which.
var ErrCheckFailed = errors.New("check failed")

// Check validates the config file at path, then asks the shared Redis if
// one is configured and logs in to each mapped user's upstream account,
// reporting each on stdout. A config that does not load is an error; a
// failed account is reported and gives ErrCheckFailed.
func Check(ctx context.Context, path string, stdout io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(stdout, "warning:", w)
	}
	pc, err := newSetup(path, slog.New(slog.DiscardHandler)).gatewayConfig(cfg)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	fmt.Fprintf(stdout, "config %s: ok (%d upstreams, %d users)\n", path, len(pc.Upstreams), len(pc.Users))
	gw := proxy.New(pc, cache.New(0, 0), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
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
	if cfg.Listen.SubmissionEnabled() {
		failed += checkSubmission(ctx, cfg, gw, stdout)
	}
	if failed > 0 {
		return ErrCheckFailed
	}
	return nil
}
