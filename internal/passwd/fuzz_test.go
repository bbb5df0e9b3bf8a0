package passwd

import (
	"errors"
	"strings"
	"testing"
)

// FuzzCheck feeds arbitrary password_hash values to Check. It must never
// panic; it refuses with ErrUnknownFormat or an ErrMalformed; an argon2id
// hash it accepts is in the one canonical form Hash writes; and a cheap
// hash it accepts is verified without an error, so a config that passed
// Check never fails at login over its hash.
func FuzzCheck(f *testing.F) {
	const salt = "MDEyMzQ1Njc4OWFiY2RlZg"                     // 16 bytes
	const key = "q8Vn6p3b4Q3kq6r8mQ2Qe0ZzV7rj0m1ZkV6jv3bKk5E" // 32 bytes
	for _, s := range []string{
		"$argon2id$v=19$m=65536,t=2,p=2$" + salt + "$" + key,
		"$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"$argon2id$v=19$m=064,t=1,p=1$" + salt + "$" + key,
		"$argon2id$v=18$m=64,t=1,p=1$" + salt + "$" + key,
		"$argon2id$v=19$m=64,t=1,p=1$" + salt + "=$" + key,
		"$2a$04$sx8nCOq5d3Xt0IM.BOo/j.EWqnvRpkhrDA1SmJSsViNG9Z.hXmn4.",
		"$2b$04$sx8nCOq5d3Xt0IM.BOo/j.EWqnvRpkhrDA1SmJSsViNG9Z.hXmn4.",
		"$2y$31$sx8nCOq5d3Xt0IM.BOo/j.EWqnvRpkhrDA1SmJSsViNG9Z.hXmn4.",
		"$2b$+4$sx8nCOq5d3Xt0IM.BOo/j.EWqnvRpkhrDA1SmJSsViNG9Z.hXmn4.",
		"$1$salt$hash",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, hash string) {
		err := Check(hash)
		if err != nil {
			if !errors.Is(err, ErrUnknownFormat) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("Check(%q) = %v, neither unknown nor malformed", hash, err)
			}
			return
		}
		cheap := false
		if strings.HasPrefix(hash, "$argon2id$") {
			p, salt, key, err := parseArgon2id(hash)
			if err != nil {
				t.Fatalf("Check accepted %q, the parser refuses it: %v", hash, err)
			}
			if again := encodeArgon2id(p, salt, key); again != hash {
				t.Fatalf("Check accepted %q, which is written %q", hash, again)
			}
			cheap = p.memory <= 256 && p.time <= 2
		} else {
			cheap = hash[4:6] <= "05"
		}
		if cheap {
			if _, err := Verify(hash, "pw"); err != nil {
				t.Fatalf("Check accepted %q, Verify refuses it: %v", hash, err)
			}
		}
	})
}
