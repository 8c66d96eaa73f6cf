//go:build containers

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
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
	orphan := runLabelled(t, ctx, eng, host+":"+strconv.Itoa(dead.Process.Pid))
	alive := runLabelled(t, ctx, eng, host+":"+strconv.Itoa(os.Getpid()))

	if _, err := newContainers(ctx, eng, DefaultImages(DefaultKeycloakVersion)); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := eng.call(ctx, http.MethodGet, "/containers/"+orphan+"/json", 10*time.Second); code != http.StatusNotFound {
		t.Errorf("the container of a dead process: inspect answered %d, want 404 (removed)", code)
	}
	code, body, _ := eng.call(ctx, http.MethodGet, "/containers/"+alive+"/json", 10*time.Second)
	if code != http.StatusOK || !strings.Contains(string(body), `"Running":true`) {
		t.Errorf("the container of a live process: inspect answered %d, want it running", code)
	}
}

// runLabelled starts a container of the Mosquitto image labelled as a
// stack's, owned by owner (host:pid), over the Engine API (no
// testcontainers client, whose connections would outlive the test).
func runLabelled(t *testing.T, ctx context.Context, eng *dockerEngine, owner string) string {
	t.Helper()
	spec, _ := json.Marshal(map[string]any{
		"Image":  DefaultImages(DefaultKeycloakVersion).Mosquitto,
		"Labels": map[string]string{labelStack: "test-orphans", labelOwner: owner},
	})
	post := func(path string, body []byte) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, eng.base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := eng.client.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	code, body := post("/containers/create", spec)
	var created struct {
		ID string `json:"Id"`
	}
	if code != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("create a labelled container: %d %s", code, body)
	}
	t.Cleanup(func() { _ = eng.removeContainer(context.Background(), created.ID) })
	if code, body := post("/containers/"+created.ID+"/start", nil); code != http.StatusNoContent {
		t.Fatalf("start the labelled container: %d %s", code, body)
	}
	return created.ID
}

// A Keycloak container stopped and started again (StopService,
// StartService) keeps its realm: a client created just before the stop is
// there afterwards and its secret still works.
func TestKeycloakContainerRestartKeepsClients(t *testing.T) {
	st := Shared(t)
	if st.Launcher != "containers" {
		t.Fatalf("this test needs a stack of the containers launcher, not %q", st.Launcher)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	clientID := "restart-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	secret := "s-" + clientID
	adminTok := clientToken(t, st, st.AdminClientID, st.AdminClientSecret)
	body := `{"clientId":"` + clientID + `","secret":"` + secret + `","publicClient":false,"serviceAccountsEnabled":true,"standardFlowEnabled":false}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, st.KeycloakURL+"/admin/realms/"+st.Realm+"/clients", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminTok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create client: %s", resp.Status)
	}
	t.Cleanup(func() {
		tok := clientToken(t, st, st.AdminClientID, st.AdminClientSecret)
		req, _ := http.NewRequest(http.MethodGet, st.KeycloakURL+"/admin/realms/"+st.Realm+"/clients?clientId="+clientID, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var cs []struct{ ID string }
			_ = json.NewDecoder(resp.Body).Decode(&cs)
			resp.Body.Close()
			for _, c := range cs {
				del, _ := http.NewRequest(http.MethodDelete, st.KeycloakURL+"/admin/realms/"+st.Realm+"/clients/"+c.ID, nil)
				del.Header.Set("Authorization", "Bearer "+tok)
				if r, err := http.DefaultClient.Do(del); err == nil {
					r.Body.Close()
				}
			}
		}
	})

	if err := st.StopService(ctx, Keycloak); err != nil {
		t.Fatalf("stop keycloak: %v", err)
	}
	if _, err := http.Get(st.IssuerURL + "/.well-known/openid-configuration"); err == nil {
		t.Error("keycloak still answers after StopService")
	}
	if err := st.StartService(ctx, Keycloak); err != nil {
		t.Fatalf("start keycloak: %v", err)
	}
	if got := clientToken(t, st, clientID, secret); got == "" {
		t.Error("the client created before the restart gets no token after it")
	}
}

// clientToken is a client-credentials token, "" when refused.
func clientToken(t *testing.T, st *Stack, clientID, secret string) string {
	t.Helper()
	resp, err := http.PostForm(st.TokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}})
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	return tok.AccessToken
}
