package secrets

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

var sealedForm = regexp.MustCompile(`^pop3gw-sealed-v1:[A-Za-z0-9+/]+={0,2}\n$`)

func newTestKey(t testing.TB) (*Key, string) {
	t.Helper()
	k, text, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k, text
}

func TestSealOpenRoundTrip(t *testing.T) {
	k, _ := newTestKey(t)
	for _, pt := range [][]byte{nil, []byte("x"), []byte("1//0refresh-token-value"), bytes.Repeat([]byte{0, 0xff}, 5000)} {
		sealed := k.Seal(pt, "oauth2-token:alice")
		if !sealedForm.Match(sealed) {
			t.Fatalf("sealed %q is not in the expected form", sealed)
		}
		if !IsSealed(sealed) {
			t.Fatal("IsSealed(sealed) = false")
		}
		if len(pt) >= 8 && bytes.Contains(sealed, pt) {
			t.Fatal("sealed output contains the plaintext")
		}
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(string(sealed), sealedPrefix)))
		if err != nil {
			t.Fatal(err)
		}
		if want := 12 + len(pt) + 16; len(raw) != want {
			t.Fatalf("nonce||ciphertext is %d bytes, want %d", len(raw), want)
		}
		got, err := k.Open(sealed, "oauth2-token:alice")
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("Open = %q, want %q", got, pt)
		}
	}
	a, b := k.Seal([]byte("same"), "c"), k.Seal([]byte("same"), "c")
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are equal: nonce not random")
	}
}

func TestOpenLineEndings(t *testing.T) {
	k, _ := newTestKey(t)
	sealed := k.Seal([]byte("secret"), "ctx")
	body := bytes.TrimSuffix(sealed, []byte("\n"))
	for _, in := range [][]byte{body, append(bytes.Clone(body), "\r\n"...)} {
		got, err := k.Open(in, "ctx")
		if err != nil || string(got) != "secret" {
			t.Errorf("Open(%q) = %q, %v", in, got, err)
		}
	}
}

func TestOpenFailures(t *testing.T) {
	k, _ := newTestKey(t)
	other, _ := newTestKey(t)
	sealed := k.Seal([]byte("refresh-token"), "oauth2-token:alice")
	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		b[i] ^= 0x01
		return b
	}
	// Replace one base64 character with another valid one, so the damage
	// reaches GCM rather than the base64 decoder.
	subst := func(i int) []byte {
		b := bytes.Clone(sealed)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return b
	}
	n := len(sealed)
	cases := []struct {
		name string
		key  *Key
		in   []byte
		ctx  string
	}{
		{"wrong key", other, sealed, "oauth2-token:alice"},
		{"wrong context", k, sealed, "oauth2-token:bob"},
		{"empty context", k, sealed, ""},
		{"truncated", k, sealed[:n/2], "oauth2-token:alice"},
		{"truncated at prefix", k, sealed[:len(sealedPrefix)], "oauth2-token:alice"},
		{"truncated by 4", k, append(bytes.Clone(sealed[:n-5]), '\n'), "oauth2-token:alice"},
		{"flipped byte in nonce", k, flip(len(sealedPrefix) + 2), "oauth2-token:alice"},
		{"flipped byte in middle", k, flip(len(sealedPrefix) + 20), "oauth2-token:alice"},
		{"flipped byte in tag", k, flip(n - 6), "oauth2-token:alice"},
		{"changed char in nonce", k, subst(len(sealedPrefix) + 1), "oauth2-token:alice"},
		{"changed char in ciphertext", k, subst(len(sealedPrefix) + 18), "oauth2-token:alice"},
		{"changed char in tag", k, subst(n - 8), "oauth2-token:alice"},
		{"flipped byte in prefix", k, flip(3), "oauth2-token:alice"},
		{"bad prefix", k, append([]byte("pop3gw-sealed-v2:"), sealed[len(sealedPrefix):]...), "oauth2-token:alice"},
		{"no prefix", k, sealed[len(sealedPrefix):], "oauth2-token:alice"},
		{"plain text", k, []byte("refresh-token\n"), "oauth2-token:alice"},
		{"empty", k, nil, "oauth2-token:alice"},
		{"bad base64", k, []byte(sealedPrefix + "!!!!\n"), "oauth2-token:alice"},
		{"too short", k, []byte(sealedPrefix + base64.StdEncoding.EncodeToString(make([]byte, 27)) + "\n"), "oauth2-token:alice"},
		{"trailing garbage", k, append(bytes.Clone(sealed), "AAAA\n"...), "oauth2-token:alice"},
		{"nil key", nil, sealed, "oauth2-token:alice"},
		{"zero key", &Key{}, sealed, "oauth2-token:alice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.key.Open(c.in, c.ctx)
			if !errors.Is(err, ErrOpen) {
				t.Fatalf("Open = %q, %v; want ErrOpen", got, err)
			}
			if got != nil {
				t.Errorf("Open returned %q with its error", got)
			}
			if strings.Contains(err.Error(), "refresh-token") {
				t.Errorf("error %q contains the plaintext", err)
			}
		})
	}
}

