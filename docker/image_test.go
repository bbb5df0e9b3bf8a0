package docker

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
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
	"unicode"

	"github.com/pop3gw/gateway/internal/testkit/testenv"
)

// imageTimeout bounds TestImage once the stand-in's Debian root file
// system is at hand (debootstrap, bounded apart, runs only when the cache
// lacks it).
const imageTimeout = 4 * time.Minute

// TestImage builds the image from the unchanged Dockerfile on a private
// Docker Engine and runs it as users do: read-only, with every capability
// dropped and no network. From outside the container (nsenter into its
// network namespace) it checks that the demo serves POP3 LIST, and for
// the demo and for serve that the process is not root, the state
// directory is the gateway's with mode 0700, the health check passes and
// SIGTERM ends the process with status 0.
//
// No registry is reachable, so the Dockerfile's build image is a stand-in
// with the same name: a Debian bookworm made by debootstrap (cached
// between runs, see imageCache), this machine's Go, and a module proxy
// directory made from this machine's module cache, so the build needs no
// network either.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a container image; skipped with -short")
	}
	for _, need := range []struct{ bin, pkg string }{
		{"dockerd", "docker.io"}, {"debootstrap", "debootstrap"}, {"nsenter", "util-linux"}, {"curl", "curl"},
	} {
		if _, err := exec.LookPath(need.bin); err != nil {
			testenv.Missing(t, fmt.Sprintf("%s not found: install the Debian package %s (the image test starts a private Docker Engine)", need.bin, need.pkg))
		}
	}
	if os.Geteuid() != 0 {
		testenv.Missing(t, "the image test starts a private Docker Engine and debootstrap, which need root")
	}
	root := repoRoot(t)
	build, _ := gatewayStages(t)

	rootfs := debianRootFS(t)
	gocache := warmBuildCache(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), imageTimeout)
	defer cancel()
	start := time.Now()
	d := startDockerd(ctx, t)
	d.importBase(ctx, t, rootfs, gocache, build.image, root)
	t.Logf("engine up and stand-in %s imported after %v", build.image, time.Since(start).Round(time.Second))

	const image = "pop3-gateway:test"
	out, err := d.cmd(ctx, "build", "--network", "none", "-f", filepath.Join(root, "docker", "Dockerfile"),
		"--build-arg", "VERSION=image-test", "-t", image, root).CombinedOutput()
	if err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Logf("image built after %v", time.Since(start).Round(time.Second))

	run := []string{"run", "-d", "--read-only", "--cap-drop", "ALL", "--network", "none",
		"--security-opt", "no-new-privileges", "--health-interval", "1s", "--health-retries", "3"}

	t.Run("demo", func(t *testing.T) {
		c := d.run(ctx, t, append(run, image, "demo")...)
		c.checkProcess(t)
		c.waitHealthy(ctx, t)
		// The demo listens on every address of the container's network
		// namespace: the published port of `docker run -p 1110:1110`.
		out, err := c.nsenter(ctx, "curl", "-sS", "--max-time", "10", "pop3://demo:demo@127.0.0.1:1110/").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "1 ") {
			t.Fatalf("POP3 LIST in the demo container: %v\n%s\n%s", err, out, c.logs(ctx))
		}
		if n := strings.Count(string(out), "\n"); n != 4 {
			t.Errorf("POP3 LIST in the demo container: %d messages, want 4:\n%s", n, out)
		}
		c.stop(ctx, t)
	})

	t.Run("serve", func(t *testing.T) {
		dir := t.TempDir()
		config := filepath.Join(dir, "gateway.yaml")
		// No upstream is reachable without a network; the gateway starts
		// and stays healthy all the same, and logs in nobody.
		if err := os.WriteFile(config, []byte(`listen:
  pop3: "0.0.0.0:110"
  http: "127.0.0.1:9110"
data_dir: /var/lib/gateway
upstreams:
  nowhere:
    address: "127.0.0.1:1143"
    tls: none
passthrough:
  upstream: nowhere
`), 0o644); err != nil {
			t.Fatal(err)
		}
		c := d.run(ctx, t, append(run, "-v", config+":"+configPath+":ro", image)...)
		c.checkProcess(t)
		c.waitHealthy(ctx, t)
		out, err := c.nsenter(ctx, "curl", "-sS", "--max-time", "10", "-u", "someone:wrong", "pop3://127.0.0.1:110/").CombinedOutput()
		if err == nil {
			t.Errorf("a login without an upstream succeeded:\n%s", out)
		}
		// The UIDL store was created in the state directory, as the
		// gateway's user.
		if _, err := os.Stat(c.path("/var/lib/gateway/state.db")); err != nil {
			t.Errorf("no UIDL store in /var/lib/gateway: %v\n%s", err, c.logs(ctx))
		}
		c.stop(ctx, t)
	})
	t.Logf("TestImage took %v after the root file system was at hand", time.Since(start).Round(time.Second))
}

