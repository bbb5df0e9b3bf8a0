package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

var (
	lineRE     = regexp.MustCompile(`^line (\d+): (.*)$`)
	notFoundRE = regexp.MustCompile(`^field (\S+) not found in type (\S+)$`)
	dupRE      = regexp.MustCompile(`^mapping key "(.*)" already defined at line (\d+)$`)
	collRE     = regexp.MustCompile(`^cannot unmarshal !!(map|seq) `)
)

// keyPos is a mapping key of the file, or a mapping or list value of a key.
type keyPos struct {
	line   int
	key    string
	parent string // path of the enclosing mapping, "" at the top
	path   string
	value  yaml.Kind // 0 for a key; MappingNode or SequenceNode for a value
}

// decodeError converts a yaml.v3 error into an *Error. Each problem keeps
// its line number and gains the path of the key on that line when it can be
// told, e.g. `line 7: upstreams.corp: unknown key "provder"`.
func decodeError(data []byte, err error) error {
	te, ok := errors.AsType[*yaml.TypeError](err)
	if !ok {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if !lineRE.MatchString(msg) {
			msg = fmt.Sprintf("line %d: %s", problemLine(data, msg), msg)
		}
		return &Error{Problems: []string{msg}}
	}
	var root yaml.Node
	var keys []keyPos
	if yaml.Unmarshal(data, &root) == nil {
		keys = collectKeys(&root, "", nil)
	}
	e := &Error{}
	for _, msg := range te.Errors {
		e.Problems = append(e.Problems, rewrite(msg, keys))
	}
	return e
}

func collectKeys(n *yaml.Node, path string, keys []keyPos) []keyPos {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			keys = collectKeys(c, path, keys)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			keys = append(keys, keyPos{line: k.Line, key: k.Value, parent: path, path: p})
			if v.Kind == yaml.MappingNode || v.Kind == yaml.SequenceNode {
				keys = append(keys, keyPos{line: v.Line, key: k.Value, parent: path, path: p, value: v.Kind})
			}
			keys = collectKeys(v, p, keys)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			keys = collectKeys(c, fmt.Sprintf("%s[%d]", path, i), keys)
		}
	}
	return keys
}

func rewrite(msg string, keys []keyPos) string {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	line, _ := strconv.Atoi(m[1])
	rest := m[2]
	if nf := notFoundRE.FindStringSubmatch(rest); nf != nil {
		field := nf[1]
		text := fmt.Sprintf("unknown key %q", field)
		if valid := knownKeys[nf[2]]; valid != "" {
			text += " (valid keys: " + valid + ")"
		}
		for _, k := range keys {
			if k.line == line && k.key == field {
				if k.parent != "" {
					text = k.parent + ": " + text
				}
				break
			}
		}
		return fmt.Sprintf("line %d: %s", line, text)
	}
	if d := dupRE.FindStringSubmatch(rest); d != nil {
		text := fmt.Sprintf("key %q appears twice (also at line %s)", d[1], d[2])
		for _, k := range keys {
			if k.line == line && k.key == d[1] && k.value == 0 {
				if k.parent != "" {
					text = k.parent + ": " + text
				}
				break
			}
		}
		return fmt.Sprintf("line %d: %s", line, text)
	}
	// A mapping or list where a scalar belongs is reported at the line of
	// the value, otherwise at the line of the key.
	want := yaml.Kind(0)
	if c := collRE.FindStringSubmatch(rest); c != nil {
		want = map[string]yaml.Kind{"map": yaml.MappingNode, "seq": yaml.SequenceNode}[c[1]]
	}
	path := ""
	for _, k := range keys {
		if k.line != line || k.value != want {
			continue
		}
		if path != "" {
			return msg // several keys on the line
		}
		path = k.path
	}
	if path == "" {
		return msg
	}
	return fmt.Sprintf("line %d: %s: %s", line, path, rest)
}

// knownKeys maps the Go type names in yaml.v3's "field not found" messages
// to the keys valid in that mapping.
var knownKeys = func() map[string]string {
	m := map[string]string{}
	for _, v := range []any{Config{}, Listen{}, Listener{}, ListenerTLS{}, TLS{}, Auth{}, Upstream{}, User{}, Passthrough{}, Cache{}} {
		t := reflect.TypeOf(v)
		var names []string
		for f := range t.Fields() {
			if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag != "" && tag != "-" {
				names = append(names, tag)
			}
		}
		m[t.String()] = strings.Join(names, ", ")
	}
	return m
}()

// problemLine finds the line of a yaml.v3 error that names none: its
// reader reports a bad octet without a position, and its parser leaves
// the line out for a problem on the first line. The line of the first
// octet YAML does not allow (YAML 1.2 §5.1: printable Unicode in UTF-8,
// with tab, CR and LF), or of the first alias for an aliasing problem,
// otherwise the first line.
func problemLine(data []byte, msg string) int {
	at := -1
	if strings.Contains(msg, "alias") {
		at = bytes.IndexByte(data, '*')
	} else {
		for i := 0; i < len(data); {
			r, n := utf8.DecodeRune(data[i:])
			if (r == utf8.RuneError && n <= 1) || !yamlPrintable(r) {
				at = i
				break
			}
			i += n
		}
	}
	if at < 0 {
		return 1
	}
	return 1 + bytes.Count(data[:at], []byte("\n"))
}

func yamlPrintable(r rune) bool {
	switch {
	case r == '\t' || r == '\n' || r == '\r' || r == 0x85:
		return true
	case r >= 0x20 && r <= 0x7e:
		return true
	case r >= 0xa0 && r <= 0xd7ff, r >= 0xe000 && r <= 0xfffd && r != 0xfeff, r >= 0x10000 && r <= 0x10ffff:
		return true
	case r == 0xfeff:
		return true // a byte order mark
	}
	return false
}
