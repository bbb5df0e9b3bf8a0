// Package passwd hashes and verifies the local POP3 passwords of mapped
// users (the password_hash values of the configuration file).
//
// New hashes are argon2id in the PHC string format
//
//	$argon2id$v=19$m=65536,t=2,p=2$<salt>$<key>
//
// with a 16-byte random salt, a 32-byte key, both in standard base64 without
// padding. Verify also accepts argon2id hashes with other parameters (within
// the bounds below) and bcrypt hashes ($2a$, $2b$, $2y$).
//
// The default parameters (64 MiB, 2 passes, 2 lanes) take about 90 ms on a
// 2-core x86-64 machine. Every argon2id computation holds its memory (m KiB)
// while it runs, so the number of computations running at once is limited to
// GOMAXPROCS; further callers wait. This bounds the memory a burst of logins
// can use to about GOMAXPROCS × 64 MiB.
package passwd

import (
	"bufio"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// Parameters of the hashes made by Hash.
const (
	DefaultMemory  = 64 * 1024 // KiB
	DefaultTime    = 2         // passes
	DefaultThreads = 2         // lanes
	saltLen        = 16
	keyLen         = 32
)

// Bounds accepted by Verify and Check. Hashes outside them are rejected so
// that a configuration file cannot make a login arbitrarily expensive.
const (
	MaxMemory     = 1024 * 1024 // KiB (1 GiB)
	MaxTime       = 16
	MaxThreads    = 64
	MaxBcryptCost = 16
	minSaltLen    = 8
	maxSaltLen    = 64
	minKeyLen     = 16
	maxKeyLen     = 64
	bcryptMaxPass = 72 // bcrypt ignores bytes beyond this
)

var (
	// ErrUnknownFormat is returned for a hash that is neither argon2id nor bcrypt.
	ErrUnknownFormat = errors.New("passwd: unknown hash format (want $argon2id$ or $2a$/$2b$/$2y$)")
	// ErrMalformed is wrapped by the errors for a hash of a known format that
	// cannot be parsed or whose parameters are out of bounds.
	ErrMalformed = errors.New("passwd: malformed hash")
	// ErrEmptyPassword is returned by Hash and ReadPassword for an empty password.
	ErrEmptyPassword = errors.New("passwd: empty password")
)

// sem limits the number of argon2 computations running at once.
var sem = make(chan struct{}, max(runtime.GOMAXPROCS(0), 1))

func idKey(password, salt []byte, p argonParams, keyLen uint32) []byte {
	sem <- struct{}{}
	defer func() { <-sem }()
	return argon2.IDKey(password, salt, p.time, p.memory, p.threads, keyLen)
}

type argonParams struct {
	memory  uint32
	time    uint32
	threads uint8
}

var defaultParams = argonParams{memory: DefaultMemory, time: DefaultTime, threads: DefaultThreads}

// Hash returns an argon2id hash of password with the default parameters.
func Hash(password string) (string, error) {
	if password == "" {
		return "", ErrEmptyPassword
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("passwd: reading random salt: %w", err)
	}
	key := idKey([]byte(password), salt, defaultParams, keyLen)
	return encodeArgon2id(defaultParams, salt, key), nil
}

func encodeArgon2id(p argonParams, salt, key []byte) string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version,
		p.memory, p.time, p.threads,
		base64.RawStdEncoding.EncodeToString(salt),
		base64.RawStdEncoding.EncodeToString(key))
}

// Verify reports whether password matches hash. It returns an error, and
// false, when hash is not a well-formed argon2id or bcrypt hash.
func Verify(hash, password string) (bool, error) {
	switch {
	case strings.HasPrefix(hash, "$argon2id$"):
		p, salt, key, err := parseArgon2id(hash)
		if err != nil {
			return false, err
		}
		got := idKey([]byte(password), salt, p, uint32(len(key)))
		return subtle.ConstantTimeCompare(got, key) == 1, nil
	case isBcrypt(hash):
		if err := checkBcrypt(hash); err != nil {
			return false, err
		}
		if len(password) > bcryptMaxPass {
			// bcrypt would compare only the first 72 bytes.
			return false, nil
		}
		err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password))
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
			return false, nil
		default:
			return false, fmt.Errorf("%w: bcrypt: %v", ErrMalformed, err)
		}
	default:
		return false, ErrUnknownFormat
	}
}

// Check reports whether hash is a well-formed argon2id or bcrypt hash with
// parameters within bounds.
func Check(hash string) error {
	switch {
	case strings.HasPrefix(hash, "$argon2id$"):
		_, _, _, err := parseArgon2id(hash)
		return err
	case isBcrypt(hash):
		return checkBcrypt(hash)
	default:
		return ErrUnknownFormat
	}
}

// dummySalt is the salt used by DummyVerify.
var dummySalt = make([]byte, saltLen)