func TestIsSealed(t *testing.T) {
	for in, want := range map[string]bool{
		"pop3gw-sealed-v1:AAAA\n": true,
		"pop3gw-sealed-v1:":       true,
		"pop3gw-sealed-v1":        false,
		"refresh-token":           false,
		"":                        false,
		" pop3gw-sealed-v1:AAAA":  false,
	} {
		if got := IsSealed([]byte(in)); got != want {
			t.Errorf("IsSealed(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestNewKeyParseKey(t *testing.T) {
	k, text := newTestKey(t)
	if len(text) != 44 {
		t.Fatalf("key text is %d characters, want 44", len(text))
	}
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil || len(raw) != KeySize {
		t.Fatalf("key text decodes to %d bytes, %v", len(raw), err)
	}
	sealed := k.Seal([]byte("pw"), "upstream-password:alice")
	for _, form := range []string{text, text + "\n", text + "\r\n", "  " + text + " \n", "\n" + text + "\t"} {
		p, err := ParseKey(form)
		if err != nil {
			t.Fatalf("ParseKey: %v", err)
		}
		if got, err := p.Open(sealed, "upstream-password:alice"); err != nil || string(got) != "pw" {
			t.Fatalf("parsed key: Open = %q, %v", got, err)
		}
	}
	_, text2 := newTestKey(t)
	if text2 == text {
		t.Fatal("two new keys are equal")
	}
}

func TestParseKeyErrors(t *testing.T) {
	_, good := newTestKey(t)
	inputs := []string{
		"",
		"   \n",
		"not-base64-Zm9vYmFy!secretvalue",
		base64.StdEncoding.EncodeToString([]byte("sixteen-byte-key")),
		base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("k"), 33)),
		good[:43],
		good + good,
		base64.RawStdEncoding.EncodeToString(bytes.Repeat([]byte("q"), 32)),
		good[:42] + "B=", // nonzero padding bits
	}
	for _, in := range inputs {
		k, err := ParseKey(in)
		if err == nil {
			t.Errorf("ParseKey(%q) = %v, want an error", in, k)
			continue
		}
		if k != nil {
			t.Errorf("ParseKey(%q) returned a key with its error", in)
		}
		if s := strings.TrimSpace(in); len(s) >= 4 && strings.Contains(err.Error(), s) {
			t.Errorf("ParseKey error %q echoes the input", err)
		}
		for i := 0; i+8 <= len(in); i++ {
			if strings.Contains(err.Error(), in[i:i+8]) {
				t.Errorf("ParseKey error %q contains part of the input %q", err, in[i:i+8])
				break
			}
		}
	}
}

func writeSecret(t *testing.T, name, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil { // not subject to umask
		t.Fatal(err)
	}
}

func TestLoadKeyFile(t *testing.T) {
	k, text := newTestKey(t)
	name := filepath.Join(t.TempDir(), "key")
	writeSecret(t, name, text+"\n", 0o600)
	loaded, err := LoadKey(name, "POP3GW_TEST_UNUSED_KEY")
	if err != nil {
		t.Fatalf("LoadKey: %v", err)
	}
	if got, err := loaded.Open(k.Seal([]byte("tok"), "c"), "c"); err != nil || string(got) != "tok" {
		t.Fatalf("loaded key: Open = %q, %v", got, err)
	}
}

func TestLoadKeyEnv(t *testing.T) {
	k, text := newTestKey(t)
	t.Setenv("POP3GW_TEST_KEY", " "+text+"\n")
	loaded, err := LoadKey("", "POP3GW_TEST_KEY")
	if err != nil {
		t.Fatalf("LoadKey: %v", err)
	}
	if got, err := loaded.Open(k.Seal([]byte("tok"), "c"), "c"); err != nil || string(got) != "tok" {
		t.Fatalf("loaded key: Open = %q, %v", got, err)
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	const bad = "c2VjcmV0LWJ1dC10b28tc2hvcnQ="
	badFile := filepath.Join(dir, "bad")
	writeSecret(t, badFile, bad, 0o600)
	missing := filepath.Join(dir, "missing")
	t.Setenv("POP3GW_TEST_BAD_KEY", bad)
	t.Setenv("POP3GW_TEST_EMPTY_KEY", "")
	cases := []struct {
		file, env, want string
	}{
		{badFile, "", badFile},
		{missing, "", missing},
		{"", "POP3GW_TEST_BAD_KEY", "POP3GW_TEST_BAD_KEY"},
		{"", "POP3GW_TEST_EMPTY_KEY", "POP3GW_TEST_EMPTY_KEY"},
		{"", "POP3GW_TEST_UNSET_KEY", "POP3GW_TEST_UNSET_KEY is not set"},
		{"", "", "no key file"},
	}
	for _, c := range cases {
		k, err := LoadKey(c.file, c.env)
		if err == nil {
			t.Errorf("LoadKey(%q, %q) = %v, want an error", c.file, c.env, k)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadKey(%q, %q) = %v, want it to mention %q", c.file, c.env, err, c.want)
		}
		if strings.Contains(err.Error(), bad[:12]) {
			t.Errorf("LoadKey error %q contains the key text", err)
		}
	}
}

func TestReadFile(t *testing.T) {
	name := filepath.Join(t.TempDir(), "secret")
	writeSecret(t, name, "s3cret\n", 0o600)
	got, err := ReadFile(name, 7)
	if err != nil || string(got) != "s3cret\n" {
		t.Fatalf("ReadFile = %q, %v", got, err)
	}
	if _, err := ReadFile(name, 6); err == nil || !strings.Contains(err.Error(), "larger than 6 bytes") {
		t.Fatalf("ReadFile over the limit = %v", err)
	}
	if _, err := ReadFile(name, 0); err == nil {
		t.Fatal("ReadFile with limit 0 succeeded")
	}
	if _, err := ReadFile(filepath.Dir(name), 100); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("ReadFile of a directory = %v", err)
	}
	if _, err := ReadFile(name+".missing", 100); err == nil {
		t.Fatal("ReadFile of a missing file succeeded")
	}
}

func TestReadFileSymlink(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links need privileges on Windows")
	}
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	writeSecret(t, target, "s3cret", 0o400)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadFile(link, 100); err != nil || string(got) != "s3cret" {
		t.Fatalf("ReadFile through a link = %q, %v", got, err)
	}
}

