package upstream_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzListingResponse answers the listing FETCH (UID, RFC822.SIZE,
// FLAGS, INTERNALDATE and the Message-ID field) with arbitrary octets.
// The listing must end within the timeout and never panic; a listing
// that succeeds holds each message once, in UID order, with a UID and a
// size the server gave, and a UIDL that POP3
// can send (RFC 1939 §7: 1-70 characters in 0x21-0x7E).
func FuzzListingResponse(f *testing.F) {
	const item = `BODY[HEADER.FIELDS (MESSAGE-ID)] {22}` + "\r\nMessage-ID: <a@b>\r\n\r\n"
	f.Add([]byte("* 1 FETCH (UID 7 RFC822.SIZE 120 FLAGS (\\Seen) INTERNALDATE \"01-Jan-2024 10:00:00 +0000\" " + item + ")\r\n{tag} OK done\r\n"))
	f.Add([]byte("* 1 FETCH (UID 7 RFC822.SIZE 120)\r\n* 2 FETCH (UID 7 RFC822.SIZE 99)\r\n* 3 FETCH (UID 3 RFC822.SIZE 0 FLAGS (\\Deleted))\r\n{tag} OK done\r\n"))
	f.Add([]byte("* 1 FETCH (FLAGS (\\Seen))\r\n* 1 FETCH (UID 0 RFC822.SIZE 5)\r\n{tag} OK done\r\n"))
	f.Add([]byte("* 1 FETCH (UID 4294967295 RFC822.SIZE 9223372036854775807)\r\n{tag} OK done\r\n"))
	f.Add([]byte("* 1 FETCH (UID 7 RFC822.SIZE -1)\r\n{tag} OK done\r\n"))
	f.Add([]byte("* 1 FETCH (UID 7 RFC822.SIZE 10 BODY[HEADER.FIELDS (MESSAGE-ID)] {999}\r\nshort)\r\n{tag} OK done\r\n"))
	f.Add([]byte("* 1 FETCH (UID 7 RFC822.SIZE 10)\r\n{tag} NO [SERVERBUG] oops\r\n"))
	f.Add([]byte("* BYE shutting down\r\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, response []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		s, srv := answeringSession(t, ctx, "FETCH", response)
		defer s.Close()
		entries, err := s.Snapshot(ctx)
		s.Close()
		if d := time.Since(start); d > 5*fuzzTimeout {
			t.Fatalf("the listing took %v with a timeout of %v", d, fuzzTimeout)
		}
		if err != nil {
			return
		}
		sent := string(srv.Sent())
		last := ""
		for _, e := range entries {
			if len(e.UIDL) < 1 || len(e.UIDL) > 70 || strings.IndexFunc(e.UIDL, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
				t.Fatalf("UIDL %q cannot be sent", e.UIDL)
			}
			if e.UIDL <= last {
				t.Fatalf("listing not in UID order, or a message twice: %q after %q", e.UIDL, last)
			}
			last = e.UIDL
			uid, err := strconv.ParseUint(e.UIDL[:8], 16, 32)
			if err != nil || uid == 0 {
				t.Fatalf("UIDL %q: no UID (%v)", e.UIDL, err)
			}
			if e.Size < 0 {
				t.Fatalf("UID %d listed with size %d", uid, e.Size)
			}
			// Both numbers come from the server (the items of one
			// response may be in any order, and a literal may part
			// them, so they are looked for apart).
			for _, said := range []string{fmt.Sprintf(`UID 0*%d[ )]`, uid), fmt.Sprintf(`RFC822\.SIZE 0*%d[ )]`, e.Size)} {
				if !regexp.MustCompile("(?i)" + said).MatchString(sent) {
					t.Fatalf("listed UID %d with size %d; the server never said %s: %q", uid, e.Size, said, sent)
				}
			}
		}
	})
}

// TestListingLiteralCutShort: a Message-ID literal that ends before its
// announced size (the server stalls, then the timeout cuts it) fails the
// listing. Found by FuzzListingResponse under the race detector: the
// listing read the literal again after the failed read, as the IMAP
// client's reader went on with the same stream.
func TestListingLiteralCutShort(t *testing.T) {
	for _, response := range []string{
		"* 1 FETCH (UID 7 RFC822.SIZE 10 BODY[HEADER.FIELDS (MESSAGE-ID)] {999}\r\nshort",
		"* 1 FETCH (UID 7 RFC822.SIZE 10 BODY[HEADER.FIELDS (MESSAGE-ID)] {999}\r\nshort)\r\n* 2 FETCH (UID 8 RFC822.SIZE 10)\r\n",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, _ := answeringSession(t, ctx, "FETCH", []byte(response))
		entries, err := s.Snapshot(ctx)
		s.Close()
		if err == nil {
			t.Errorf("%q: listed %+v from a cut response", response, entries)
		}
	}
}
