package jmap

import (
	"errors"
	"strings"
	"testing"
)

// FuzzDecodeResponse feeds API responses to the decoding the store does:
// bounded JSON, then each call's answer into its typed value. Nothing may
// panic, and what decodes must be within the bounds.
func FuzzDecodeResponse(f *testing.F) {
	f.Add([]byte(`{"methodResponses":[["Email/query",{"queryState":"3:0","canCalculateChanges":true,"position":0,"ids":["M1"],"total":1},"q"],["Email/get",{"state":"3","list":[{"id":"M1","blobId":"G1","size":41,"receivedAt":"2026-12-06T11:28:36Z","messageId":["1@x"],"mailboxIds":{"I":true}}],"notFound":[]},"g"]],"sessionState":"0"}`))
	f.Add([]byte(`{"methodResponses":[["error",{"type":"cannotCalculateChanges"},"q"]],"sessionState":"0"}`))
	f.Add([]byte(`{"methodResponses":[["Email/query",{"ids":[1]},"q"]]}`))
	f.Add([]byte(`{"methodResponses":[["Email/query"]]}`))
	f.Add([]byte(`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var v any
		if jsonIn.DecodeBytes(data, maxJSON, &v) == nil && jsonIn.Depth(data) > maxDepth {
			t.Fatalf("JSON nested %d deep was decoded", jsonIn.Depth(data))
		}
		var r response
		if err := jsonIn.DecodeBytes(data, maxJSON, &r); err != nil {
			if !errors.Is(err, ErrBadResponse) {
				t.Fatalf("error %v does not wrap ErrBadResponse", err)
			}
			return
		}
		if jsonIn.Depth(data) > maxDepth {
			t.Fatalf("decoded JSON nested %d deep", jsonIn.Depth(data))
		}
		calls := []invocation{{"Email/query", nil, "q"}, {"Email/get", nil, "g"}}
		var q queryJSON
		var g getEmails
		r.into("fuzz", calls, []any{&q, &g})
		var qc queryChangesJSON
		r.into("fuzz", []invocation{{"Email/queryChanges", nil, "q"}}, []any{&qc})
		var s sessionJSON
		jsonIn.DecodeBytes(data, maxJSON, &s)

	})
}

func TestDepth(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int
	}{
		{`{}`, 1},
		{`{"a":[{"b":"[[[["}]}`, 3},
		{`"\"[["`, 0},
		{strings.Repeat("[", 40) + strings.Repeat("]", 40), maxDepth + 1},
	} {
		if got := jsonIn.Depth([]byte(tt.in)); got != tt.want {
			t.Errorf("jsonIn.Depth(%s) = %d, want %d", tt.in, got, tt.want)
		}
	}
	var v any
	if err := jsonIn.DecodeBytes([]byte(strings.Repeat("[", 40)+strings.Repeat("]", 40)), maxJSON, &v); !errors.Is(err, ErrBadResponse) {
		t.Errorf("too deep: %v", err)
	}
	if err := jsonIn.DecodeBytes([]byte(`"`+strings.Repeat("x", 100)+`"`), 50, &v); !errors.Is(err, ErrBadResponse) {
		t.Errorf("too large: %v", err)
	}
}
