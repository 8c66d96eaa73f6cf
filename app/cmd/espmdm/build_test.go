package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestServerBuild builds the server binary as the container image does
// (go build ./app/cmd/espmdm, without the dev tag) and checks that it links
// neither the integration harness nor what the harness brings
// (testcontainers-go, the Docker client), and that its
// `espmdm dev` says where the dev stack is.
func TestServerBuild(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "espmdm")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "GOFLAGS=") // no -tags from the caller
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	list := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".")
	list.Env = build.Env
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed %d packages, want the server's whole closure", len(deps))
	}
	for _, d := range deps {
		// (Package testing itself stays: Fiber's utils imports it.)
		if strings.HasPrefix(d, "github.com/espmdm/espmdm/integration") {
			t.Errorf("the server build depends on package %s", d)
		}
	}
	mods, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	for _, line := range strings.Split(string(mods), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "dep" &&
			(strings.Contains(f[1], "testcontainers") || strings.Contains(f[1], "docker") || strings.Contains(f[1], "moby")) {
			t.Errorf("the server binary links module %s", f[1])
		}
	}

	dev := exec.Command(bin, "dev", "--launcher", "processes")
	dev.Env = []string{"PATH=" + os.Getenv("PATH")}
	msg, err := dev.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "make run") || !strings.Contains(string(msg), "-tags dev") {
		t.Errorf("espmdm dev in the server build: %v, output %q; want a failure naming make run and -tags dev", err, msg)
	}
}
