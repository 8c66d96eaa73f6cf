//go:build dev

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espmdm/espmdm/integration"
)

// devEnvKeys are the keys SPEC §9 says `espmdm dev` writes.
var devEnvKeys = []string{
	"ESPMDM_URL", "OIDC_TOKEN_URL", "OIDC_ISSUER_URL", "KEYCLOAK_URL", "KEYCLOAK_REALM",
	"MQTT_URL", "DATABASE_URL", "OPERATOR_CLIENT_ID", "OPERATOR_CLIENT_SECRET",
	"CONSOLE_URL", "CONSOLE_USER", "CONSOLE_PASSWORD", "PIPELINE_CLIENT_ID", "PIPELINE_CLIENT_SECRET",
}

// buildEspmdm builds this package's binary with the dev command (the dev
// tag, as make run does) into a temporary directory.
func buildEspmdm(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go") //nolint:staticcheck // only when go is not on PATH
	}
	bin := filepath.Join(t.TempDir(), "espmdm")
	out, err := exec.Command(goTool, "build", "-tags", "dev", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is one process seen in /proc.
type proc struct {
	pid, ppid int
	start     uint64 // start time in clock ticks since boot: tells a reused pid apart
	state     byte
	comm      string
	cmdline   []string
}

// readProc reads /proc/<pid>/stat (and cmdline); ok is false when the
// process is gone.
func readProc(pid int) (p proc, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return proc{}, false
	}
	// "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return proc{}, false
	}
	f := strings.Fields(s[end+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return proc{}, false
	}
	p = proc{pid: pid, comm: s[open+1 : end], state: f[0][0]}
	p.ppid, _ = strconv.Atoi(f[1])
	p.start, _ = strconv.ParseUint(f[19], 10, 64) // field 22
	if raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		p.cmdline = strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	}
	return p, true
}

// alive reports whether p still runs: the same process (start time) is in
// /proc and is not a zombie.
func (p proc) alive() bool {
	now, ok := readProc(p.pid)
	return ok && now.start == p.start && now.state != 'Z' && now.state != 'X'
}

// procTree accumulates every descendant of root ever seen.
type procTree struct {
	root int
	seen map[[2]uint64]proc // pid, start
}

// collect walks /proc's parent pids from root and adds what it finds.
func (pt *procTree) collect() {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]proc{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			children[p.ppid] = append(children[p.ppid], p)
		}
	}
	queue := []int{pt.root}
	for len(queue) > 0 {
		parent := queue[0]
		queue = queue[1:]
		for _, c := range children[parent] {
			pt.seen[[2]uint64{uint64(c.pid), c.start}] = c
			queue = append(queue, c.pid)
		}
	}
}

func (pt *procTree) procs() []proc {
	var ps []proc
	for _, p := range pt.seen {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b proc) int { return a.pid - b.pid })
	return ps
}

// stackDirs are the stack directories named on the descendants' command
// lines (the processes launcher passes -D and -c paths inside it).
func (pt *procTree) stackDirs() []string {
	prefix := filepath.Join(os.TempDir(), "espmdm-stack-")
	var dirs []string
	for _, p := range pt.seen {
		for _, arg := range p.cmdline {
			if rest, ok := strings.CutPrefix(arg, prefix); ok {
				name, _, _ := strings.Cut(rest, "/")
				if d := prefix + name; name != "" && !slices.Contains(dirs, d) {
					dirs = append(dirs, d)
				}
			}
		}
	}
	return dirs
}