// imageCache is where the debootstrap root file system and the Go build
// cache of the image's build are kept between runs ($GATEWAY_TEST_CACHE,
// else the user's cache directory): making them takes minutes.
func imageCache(t *testing.T) string {
	dir := os.Getenv("GATEWAY_TEST_CACHE")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			t.Fatalf("no cache directory: %v (set GATEWAY_TEST_CACHE)", err)
		}
		dir = filepath.Join(base, "pop3gw-gateway")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// debianRootFS returns a tar file of a minimal Debian bookworm, from the
// cache or made by debootstrap from the Debian archive.
func debianRootFS(t *testing.T) string {
	t.Helper()
	file := filepath.Join(imageCache(t), "bookworm-minbase.tar")
	if _, err := os.Stat(file); err == nil {
		return file
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	dir, err := os.MkdirTemp("", "rootfs-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	out, err := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", "--include=ca-certificates,git,netbase",
		"bookworm", dir, "http://deb.debian.org/debian").CombinedOutput()
	if err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, tail(out))
	}
	tmp := file + ".tmp"
	if out, err := exec.CommandContext(ctx, "tar", "-C", dir, "-cf", tmp, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar of the root file system: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	t.Logf("debootstrap made %s in %v", file, time.Since(start).Round(time.Second))
	return file
}

// warmBuildCache runs the Dockerfile's go build line on this machine with
// a Go build cache kept for the image test, and returns that cache. The
// stand-in carries it, so the image's build compiles only what changed
// since the last run. The build is the same (CGO_ENABLED=0, -trimpath, the
// same Go in /usr/local/go), so its cache entries are the container's.
func warmBuildCache(t *testing.T, root string) string {
	t.Helper()
	dir := filepath.Join(imageCache(t), "go-build")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	b := dockerfileBuild(t)
	words := slices.Clone(b.words)
	words[b.out] = os.DevNull
	cmd := exec.CommandContext(ctx, "go", words[1:]...)
	cmd.Dir = root
	// GOFLAGS as in the build image, which sets none.
	cmd.Env = append(append(os.Environ(), b.env...), "GOCACHE="+dir, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("warming the build cache: %v\n%s", err, out)
	}
	t.Logf("build cache for the image warmed in %v", time.Since(start).Round(time.Second))
	return dir
}

func tail(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}

// dockerd is a private Docker Engine in a temporary directory.
type dockerd struct {
	dir  string
	sock string
	cli  string // Debian's docker client: it builds without buildx
	cmd0 *exec.Cmd
}

