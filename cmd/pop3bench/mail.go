//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// message returns a MIME message of about size octets with LF line
// endings, as Dovecot stores them: a short text part, including a line
// that needs dot-stuffing, and a base64 attachment of random data.
func message(rng *rand.Rand, n, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Return-Path: <sender@example.com>\n"+
		"From: Sender <sender@example.com>\n"+
		"To: Bench <bench@example.org>\n"+
		"Subject: pop3bench message %d\n"+
		"Date: Mon, 1 Jan 2024 00:00:00 +0000\n"+
		"Message-ID: <%d.%d@pop3bench.example>\n"+
		"MIME-Version: 1.0\n"+
		"Content-Type: multipart/mixed; boundary=\"b\"\n\n"+
		"--b\nContent-Type: text/plain; charset=utf-8\n\n"+
		"Message %d.\n.a line that starts with a dot\n\n"+
		"--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n", n, n, rng.Uint64(), n)
	raw := make([]byte, 57)
	line := make([]byte, 76)
	for b.Len()+len(line)+1+len("--b--\n") <= size {
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		base64.StdEncoding.Encode(line, raw)
		b.Write(line)
		b.WriteByte('\n')
	}
	b.WriteString("--b--\n")
	return b.Bytes()
}

// messages returns count messages of about size octets.
func messages(seed uint64, count, size int) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([][]byte, count)
	for i := range out {
		out[i] = message(rng, i+1, size)
	}
	return out
}

// wireSize is what RETR sends for msgs: LF becomes CRLF (before
// dot-stuffing, as POP3 counts).
func wireSize(msgs [][]byte) int64 {
	var n int64
	for _, m := range msgs {
		n += int64(len(m) + bytes.Count(m, []byte("\n")))
	}
	return n
}

// imapIndex logs in to Dovecot's IMAP and fetches RFC822.SIZE of every
// message, so that Dovecot's index and size cache exist before a timed
// session, whichever target it goes through.
func imapIndex(ctx context.Context, addr, user string) error {
	return imapRun(ctx, addr, user, "FETCH 1:* (RFC822.SIZE)")
}

// imapRun logs in to Dovecot's IMAP as user, selects the inbox, runs the
// commands, each of which must succeed, and logs out.
func imapRun(ctx context.Context, addr, user string, cmds ...string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("IMAP greeting %q: %v", line, err)
	}
	cmds = append(append([]string{"LOGIN " + user + " " + password, "SELECT INBOX"}, cmds...), "LOGOUT")
	for i, cmd := range cmds {
		tag := fmt.Sprintf("t%d", i)
		if _, err := fmt.Fprintf(c, "%s %s\r\n", tag, cmd); err != nil {
			return err
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("IMAP %s: %v", cmd, err)
			}
			if strings.HasPrefix(line, tag+" ") {
				if !strings.HasPrefix(line, tag+" OK") {
					return fmt.Errorf("IMAP %s: %q", cmd, line)
				}
				break
			}
		}
	}
	return nil
}
