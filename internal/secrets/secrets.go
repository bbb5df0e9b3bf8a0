// Package secrets keeps the gateway's secrets at rest: it seals and opens
// them with a key the operator provides, and reads and writes secret files
// with safe modes.
//
// # What is sealed
//
// The files the gateway writes itself are sealed: the OAuth2 refresh tokens
// stored by `gateway oauth2 login` (users.*.oauth2_token_file) and upstream
// passwords written by a gateway command. Secret files the operator writes
// by hand (upstream_password_file, client_secret_file, the key file itself)
// are plain text; ReadFile only checks that no one else can read them.
//
// # Why a key file
//
// The sealing key is one random 256-bit key, read from the file named by
// secrets.key_file or from the environment variable named by
// secrets.key_env, rather than a key derived from each user's local POP3
// password. The gateway must refresh OAuth2 tokens and run `gateway check`
// while no user is logged in, so it cannot wait for a password to unlock
// them. A separate key also lets the key live apart from the sealed files,
// in a secret store such as a Kubernetes Secret or a Docker secret, so a
// copy of the data directory or of a backup alone reveals no token. Such
// mounts must give the key file mode 0400 or 0600 (a Kubernetes
// defaultMode or a Docker secret mode), since ReadFile refuses a file that
// group or others can access.
//
// To rotate the key, generate a new one, install it, and re-run
// `gateway oauth2 login` for each user: a sealed file does not open with
// another key, and a new login seals the new token with the new key.
//
// # File format
//
// A sealed secret is one line of text:
//
//	pop3gw-sealed-v1:<base64(nonce || ciphertext || tag)>\n
//
// The base64 is standard with padding. The cipher is AES-256-GCM with a
// random 12-byte nonce and a 16-byte tag. The GCM additional data is the
// context string given to Seal and Open, such as "oauth2-token:alice", so a
// sealed file copied to another user or used for another purpose fails to
// open instead of handing over someone else's secret.
//
// The key's text form, as kept in a key file or environment variable, is
// the standard base64 (with padding, 44 characters) of its 32 bytes.
package secrets

import (
	"bytes"
	"cmp"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/pop3gw/gateway/internal/durable"
)

// KeySize is the length of a sealing key in bytes (256 bits).
const KeySize = 32

// sealedPrefix starts every sealed secret; the version names the format.
const sealedPrefix = "pop3gw-sealed-v1:"

// b64 decodes keys and sealed data. Strict refuses nonzero padding bits,
// so each value has exactly one text form.
var b64 = base64.StdEncoding.Strict()

// maxKeyFile bounds the size of a key file. A key's text form is 44 bytes;
// the rest allows for whitespace.
const maxKeyFile = 4096

// ErrOpen is returned (wrapped with a short reason) by Open when the sealed
// data cannot be opened: wrong key, wrong context, or damaged data.
var ErrOpen = errors.New("secrets: cannot open sealed secret")

// Key seals and opens secrets with AES-256-GCM. The zero Key is not usable;
// get one from NewKey, ParseKey or LoadKey.
type Key struct {
	aead   cipher.AEAD // prepends a random nonce on Seal (NewGCMWithRandomNonce)
	id     string
	derive []byte // root of Derive, itself derived from the key
}

func newKey(raw []byte) (*Key, error) {
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	mac := hmac.New(sha256.New, raw)
	mac.Write([]byte("pop3gw key id"))
	id := hex.EncodeToString(mac.Sum(nil)[:8])
	mac = hmac.New(sha256.New, raw)
	mac.Write([]byte("pop3gw derive"))
	return &Key{aead: aead, id: id, derive: mac.Sum(nil)}, nil
}

// ID names the key without revealing it: equal keys have equal IDs.
func (k *Key) ID() string { return k.id }

// Derive returns a 32-byte key for another purpose, such as keying the
// HMAC that hides names in Redis keys. Different purposes give unrelated
// keys, and none reveals the sealing key.
func (k *Key) Derive(purpose string) []byte {
	mac := hmac.New(sha256.New, k.derive)
	mac.Write([]byte(purpose))
	return mac.Sum(nil)
}

// NewKey returns a random key and its text form (standard base64 of 32
// bytes) for a key file.
func NewKey() (*Key, string, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, "", fmt.Errorf("secrets: generating key: %w", err)
	}
	k, err := newKey(raw)
	if err != nil {
		return nil, "", err
	}
	return k, base64.StdEncoding.EncodeToString(raw), nil
}

