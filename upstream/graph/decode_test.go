package graph

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDepth(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{`1`, 0},
		{`{}`, 1},
		{`{"value":[{"id":"x"}]}`, 3},
		{`{"s":"[[[[{{{{"}`, 1},
		{`{"s":"\"[[["}`, 1},
		{`[[],[[]]]`, 3},
	} {
		if got := jsonIn.Depth([]byte(tc.in)); got != tc.want {
			t.Errorf("jsonIn.Depth(%s) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestDecodeRefusesDeepAndLarge(t *testing.T) {
	var p page
	deep := strings.Repeat("[", 100) + strings.Repeat("]", 100)
	if err := jsonIn.DecodeBytes([]byte(`{"value":[{"id":"a","x":`+deep+`}]}`), maxJSON, &p); !errors.Is(err, ErrBadResponse) {
		t.Errorf("100 levels: %v", err)
	}
	if err := jsonIn.DecodeBytes([]byte(`{"value":[]}`+strings.Repeat(" ", 100)), 50, &p); !errors.Is(err, ErrBadResponse) {
		t.Errorf("over the limit: %v", err)
	}
	if err := jsonIn.DecodeBytes([]byte(`{"value":[{"id":"a","@removed":{"reason":"deleted"}}],"@odata.deltaLink":"x"}`), maxJSON, &p); err != nil {
		t.Errorf("a delta page: %v", err)
	}
	if len(p.Value) != 1 || p.Value[0].Removed == nil || p.DeltaLink != "x" {
		t.Errorf("decoded %+v", p)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"30", 30 * time.Second, true},
		{" 0 ", 0, true},
		{"-5", 0, false},
		{"soon", 0, false},
		{"Sun, 06 Dec 2026 10:02:00 GMT", 2 * time.Minute, true},
		{"Sun, 06 Dec 2026 09:00:00 GMT", 0, true},
		{"99999999999999999", 365 * 24 * time.Hour, true},
	} {
		got, ok := retryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzDecodePage: no input panics the decoder, and nothing deeper than
// maxDepth is ever decoded.
func FuzzDecodePage(f *testing.F) {
	f.Add([]byte(`{"value":[{"id":"AAkALgAA=","internetMessageId":"<a@b>","receivedDateTime":"2026-01-01T00:00:00Z","isRead":false}],"@odata.nextLink":"https://graph.microsoft.com/v1.0/me/messages?$skip=10"}`))
	f.Add([]byte(`{"value":[{"id":"x","@removed":{"reason":"deleted"}}],"@odata.deltaLink":"https://graph.microsoft.com/v1.0/me/mailFolders('i')/messages/delta?$deltatoken=t"}`))
	f.Add([]byte(`{"error":{"code":"InvalidAuthenticationToken","message":"m","innerError":{"date":"d"}}}`))
	f.Add([]byte(strings.Repeat("[", 40)))
	f.Fuzz(func(t *testing.T, data []byte) {
		var p page
		if jsonIn.DecodeBytes(data, maxJSON, &p) == nil && jsonIn.Depth(data) > maxDepth {
			t.Fatalf("decoded %d levels", jsonIn.Depth(data))
		}
	})
}
