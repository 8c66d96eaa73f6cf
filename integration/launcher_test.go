package integration

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Without a Docker engine, auto runs the processes launcher and says why in
// one line; containers refuses with the engine's address.
func TestLauncherWithoutEngine(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/espmdm-test/docker.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	images := Images{}.withDefaults(DefaultKeycloakVersion)

	l, note, err := chooseLauncher(ctx, "auto", images)
	if err != nil {
		t.Fatalf("auto: %v", err)
	}
	if l.Name() != "processes" {
		t.Errorf("auto chose %s, want processes", l.Name())
	}
	if !strings.Contains(note, "no Docker engine answers at unix:///nonexistent/espmdm-test/docker.sock") || strings.Contains(note, "\n") {
		t.Errorf("auto note = %q, want one line naming the engine address", note)
	}

	if _, _, err := chooseLauncher(ctx, "containers", images); err == nil || !strings.Contains(err.Error(), "no Docker engine answers") {
		t.Errorf("containers without an engine: err = %v, want one saying no engine answers", err)
	}
	if _, _, err := chooseLauncher(ctx, "kubernetes", images); err == nil || !strings.Contains(err.Error(), `unknown launcher "kubernetes"`) {
		t.Errorf("unknown launcher: err = %v", err)
	}
}

func TestImagesDefaults(t *testing.T) {
	t.Setenv(EnvPostgresImage, "")
	t.Setenv(EnvKeycloakImage, "")
	t.Setenv(EnvMosquittoImage, "registry.example/mosquitto:2")
	got := Images{Postgres: "my/postgres:16"}.withDefaults("26.7.3")
	want := Images{Postgres: "my/postgres:16", Keycloak: "quay.io/keycloak/keycloak:26.7.3", Mosquitto: "registry.example/mosquitto:2"}
	if got != want {
		t.Errorf("withDefaults = %+v, want %+v", got, want)
	}
	if got := DefaultImages("26.7.3"); got.Postgres != "postgres:15" || got.Keycloak != want.Keycloak {
		t.Errorf("DefaultImages = %+v, want the official postgres:15 and %s", got, want.Keycloak)
	}
}
