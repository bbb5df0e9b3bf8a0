package config

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse feeds arbitrary files to Parse: it must return a config or an
// *Error listing at least one problem, never panic, and say the same
// thing twice about the same file.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte(minimal))
	for _, s := range []string{
		"",
		"listen: {pop3: ':110'}\n",
		"listen:\n  pop3: \"127.0.0.1:1110\"\nupstreams:\n  corp:\n    address: imap.example.com:993\n    provder: gmail\n",
		"cache:\n  memory: 12XiB\n",
		"limits:\n  login_delay: -5s\n",
		"---\n---\n",
		"a: &a [*a, *a]\n",
		"users: {bob: {upstream: nowhere}}\npassthrough: {upstream: corp, domains: {Example.ORG: corp}}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse returned %v and %v", c, err)
		}
		if err == nil {
			return
		}
		var ce *Error
		if !errors.As(err, &ce) || len(ce.Problems) == 0 {
			t.Fatalf("Parse error %#v is not an *Error with problems", err)
		}
		if _, again := Parse(data); again == nil || again.Error() != err.Error() {
			t.Fatalf("Parse said %q, then %v", err, again)
		}
	})
}