// The mode is checked with stat, so this works when running as root too.
func TestReadFileMode(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("modes are not checked on Windows")
	}
	dir := t.TempDir()
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o666, 0o777} {
		name := filepath.Join(dir, "secret-"+mode.String())
		writeSecret(t, name, "s3cret", mode)
		got, err := ReadFile(name, 100)
		if err == nil {
			t.Errorf("ReadFile of a %04o file = %q, want an error", mode, got)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "; run: chmod 600 "+name) {
			t.Errorf("ReadFile error %q does not say how to fix it", msg)
		}
		if wantMode := name + " has mode 0" + octal(mode); !strings.Contains(msg, wantMode) {
			t.Errorf("ReadFile error %q does not contain %q", msg, wantMode)
		}
		if strings.Contains(msg, "s3cret") {
			t.Errorf("ReadFile error %q contains the file's contents", msg)
		}
	}
	name := filepath.Join(dir, "x")
	writeSecret(t, name, "s3cret", 0o644)
	_, err := ReadFile(name, 100)
	want := "secrets: " + name + " has mode 0644 and is readable by group or others; run: chmod 600 " + name
	if err == nil || err.Error() != want {
		t.Errorf("ReadFile = %v, want %q", err, want)
	}
	for _, mode := range []os.FileMode{0o600, 0o400, 0o700} {
		writeSecret(t, name, "s3cret", mode)
		if _, err := ReadFile(name, 100); err != nil {
			t.Errorf("ReadFile of a %04o file: %v", mode, err)
		}
	}
}

