package upstream_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/imapmem"
	"github.com/pop3gw/gateway/upstream"
)

// BenchmarkSnapshot lists a 5,000-message mailbox: one UID FETCH of UID
// and RFC822.SIZE, decoded.
func BenchmarkSnapshot(b *testing.B) {
	mem, err := imapmem.Start("127.0.0.1:0", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer mem.Close()
	mem.AddUser(user, password)
	for i := 0; i < 5000; i++ {
		mem.Append(user, "INBOX", fmt.Appendf(nil, "Subject: %d\r\n\r\nbody\r\n", i))
	}
	ctx := context.Background()
	s, err := upstreamOpen(ctx, mem.Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for b.Loop() {
		entries, err := s.Snapshot(ctx)
		if err != nil || len(entries) != 5000 {
			b.Fatalf("Snapshot: %d entries, %v", len(entries), err)
		}
	}
}

func upstreamOpen(ctx context.Context, addr string) (*upstream.Session, error) {
	s, err := upstream.Dial(ctx, plain(addr))
	if err != nil {
		return nil, err
	}
	if err := s.Login(ctx, user, password); err != nil {
		s.Close()
		return nil, err
	}
	if _, err := s.Select(ctx, "INBOX"); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}
