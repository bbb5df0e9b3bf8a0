package passwd

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

var phc = regexp.MustCompile(`^\$argon2id\$v=19\$m=65536,t=2,p=2\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)

func TestHashRoundTrip(t *testing.T) {
	h, err := Hash("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !phc.MatchString(h) {
		t.Fatalf("hash %q is not in the expected PHC format", h)
	}
	if err := Check(h); err != nil {
		t.Fatalf("Check(%q) = %v", h, err)
	}
	ok, err := Verify(h, "correct horse")
	if err != nil || !ok {
		t.Fatalf("Verify(right password) = %v, %v", ok, err)
	}
	for _, wrong := range []string{"", "correct horse "} {
		ok, err := Verify(h, wrong)
		if err != nil || ok {
			t.Errorf("Verify(%q) = %v, %v; want false, nil", wrong, ok, err)
		}
	}
	h2, err := Hash("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if h2 == h {
		t.Error("two hashes of the same password are equal; salt is not random")
	}
}

func TestHashEmpty(t *testing.T) {
	if _, err := Hash(""); !errors.Is(err, ErrEmptyPassword) {
		t.Fatalf("Hash(\"\") error = %v", err)
	}
}

func TestVerifyOtherParams(t *testing.T) {
	// Produced with other argon2id parameters (m=19456, t=2, p=1).
	p := argonParams{memory: 19456, time: 2, threads: 1}
	salt := []byte("0123456789abcdef")
	h := encodeArgon2id(p, salt, idKey([]byte("s3cret"), salt, p, 32))
	if ok, err := Verify(h, "s3cret"); err != nil || !ok {
		t.Fatalf("Verify = %v, %v", ok, err)
	}
	if ok, err := Verify(h, "s3cret!"); err != nil || ok {
		t.Fatalf("Verify(wrong) = %v, %v", ok, err)
	}
}

func TestVerifyBcrypt(t *testing.T) {
	b, err := bcrypt.GenerateFromPassword([]byte("hunter2"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		h := prefix + string(b[4:])
		if err := Check(h); err != nil {
			t.Errorf("Check(%q) = %v", h, err)
		}
		if ok, err := Verify(h, "hunter2"); err != nil || !ok {
			t.Errorf("Verify(%q, right) = %v, %v", h, ok, err)
		}
		if ok, err := Verify(h, "hunter3"); err != nil || ok {
			t.Errorf("Verify(%q, wrong) = %v, %v", h, ok, err)
		}
	}
	// bcrypt only looks at 72 bytes; longer passwords never match.
	long := strings.Repeat("x", 72)
	b, err = bcrypt.GenerateFromPassword([]byte(long), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := Verify(string(b), long); !ok {
		t.Error("72-byte password does not verify")
	}
	if ok, _ := Verify(string(b), long+"y"); ok {
		t.Error("73-byte password verifies against the hash of its 72-byte prefix")
	}
}

func TestMalformed(t *testing.T) {
	const salt = "MDEyMzQ1Njc4OWFiY2RlZg"                     // 16 bytes
	const key = "q8Vn6p3b4Q3kq6r8mQ2Qe0ZzV7rj0m1ZkV6jv3bKk5E" // 32 bytes
	good := "$argon2id$v=19$m=65536,t=2,p=2$" + salt + "$" + key
	if err := Check(good); err != nil {
		t.Fatalf("Check(%q) = %v", good, err)
	}
	bc := "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
	if err := Check(bc); err != nil {
		t.Fatalf("Check(%q) = %v", bc, err)
	}
	tests := []struct {
		name, hash string
		unknown    bool
	}{
		{"empty", "", true},
		{"plain text", "hunter2", true},
		{"argon2i", "$argon2i$v=19$m=65536,t=2,p=2$" + salt + "$" + key, true},
		{"md5crypt", "$1$abcdefgh$abcdefghijklmnopqrstuv", true},
		{"sha512crypt", "$6$salt$hash", true},
		{"bcrypt 2x", "$2x$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", true},
		{"argon2id no fields", "$argon2id$", false},
		{"argon2id missing key", "$argon2id$v=19$m=65536,t=2,p=2$" + salt, false},
		{"argon2id extra field", good + "$x", false},
		{"argon2id version 16", "$argon2id$v=16$m=65536,t=2,p=2$" + salt + "$" + key, false},
		{"argon2id no version", "$argon2id$m=65536,t=2,p=2$" + salt + "$" + key, false},
		{"argon2id params order", "$argon2id$v=19$t=2,m=65536,p=2$" + salt + "$" + key, false},
		{"argon2id params missing", "$argon2id$v=19$m=65536,t=2$" + salt + "$" + key, false},
		{"argon2id param not a number", "$argon2id$v=19$m=lots,t=2,p=2$" + salt + "$" + key, false},
		{"argon2id param negative", "$argon2id$v=19$m=-1,t=2,p=2$" + salt + "$" + key, false},
		{"argon2id param leading zero", "$argon2id$v=19$m=065536,t=2,p=2$" + salt + "$" + key, false},
		{"argon2id memory too large", "$argon2id$v=19$m=1048577,t=2,p=2$" + salt + "$" + key, false},
		{"argon2id memory huge", "$argon2id$v=19$m=4294967295,t=2,p=2$" + salt + "$" + key, false},
		{"argon2id memory too small", "$argon2id$v=19$m=8,t=2,p=2$" + salt + "$" + key, false},
		{"argon2id time zero", "$argon2id$v=19$m=65536,t=0,p=2$" + salt + "$" + key, false},
		{"argon2id time too large", "$argon2id$v=19$m=65536,t=1000,p=2$" + salt + "$" + key, false},
		{"argon2id threads zero", "$argon2id$v=19$m=65536,t=2,p=0$" + salt + "$" + key, false},
		{"argon2id threads too many", "$argon2id$v=19$m=65536,t=2,p=256$" + salt + "$" + key, false},
		{"argon2id padded salt", "$argon2id$v=19$m=65536,t=2,p=2$" + salt + "==$" + key, false},
		{"argon2id bad base64", "$argon2id$v=19$m=65536,t=2,p=2$!!!!!!!!!!!!$" + key, false},
		{"argon2id line break in key", "$argon2id$v=19$m=65536,t=2,p=2$" + salt + "$" + key[:20] + "\n" + key[20:], false},
		{"argon2id line break in salt", "$argon2id$v=19$m=65536,t=2,p=2$" + salt[:8] + "\r\n" + salt[8:] + "$" + key, false},
		{"argon2id short salt", "$argon2id$v=19$m=65536,t=2,p=2$MDEy$" + key, false},
		{"argon2id short key", "$argon2id$v=19$m=65536,t=2,p=2$" + salt + "$MDEyMzQ1Njc", false},
		{"argon2id empty key", "$argon2id$v=19$m=65536,t=2,p=2$" + salt + "$", false},
		{"bcrypt short", "$2b$10$N9qo8uLOickgx2ZMRZoMye", false},
		{"bcrypt long", bc + "x", false},
		{"bcrypt cost letters", "$2b$xx$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", false},
		{"bcrypt cost too low", "$2b$03$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", false},
		{"bcrypt cost too high", "$2b$31$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", false},
		{"bcrypt bad char", "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lh!y", false},
		{"bcrypt missing separator", "$2b$10N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWyy", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr := Check(tt.hash)
			ok, verifyErr := Verify(tt.hash, "password")
			if checkErr == nil || verifyErr == nil || ok {
				t.Fatalf("Check = %v; Verify = %v, %v; want errors", checkErr, ok, verifyErr)
			}
			want := ErrMalformed
			if tt.unknown {
				want = ErrUnknownFormat
			}
			if !errors.Is(checkErr, want) || !errors.Is(verifyErr, want) {
				t.Fatalf("Check = %v; Verify = %v; want %v", checkErr, verifyErr, want)
			}
		})
	}
}

func TestDummyVerify(t *testing.T) {
	h, err := Hash("x")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	Verify(h, "y")
	verify := time.Since(start)
	start = time.Now()
	DummyVerify("y")
	dummy := time.Since(start)
	t.Logf("Verify %v, DummyVerify %v", verify, dummy)
	// Loose bound: timing on a shared machine is noisy.
	if dummy < verify/4 {
		t.Errorf("DummyVerify took %v, Verify %v", dummy, verify)
	}
}

func TestReadPasswordNotTerminal(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{"secret\n", "secret", false},
		{"secret\r\n", "secret", false},
		{"secret", "secret", false},
		{"with space \n", "with space ", false},
		{"first\nsecond\n", "first", false},
		{"\n", "", true},
		{"", "", true},
		{"\r\n", "", true},
		{strings.Repeat("a", maxLine) + "\n", strings.Repeat("a", maxLine), false},
		{strings.Repeat("a", maxLine+1) + "\n", "", true},
	}
	for _, tt := range tests {
		f, err := os.Create(filepath.Join(t.TempDir(), "in"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(tt.in); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(0, 0); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		got, err := ReadPassword(f, &out)
		f.Close()
		if tt.err {
			if err == nil {
				t.Errorf("ReadPassword(%.20q) = %q, want an error", tt.in, got)
			}
		} else if err != nil || got != tt.want {
			t.Errorf("ReadPassword(%.20q) = %.20q, %v; want %.20q", tt.in, got, err, tt.want)
		}
		if out.Len() != 0 {
			t.Errorf("ReadPassword wrote %q to out for a non-terminal", out.String())
		}
	}
}

func TestReadPasswordPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		w.WriteString("piped\n")
		w.Close()
	}()
	got, err := ReadPassword(r, &strings.Builder{})
	if err != nil || got != "piped" {
		t.Fatalf("ReadPassword = %q, %v", got, err)
	}
}

func BenchmarkHash(b *testing.B) {
	for b.Loop() {
		if _, err := Hash("benchmark"); err != nil {
			b.Fatal(err)
		}
	}
}