func octal(m os.FileMode) string {
	const digits = "01234567"
	p := m.Perm()
	return string([]byte{digits[p>>6&7], digits[p>>3&7], digits[p&7]})
}

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "token")
	if err := WriteFile(name, []byte("first")); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	writeSecret(t, name, "old", 0o644) // a too-open existing file
	if err := WriteFile(name, []byte("second")); err != nil {
		t.Fatalf("WriteFile over an existing file: %v", err)
	}
	got, err := os.ReadFile(name)
	if err != nil || string(got) != "second" {
		t.Fatalf("after WriteFile: %q, %v", got, err)
	}
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("mode = %04o, want 0600", perm)
		}
	}
	if got, err := ReadFile(name, 100); err != nil || string(got) != "second" {
		t.Errorf("ReadFile after WriteFile = %q, %v", got, err)
	}
	if names := dirEntries(t, dir); len(names) != 1 || names[0] != "token" {
		t.Errorf("directory holds %q, want only token", names)
	}
}

func TestWriteFileRelative(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := WriteFile("token", []byte("rel")); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	if got, err := os.ReadFile("token"); err != nil || string(got) != "rel" {
		t.Fatalf("after WriteFile: %q, %v", got, err)
	}
	if names := dirEntries(t, "."); len(names) != 1 {
		t.Errorf("directory holds %q, want only token", names)
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "missing", "token")
	if err := WriteFile(name, []byte("secret-data")); err == nil {
		t.Fatal("WriteFile into a missing directory succeeded")
	} else if strings.Contains(err.Error(), "secret-data") {
		t.Errorf("error %q contains the data", err)
	}
	if names := dirEntries(t, dir); len(names) != 0 {
		t.Errorf("directory holds %q after a failed WriteFile", names)
	}
}

// TestWriteFileFailureKeepsOld injects a failure into each step before the
// rename and checks that the old file survives and no temporary file is
// left. Injected failures work when running as root, where a read-only
// directory would not stop the write.
func TestWriteFileFailureKeepsOld(t *testing.T) {
	errInjected := errors.New("injected failure")
	steps := []struct {
		name    string
		install func() (restore func())
	}{
		{"partial write", func() func() {
			old := writeTemp
			writeTemp = func(f *os.File, data []byte) error {
				if _, err := f.Write(data[:len(data)/2]); err != nil {
					return err
				}
				return errInjected
			}
			return func() { writeTemp = old }
		}},
		{"sync", func() func() {
			old := syncFile
			syncFile = func(*os.File) error { return errInjected }
			return func() { syncFile = old }
		}},
		{"rename", func() func() {
			old := renameTo
			renameTo = func(string, string) error { return errInjected }
			return func() { renameTo = old }
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "token")
			if err := WriteFile(name, []byte("old contents")); err != nil {
				t.Fatal(err)
			}
			restore := s.install()
			err := WriteFile(name, []byte("new contents that never land"))
			restore()
			if !errors.Is(err, errInjected) {
				t.Fatalf("WriteFile = %v, want the injected failure", err)
			}
			if strings.Contains(err.Error(), "never land") {
				t.Errorf("error %q contains the data", err)
			}
			got, err := os.ReadFile(name)
			if err != nil || string(got) != "old contents" {
				t.Fatalf("after a failed WriteFile: %q, %v; want the old contents", got, err)
			}
			if names := dirEntries(t, dir); len(names) != 1 || names[0] != "token" {
				t.Errorf("directory holds %q, want only token", names)
			}
		})
	}
}

func FuzzOpen(f *testing.F) {
	k, _ := newTestKey(f)
	f.Add(k.Seal([]byte("tok"), "c"))
	f.Add([]byte(sealedPrefix))
	f.Add([]byte(sealedPrefix + "====\n"))
	f.Add([]byte("plain"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := k.Open(in, "c")
		if err != nil && got != nil {
			t.Fatal("Open returned data with an error")
		}
		if err != nil && !errors.Is(err, ErrOpen) {
			t.Fatalf("Open error %v does not wrap ErrOpen", err)
		}
	})
}