// hostPort is the host:port of a URL from the env file.
func hostPort(t *testing.T, key, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Port() == "" {
		t.Fatalf("%s = %q: want a URL with a port", key, raw)
	}
	return u.Host
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// TestDev runs `espmdm dev` as a user does: a stack of its own comes up,
// the env file appears and works, and SIGTERM takes everything down again.
func TestDev(t *testing.T) {
	bin := buildEspmdm(t)
	launcher := os.Getenv("ESPMDM_LAUNCHER")
	if launcher == "" {
		launcher = "auto"
	}
	clearServeEnv(t) // HTTP_ADDR and the rest unset: dev picks its own
	dir := t.TempDir()
	envFile := filepath.Join(dir, "dev.env")
	logPath := filepath.Join(dir, "dev.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "dev", "--launcher", launcher, "--env-file", envFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so the cleanup can kill all of it; and
	// SIGTERM should this test binary die (a -timeout panic runs no
	// cleanups).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}

	// Linux sends the parent-death signal when the forking thread exits:
	// fork from a locked thread that lives until the child is reaped.
	began := time.Now()
	started := make(chan error, 1)
	exited := make(chan struct{})
	var waitErr error
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(exited)
			return
		}
		started <- nil
		waitErr = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		logf.Close()
		t.Fatalf("start espmdm dev: %v", err)
	}
	logf.Close() // the child has its own copy
	tree := &procTree{root: cmd.Process.Pid, seen: map[[2]uint64]proc{}}
	isExited := func() bool {
		select {
		case <-exited:
			return true
		default:
			return false
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("espmdm dev output (last 4 KiB):\n%s", tailFile(logPath, 4096))
		}
		if !isExited() {
			tree.collect()
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		for _, p := range tree.procs() {
			if p.alive() {
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
			}
		}
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Errorf("espmdm dev (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
		}
		for _, d := range tree.stackDirs() {
			_ = os.RemoveAll(d) // only left behind when the test failed
		}
	})

	// Up: wait for the env file.
	waitUntil := began.Add(6 * time.Minute)
	if dl, ok := t.Deadline(); ok && dl.Add(-2*time.Minute).Before(waitUntil) {
		waitUntil = dl.Add(-2 * time.Minute) // leave time to clean up
	}
	for {
		tree.collect()
		if _, err := os.Stat(envFile); err == nil {
			break
		}
		if isExited() {
			t.Fatalf("espmdm dev exited before writing %s: %v", envFile, waitErr)
		}
		if time.Now().After(waitUntil) {
			t.Fatalf("no env file %s after %s", envFile, time.Since(began).Round(time.Second))
		}
		select {
		case <-exited:
		case <-time.After(250 * time.Millisecond):
		}
	}
	t.Logf("espmdm dev: env file written %s after start", time.Since(began).Round(100*time.Millisecond))

	env, err := integration.ReadEnvFile(envFile)
	if err != nil {
		t.Fatalf("read env file: %v", err)
	}
	for _, k := range devEnvKeys {
		if env[k] == "" {
			t.Errorf("env file has no %s", k)
		}
	}
	if fi, err := os.Stat(envFile); err != nil {
		t.Fatal(err)
	} else if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("env file mode = %o, want 600 (it holds secrets)", perm)
	}
	if t.Failed() {
		t.FailNow()
	}
	ports := map[string]string{
		"espmdm":   hostPort(t, "ESPMDM_URL", env["ESPMDM_URL"]),
		"keycloak": hostPort(t, "KEYCLOAK_URL", env["KEYCLOAK_URL"]),
		"postgres": hostPort(t, "DATABASE_URL", env["DATABASE_URL"]),
		"mqtt":     hostPort(t, "MQTT_URL", env["MQTT_URL"]),
	}
	for name, addr := range ports {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Errorf("%s (%s) does not accept connections while dev runs: %v", name, addr, err)
			continue
		}
		c.Close()
	}

	// The env file works as README shows: ready, and an operator token
	// reads the admin API (which refuses a request without one).
	client := &http.Client{Timeout: 30 * time.Second}
	get := func(path, token string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, env["ESPMDM_URL"]+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.Bytes()
	}
	if code, body := get("/health/ready", ""); code != http.StatusOK {
		t.Errorf("GET /health/ready = %d %s, want 200", code, body)
	}
	if code, _ := get("/api/device-models", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /api/device-models without a token = %d, want 401", code)
	}
	// The console: its URL is this server's, and its admin user logs in
	// with the password in the file (checked through admin-cli's password
	// grant: the console's own client allows only the code flow).
	if env["CONSOLE_URL"] != env["ESPMDM_URL"]+"/console/" {
		t.Errorf("CONSOLE_URL = %q, want %s/console/", env["CONSOLE_URL"], env["ESPMDM_URL"])
	}
	if resp, err := client.PostForm(env["KEYCLOAK_URL"]+"/realms/"+env["KEYCLOAK_REALM"]+"/protocol/openid-connect/token", url.Values{
		"grant_type": {"password"}, "client_id": {"admin-cli"}, "username": {env["CONSOLE_USER"]}, "password": {env["CONSOLE_PASSWORD"]},
	}); err != nil {
		t.Errorf("console user login: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("console user %s cannot log in with CONSOLE_PASSWORD: %s", env["CONSOLE_USER"], resp.Status)
		}
	}
	tok := operatorToken(t, client, env)
	if code, body := get("/api/device-models", tok); code != http.StatusOK {
		t.Errorf("GET /api/device-models with the operator token = %d %s, want 200", code, body)
	} else {
		var list struct {
			DeviceModels *[]json.RawMessage `json:"device_models"`
		}
		if err := json.Unmarshal(body, &list); err != nil || list.DeviceModels == nil {
			t.Errorf("GET /api/device-models body %s: want {\"device_models\": [...]} (%v)", body, err)
		}
	}
	// The pipeline's credentials: a token that reads the pipeline routes
	// and is refused elsewhere.
	pipeTok := operatorToken(t, client, map[string]string{"OIDC_TOKEN_URL": env["OIDC_TOKEN_URL"],
		"OPERATOR_CLIENT_ID": env["PIPELINE_CLIENT_ID"], "OPERATOR_CLIENT_SECRET": env["PIPELINE_CLIENT_SECRET"]})
	if code, body := get("/api/pipeline/models/no_such_model/firmware", pipeTok); code != http.StatusNotFound {
		t.Errorf("GET a pipeline route for an unknown model with the pipeline token = %d %s, want 404", code, body)
	}
	if code, body := get("/api/device-models", pipeTok); code != http.StatusForbidden || !strings.Contains(string(body), "mdm-pipeline") {
		t.Errorf("GET /api/device-models with the pipeline token = %d %s, want 403 naming mdm-pipeline", code, body)
	}
	// The dev stack's Keycloak has the secret-rotation feature and policy,
	// so ROTATION_MODE=auto picks grace.
	if code, body := get("/api/rotation/status", tok); code != http.StatusOK || !strings.Contains(string(body), `"mode":"grace"`) {
		t.Errorf("GET /api/rotation/status = %d %s, want 200 with mode grace", code, body)
	}

	// The README's recipes, as written, against this dev stack.
	runREADMERecipes(t, bin, envFile)

	// What runs: with the processes launcher, the three services are
	// descendants, which is what makes the check after the stop mean
	// something.
	tree.collect()
	if out := tailFile(logPath, 1<<20); strings.Contains(out, "espmdm dev: processes stack ready") {
		var comms []string
		for _, p := range tree.procs() {
			comms = append(comms, p.comm)
		}
		for _, want := range []string{"postgres", "mosquitto", "java"} {
			if !slices.Contains(comms, want) {
				t.Errorf("no %s among the descendants of espmdm dev: %v", want, comms)
			}
		}
		if dirs := tree.stackDirs(); len(dirs) != 1 {
			t.Errorf("stack directories on the services' command lines = %v, want one", dirs)
		}
	}
	t.Logf("espmdm dev: %d descendant processes seen", len(tree.seen))

	// Down: SIGTERM, as systemd or kill(1) would send.
	stopAt := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(90 * time.Second):
		t.Fatalf("espmdm dev still running 90s after SIGTERM")
	}
	t.Logf("espmdm dev: stopped %s after SIGTERM", time.Since(stopAt).Round(100*time.Millisecond))
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d (%v), want 0", code, waitErr)
	}

	for _, p := range tree.procs() {
		if p.alive() {
			t.Errorf("pid %d (%s) still runs after espmdm dev stopped", p.pid, p.comm)
		}
	}
	for name, addr := range ports {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			c.Close()
			t.Errorf("%s port %s still accepts connections", name, addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s port %s: %v, want connection refused", name, addr, err)
		}
	}
	for _, f := range []string{envFile, envFile + ".tmp"} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after stop: %v, want it removed", f, statString(err))
		}
	}
	for _, d := range tree.stackDirs() {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stack directory %s after stop: %v, want it removed", d, statString(err))
		}
	}
}

func statString(err error) string {
	if err == nil {
		return "exists"
	}
	return err.Error()
}

// --blob-store takes fs or s3 only, refused before any service starts.
func TestDevBlobStoreFlag(t *testing.T) {
	code, _, errOut := runCLI(t, "dev", "--blob-store", "gcs", "--env-file", filepath.Join(t.TempDir(), "dev.env"))
	if code == 0 || !strings.Contains(errOut, "--blob-store must be fs or s3") || strings.Contains(errOut, "starting") {
		t.Errorf("dev --blob-store gcs: exit %d, %q; want a refusal before anything starts", code, errOut)
	}
}
