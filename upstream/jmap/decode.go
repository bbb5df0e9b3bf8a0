package jmap

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Bounds on what the client reads of a JSON response. A page of listing
// (maxPage Emails with the few properties asked for) is well under a MiB,
// and no answer the client reads nests deeper than a few levels; anything
// larger or deeper is refused before it is decoded, so a broken or
// hostile server cannot make the gateway hold gigabytes or recurse
// without end (encoding/json itself allows 10,000 levels).
const (
	maxJSON      = 16 << 20
	maxErrorJSON = 64 << 10
	maxDepth     = 32
)

// ErrBadResponse means the server answered with something the client does
// not read: too large, too deep, or not the JSON the RFCs describe.
var ErrBadResponse = errors.New("jmap: unreadable response")

// decode reads at most limit octets of JSON from r into v.
func decode(r io.Reader, limit int64, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return err
	}
	return decodeBytes(data, limit, v)
}

func decodeBytes(data []byte, limit int64, v any) error {
	if int64(len(data)) > limit {
		return fmt.Errorf("%w: more than %d octets", ErrBadResponse, limit)
	}
	if d := depth(data); d > maxDepth {
		return fmt.Errorf("%w: nested more than %d levels deep", ErrBadResponse, maxDepth)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	return nil
}

// depth is the deepest nesting of objects and arrays in data, counted
// without decoding: brackets inside strings do not count. It stops
// counting once past maxDepth; malformed JSON is left for json.Unmarshal
// to refuse.
func depth(data []byte) int {
	deepest, level := 0, 0
	inString, escaped := false, false
	for _, c := range data {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			level++
			if level > deepest {
				deepest = level
				if deepest > maxDepth {
					return deepest
				}
			}
		case c == '}' || c == ']':
			level--
		}
	}
	return deepest
}