func TestKeyID(t *testing.T) {
	k1, text, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseKey(text)
	if err != nil {
		t.Fatal(err)
	}
	k2, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if k1.ID() == "" || k1.ID() != again.ID() || k1.ID() == k2.ID() {
		t.Errorf("IDs: %q, same key %q, other key %q", k1.ID(), again.ID(), k2.ID())
	}
	if strings.Contains(text, k1.ID()) {
		t.Error("the ID appears in the key's text")
	}
}

func TestDerive(t *testing.T) {
	k1, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	a, b := k1.Derive("redis key names"), k1.Derive("something else")
	if len(a) != 32 || string(a) == string(b) || string(a) == string(k2.Derive("redis key names")) {
		t.Fatal("derived keys do not depend on both the key and the purpose")
	}
	if string(a) != string(k1.Derive("redis key names")) {
		t.Fatal("Derive is not deterministic")
	}
}

// Every secret the configuration names is read by Source.Read, from a file
// or a variable, with one rule for line endings and one for what a secret
// may contain.
func TestSourceRead(t *testing.T) {
	const secret = "s3cret"
	dir := t.TempDir()
	k, _ := newTestKey(t)
	keyFunc := func() (*Key, error) { return k, nil }
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		writeSecret(t, p, content, 0o600)
		return p
	}
	t.Setenv("POP3GW_TEST_SECRET", secret+"\n")
	t.Setenv("POP3GW_TEST_SECRET_TWO_LINES", secret+"\nmore")
	t.Setenv("POP3GW_TEST_SECRET_EMPTY", "")
	sealed := file("sealed", string(k.Seal([]byte(secret+"\n"), "ctx")))
	tests := []struct {
		name      string
		src       Source
		want, err string
	}{
		{"unset", Source{}, "", ""},
		{"file newline", Source{File: file("nl", secret+"\n")}, secret, ""},
		{"file crlf", Source{File: file("crlf", secret+"\r\n")}, secret, ""},
		{"file keeps spaces", Source{File: file("spaces", " "+secret+" \n")}, " " + secret + " ", ""},
		{"file wins over env", Source{File: file("wins", "from-file"), Env: "POP3GW_TEST_SECRET"}, "from-file", ""},
		{"file empty", Source{File: file("empty", "\n")}, "", "is empty"},
		{"file two lines", Source{File: file("two", secret+"\n\n")}, "", "line break or NUL byte"},
		{"file NUL", Source{File: file("nul", secret+"\x00")}, "", "line break or NUL byte"},
		{"file too large", Source{File: file("large", secret), Max: 3}, "", "larger than 3 bytes"},
		{"file readable by others", Source{File: func() string {
			p := filepath.Join(dir, "open")
			writeSecret(t, p, secret, 0o644)
			return p
		}()}, "", "chmod 600"},
		{"env", Source{Env: "POP3GW_TEST_SECRET"}, secret, ""},
		{"env two lines", Source{Env: "POP3GW_TEST_SECRET_TWO_LINES"}, "", "environment variable POP3GW_TEST_SECRET_TWO_LINES contains a line break"},
		{"env empty", Source{Env: "POP3GW_TEST_SECRET_EMPTY"}, "", "environment variable POP3GW_TEST_SECRET_EMPTY is empty"},
		{"env unset", Source{Env: "POP3GW_TEST_SECRET_UNSET"}, "", "environment variable POP3GW_TEST_SECRET_UNSET is not set"},
		{"sealed", Source{File: sealed, Context: "ctx", Key: keyFunc}, secret, ""},
		{"sealed, other context", Source{File: sealed, Context: "other", Key: keyFunc}, "", sealed + ": secrets: cannot open"},
		{"sealed, no key", Source{File: sealed, Context: "ctx"}, "", sealed + " is sealed, but no key is configured"},
		{"sealed, key refused", Source{File: sealed, Context: "ctx", Key: func() (*Key, error) { return nil, errors.New("the key file is missing") }},
			"", sealed + " is sealed, but the key file is missing"},
	}
	for _, tt := range tests {
		if runtime.GOOS == "windows" && tt.err == "chmod 600" {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.src.Read()
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Read = %q, %v; want an error containing %q", got, err, tt.err)
				}
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error contains the secret: %v", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Read = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
