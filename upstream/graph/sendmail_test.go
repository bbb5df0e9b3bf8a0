package graph_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pop3gw/gateway/upstream/graph"
)

// TestSendMail: the MIME reaches sendMail as posted (base64, text/plain,
// 202); a throttled answer comes back at once with its Retry-After and
// nothing sent; a refusal keeps Graph's code; a message over the limit is
// not posted.
func TestSendMail(t *testing.T) {
	srv, _, c := setup(t, graph.Options{})
	ctx := context.Background()
	mime := []byte("To: b@contoso.example\r\nSubject: x\r\n\r\n\x00 any octets \xff\r\n")
	if err := c.SendMail(ctx, mime); err != nil {
		t.Fatal(err)
	}
	if sent := srv.Sent(); len(sent) != 1 || !bytes.Equal(sent[0].MIME, mime) || sent[0].User != user {
		t.Fatalf("sent %+v", sent)
	}

	srv.Throttle(1, 429, "7")
	before := len(srv.Requests())
	var ge *graph.Error
	err := c.SendMail(ctx, mime)
	if !errors.As(err, &ge) || !errors.Is(err, graph.ErrTemporary) || ge.RetryAfter != 7*time.Second || ge.Status != 429 {
		t.Fatalf("throttled: %v", err)
	}
	if n := len(srv.Requests()) - before; n != 1 || len(srv.Sent()) != 1 {
		t.Fatalf("throttled: %d requests, %d sent; want 1 request, nothing more sent", n, len(srv.Sent()))
	}

	srv.RefuseSend(403, "ErrorSendAsDenied")
	if err := c.SendMail(ctx, mime); !errors.As(err, &ge) || ge.Status != 403 || ge.Code != "ErrorSendAsDenied" || errors.Is(err, graph.ErrTemporary) {
		t.Fatalf("refused: %v", err)
	}

	before = len(srv.Requests())
	if err := c.SendMail(ctx, make([]byte, graph.MaxSendMIME+1)); !errors.As(err, &ge) || ge.Status != 413 {
		t.Fatalf("too big: %v", err)
	}
	if len(srv.Requests()) != before {
		t.Fatal("a message over the limit was posted")
	}
	// The largest message fits Graph's 4 MB request.
	big := bytes.Repeat([]byte("x"), graph.MaxSendMIME)
	if err := c.SendMail(ctx, big); err != nil {
		t.Fatalf("largest message: %v", err)
	}
}
