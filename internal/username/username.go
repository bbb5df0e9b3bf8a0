// Package username turns the name a client types into the one key that
// stands for that login everywhere the gateway counts or locks: the
// maildrop lock, the pooled connection, the cache, the per-user session
// limit, the failed-login counters and the mapped-user table.
//
// Mail systems treat user names case-insensitively (Dovecot's default
// auth_username_format is %Lu; Gmail, Exchange and Fastmail ignore case),
// so "u2" and "U2" are one mailbox. Were they two keys, a client could
// hold two sessions on one maildrop (RFC 1939 §4 wants it exclusive) and
// double its share of every per-user limit.
package username

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Canonical returns the key of a login name: every character replaced by
// its Unicode simple case folding (the simple upper-case mapping, then the
// simple lower-case mapping, so that "K", "k" and the Kelvin sign, or "ς",
// "σ" and "Σ", meet), which lower-cases the domain too. A name that is not
// valid UTF-8 is its own key: folding would merge unrelated bytes into
// U+FFFD.
func Canonical(name string) string {
	if !utf8.ValidString(name) {
		return name
	}
	return strings.Map(func(r rune) rune { return unicode.ToLower(unicode.ToUpper(r)) }, name)
}