// ParseKey decodes the text form of a key. Surrounding whitespace,
// including a trailing newline, is ignored. Errors never contain the input.
func ParseKey(text string) (*Key, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return nil, errors.New("secrets: key is empty")
	}
	raw, err := b64.DecodeString(text)
	if err != nil {
		// The decoder's error is not wrapped: keep the message independent
		// of the input.
		return nil, errors.New("secrets: key is not valid standard base64")
	}
	if len(raw) != KeySize {
		return nil, fmt.Errorf("secrets: key is %d bytes, want %d (base64 of %d random bytes)", len(raw), KeySize, KeySize)
	}
	return newKey(raw)
}

// LoadKey reads the key from file (with ReadFile, so the file's mode is
// checked) or, when file is "", from the environment variable env. Errors
// name the file or the variable, never their contents.
func LoadKey(file, env string) (*Key, error) {
	src := Source{File: file, Env: env, Max: maxKeyFile}
	if !src.Set() {
		return nil, errors.New("secrets: no key file or key environment variable given")
	}
	text, err := src.Read()
	if err != nil {
		return nil, err
	}
	k, err := ParseKey(text)
	if err != nil && file != "" {
		return nil, fmt.Errorf("secrets: key file %s: %w", file, err)
	} else if err != nil {
		return nil, fmt.Errorf("secrets: environment variable %s: %w", env, err)
	}
	return k, nil
}

// MaxFile bounds a secret file unless a Source says otherwise.
const MaxFile = 64 << 10

// Source is where one secret is kept: a file, or an environment variable.
// Every secret the configuration names (an upstream password, an OAuth2
// client secret, the Redis password, the sealing key) is read through
// one.
type Source struct {
	File string // read with ReadFile: no access for group or others
	Env  string // the variable's name; used when File is ""
	Max  int64  // bound on the file's size; 0 means MaxFile
	// Context, when set, lets the file be sealed (by Seal with this
	// context, as `gateway secrets set-password` writes it); Key gives
	// the key that opens it, and is asked only for a sealed file.
	Context string
	Key     func() (*Key, error)
}

// Set reports whether the source names a file or a variable.
func (s Source) Set() bool { return s.File != "" || s.Env != "" }

// name is the file or the variable, as errors name it.
func (s Source) name() string {
	if s.File != "" {
		return s.File
	}
	return "environment variable " + s.Env
}

// Read returns the secret: the file's contents (opened, when sealed and
// the source has a Context) or the variable's value, without one trailing
// "\n" or "\r\n". A secret that is empty, or has a line break or NUL byte
// besides that one, is an error. An unset source gives "" and no error.
// Errors name the file or the variable, never the secret.
func (s Source) Read() (string, error) {
	var data []byte
	switch {
	case s.File != "":
		var err error
		if data, err = ReadFile(s.File, cmp.Or(s.Max, MaxFile)); err != nil {
			return "", err
		}
		if s.Context != "" && IsSealed(data) {
			if s.Key == nil {
				return "", fmt.Errorf("%s is sealed, but no key is configured", s.File)
			}
			key, err := s.Key()
			if err != nil {
				return "", fmt.Errorf("%s is sealed, but %v", s.File, err)
			}
			if data, err = key.Open(data, s.Context); err != nil {
				return "", fmt.Errorf("%s: %w", s.File, err)
			}
		}
	case s.Env != "":
		v, ok := os.LookupEnv(s.Env)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", s.Env)
		}
		data = []byte(v)
	default:
		return "", nil
	}
	text := string(data)
	if t, ok := strings.CutSuffix(text, "\r\n"); ok {
		text = t
	} else {
		text = strings.TrimSuffix(text, "\n")
	}
	if text == "" {
		return "", fmt.Errorf("%s is empty", s.name())
	}
	if strings.ContainsAny(text, "\r\n\x00") {
		return "", fmt.Errorf("%s contains a line break or NUL byte besides one trailing newline", s.name())
	}
	return text, nil
}

// Seal encrypts plaintext bound to context, which is used as the GCM
// additional data (e.g. "oauth2-token:alice"), so that the result opens
// only with the same key and context. The result is text in the format
// described in the package documentation, ending in "\n".
func (k *Key) Seal(plaintext []byte, context string) []byte {
	ct := k.aead.Seal(nil, nil, plaintext, []byte(context))
	out := make([]byte, 0, len(sealedPrefix)+base64.StdEncoding.EncodedLen(len(ct))+1)
	out = append(out, sealedPrefix...)
	out = base64.StdEncoding.AppendEncode(out, ct)
	return append(out, '\n')
}