func startDockerd(ctx context.Context, t *testing.T) *dockerd {
	t.Helper()
	// Not t.TempDir: the engine's overlay mounts must be gone before the
	// directory is removed, which only stopping the engine ensures.
	dir, err := os.MkdirTemp("", "dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &dockerd{dir: dir, sock: filepath.Join(dir, "docker.sock"), cli: "/usr/bin/docker"}
	if _, err := os.Stat(d.cli); err != nil {
		d.cli = "docker"
	}
	logFile, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd0 = exec.Command("dockerd",
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"-H", "unix://"+d.sock,
		"--bridge", "none", "--iptables=false", "--ip6tables=false",
		// Where a system containerd runs (the docker.io package starts
		// one), dockerd uses it instead of starting its own: namespaces of
		// its own keep this engine's containers apart from any other's.
		"--containerd-namespace", "pop3gw-test-"+strconv.Itoa(os.Getpid()),
		"--containerd-plugins-namespace", "pop3gw-test-plugins-"+strconv.Itoa(os.Getpid()))
	d.cmd0.Stdout, d.cmd0.Stderr = logFile, logFile
	if err := d.cmd0.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { d.cmd0.Wait(); logFile.Close(); close(exited) }()
	t.Cleanup(func() {
		// Stopped by its PID; it stops its containers and its containerd.
		d.cmd0.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Errorf("dockerd (pid %d) did not stop within 30s of SIGTERM; killed", d.cmd0.Process.Pid)
			d.cmd0.Process.Kill()
			<-exited
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing %s: %v", dir, err)
		}
	})
	for {
		if err := d.cmd(ctx, "version").Run(); err == nil {
			return d
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Fatalf("dockerd exited:\n%s", tail(log))
		case <-ctx.Done():
			t.Fatal("dockerd did not answer in time")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (d *dockerd) cmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.cli, append([]string{"-H", "unix://" + d.sock}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=1", "DOCKER_CONFIG="+filepath.Join(d.dir, "client"))
	return cmd
}

func (d *dockerd) output(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.cmd(ctx, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// importBase imports the stand-in for the Dockerfile's build image: the
// Debian root file system, this machine's Go in /usr/local/go as in the
// golang images, and a module proxy directory of the modules in go.sum.
func (d *dockerd) importBase(ctx context.Context, t *testing.T, rootfs, gocache, name, root string) {
	t.Helper()
	goroot, err := exec.CommandContext(ctx, "go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	// Every module the build may ask for is in this machine's cache.
	if out, err := exec.CommandContext(ctx, "go", "-C", root, "mod", "download").CombinedOutput(); err != nil {
		t.Fatalf("go mod download: %v\n%s", err, out)
	}
	modcache, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	proxy, err := moduleProxyFiles(filepath.Join(root, "go.sum"), filepath.Join(strings.TrimSpace(string(modcache)), "cache", "download"))
	if err != nil {
		t.Fatal(err)
	}

	pr, pw := io.Pipe()
	cmd := d.cmd(ctx, "import",
		"--change", "ENV PATH=/usr/local/go/bin:/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"--change", "ENV GOPATH=/go",
		"--change", "ENV GOTOOLCHAIN=local",
		"--change", "ENV GOPROXY=file:///goproxy",
		"--change", "ENV GOSUMDB=off", // go.sum is checked all the same
		"--change", "ENV GOCACHE=/root/.cache/go-build",
		"--change", "WORKDIR /go",
		"-", name)
	cmd.Stdin = pr
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	werr := writeBase(pw, rootfs, strings.TrimSpace(string(goroot)), gocache, proxy)
	pw.CloseWithError(werr)
	if err := cmd.Wait(); err != nil || werr != nil {
		t.Fatalf("docker import: %v, %v\n%s", err, werr, out.String())
	}
}

// moduleProxyFiles maps the files of a GOPROXY directory (module path
// escaped, @v, version.info/.mod/.zip) to the files of the module cache
// that hold them, for every module version go.sum names.
func moduleProxyFiles(goSum, cache string) (map[string]string, error) {
	f, err := os.Open(goSum)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	files := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			continue
		}
		mod, version := fields[0], strings.TrimSuffix(fields[1], "/go.mod")
		dir := path.Join(escapeModule(mod), "@v")
		for _, ext := range []string{".info", ".mod", ".zip"} {
			name := path.Join(dir, escapeModule(version)+ext)
			src := filepath.Join(cache, filepath.FromSlash(name))
			if _, err := os.Stat(src); err == nil {
				files[name] = src
			}
		}
	}
	return files, sc.Err()
}

// escapeModule escapes a module path or version as the module cache and
// proxies do: an upper-case letter becomes "!" and its lower case.
func escapeModule(s string) string {
	var b strings.Builder
	for _, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// writeBase writes the stand-in's file system as one tar stream.
func writeBase(w io.Writer, rootfs, goroot, gocache string, proxy map[string]string) error {
	tw := tar.NewWriter(w)
	f, err := os.Open(rootfs)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
	if err := addTree(tw, goroot, "usr/local/go"); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "root/.cache/", Mode: 0o755}); err != nil {
		return err
	}
	if err := addTree(tw, gocache, "root/.cache/go-build"); err != nil {
		return err
	}
	for _, dir := range []string{"goproxy", "go"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755}); err != nil {
			return err
		}
	}
	made := map[string]bool{}
	for name, src := range proxy {
		for dir := path.Dir(name); dir != "." && !made[dir]; dir = path.Dir(dir) {
			made[dir] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "goproxy/" + dir + "/", Mode: 0o755}); err != nil {
				return err
			}
		}
		if err := addFile(tw, src, "goproxy/"+name); err != nil {
			return err
		}
	}
	return tw.Close()
}

