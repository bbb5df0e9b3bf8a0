package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/export"
	"github.com/pop3gw/gateway/internal/server"
	"github.com/pop3gw/gateway/upstream"
)

const exportUsage = `usage:
  gateway export -config FILE -user NAME -to DIR [flags]
  gateway export -provider NAME -login ADDRESS -to DIR [flags]
  gateway export -address HOST:PORT [-tls implicit|starttls|none] -login ADDRESS -to DIR [flags]

Copies the account's mail into DIR: one .eml file per message (default), a
Maildir or mboxrd files. A state file in DIR records what is exported: the
next run fetches only new mail, and continues a run that was cut short.

flags:
`

// exportCmd runs `gateway export`. Exit status: 0 when every message is
// exported, 1 when any failed or the run could not finish, 2 for a usage
// error.
func exportCmd(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	var acct server.ExportAccount
	var opts export.Options
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, exportUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&acct.Config, "config", "", "config file (YAML): export the mail of a mapped user")
	fs.StringVar(&acct.User, "user", "", "the mapped user (a key of users in the config)")
	fs.StringVar(&acct.Provider, "provider", "", "without -config: the provider ("+strings.Join(config.Providers, ", ")+")")
	fs.StringVar(&acct.Address, "address", "", "without -config: the IMAP server's host:port, for a provider without a preset")
	tlsMode := fs.String("tls", "", "with -address: implicit (default), starttls or none")
	fs.StringVar(&acct.Login, "login", "", "without -config: the account's login name")
	fs.StringVar(&acct.PasswordFile, "password-file", "", "without -config: read the password from this file rather than the terminal")
	fs.StringVar(&acct.OAuth2ClientID, "oauth2-client-id", "", "without -config, for a provider that needs OAuth2: the registered application's client id")
	fs.StringVar(&opts.Dir, "to", "", "the export directory (created if missing)")
	format := fs.String("format", string(export.EML), "eml, maildir or mbox")
	fs.StringVar(&opts.Folder, "mailbox", "", "the mailbox to export (default: the configured one, INBOX)")
	fs.BoolVar(&opts.All, "all", false, "export every mailbox, each in its own folder")
	since := fs.String("since", "", "export only messages that arrived on or after this date (YYYY-MM-DD)")
	limitRate := fs.String("limit-rate", "", "read at most this many bytes a second from the store (e.g. 500KiB)")
	fs.IntVar(&opts.Connections, "connections", 1, "sessions fetching at once (providers cap them; Gmail about 15 an account)")
	fs.BoolVar(&opts.Verify, "verify", false, "read every exported message from the store again and compare it with its file")
	fs.DurationVar(&opts.Interval, "progress-interval", 10*time.Second, "how often to print a progress line when stderr is not a terminal")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gateway export: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	switch {
	case opts.Dir == "":
		fmt.Fprintln(stderr, "gateway export: -to DIR is required")
		return 2
	case acct.Config != "" && acct.User == "":
		fmt.Fprintln(stderr, "gateway export: -user NAME is required with -config")
		return 2
	case acct.Config == "" && acct.Login == "":
		fmt.Fprintln(stderr, "gateway export: give -config FILE -user NAME, or -provider NAME -login ADDRESS")
		return 2
	case opts.All && opts.Folder != "":
		fmt.Fprintln(stderr, "gateway export: -mailbox and -all exclude each other")
		return 2
	case opts.Connections < 1:
		fmt.Fprintln(stderr, "gateway export: -connections must be at least 1")
		return 2
	}
	opts.Format = export.Format(*format)
	if !isFormat(opts.Format) {
		fmt.Fprintf(stderr, "gateway export: -format %q is not eml, maildir or mbox\n", *format)
		return 2
	}
	if *tlsMode != "" {
		acct.TLS = upstream.Security(*tlsMode)
		if !isSecurity(acct.TLS) {
			fmt.Fprintf(stderr, "gateway export: -tls %q is not implicit, starttls or none\n", *tlsMode)
			return 2
		}
	}
	if *since != "" {
		t, err := time.Parse(time.DateOnly, *since)
		if err != nil {
			fmt.Fprintf(stderr, "gateway export: -since %q is not a date like 2024-12-31\n", *since)
			return 2
		}
		opts.Since = t
	}
	if *limitRate != "" {
		n, err := config.ParseByteSize(strings.TrimSuffix(*limitRate, "/s"))
		if err != nil || n <= 0 {
			fmt.Fprintf(stderr, "gateway export: -limit-rate %q is not a number of bytes a second (e.g. 500KiB)\n", *limitRate)
			return 2
		}
		opts.LimitRate = int64(n)
	}
	opts.Progress = stderr
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		opts.Terminal = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := server.Export(ctx, acct, opts, stdin, stderr)
	if sum != nil {
		printSummary(stdout, sum, opts)
	}
	switch {
	case err != nil && ctx.Err() != nil:
		fmt.Fprintln(stderr, "gateway export: interrupted; what is written is whole and recorded: run the same command again to continue")
		return 1
	case export.IsDiskFull(err):
		fmt.Fprintf(stderr, "gateway export: the disk holding %s is full; what is written is whole: free space and run again\n", opts.Dir)
		return 1
	case err != nil:
		fmt.Fprintln(stderr, "gateway export:", oneLine(err))
		return 1
	case len(sum.Failures) > 0:
		fmt.Fprintf(stderr, "gateway export: %d messages failed (the next run tries them again):\n", len(sum.Failures))
		for _, f := range sum.Failures {
			fmt.Fprintln(stderr, "  "+f.String())
		}
		return 1
	}
	return 0
}

func printSummary(w io.Writer, s *export.Summary, opts export.Options) {
	rate := float64(s.Bytes) / (1 << 20) / max(s.Elapsed.Seconds(), 1e-3)
	fmt.Fprintf(w, "exported %d messages (%.1f MiB, %.1f MiB/s) from %d mailboxes to %s in %s; %d exported before, %d before -since, %d gone, %d failed; fetched %d",
		s.Exported, float64(s.Bytes)/(1<<20), rate, s.Folders, opts.Dir, s.Elapsed.Round(time.Millisecond), s.Known, s.Old, s.Gone, len(s.Failures), s.Fetched)
	if opts.Verify {
		fmt.Fprintf(w, "; verified %d", s.Verified)
	}
	fmt.Fprintln(w)
}

func isFormat(f export.Format) bool {
	for _, g := range export.Formats {
		if f == g {
			return true
		}
	}
	return false
}

func isSecurity(s upstream.Security) bool {
	for _, t := range upstream.Securities {
		if s == t {
			return true
		}
	}
	return false
}

// oneLine keeps an error to its first line.
func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
