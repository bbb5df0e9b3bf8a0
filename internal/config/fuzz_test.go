package config

import (
	"errors"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
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
		// A file YAML cannot read is always reported at a line.
		var node yaml.Node
		if yaml.Unmarshal(data, &node) != nil {
			for _, p := range ce.Problems {
				if !lineRE.MatchString(p) {
					t.Fatalf("a YAML problem without a line: %q", p)
				}
			}
		}
		if _, again := Parse(data); again == nil || again.Error() != err.Error() {
			t.Fatalf("Parse said %q, then %v", err, again)
		}
	})
}

// TestUnreadableYAMLNamesALine: yaml.v3 names no line for a bad octet or
// for a problem on the first line; the loader still does.
func TestUnreadableYAMLNamesALine(t *testing.T) {
	for _, tc := range []struct{ file, line string }{
		{"a: b: c\n", "line 1: "},
		{"listen:\n  pop3: \"x\"\n  http: \x01\n", "line 3: "},
		{"data_dir: /var\n\xff\n", "line 2: "},
		{"cache: {memory: \"\xc3\"}\n", "line 1: "},
		{"[", "line 1: "},
	} {
		_, err := Parse([]byte(tc.file))
		var ce *Error
		if !errors.As(err, &ce) || len(ce.Problems) != 1 {
			t.Errorf("%q: %v, want one problem", tc.file, err)
			continue
		}
		if !strings.HasPrefix(ce.Problems[0], tc.line) {
			t.Errorf("%q: %q, want it at %q", tc.file, ce.Problems[0], tc.line)
		}
	}
}