// addTree adds a directory of this machine and everything in it under
// name.
func addTree(tw *tar.Writer, dir, name string) error {
	return filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		return addFile(tw, p, path.Join(name, filepath.ToSlash(rel)))
	})
}

// addFile adds a file, directory or symbolic link of this machine under
// name.
func addFile(tw *tar.Writer, src, name string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(src); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = name, 0, 0, "", ""
	if fi.IsDir() {
		hdr.Name += "/"
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}

// container is a running container of the private engine.
type container struct {
	d   *dockerd
	id  string
	pid int
}

func (d *dockerd) run(ctx context.Context, t *testing.T, args ...string) *container {
	t.Helper()
	c := &container{d: d, id: d.output(ctx, t, args...)}
	t.Cleanup(func() { d.cmd(context.Background(), "rm", "-f", "-v", c.id).Run() })
	pid, err := strconv.Atoi(d.output(ctx, t, "inspect", "-f", "{{.State.Pid}}", c.id))
	if err != nil || pid == 0 {
		t.Fatalf("container %s has no process: %v\n%s", c.id, err, c.logs(ctx))
	}
	c.pid = pid
	return c
}

func (c *container) logs(ctx context.Context) string {
	out, _ := c.d.cmd(ctx, "logs", c.id).CombinedOutput()
	return string(out)
}

// path is a path of the container's file system, seen from this machine.
func (c *container) path(p string) string {
	return fmt.Sprintf("/proc/%d/root%s", c.pid, p)
}

// nsenter runs a program of this machine in the container's network
// namespace, so the traffic stays on the container's loopback.
func (c *container) nsenter(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.pid), "-n"}, args...)...)
}

// checkProcess checks that the gateway runs as its own user, not root,
// and that its state directory is its own with mode 0700.
func (c *container) checkProcess(t *testing.T) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if ids, ok := strings.CutPrefix(l, "Uid:"); ok && strings.Join(strings.Fields(ids), " ") != "65532 65532 65532 65532" {
			t.Errorf("the gateway runs with Uid %s, want 65532", strings.TrimSpace(ids))
		}
		if caps, ok := strings.CutPrefix(l, "CapEff:"); ok && strings.Trim(strings.TrimSpace(caps), "0") != "" {
			t.Errorf("the gateway has capabilities %s", strings.TrimSpace(caps))
		}
	}
	fi, err := os.Stat(c.path("/var/lib/gateway"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode() != fs.ModeDir|0o700 || st.Uid != 65532 || st.Gid != 65532 {
		t.Errorf("/var/lib/gateway: %v owned by %d:%d, want drwx------ owned by 65532:65532", fi.Mode(), st.Uid, st.Gid)
	}
}

// waitHealthy waits for the image's health check to pass.
func (c *container) waitHealthy(ctx context.Context, t *testing.T) {
	t.Helper()
	for {
		status := c.d.output(ctx, t, "inspect", "-f", "{{.State.Health.Status}}", c.id)
		switch status {
		case "healthy":
			return
		case "unhealthy":
			t.Fatalf("container unhealthy:\n%s\n%s", c.d.output(ctx, t, "inspect", "-f", "{{json .State.Health}}", c.id), c.logs(ctx))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("container not healthy in time (%s)", status)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and expects the gateway to exit 0 well before
// docker stop would kill it.
func (c *container) stop(ctx context.Context, t *testing.T) {
	t.Helper()
	start := time.Now()
	c.d.output(ctx, t, "stop", "--time", "40", c.id)
	took := time.Since(start)
	code := c.d.output(ctx, t, "inspect", "-f", "{{.State.ExitCode}}", c.id)
	if code != "0" || took > 30*time.Second {
		t.Errorf("after SIGTERM the gateway exited with %s in %v, want 0 within 30s\n%s", code, took.Round(time.Millisecond), c.logs(ctx))
	}
}
