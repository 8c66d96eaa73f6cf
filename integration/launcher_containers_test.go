//go:build containers

package integration

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
)

// These tests need a Docker engine at $DOCKER_HOST with the images of
// $ESPMDM_*_IMAGE (make test-containers builds the local stand-ins and runs
// them with -tags containers).

func engineCtx(t *testing.T) (context.Context, *dockerEngine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	eng := newDockerEngine()
	if err := eng.ping(ctx); err != nil {
		t.Fatalf("these tests need a Docker engine (DOCKER_HOST=%s): %v", eng.host, err)
	}
	return ctx, eng
}

func TestAutoPicksContainersWhenTheImagesArePresent(t *testing.T) {
	ctx, _ := engineCtx(t)
	l, note, err := chooseLauncher(ctx, "auto", DefaultImages(DefaultKeycloakVersion))
	if err != nil {
		t.Fatal(err)
	}
	if l.Name() != "containers" || note != "" {
		t.Errorf("auto chose %s (note %q), want containers for the images %+v", l.Name(), note, DefaultImages(DefaultKeycloakVersion))
	}
}

// An engine without the images (here: one image name nobody has, which no
// registry serves) makes auto fall back to processes with one line naming
// the image, and --launcher containers fail naming it.
func TestAutoFallsBackWhenAnImageIsMissing(t *testing.T) {
	ctx, _ := engineCtx(t)
	images := DefaultImages(DefaultKeycloakVersion)
	images.Keycloak = "espmdm-local/no-such-keycloak:0.0.1"

	l, note, err := chooseLauncher(ctx, "auto", images)
	if err != nil {
		t.Fatal(err)
	}
	if l.Name() != "processes" {
		t.Errorf("auto chose %s, want processes", l.Name())
	}
	t.Logf("auto says: %s", note)
	for _, want := range []string{"using processes", "espmdm-local/no-such-keycloak:0.0.1", "cannot be pulled", "make images"} {
		if !strings.Contains(note, want) {
			t.Errorf("note %q does not say %q", note, want)
		}
	}
	if strings.Contains(note, "\n") {
		t.Errorf("note %q is more than one line", note)
	}

	_, _, err = chooseLauncher(ctx, "containers", images)
	if err == nil || !strings.Contains(err.Error(), "espmdm-local/no-such-keycloak:0.0.1") {
		t.Errorf("containers with a missing image: err = %v, want one naming it", err)
	}
	if err != nil && strings.Contains(err.Error(), images.Postgres+" (") {
		t.Errorf("err = %v names the present image %s as missing", err, images.Postgres)
	}

	// The public entry point reads the same environment.
	t.Setenv(EnvKeycloakImage, images.Keycloak)
	if l, err := NewLauncher(ctx, "auto"); err != nil || l.Name() != "processes" {
		t.Errorf("NewLauncher(auto) with $%s missing = %v, %v; want processes", EnvKeycloakImage, l, err)
	}
}

// Containers left by a run that was killed (its process gone) are removed
// by the next launcher, Ryuk or not; those of live processes stay.
func TestOrphanedContainersAreRemoved(t *testing.T) {
	ctx, eng := engineCtx(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	run := func(owner string) testcontainers.Container {
		t.Helper()
		c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
			ContainerRequest: testcontainers.ContainerRequest{
				Image:  DefaultImages(DefaultKeycloakVersion).Mosquitto,
				Labels: map[string]string{labelStack: "test-orphans", labelOwner: owner},
			},
			Started: true,
		})
		if err != nil {
			t.Fatalf("run a labelled container: %v", err)
		}
		t.Cleanup(func() { _ = c.Terminate(context.Background()) })
		return c
	}
	orphan := run(host + ":" + strconv.Itoa(dead.Process.Pid))
	alive := run(host + ":" + strconv.Itoa(os.Getpid()))

	if _, err := newContainers(ctx, eng, DefaultImages(DefaultKeycloakVersion)); err != nil {
		t.Fatal(err)
	}
	if _, err := orphan.State(ctx); err == nil {
		t.Error("the container of a dead process is still there")
	}
	if st, err := alive.State(ctx); err != nil || !st.Running {
		t.Errorf("the container of a live process: state %v, %v; want running", st, err)
	}
}
