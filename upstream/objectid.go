package upstream

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/emersion/go-imap/v2"
)

// A message's permanent id, where the server gives one, names it across
// UIDVALIDITY changes better than any digest of its headers: RFC 8474
// OBJECTID's EMAILID (Cyrus, Fastmail, Dovecot with the feature on) and
// Gmail's X-GM-MSGID (X-GM-EXT-1). Entry.Identity carries it with a
// prefix per kind, so ids of different kinds never meet.
const (
	IdentityEmailID = "imap-emailid:" // RFC 8474 §5.1 EMAILID
	IdentityGmail   = "gmail:"        // Gmail's X-GM-MSGID
)

// identityItem is the FETCH item that names a message for good on this
// server and the prefix its values get; "" when the server has none.
// Capabilities can grow at login, so it is asked when listing.
func (s *Session) identityItem() (item, prefix string) {
	caps := s.client.Caps()
	switch {
	case caps.Has(imap.Cap("OBJECTID")):
		return "EMAILID", IdentityEmailID
	case caps.Has(imap.Cap("X-GM-EXT-1")):
		return "X-GM-MSGID", IdentityGmail
	}
	return "", ""
}

// identify sets the Identity of entries (in UID order) with one UID FETCH
// of set for the server's permanent ids, where it has them.
func (s *Session) identify(set string, entries []uidEntry) error {
	item, prefix := s.identityItem()
	if item == "" || len(entries) == 0 {
		return nil
	}
	err := s.split.fetchUIDs(set, item, s.client.Closed(), func(uid uint32, value []byte) error {
		id, err := identityValue(item, value)
		if err != nil || id == "" {
			return err
		}
		if i, ok := slices.BinarySearchFunc(entries, uid, func(e uidEntry, uid uint32) int { return cmp.Compare(e.uid, uid) }); ok {
			entries[i].Identity = prefix + id
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("upstream: listing message ids: %w", err)
	}
	return nil
}

// identityValue checks an item's value and returns the id in it, "" for
// NIL.
func identityValue(item string, value []byte) (string, error) {
	if string(bytes.ToUpper(value)) == "NIL" {
		return "", nil
	}
	switch item {
	case "EMAILID":
		// RFC 8474 §5.1: "(" objectid ")", objectid = 1*255(ALPHA /
		// DIGIT / "_" / "-").
		id, open := bytes.CutPrefix(value, []byte("("))
		id, closed := bytes.CutSuffix(id, []byte(")"))
		if !open || !closed || len(id) == 0 || len(id) > 255 {
			return "", fmt.Errorf("upstream: EMAILID %q", truncate(value))
		}
		for _, b := range id {
			if !(b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_' || b == '-') {
				return "", fmt.Errorf("upstream: EMAILID %q", truncate(value))
			}
		}
		return string(id), nil
	case "X-GM-MSGID":
		n, err := strconv.ParseUint(string(value), 10, 64)
		if err != nil || n == 0 {
			return "", fmt.Errorf("upstream: X-GM-MSGID %q", truncate(value))
		}
		return strconv.FormatUint(n, 10), nil
	}
	return "", fmt.Errorf("upstream: unknown item %s", item)
}

// errNotFetch: a response that is not a FETCH the parser can read.
var errNotFetch = errors.New("not a FETCH response")

// parseFetch reads a whole FETCH response (RFC 9051 §7.5.2,
// "* n FETCH (name value ...)" with its CRLF) and returns its UID (0
// when it has none) and the value of item; ok is false when the response
// does not carry item.
func parseFetch(resp []byte, item string) (uid uint32, value []byte, ok bool, err error) {
	p := &fetchParser{b: resp}
	if !p.literal("* ") || !p.number() || !p.literal(" ") || !p.fold("FETCH") || !p.literal(" (") {
		return 0, nil, false, errNotFetch
	}
	for i := 0; ; i++ {
		if p.literal(")") {
			break
		}
		if i > 0 && !p.literal(" ") {
			return 0, nil, false, errNotFetch
		}
		name := p.name()
		if name == nil || !p.literal(" ") {
			return 0, nil, false, errNotFetch
		}
		v := p.value(0)
		if v == nil {
			return 0, nil, false, errNotFetch
		}
		switch upper := string(bytes.ToUpper(name)); {
		case upper == "UID":
			n, err := strconv.ParseUint(string(v), 10, 32)
			if err != nil {
				return 0, nil, false, errNotFetch
			}
			uid = uint32(n)
		case upper == item:
			value, ok = v, true
		}
	}
	if !p.literal("\r\n") && !p.literal("\n") || p.i != len(p.b) {
		return 0, nil, false, errNotFetch
	}
	return uid, value, ok, nil
}

// fetchParser walks a FETCH response; every method moves on only when
// it matches.
type fetchParser struct {
	b []byte
	i int
}

func (p *fetchParser) literal(s string) bool {
	if bytes.HasPrefix(p.b[p.i:], []byte(s)) {
		p.i += len(s)
		return true
	}
	return false
}

func (p *fetchParser) fold(s string) bool {
	if len(p.b)-p.i >= len(s) && bytes.EqualFold(p.b[p.i:p.i+len(s)], []byte(s)) {
		p.i += len(s)
		return true
	}
	return false
}

func (p *fetchParser) number() bool {
	start := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	return p.i > start
}

// atom moves over the characters of an atom (RFC 9051 §9 ATOM-CHAR, and
// the "\" of a flag).
func (p *fetchParser) atom() []byte {
	start := p.i
	for p.i < len(p.b) {
		switch c := p.b[p.i]; {
		case c <= ' ' || c >= 0x7f, c == '(', c == ')', c == '{', c == '"', c == '[', c == ']', c == '%':
			return p.b[start:p.i]
		}
		p.i++
	}
	return p.b[start:p.i]
}

// name reads an item's name: an atom, with a section "[...]" and a
// partial "<n>" for a body (BODY[HEADER.FIELDS (MESSAGE-ID)]<0>).
func (p *fetchParser) name() []byte {
	start := p.i
	if len(p.atom()) == 0 {
		return nil
	}
	if p.literal("[") {
		end := bytes.IndexByte(p.b[p.i:], ']')
		if end < 0 || bytes.ContainsAny(p.b[p.i:p.i+end], "\r\n{") {
			return nil
		}
		p.i += end + 1
		if p.literal("<") {
			if !p.number() || !p.literal(">") {
				return nil
			}
		}
	}
	return p.b[start:p.i]
}

// maxDepth bounds the nesting of lists in a value.
const maxDepth = 32

// value reads one value: an atom or number (NIL too), a quoted string, a
// literal, or a parenthesized list of values. The raw octets are
// returned (a list with its parentheses); nil when there is none.
func (p *fetchParser) value(depth int) []byte {
	if p.i >= len(p.b) || depth > maxDepth {
		return nil
	}
	start := p.i
	switch p.b[p.i] {
	case '(':
		p.i++
		for i := 0; ; i++ {
			if p.literal(")") {
				return p.b[start:p.i]
			}
			if i > 0 && !p.literal(" ") {
				return nil
			}
			if p.value(depth+1) == nil {
				return nil
			}
		}
	case '"':
		p.i++
		for p.i < len(p.b) {
			switch p.b[p.i] {
			case '\\':
				p.i += 2
				continue
			case '"':
				p.i++
				return p.b[start:p.i]
			case '\r', '\n':
				return nil
			}
			p.i++
		}
		return nil
	case '{', '~':
		p.literal("~")
		if !p.literal("{") {
			return nil
		}
		digits := p.i
		if !p.number() {
			return nil
		}
		n, err := strconv.Atoi(string(p.b[digits:p.i]))
		p.literal("+")
		if err != nil || !p.literal("}\r\n") || n > len(p.b)-p.i {
			return nil
		}
		p.i += n
		return p.b[start:p.i]
	}
	if v := p.atom(); len(v) > 0 {
		// A flag like \Seen, or a name with a section inside a list.
		if p.i < len(p.b) && p.b[p.i] == '[' {
			p.i = start
			return p.name()
		}
		return v
	}
	return nil
}
