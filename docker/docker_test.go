package docker

import (
	"bytes"
	"cmp"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/pop3gw/gateway/internal/config"
	"github.com/pop3gw/gateway/internal/testkit/dovecottest"
	"github.com/pop3gw/gateway/internal/testkit/pop3client"
	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// The try-out's POP3 login, as compose.yaml and the README give it.
const tryoutUser, tryoutPass = "demo", "demo"

// The container paths the image and the manifests agree on.
const (
	binaryPath = "/gateway"
	configPath = "/etc/gateway/gateway.yaml"
)

// repoRoot returns the repository root: the image's build context.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(mod, []byte("module github.com/pop3gw/gateway\n")) {
		t.Fatalf("%s is not the gateway's repository root", root)
	}
	return root
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// --- Dockerfiles ---

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case
	args string
}

// stage is one FROM and the instructions up to the next.
type stage struct {
	image, name string
	instrs      []instruction
}

func (s *stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// one returns the stage's only instruction cmd, failing t unless there is
// exactly one.
func (s *stage) one(t testing.TB, cmd string) instruction {
	t.Helper()
	ins := s.all(cmd)
	if len(ins) != 1 {
		t.Fatalf("stage %s: want one %s instruction, found %d", s.image, cmd, len(ins))
	}
	return ins[0]
}

func parseDockerfile(t testing.TB, path string) []stage {
	t.Helper()
	lines := strings.Split(string(readFile(t, path)), "\n")
	var stages []stage
	for i := 0; i < len(lines); i++ {
		text := strings.TrimSpace(lines[i])
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		start := i + 1
		for strings.HasSuffix(text, `\`) && i+1 < len(lines) {
			i++
			next := strings.TrimSpace(lines[i])
			if strings.HasPrefix(next, "#") {
				continue // Docker drops comment lines inside an instruction
			}
			text = strings.TrimSuffix(text, `\`) + " " + next
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := slices.DeleteFunc(strings.Fields(in.args), func(s string) bool { return strings.HasPrefix(s, "--") })
			st := stage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			} else if len(f) != 1 {
				t.Fatalf("%s:%d: cannot parse FROM %s", path, start, in.args)
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s:%d: %s before the first FROM", path, start, in.cmd)
			}
			continue
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	if len(stages) == 0 {
		t.Fatalf("%s: no FROM", path)
	}
	return stages
}

// registryHost returns the registry an image reference names, or "" for a
// Docker Hub name: as Docker reads a reference, its first path component
// is a registry host when it has a '.' or ':' or is localhost.
func registryHost(ref string) string {
	first, _, ok := strings.Cut(ref, "/")
	if ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return first
	}
	return ""
}

func checkImageRef(t testing.TB, where, ref string) {
	t.Helper()
	switch {
	case ref == "":
		t.Errorf("%s: empty image reference", where)
	case registryHost(ref) != "":
		t.Errorf("%s: image %q names the registry %s; use a plain Docker Hub name", where, ref, registryHost(ref))
	case strings.ContainsAny(ref, " \t$"):
		t.Errorf("%s: image %q is not a plain reference", where, ref)
	}
}

// jsonArgs decodes the exec (JSON array) form of CMD, ENTRYPOINT and
// HEALTHCHECK CMD.
func jsonArgs(t testing.TB, in instruction, s string) []string {
	t.Helper()
	var args []string
	if err := json.Unmarshal([]byte(s), &args); err != nil || len(args) == 0 {
		t.Fatalf("line %d: %s %s: want the exec form, a JSON array of strings", in.line, in.cmd, s)
	}
	return args
}

// healthcheck returns the HEALTHCHECK's options and command.
func healthcheck(t testing.TB, st *stage) (opts, cmd []string) {
	t.Helper()
	in := st.one(t, "HEALTHCHECK")
	before, after, ok := strings.Cut(in.args, "CMD ")
	if !ok {
		t.Fatalf("line %d: HEALTHCHECK %s: no CMD", in.line, in.args)
	}
	return strings.Fields(before), jsonArgs(t, in, strings.TrimSpace(after))
}

func gatewayStages(t testing.TB) (build, final *stage) {
	t.Helper()
	stages := parseDockerfile(t, "Dockerfile")
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: want a build stage and a runtime stage, found %d stages", len(stages))
	}
	for i := range stages {
		if slices.ContainsFunc(stages[i].instrs, func(in instruction) bool {
			return in.cmd == "RUN" && strings.Contains(in.args, "go build")
		}) {
			build = &stages[i]
		}
	}
	if build == nil {
		t.Fatal("Dockerfile: no RUN with go build")
	}
	return build, &stages[len(stages)-1]
}

func TestDockerfiles(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"Dockerfile", filepath.Join("dovecot", "Dockerfile")} {
		stages := parseDockerfile(t, path)
		var names []string
		for _, st := range stages {
			if !slices.Contains(names, st.image) && st.image != "scratch" {
				checkImageRef(t, path+": FROM", st.image)
			}
			if st.name != "" {
				names = append(names, st.name)
			}
		}
	}

	build, final := gatewayStages(t)
	goMod := string(readFile(t, filepath.Join(repoRoot(t), "go.mod")))
	var goVersion string
	for _, l := range strings.Split(goMod, "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			goVersion = strings.TrimSpace(v)
		}
	}
	parts := strings.SplitN(goVersion, ".", 3)
	if len(parts) < 2 || !strings.HasPrefix(build.image, "golang:"+parts[0]+"."+parts[1]+"-") {
		t.Errorf("build stage FROM %s: want golang:%s.%s-..., the Go of go.mod (go %s)", build.image, parts[0], parts[1], goVersion)
	}
	if final.image != "scratch" {
		t.Errorf("runtime stage FROM %s: want scratch", final.image)
	}

	user := final.one(t, "USER").args
	uid, gid, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("USER %s: want a numeric non-root uid (Kubernetes' runAsNonRoot cannot check a name)", user)
	}
	if gid != "" {
		if n, err := strconv.Atoi(gid); err != nil || n == 0 {
			t.Errorf("USER %s: want a numeric non-root gid", user)
		}
	}
	var ports []string
	for _, in := range final.all("EXPOSE") {
		ports = append(ports, strings.Fields(in.args)...)
	}
	for _, p := range []string{"110", "995", "9110"} {
		if !slices.Contains(ports, p) && !slices.Contains(ports, p+"/tcp") {
			t.Errorf("EXPOSE %v: %s is missing", ports, p)
		}
	}
	if v := final.one(t, "VOLUME").args; v != "/var/lib/gateway" && v != `["/var/lib/gateway"]` {
		t.Errorf("VOLUME %s: want /var/lib/gateway", v)
	}
	opts, hc := healthcheck(t, final)
	if !slices.Contains(opts, "--interval=30s") || !slices.Contains(opts, "--timeout=5s") {
		t.Errorf("HEALTHCHECK options %v: want --interval=30s --timeout=5s", opts)
	}
	if len(hc) < 2 || hc[0] != binaryPath || hc[1] != "healthcheck" {
		t.Errorf("HEALTHCHECK CMD %q: want %s healthcheck ...", hc, binaryPath)
	}
	if u := healthcheckURL(t, hc); u.Path != "/healthz" {
		t.Errorf("HEALTHCHECK CMD %q: want the /healthz endpoint", hc)
	}
	ep := final.one(t, "ENTRYPOINT")
	if got := jsonArgs(t, ep, ep.args); !slices.Equal(got, []string{binaryPath}) {
		t.Errorf("ENTRYPOINT %q: want [%q]", got, binaryPath)
	}
	cmd := final.one(t, "CMD")
	if got, want := jsonArgs(t, cmd, cmd.args), []string{"serve", "-config", configPath, "-log-format", "json"}; !slices.Equal(got, want) {
		t.Errorf("CMD %q: want %q", got, want)
	}
	var certs bool
	for _, in := range final.all("COPY") {
		certs = certs || strings.Contains(in.args, "/etc/ssl/certs/ca-certificates.crt")
	}
	if !certs {
		t.Error("the runtime stage does not copy /etc/ssl/certs/ca-certificates.crt: upstream TLS could not be verified")
	}
	var passwd bool
	for _, in := range build.all("RUN") {
		passwd = passwd || strings.Contains(in.args, "gateway:x:"+uid+":")
	}
	if !passwd {
		t.Errorf("the build stage writes no /etc/passwd entry for the gateway's uid %s", uid)
	}
}

// healthcheckURL returns the URL in a healthcheck command, whose port must
// be the one the gateway's HTTP listener uses in the compose and
// Kubernetes configurations.
func healthcheckURL(t testing.TB, hc []string) *url.URL {
	t.Helper()
	i := slices.Index(hc, "-url")
	if i < 0 || i+1 >= len(hc) {
		t.Fatalf("healthcheck command %q has no -url", hc)
	}
	u, err := url.Parse(hc[i+1])
	if err != nil || u.Scheme != "http" || u.Port() != "9110" {
		t.Fatalf("healthcheck command %q: want an http URL on port 9110", hc)
	}
	return u
}

// --- the binary, built as the Dockerfile builds it ---

// shellWords splits a plain shell command line into words, expanding
// ${NAME} and $NAME from vars. It refuses operators, command substitution
// and unknown variables, so the line is one simple command.
func shellWords(line string, vars map[string]string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	quote := rune(0)
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case c == '\\':
			if i+1 == len(rs) {
				return nil, errors.New("trailing backslash")
			}
			if quote == '"' && !strings.ContainsRune("$`\"\\", rs[i+1]) {
				cur.WriteRune(c)
				continue
			}
			i++
			cur.WriteRune(rs[i])
			inWord = true
		case c == '"':
			if quote == '"' {
				quote = 0
			} else {
				quote = '"'
			}
			inWord = true
		case c == '\'':
			quote = '\''
			inWord = true
		case c == '$':
			var name string
			if i+1 < len(rs) && rs[i+1] == '{' {
				end := slices.Index(rs[i+2:], '}')
				if end < 0 {
					return nil, errors.New("unterminated ${")
				}
				name = string(rs[i+2 : i+2+end])
				i += end + 2
			} else {
				j := i + 1
				for j < len(rs) && (rs[j] == '_' || rs[j] >= 'A' && rs[j] <= 'Z' || rs[j] >= 'a' && rs[j] <= 'z' || rs[j] >= '0' && rs[j] <= '9') {
					j++
				}
				name = string(rs[i+1 : j])
				i = j - 1
			}
			v, ok := vars[name]
			if !ok {
				return nil, fmt.Errorf("$%s is not a known build argument", name)
			}
			cur.WriteString(v)
			inWord = true
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case quote == 0 && strings.ContainsRune(";&|<>`()#", c):
			return nil, fmt.Errorf("%q: want one plain command", c)
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, errors.New("unterminated quote")
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

func TestShellWords(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"VERSION": "1.0", "X": "x y"}
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{`CGO_ENABLED=0 go build -ldflags="-s -w -X main.version=${VERSION}" -o /out/gateway ./cmd/gateway`,
			[]string{"CGO_ENABLED=0", "go", "build", "-ldflags=-s -w -X main.version=1.0", "-o", "/out/gateway", "./cmd/gateway"}},
		{`a 'b $X' "$X" \$X c\ d`, []string{"a", "b $X", "x y", "$X", "c d"}},
	} {
		got, err := shellWords(tc.in, vars)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("shellWords(%s) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"go build && true", "a; b", "a | b", "$(date)", "echo $NOPE", `"open`, "a # b"} {
		if got, err := shellWords(bad, vars); err == nil {
			t.Errorf("shellWords(%s) = %q, want an error", bad, got)
		}
	}
}

// goBuild is the Dockerfile's go build line, with VERSION=test.
type goBuild struct {
	env   []string // VAR=value words before the command
	words []string // go build ...
	out   int      // index of the -o argument in words
}

// dockerfileBuild reads the go build line from the Dockerfile's build stage.
func dockerfileBuild(t *testing.T) goBuild {
	build, final := gatewayStages(t)
	vars := map[string]string{}
	var run instruction
	for _, in := range build.instrs {
		if in.cmd == "ARG" {
			name, def, _ := strings.Cut(in.args, "=")
			vars[name] = def
		}
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			run = in
			break
		}
	}
	if vars["VERSION"] != "dev" {
		t.Errorf("the build stage declares ARG VERSION=%s before go build; want ARG VERSION=dev", vars["VERSION"])
	}
	vars["VERSION"] = "test"
	words, err := shellWords(run.args, vars)
	if err != nil {
		t.Fatalf("Dockerfile:%d: RUN %s: %v", run.line, run.args, err)
	}
	var b goBuild
	for len(words) > 0 && strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-") {
		b.env = append(b.env, words[0])
		words = words[1:]
	}
	b.words = words
	if !slices.Contains(b.env, "CGO_ENABLED=0") {
		t.Errorf("Dockerfile:%d: the go build line does not set CGO_ENABLED=0", run.line)
	}
	if len(words) < 3 || words[0] != "go" || words[1] != "build" {
		t.Fatalf("Dockerfile:%d: %q is not a go build command", run.line, words)
	}
	b.out = slices.Index(words, "-o") + 1
	if b.out == 0 || b.out >= len(words) {
		t.Fatalf("Dockerfile:%d: the go build line has no -o FILE", run.line)
	}
	// The binary the runtime stage copies is the one built here.
	var copied bool
	for _, in := range final.all("COPY") {
		f := strings.Fields(in.args)
		copied = copied || len(f) == 3 && f[0] == "--from="+build.name && f[1] == words[b.out] && f[2] == binaryPath
	}
	if !copied {
		t.Errorf("the runtime stage does not COPY --from=%s %s %s", build.name, words[b.out], binaryPath)
	}
	return b
}

// run runs the build in dir, the build context, writing the binary to bin.
func (b goBuild) run(t *testing.T, dir, bin string) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go: %v", err)
	}
	words := slices.Clone(b.words)
	words[b.out] = bin
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, words[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), b.env...)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("in %s: %s %s: %v\n%s", dir, strings.Join(b.env, " "), strings.Join(words, " "), err, out)
	}
	t.Logf("built as the Dockerfile does in %v: %s %s", time.Since(start).Round(time.Millisecond), strings.Join(b.env, " "), strings.Join(words, " "))
}

// copyContext copies the repository root into dir without what
// Dockerfile.dockerignore leaves out, as BuildKit sends the build context.
// It knows the patterns that file uses: root-relative paths and globs, and
// **/ followed by a name glob.
func copyContext(t *testing.T, root, dir string) {
	var patterns []string
	for _, line := range strings.Split(string(readFile(t, "Dockerfile.dockerignore")), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := strings.TrimPrefix(path.Clean(line), "/")
		if strings.HasPrefix(p, "!") || strings.Contains(strings.TrimPrefix(p, "**/"), "**") || strings.HasPrefix(p, "**/") && strings.Contains(p[3:], "/") {
			t.Fatalf("Dockerfile.dockerignore: %q is a pattern this test does not understand", line)
		}
		patterns = append(patterns, p)
	}
	ignored := func(rel string) bool {
		for _, p := range patterns {
			if name, ok := strings.CutPrefix(p, "**/"); ok {
				if m, _ := path.Match(name, path.Base(rel)); m {
					return true
				}
			} else if m, _ := path.Match(p, rel); m {
				return true
			}
		}
		return false
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		if ignored(filepath.ToSlash(rel)) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := filepath.Join(dir, rel)
		if d.IsDir() {
			return os.Mkdir(dst, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestImageBinary(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	build := dockerfileBuild(t)
	bin := filepath.Join(t.TempDir(), "gateway")
	build.run(t, root, bin)

	t.Run("static", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("the binary has a PT_INTERP program header: it needs a dynamic loader, which scratch lacks")
			}
		}
		if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
			t.Errorf("DT_NEEDED libraries %q (%v): want none", libs, err)
		}
		if f.Section(".symtab") != nil {
			t.Error("the binary has a symbol table: -ldflags -s did not apply")
		}
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		settings := map[string]string{}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
		// (-ldflags is not recorded with -trimpath: the symbol table and
		// the version below show that it applied.)
		if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
			t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q: want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
		}
		if data := readFile(t, bin); bytes.Contains(data, []byte(root+string(filepath.Separator))) {
			t.Errorf("the binary contains the build directory %s: -trimpath did not apply", root)
		}
	})

	t.Run("version", func(t *testing.T) {
		out, err := exec.Command(bin, "version").Output()
		if err != nil || !strings.HasPrefix(string(out), "gateway test ") {
			t.Errorf("gateway version: %q, %v; want gateway test ...", out, err)
		}
	})

	t.Run("healthcheck", func(t *testing.T) {
		_, final := gatewayStages(t)
		_, hc := healthcheck(t, final)
		path := healthcheckURL(t, hc).Path
		for _, tc := range []struct {
			status int
			ok     bool
		}{{http.StatusOK, true}, {http.StatusServiceUnavailable, false}} {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != path {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tc.status)
			}))
			err := runHealthcheck(bin, hc, srv.URL)
			srv.Close()
			if (err == nil) != tc.ok {
				t.Errorf("HEALTHCHECK against an HTTP %d: %v; want success %v", tc.status, err, tc.ok)
			}
		}
	})

	t.Run("compose-tryout", func(t *testing.T) { tryout(t, bin) })

	// The same build in the context BuildKit sends: without .git, so with
	// no commit recorded.
	t.Run("build-context", func(t *testing.T) {
		dir := t.TempDir()
		copyContext(t, root, dir)
		bin := filepath.Join(t.TempDir(), "gateway")
		build.run(t, dir, bin)
		out, err := exec.Command(bin, "version").Output()
		if err != nil || !strings.HasPrefix(string(out), "gateway test (commit unknown") {
			t.Errorf("gateway version: %q, %v; want gateway test (commit unknown, ...", out, err)
		}
	})
}

// runHealthcheck runs the HEALTHCHECK command with the binary at bin and
// the host of base.
func runHealthcheck(bin string, hc []string, base string) error {
	args := slices.Clone(hc[1:])
	for i, a := range args {
		if u, err := url.Parse(a); err == nil && u.Scheme == "http" {
			b, _ := url.Parse(base)
			u.Host = b.Host
			args[i] = u.String()
		}
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// tryout runs what `docker compose up` runs, without the containers: a
// Dovecot with the account of docker/dovecot/users and the sample mail,
// and the gateway started with the image's ENTRYPOINT and CMD, the
// environment of compose.yaml and docker/gateway.yaml (listening on
// loopback ports, the compose service name replaced by Dovecot's address).
// A POP3 client and curl then read the mail as the README says.
func tryout(t *testing.T, bin string) {
	users := dovecotUsers(t)
	dovecot := dovecottest.Start(t, users)
	samples := sampleMail(t)
	for _, s := range samples {
		dovecot.Deliver(t, tryoutUser, s.data)
	}

	compose := loadCompose(t)
	gw := compose.Services["gateway"]
	var doc yaml.Node
	if err := yaml.Unmarshal(readFile(t, "gateway.yaml"), &doc); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(readFile(t, "gateway.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	pop3Addr, httpAddr := freeAddr(t), freeAddr(t)
	setYAML(t, &doc, pop3Addr, "listen", "pop3")
	setYAML(t, &doc, httpAddr, "listen", "http")
	for name, u := range cfg.Upstreams {
		host, _, _ := net.SplitHostPort(u.Address)
		if _, ok := compose.Services[host]; !ok {
			t.Fatalf("gateway.yaml: upstream %s at %s is not a compose service", name, u.Address)
		}
		setYAML(t, &doc, dovecot.IMAPAddr(), "upstreams", name, "address")
	}
	conf, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Parse(conf); err != nil {
		t.Fatalf("the rewritten gateway.yaml: %v", err)
	}
	confFile := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(confFile, conf, 0o600); err != nil {
		t.Fatal(err)
	}

	_, final := gatewayStages(t)
	ep, cm := final.one(t, "ENTRYPOINT"), final.one(t, "CMD")
	args := append(jsonArgs(t, ep, ep.args)[1:], jsonArgs(t, cm, cm.args)...)
	for i, a := range args {
		if a == configPath {
			args[i] = confFile
		}
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = os.Environ()
	for k, v := range gw.env() {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var logs testenv.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
			return errors.New("still running 15 s after SIGTERM")
		}
	}
	t.Cleanup(func() { stop() })

	_, hc := healthcheck(t, final)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := runHealthcheck(bin, hc, "http://"+httpAddr)
		if err == nil {
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("gateway %s exited: %v\n%s", strings.Join(args, " "), err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the HEALTHCHECK command still fails after 15 s: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	c, err := pop3client.Dial(pop3Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(tryoutUser, tryoutPass); err != nil {
		t.Fatalf("login %s/%s: %v\n%s\n%s", tryoutUser, tryoutPass, err, logs.String(), dovecot.LogTail())
	}
	n, _, err := c.Stat()
	if err != nil || n != len(samples) {
		t.Fatalf("STAT: %d messages, %v; want %d", n, err, len(samples))
	}
	for i, s := range samples {
		if _, err := c.OK(fmt.Sprintf("RETR %d", i+1)); err != nil {
			t.Fatal(err)
		}
		raw, err := c.RawMulti()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := pop3client.Unstuff(raw), crlf(s.data); !bytes.Equal(got, want) {
			t.Errorf("RETR %d (%s):\n%q\nwant\n%q", i+1, s.name, got, want)
		}
		if s.dotLines && !bytes.Contains(raw, []byte("\r\n..")) {
			t.Errorf("RETR %d (%s): no dot-stuffed line in %q", i+1, s.name, raw)
		}
	}
	if err := c.Quit(); err != nil {
		t.Error(err)
	}

	if curl, err := exec.LookPath("curl"); err == nil {
		// The README's line, with this test's port.
		out, err := exec.Command(curl, "-sS", "--max-time", "20", fmt.Sprintf("pop3://%s:%s@%s/1", tryoutUser, tryoutPass, pop3Addr)).Output()
		if err != nil || !bytes.Equal(out, crlf(samples[0].data)) {
			t.Errorf("curl pop3://%s:%s@%s/1: %v\n%q\nwant\n%q", tryoutUser, tryoutPass, pop3Addr, err, out, crlf(samples[0].data))
		}
	} else {
		t.Log("curl is not installed: the README's curl line was not tried")
	}

	if err := stop(); err != nil {
		t.Errorf("gateway after SIGTERM: %v\n%s", err, logs.String())
	}
	// -log-format json: every line a collector reads is a JSON object.
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Errorf("log line is not JSON: %q", line)
		}
	}
}

// dovecotUsers reads docker/dovecot/users: name:{PLAIN}password lines.
func dovecotUsers(t testing.TB) map[string]string {
	t.Helper()
	users := map[string]string{}
	for _, line := range strings.Split(string(readFile(t, filepath.Join("dovecot", "users"))), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, pass, ok := strings.Cut(line, ":{PLAIN}")
		if !ok {
			t.Fatalf("dovecot/users: %q is not name:{PLAIN}password", line)
		}
		users[name] = pass
	}
	if users[tryoutUser] == "" {
		t.Fatalf("dovecot/users has no user %s", tryoutUser)
	}
	return users
}

type sample struct {
	name     string
	data     []byte
	dotLines bool
}

// sampleMail reads docker/dovecot/mail in the order the image's Dovecot
// gives them UIDs.
func sampleMail(t testing.TB) []sample {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join("dovecot", "mail"))
	if err != nil {
		t.Fatal(err)
	}
	var out []sample
	for _, e := range ents {
		data := readFile(t, filepath.Join("dovecot", "mail", e.Name()))
		out = append(out, sample{name: e.Name(), data: data, dotLines: bytes.Contains(data, []byte("\n."))})
	}
	return out
}

// crlf is how POP3 sends a stored message: CRLF line endings.
func crlf(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// setYAML sets the scalar at path in a YAML document.
func setYAML(t testing.TB, doc *yaml.Node, value string, path ...string) {
	t.Helper()
	n := doc
	if n.Kind == yaml.DocumentNode {
		n = n.Content[0]
	}
	for _, key := range path {
		if n.Kind != yaml.MappingNode {
			t.Fatalf("%s: not a mapping", strings.Join(path, "."))
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			t.Fatalf("%s: no key %s", strings.Join(path, "."), key)
		}
		n = next
	}
	n.Value = value
}

func TestSampleMail(t *testing.T) {
	t.Parallel()
	samples := sampleMail(t)
	if len(samples) < 3 || len(samples) > 4 {
		t.Errorf("dovecot/mail holds %d messages, want 3 or 4", len(samples))
	}
	var dots, utf, prev int
	for _, s := range samples {
		// Dovecot orders new files by the number before the first '-' or '.'.
		num, _, _ := strings.Cut(strings.Split(s.name, ".")[0], "-")
		n, err := strconv.Atoi(num)
		if err != nil || n <= prev {
			t.Errorf("dovecot/mail/%s: names must start with increasing numbers", s.name)
		}
		prev = n
		if !utf8.Valid(s.data) {
			t.Errorf("dovecot/mail/%s is not valid UTF-8", s.name)
		}
		if s.dotLines {
			dots++
		}
		if bytes.ContainsFunc(s.data, func(r rune) bool { return r > 127 }) {
			utf++
		}
		if !bytes.Contains(s.data, []byte("\n\n")) || !bytes.HasPrefix(s.data, []byte("From: ")) && !bytes.HasPrefix(s.data, []byte("Return-Path: ")) {
			t.Errorf("dovecot/mail/%s does not look like a message: headers, blank line, body", s.name)
		}
	}
	if dots == 0 || utf == 0 {
		t.Errorf("dovecot/mail: %d messages with lines starting with a dot and %d in UTF-8; want at least one of each", dots, utf)
	}
}

func TestDovecotConf(t *testing.T) {
	t.Parallel()
	doveconf, err := exec.LookPath("doveconf")
	if err != nil {
		testenv.Missing(t, "doveconf not found: install the Debian package dovecot-core")
	}
	out, err := exec.Command(doveconf, "-n", "-c", filepath.Join("dovecot", "dovecot.conf")).CombinedOutput()
	if err != nil {
		t.Fatalf("doveconf -n: %v\n%s", err, out)
	}
	for _, want := range []string{"protocols = imap", "port = 143", "ssl = no", "passdb {", "/etc/dovecot/users", "maildir:"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("doveconf -n: no %q in\n%s", want, out)
		}
	}
	// Plaintext logins only from private networks (the compose network).
	if bytes.Contains(out, []byte("\ndisable_plaintext_auth = no")) {
		t.Errorf("dovecot.conf allows plaintext logins from everywhere:\n%s", out)
	}
}

// --- compose ---

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string       `yaml:"image"`
	Build       composeBuild `yaml:"build"`
	DependsOn   []string     `yaml:"depends_on"`
	Environment any          `yaml:"environment"`
	Volumes     []string     `yaml:"volumes"`
	Ports       []string     `yaml:"ports"`
	Profiles    []string     `yaml:"profiles"`
	ReadOnly    bool         `yaml:"read_only"`
	CapDrop     []string     `yaml:"cap_drop"`
}

// env returns the service's environment, given as a map or a list.
func (s composeService) env() map[string]string {
	env := map[string]string{}
	switch e := s.Environment.(type) {
	case map[string]any:
		for k, v := range e {
			env[k] = fmt.Sprint(v)
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
			env[k] = v
		}
	}
	return env
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

// UnmarshalYAML takes the short form too: build: PATH.
func (b *composeBuild) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		b.Context = n.Value
		return nil
	}
	type plain composeBuild
	return n.Decode((*plain)(b))
}

func loadCompose(t testing.TB) composeFile {
	t.Helper()
	var c composeFile
	if err := yaml.Unmarshal(readFile(t, "compose.yaml"), &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c
}

func TestCompose(t *testing.T) {
	t.Parallel()
	c := loadCompose(t)
	for name, s := range c.Services {
		if s.Image != "" {
			checkImageRef(t, "compose.yaml: services."+name+".image", s.Image)
		}
		if s.Build.Context != "" {
			df := filepath.Join(s.Build.Context, cmp.Or(s.Build.Dockerfile, "Dockerfile"))
			if _, err := os.Stat(df); err != nil {
				t.Errorf("compose.yaml: services.%s.build: %v", name, err)
			}
		}
		if s.Image == "" && s.Build.Context == "" {
			t.Errorf("compose.yaml: services.%s has neither image nor build", name)
		}
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("compose.yaml: services.%s.ports %q: publish on 127.0.0.1 only", name, p)
			}
		}
	}

	gw, ok := c.Services["gateway"]
	if !ok {
		t.Fatal("compose.yaml: no service gateway")
	}
	if df, _ := filepath.Abs(filepath.Join(gw.Build.Context, gw.Build.Dockerfile)); df != filepath.Join(repoRoot(t), "docker", "Dockerfile") {
		t.Errorf("compose.yaml: the gateway is built from %s, want docker/Dockerfile", df)
	}
	if ctx, _ := filepath.Abs(gw.Build.Context); ctx != repoRoot(t) {
		t.Errorf("compose.yaml: the gateway's build context is %s, want the repository root", ctx)
	}
	if d, ok := c.Services["dovecot"]; !ok || d.Build.Context == "" {
		t.Error("compose.yaml: no service dovecot built from docker/dovecot")
	}
	if !slices.Contains(gw.DependsOn, "dovecot") {
		t.Errorf("compose.yaml: the gateway depends_on %q, want dovecot", gw.DependsOn)
	}
	for _, p := range []string{"127.0.0.1:1110:110", "127.0.0.1:9110:9110"} {
		if !slices.Contains(gw.Ports, p) {
			t.Errorf("compose.yaml: the gateway's ports %q lack %q", gw.Ports, p)
		}
	}
	if !slices.Contains(gw.Volumes, "./gateway.yaml:"+configPath+":ro") {
		t.Errorf("compose.yaml: the gateway's volumes %q do not mount ./gateway.yaml read-only at %s", gw.Volumes, configPath)
	}
	if !gw.ReadOnly || !slices.Contains(gw.CapDrop, "ALL") {
		t.Error("compose.yaml: the gateway should run with read_only: true and cap_drop: [ALL]")
	}
	r, ok := c.Services["redis"]
	if !ok || !slices.Contains(r.Profiles, "redis") || !strings.HasPrefix(r.Image, "redis:7") {
		t.Errorf("compose.yaml: want an optional service redis (image redis:7, profile redis), got %+v", r)
	}

	// docker/gateway.yaml: valid, on the container ports compose publishes,
	// with the upstream password compose gives equal to Dovecot's.
	cfg, err := config.Parse(readFile(t, "gateway.yaml"))
	if err != nil {
		t.Fatalf("gateway.yaml: %v", err)
	}
	for key, addr := range map[string]string{"pop3": cfg.Listen.POP3, "http": cfg.Listen.HTTP} {
		_, port, _ := net.SplitHostPort(addr)
		if !slices.ContainsFunc(gw.Ports, func(p string) bool { return strings.HasSuffix(p, ":"+port) }) {
			t.Errorf("gateway.yaml: listen.%s %s: compose publishes no port %s", key, addr, port)
		}
		if host, _, _ := net.SplitHostPort(addr); host != "0.0.0.0" && host != "" {
			t.Errorf("gateway.yaml: listen.%s %s cannot be reached from outside the container", key, addr)
		}
	}
	if _, port, _ := net.SplitHostPort(cfg.Listen.HTTP); port != "9110" {
		t.Errorf("gateway.yaml: listen.http %s: the image's HEALTHCHECK asks port 9110", cfg.Listen.HTTP)
	}
	if !cfg.Auth.AllowInsecure {
		t.Error("gateway.yaml: without TLS, allow_insecure must be true for clients on the bridge network")
	}
	dovecot := dovecotUsers(t)
	env := gw.env()
	for name, u := range cfg.Users {
		if u.UpstreamPasswordEnv == "" {
			t.Errorf("gateway.yaml: users.%s: want upstream_password_env (compose secrets are mounted readable by all)", name)
			continue
		}
		if pw, ok := env[u.UpstreamPasswordEnv]; !ok || pw != dovecot[u.UpstreamUser] {
			t.Errorf("gateway.yaml: users.%s.upstream_password_env %s: compose sets %q, Dovecot's password of %s is %q",
				name, u.UpstreamPasswordEnv, pw, u.UpstreamUser, dovecot[u.UpstreamUser])
		}
	}

	dc, err := exec.LookPath("docker-compose")
	if err != nil {
		testenv.Missing(t, "docker-compose not found: install the Debian package docker-compose")
	}
	cmd := exec.Command(dc, "-f", filepath.Join("docker", "compose.yaml"), "config", "-q")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("docker-compose -f docker/compose.yaml config -q: %v\n%s", err, out)
	}
}

func TestYAMLLint(t *testing.T) {
	t.Parallel()
	yl, err := exec.LookPath("yamllint")
	if err != nil {
		testenv.Missing(t, "yamllint not found: install the Debian package yamllint")
	}
	cmd := exec.Command(yl, "-d", "relaxed", "docker/")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("yamllint -d relaxed docker/: %v\n%s", err, out)
	}
}

// --- Kubernetes ---

type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name        string            `yaml:"name"`
		Namespace   string            `yaml:"namespace"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Type       string            `yaml:"type"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       yaml.Node         `yaml:"spec"`
	file       string
}

type deploymentSpec struct {
	Replicas int `yaml:"replicas"`
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec podSpec `yaml:"spec"`
	} `yaml:"template"`
}

type podSpec struct {
	TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot *bool    `yaml:"runAsNonRoot"`
		RunAsUser    *int     `yaml:"runAsUser"`
		Sysctls      []sysctl `yaml:"sysctls"`
	} `yaml:"securityContext"`
	Containers []k8sContainer `yaml:"containers"`
	Volumes    []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
		Secret *struct {
			SecretName  string `yaml:"secretName"`
			DefaultMode *int   `yaml:"defaultMode"`
		} `yaml:"secret"`
	} `yaml:"volumes"`
}

type k8sContainer struct {
	Name            string          `yaml:"name"`
	Image           string          `yaml:"image"`
	Args            []string        `yaml:"args"`
	Ports           []containerPort `yaml:"ports"`
	Env             []envVar        `yaml:"env"`
	SecurityContext struct {
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	Lifecycle struct {
		PreStop *struct {
			Sleep *struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type sysctl struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef *struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
	} `yaml:"valueFrom"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type serviceSpec struct {
	Type                  string            `yaml:"type"`
	ExternalTrafficPolicy string            `yaml:"externalTrafficPolicy"`
	Selector              map[string]string `yaml:"selector"`
	Ports                 []struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort any    `yaml:"targetPort"`
	} `yaml:"ports"`
}

// port resolves a probe's or a Service's target port, a number or the
// name of a container port.
func (c *k8sContainer) port(p any) int {
	switch v := p.(type) {
	case int:
		return v
	case string:
		for _, cp := range c.Ports {
			if cp.Name == v {
				return cp.ContainerPort
			}
		}
	}
	return 0
}

func loadManifests(t testing.TB) []k8sObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("k8s", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no k8s/*.yaml: %v", err)
	}
	var objs []k8sObject
	for _, f := range files {
		dec := yaml.NewDecoder(bytes.NewReader(readFile(t, f)))
		for {
			var o k8sObject
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o.Kind == "" || o.APIVersion == "" || o.Metadata.Name == "" {
				t.Errorf("%s: an object without kind, apiVersion or metadata.name", f)
			}
			if o.Metadata.Namespace != "" {
				t.Errorf("%s: %s %s sets a namespace; the manifests are namespace-less", f, o.Kind, o.Metadata.Name)
			}
			o.file = f
			objs = append(objs, o)
		}
	}
	return objs
}

func find(objs []k8sObject, kind, name string) *k8sObject {
	for i := range objs {
		if objs[i].Kind == kind && objs[i].Metadata.Name == name {
			return &objs[i]
		}
	}
	return nil
}

func TestKubernetes(t *testing.T) {
	t.Parallel()
	objs := loadManifests(t)

	var deps []*k8sObject
	for i := range objs {
		if objs[i].Kind == "Deployment" && objs[i].Metadata.Name == "pop3-gateway" {
			deps = append(deps, &objs[i])
		}
	}
	if len(deps) != 1 {
		t.Fatalf("want one Deployment pop3-gateway, found %d", len(deps))
	}
	if find(objs, "Service", "pop3-gateway-redis") == nil || find(objs, "Deployment", "pop3-gateway-redis") == nil {
		t.Error("no Redis Deployment and Service for the replicas' shared state")
	}
	var dep deploymentSpec
	if err := deps[0].Spec.Decode(&dep); err != nil {
		t.Fatalf("%s: %v", deps[0].file, err)
	}
	pod := &dep.Template.Spec
	if dep.Replicas != 2 {
		t.Errorf("Deployment: replicas %d, want 2", dep.Replicas)
	}
	for k, v := range dep.Selector.MatchLabels {
		if dep.Template.Metadata.Labels[k] != v {
			t.Errorf("Deployment: selector %s=%s does not match the pod's labels", k, v)
		}
	}
	if len(pod.Containers) > 0 {
		// The endpoint must leave the Service before SIGTERM closes the
		// listeners, and the grace period must cover the pause and the
		// drain, or sessions are killed mid-QUIT.
		c := &pod.Containers[0]
		pause := 0
		if ps := c.Lifecycle.PreStop; ps == nil || ps.Sleep == nil || ps.Sleep.Seconds < 5 {
			t.Error("container lifecycle: want a preStop sleep of at least 5 s, so the endpoint is removed before SIGTERM")
		} else {
			pause = ps.Sleep.Seconds
		}
		drain := 30
		if i := slices.Index(c.Args, "-drain"); i >= 0 && i+1 < len(c.Args) {
			if d, err := time.ParseDuration(c.Args[i+1]); err == nil {
				drain = int(d.Seconds())
			}
		}
		if min := pause + drain + 5; pod.TerminationGracePeriodSeconds < min {
			t.Errorf("terminationGracePeriodSeconds %d: want at least %d (preStop %d s + drain %d s + 5 s)", pod.TerminationGracePeriodSeconds, min, pause, drain)
		}
	}
	if sc := pod.SecurityContext; sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Error("pod securityContext: want runAsNonRoot: true and runAsUser: 65532")
	}
	if !slices.Contains(pod.SecurityContext.Sysctls, sysctl{"net.ipv4.ip_unprivileged_port_start", "0"}) {
		t.Error("pod securityContext: want the sysctl net.ipv4.ip_unprivileged_port_start=0 to bind 110 and 995 as non-root")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, found %d", len(pod.Containers))
	}
	c := &pod.Containers[0]
	checkImageRef(t, "Deployment: image", c.Image)
	if want := []string{"serve", "-config", configPath}; len(c.Args) < 3 || !slices.Equal(c.Args[:3], want) {
		t.Errorf("container args %q: want %q first", c.Args, want)
	}
	sc := c.SecurityContext
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("container securityContext: want readOnlyRootFilesystem: true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("container securityContext: want allowPrivilegeEscalation: false")
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("container securityContext: want capabilities.drop [ALL]")
	}
	for _, p := range []int{110, 995, 9110} {
		if !slices.ContainsFunc(c.Ports, func(cp containerPort) bool { return cp.ContainerPort == p }) {
			t.Errorf("container ports: %d is missing", p)
		}
	}
	for _, pr := range []struct {
		name  string
		probe *k8sProbe
		path  string
	}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", pr.name)
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path || c.port(pr.probe.HTTPGet.Port) != 9110 {
			t.Errorf("%s: GET %s on port %v, want %s on 9110", pr.name, pr.probe.HTTPGet.Path, pr.probe.HTTPGet.Port, pr.path)
		}
	}
	if c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Error("container resources: want memory requests and limits")
	}

	// Volumes: the config at /etc/gateway/gateway.yaml, secrets 0400.
	volumes := map[string]int{}
	for i, v := range pod.Volumes {
		volumes[v.Name] = i
		if s := v.Secret; s != nil {
			if s.DefaultMode == nil || *s.DefaultMode != 0o400 {
				mode := "unset"
				if s.DefaultMode != nil {
					mode = fmt.Sprintf("%#o", *s.DefaultMode)
				}
				t.Errorf("volume %s: secret defaultMode %s, want 0400", v.Name, mode)
			}
			if find(objs, "Secret", s.SecretName) == nil {
				t.Errorf("volume %s: no Secret %s in k8s/", v.Name, s.SecretName)
			}
		}
	}
	var gatewayYAML []byte
	mounts := map[string]string{} // mount path -> Secret name
	for _, m := range c.VolumeMounts {
		i, ok := volumes[m.Name]
		if !ok {
			t.Errorf("volumeMount %s: no such volume", m.Name)
			continue
		}
		v := pod.Volumes[i]
		if v.Secret != nil {
			mounts[m.MountPath] = v.Secret.SecretName
		}
		if m.MountPath != configPath {
			continue
		}
		if v.ConfigMap == nil || m.SubPath == "" || !m.ReadOnly {
			t.Errorf("volumeMount %s at %s: want a read-only ConfigMap subPath", m.Name, m.MountPath)
			continue
		}
		cm := find(objs, "ConfigMap", v.ConfigMap.Name)
		if cm == nil {
			t.Fatalf("volume %s: no ConfigMap %s in k8s/", v.Name, v.ConfigMap.Name)
		}
		gatewayYAML = []byte(cm.Data[m.SubPath])
	}
	if gatewayYAML == nil {
		t.Fatalf("no ConfigMap is mounted at %s", configPath)
	}

	// The configuration: valid, TLS from the mounted Secret, every
	// variable it reads set from a Secret key that exists.
	cfg, err := config.Parse(gatewayYAML)
	if err != nil {
		t.Fatalf("the ConfigMap's gateway.yaml: %v", err)
	}
	if !cfg.TLSEnabled() || cfg.Listen.POP3S == "" || cfg.Auth.AllowInsecure {
		t.Error("the ConfigMap's gateway.yaml: want tls, listen.pop3s and allow_insecure false")
	}
	if _, port, _ := net.SplitHostPort(cfg.Listen.HTTP); port != "9110" || !strings.HasPrefix(cfg.Listen.HTTP, "0.0.0.0:") {
		t.Errorf("the ConfigMap's listen.http %s: want 0.0.0.0:9110 for the probes", cfg.Listen.HTTP)
	}
	for _, f := range []string{cfg.TLS.CertFile, cfg.TLS.KeyFile} {
		secret, ok := mounts[filepath.Dir(f)]
		if !ok {
			t.Errorf("tls file %s: no Secret is mounted at %s", f, filepath.Dir(f))
			continue
		}
		if s := find(objs, "Secret", secret); s == nil || !hasKey(s, filepath.Base(f)) {
			t.Errorf("tls file %s: the Secret %s has no key %s", f, secret, filepath.Base(f))
		}
	}
	envs := []string{cfg.Secrets.KeyEnv}
	for _, u := range cfg.Users {
		envs = append(envs, u.UpstreamPasswordEnv)
	}
	for _, name := range envs {
		if name == "" {
			continue
		}
		i := slices.IndexFunc(c.Env, func(e envVar) bool { return e.Name == name })
		if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.SecretKeyRef == nil {
			t.Errorf("the configuration reads $%s: the container does not set it from a Secret", name)
			continue
		}
		ref := c.Env[i].ValueFrom.SecretKeyRef
		if s := find(objs, "Secret", ref.Name); s == nil || !hasKey(s, ref.Key) {
			t.Errorf("$%s: the Secret %s has no key %s", name, ref.Name, ref.Key)
		}
	}

	// Secrets: placeholders only.
	for _, o := range objs {
		if o.Kind != "Secret" {
			continue
		}
		if len(o.Data) > 0 {
			t.Errorf("Secret %s: use stringData with placeholders, not data", o.Metadata.Name)
		}
		for k, v := range o.StringData {
			if v != "REPLACE_ME" {
				t.Errorf("Secret %s: %s is %q, want the placeholder REPLACE_ME", o.Metadata.Name, k, v)
			}
		}
	}

	// Services: POP3 on a load balancer, metrics on a ClusterIP.
	var lb, metrics bool
	for _, o := range objs {
		if o.Kind != "Service" || o.Metadata.Name == "pop3-gateway-redis" {
			continue
		}
		var s serviceSpec
		if err := o.Spec.Decode(&s); err != nil {
			t.Fatalf("%s: %v", o.file, err)
		}
		for k, v := range s.Selector {
			if dep.Template.Metadata.Labels[k] != v {
				t.Errorf("Service %s: selector %s=%s matches no gateway pod", o.Metadata.Name, k, v)
			}
		}
		ports := map[int]int{}
		for _, p := range s.Ports {
			ports[p.Port] = c.port(p.TargetPort)
			if ports[p.Port] == 0 {
				t.Errorf("Service %s: port %d targets %v, which is no container port", o.Metadata.Name, p.Port, p.TargetPort)
			}
		}
		switch s.Type {
		case "LoadBalancer":
			lb = ports[110] == 110 && ports[995] == 995
			if s.ExternalTrafficPolicy != "Local" {
				t.Errorf("Service %s: externalTrafficPolicy %q; want Local to keep client addresses", o.Metadata.Name, s.ExternalTrafficPolicy)
			}
		case "ClusterIP", "":
			a := o.Metadata.Annotations
			metrics = ports[9110] == 9110 && a["prometheus.io/scrape"] == "true" && a["prometheus.io/port"] == "9110" && a["prometheus.io/path"] == "/metrics"
		}
	}
	if !lb {
		t.Error("want a LoadBalancer Service with ports 110 and 995")
	}
	if !metrics {
		t.Error("want a ClusterIP Service on 9110 with prometheus.io scrape, port and path annotations")
	}
}

func hasKey(s *k8sObject, key string) bool {
	_, d := s.Data[key]
	_, sd := s.StringData[key]
	return d || sd
}