// DummyVerify spends about as much time as a Verify of a hash made by Hash.
// Call it for an unknown user so that the response time does not reveal
// whether the user exists.
func DummyVerify(password string) {
	_ = idKey([]byte(password), dummySalt, defaultParams, keyLen)
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// parseArgon2id parses $argon2id$v=19$m=M,t=T,p=P$salt$key.
func parseArgon2id(hash string) (argonParams, []byte, []byte, error) {
	var p argonParams
	parts := strings.Split(hash, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	if len(parts) != 6 {
		return p, nil, nil, malformed("argon2id: want $argon2id$v=19$m=M,t=T,p=P$SALT$KEY")
	}
	if parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return p, nil, nil, malformed("argon2id: unsupported version %q (want v=%d)", parts[2], argon2.Version)
	}
	params := strings.Split(parts[3], ",")
	if len(params) != 3 {
		return p, nil, nil, malformed("argon2id: want parameters m=M,t=T,p=P")
	}
	var vals [3]uint64
	for i, name := range []string{"m", "t", "p"} {
		v, ok := strings.CutPrefix(params[i], name+"=")
		if !ok {
			return p, nil, nil, malformed("argon2id: want parameters m=M,t=T,p=P")
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || (len(v) > 1 && v[0] == '0') {
			return p, nil, nil, malformed("argon2id: invalid parameter %s=%q", name, v)
		}
		vals[i] = n
	}
	m, t, threads := vals[0], vals[1], vals[2]
	if threads < 1 || threads > MaxThreads {
		return p, nil, nil, malformed("argon2id: p=%d out of range 1..%d", threads, MaxThreads)
	}
	if m < 8*threads || m > MaxMemory {
		return p, nil, nil, malformed("argon2id: m=%d out of range %d..%d (KiB)", m, 8*threads, MaxMemory)
	}
	if t < 1 || t > MaxTime {
		return p, nil, nil, malformed("argon2id: t=%d out of range 1..%d", t, MaxTime)
	}
	p = argonParams{memory: uint32(m), time: uint32(t), threads: uint8(threads)}
	// The base64 decoder skips CR and LF, even when strict; a hash has
	// none, so one with them is refused rather than read as another.
	if strings.ContainsAny(parts[4]+parts[5], "\r\n") {
		return p, nil, nil, malformed("argon2id: line break in the salt or key")
	}
	salt, err := base64.RawStdEncoding.Strict().DecodeString(parts[4])
	if err != nil {
		return p, nil, nil, malformed("argon2id: salt is not unpadded base64")
	}
	if len(salt) < minSaltLen || len(salt) > maxSaltLen {
		return p, nil, nil, malformed("argon2id: salt length %d out of range %d..%d", len(salt), minSaltLen, maxSaltLen)
	}
	key, err := base64.RawStdEncoding.Strict().DecodeString(parts[5])
	if err != nil {
		return p, nil, nil, malformed("argon2id: key is not unpadded base64")
	}
	if len(key) < minKeyLen || len(key) > maxKeyLen {
		return p, nil, nil, malformed("argon2id: key length %d out of range %d..%d", len(key), minKeyLen, maxKeyLen)
	}
	return p, salt, key, nil
}

func isBcrypt(hash string) bool {
	return strings.HasPrefix(hash, "$2a$") || strings.HasPrefix(hash, "$2b$") || strings.HasPrefix(hash, "$2y$")
}

// checkBcrypt validates $2x$CC$ followed by 53 characters of bcrypt's base64.
func checkBcrypt(hash string) error {
	if len(hash) != 60 || hash[6] != '$' {
		return malformed("bcrypt: want $2b$CC$ and 53 characters (60 in all)")
	}
	cost, err := strconv.Atoi(hash[4:6])
	if err != nil || hash[4] < '0' || hash[4] > '9' {
		return malformed("bcrypt: invalid cost %q", hash[4:6])
	}
	if cost < bcrypt.MinCost || cost > MaxBcryptCost {
		return malformed("bcrypt: cost %d out of range %d..%d", cost, bcrypt.MinCost, MaxBcryptCost)
	}
	for _, c := range hash[7:] {
		if !(c == '.' || c == '/' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return malformed("bcrypt: invalid character %q", c)
		}
	}
	return nil
}

// ReadPassword reads a password for hashing. If in is a terminal it prompts
// on out for the password and a confirmation, reads both without echo and
// requires them to match. Otherwise it reads one line from in and strips the
// trailing "\n" or "\r\n". An empty password is an error.
func ReadPassword(in *os.File, out io.Writer) (string, error) {
	if term.IsTerminal(int(in.Fd())) {
		return readTerminal(in, out)
	}
	return readLine(in)
}

func readTerminal(in *os.File, out io.Writer) (string, error) {
	prompt := func(p string) (string, error) {
		fmt.Fprint(out, p)
		b, err := term.ReadPassword(int(in.Fd()))
		fmt.Fprintln(out)
		if err != nil {
			return "", fmt.Errorf("passwd: reading password: %w", err)
		}
		return string(b), nil
	}
	pw, err := prompt("Password: ")
	if err != nil {
		return "", err
	}
	if pw == "" {
		return "", ErrEmptyPassword
	}
	again, err := prompt("Again: ")
	if err != nil {
		return "", err
	}
	if subtle.ConstantTimeCompare([]byte(pw), []byte(again)) != 1 {
		return "", errors.New("passwd: the passwords do not match")
	}
	return pw, nil
}

// maxLine bounds the length of a password read from a non-terminal.
const maxLine = 4096

func readLine(in io.Reader) (string, error) {
	r := bufio.NewReaderSize(io.LimitReader(in, maxLine+2), maxLine+2)
	line, err := r.ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("passwd: reading password: %w", err)
	}
	if l, ok := strings.CutSuffix(line, "\r\n"); ok {
		line = l
	} else {
		line = strings.TrimSuffix(line, "\n")
	}
	if len(line) > maxLine {
		return "", fmt.Errorf("passwd: password longer than %d bytes", maxLine)
	}
	if line == "" {
		return "", ErrEmptyPassword
	}
	return line, nil
}
