package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/imapmem"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/proxy"
	"github.com/pop3gw/gateway/upstream"
)

func demoCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:1110", "POP3 address to listen on (loopback)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := runDemo(ctx, *listen, log, func(addr string) {
		fmt.Fprintf(stdout, "POP3 gateway demo on %s (user demo, password demo), in front of an in-memory IMAP server with %d sample messages.\n", addr, len(demoMessages()))
		fmt.Fprintf(stdout, "Try:\n  curl -s pop3://demo:demo@%s/1\n", addr)
		fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
	}); err != nil {
		fmt.Fprintln(stderr, "gateway demo:", err)
		return 1
	}
	return 0
}

// runDemo serves the gateway on listen in front of an in-memory upstream
// seeded with sample mail, until ctx is done. The mail lives in memory, so
// every run starts from the same sample messages.
func runDemo(ctx context.Context, listen string, log *slog.Logger, ready func(addr string)) error {
	mem, err := imapmem.Start("127.0.0.1:0", nil)
	if err != nil {
		return err
	}
	defer mem.Close()
	if err := mem.AddUser("demo", "demo"); err != nil {
		return err
	}
	if err := mem.Append("demo", "INBOX", demoMessages()...); err != nil {
		return err
	}
	up := &proxy.Upstream{
		Name:     "demo",
		Server:   upstream.Server{Address: mem.Addr(), Security: upstream.SecurityNone, Timeout: 30 * time.Second},
		Mailbox:  "INBOX",
		OnDelete: upstream.DeleteExpunge,
	}
	gw := proxy.New(&proxy.Config{
		Upstreams:   map[string]*proxy.Upstream{"demo": up},
		Passthrough: &proxy.Passthrough{Upstream: "demo"},
	}, cache.New(64<<20, 8<<20), log)
	// The demo's mail lives in memory; so does what it records of it.
	gw.SetState(proxy.NewMemoryState())
	srv := &pop3.Server{Backend: gw, Logger: log, Implementation: "gateway " + version}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	ready(ln.Addr().String())
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	return nil
}

// demoMessages are the sample mail: plain text, lines starting with dots,
// UTF-8 headers and body, and an attachment.
func demoMessages() [][]byte {
	date := "Date: Mon, 2 Nov 2026 09:00:00 +0000\r\n"
	attachment := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("gateway demo attachment\n", 40)))
	var wrapped strings.Builder
	for len(attachment) > 76 {
		wrapped.WriteString(attachment[:76] + "\r\n")
		attachment = attachment[76:]
	}
	wrapped.WriteString(attachment + "\r\n")
	return [][]byte{
		[]byte("From: Demo Sender <sender@example.com>\r\nTo: demo@example.com\r\nSubject: Welcome to the POP3 gateway\r\n" + date +
			"Message-ID: <demo-1@example.com>\r\n\r\nThis message was read from an IMAP mailbox and served over POP3.\r\n"),
		[]byte("From: sender@example.com\r\nTo: demo@example.com\r\nSubject: Lines that start with dots\r\n" + date +
			"Message-ID: <demo-2@example.com>\r\n\r\nThe next line is a single dot:\r\n.\r\n..and this one starts with two.\r\n.\r\nPOP3 dot-stuffs them on the wire; clients remove the extra dot.\r\n"),
		[]byte("From: =?UTF-8?Q?Ren=C3=A9e_Dupr=C3=A9?= <renee@example.com>\r\nTo: demo@example.com\r\nSubject: =?UTF-8?B?R3LDvMOfZSBhdXMgWsO8cmljaCDwn5iK?=\r\n" + date +
			"Message-ID: <demo-3@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Zürich, 東京 and Kraków. 😊\r\n"),
		[]byte("From: sender@example.com\r\nTo: demo@example.com\r\nSubject: A message with an attachment\r\n" + date +
			"Message-ID: <demo-4@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" +
			"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThe attachment is a small text file.\r\n" +
			"--b1\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
			wrapped.String() + "--b1--\r\n"),
	}
}