// Open reverses Seal. A wrong key, a wrong context or damaged data give an
// error wrapping ErrOpen with a short reason.
func (k *Key) Open(sealed []byte, context string) ([]byte, error) {
	if k == nil || k.aead == nil {
		return nil, fmt.Errorf("%w: no key", ErrOpen)
	}
	rest, ok := bytes.CutPrefix(sealed, []byte(sealedPrefix))
	if !ok {
		return nil, fmt.Errorf("%w: not a %s file", ErrOpen, strings.TrimSuffix(sealedPrefix, ":"))
	}
	// Tolerate the line ending an editor may have changed or dropped.
	rest = bytes.TrimRight(rest, "\r\n")
	ct, err := b64.AppendDecode(nil, rest)
	if err != nil {
		return nil, fmt.Errorf("%w: damaged (bad base64)", ErrOpen)
	}
	if len(ct) < k.aead.Overhead() {
		return nil, fmt.Errorf("%w: damaged (too short)", ErrOpen)
	}
	plaintext, err := k.aead.Open(nil, nil, ct, []byte(context))
	if err != nil {
		return nil, fmt.Errorf("%w: wrong key or context, or damaged", ErrOpen)
	}
	return plaintext, nil
}

// IsSealed reports whether data starts with the sealed prefix.
func IsSealed(data []byte) bool {
	return bytes.HasPrefix(data, []byte(sealedPrefix))
}

// ReadFile reads a secret file of at most max bytes. It refuses a file that
// is not a regular file, or (except on Windows) whose mode gives any access
// to group or others, with an error that says how to fix it. Symbolic links
// are followed, and the mode checked is the target's.
func ReadFile(name string, max int64) ([]byte, error) {
	if max <= 0 {
		return nil, fmt.Errorf("secrets: %s: size limit %d is not positive", name, max)
	}
	// Stat before opening so that opening a FIFO cannot block; the open
	// file is checked again below.
	fi, err := os.Stat(name)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	if err := checkFile(name, fi); err != nil {
		return nil, err
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	defer f.Close()
	fi, err = f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	if err := checkFile(name, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("secrets: reading %s: %w", name, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("secrets: %s is larger than %d bytes", name, max)
	}
	return data, nil
}

// checkFile refuses a file that is not regular or that group or others
// may access.
func checkFile(name string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("secrets: %s is not a regular file", name)
	}
	if runtime.GOOS == "windows" {
		return nil
	}
	perm := fi.Mode().Perm()
	if perm&0o077 == 0 {
		return nil
	}
	what := "readable by group or others"
	if perm&0o044 == 0 {
		what = "accessible to group or others"
	}
	return fmt.Errorf("secrets: %s has mode %04o and is %s; run: chmod 600 %s", name, perm, what, name)
}

// Steps of WriteFile that tests replace to inject failures.
var (
	writeTemp = func(f *os.File, data []byte) error { _, err := f.Write(data); return err }
	syncFile  = (*os.File).Sync
	renameTo  = os.Rename
)

// WriteFile replaces name atomically and durably. It writes data to a new
// temporary file with mode 0600 in the same directory, syncs it, renames it
// over name and syncs the directory, so a crash leaves either the old or
// the new contents, never a partial file. The temporary file is removed on
// any error. If name is a symbolic link, the link itself is replaced.
func WriteFile(name string, data []byte) (err error) {
	dir, base := filepath.Split(name)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("secrets: writing %s: %w", name, err)
	}
	tmp := f.Name()
	renamed := false
	defer func() {
		if err != nil && !renamed {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// CreateTemp already uses 0600; be explicit in case that ever changes.
	if err := f.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		return fmt.Errorf("secrets: writing %s: %w", name, err)
	}
	if err := writeTemp(f, data); err != nil {
		return fmt.Errorf("secrets: writing %s: %w", name, err)
	}
	if err := syncFile(f); err != nil {
		return fmt.Errorf("secrets: writing %s: sync: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("secrets: writing %s: %w", name, err)
	}
	if err := renameTo(tmp, name); err != nil {
		return fmt.Errorf("secrets: writing %s: %w", name, err)
	}
	renamed = true
	if err := durable.Sync(dir); err != nil {
		return fmt.Errorf("secrets: writing %s: syncing directory: %w", name, err)
	}
	return nil
}
