package username

import "testing"

func TestCanonical(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"u2", "U2"},
		{"Alice@Example.COM", "alice@example.com"},
		{"\u212aelvin", "kelvin"}, // Kelvin sign
		{"\u03a3\u03c2", "\u03c3\u03c3"},
		{"stra\u00dfe", "STRA\u00dfE"},
	} {
		if Canonical(tc.a) != Canonical(tc.b) {
			t.Errorf("Canonical(%q) = %q, Canonical(%q) = %q: want equal", tc.a, Canonical(tc.a), tc.b, Canonical(tc.b))
		}
		if k := Canonical(tc.a); Canonical(k) != k {
			t.Errorf("Canonical is not idempotent on %q", tc.a)
		}
	}
	for _, tc := range []struct{ a, b string }{
		{"alice", "alice2"},
		{"\xff", "\xfe"}, // not UTF-8: kept apart, not both U+FFFD
	} {
		if Canonical(tc.a) == Canonical(tc.b) {
			t.Errorf("Canonical(%q) == Canonical(%q): want different", tc.a, tc.b)
		}
	}
}
