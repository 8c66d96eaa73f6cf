package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
)

// clearServeEnv sets every serve variable to empty, so the environment the
// tests run in does not leak into a command.
func clearServeEnv(t *testing.T) {
	t.Helper()
	for _, v := range app.Vars {
		t.Setenv(v.Name, "")
	}
}

// serveEnv sets the full serve environment for the stack, on a database of
// the test's own, and returns the Config it loads as.
func serveEnv(t *testing.T, st *integration.Stack) app.Config {
	t.Helper()
	clearServeEnv(t)
	for k, v := range map[string]string{
		"DATABASE_URL":                 st.NewDatabase(t),
		"KEYCLOAK_URL":                 st.KeycloakURL,
		"KEYCLOAK_REALM":               st.Realm,
		"KEYCLOAK_ADMIN_CLIENT_ID":     st.AdminClientID,
		"KEYCLOAK_ADMIN_CLIENT_SECRET": st.AdminClientSecret,
		"BASE_URL":                     "http://127.0.0.1:1",
		"SECRET_KEY":                   randHex(32),
		"FIRMWARE_DIR":                 t.TempDir(),
		"MQTT_URL":                     "",
		"LOG_LEVEL":                    "error",
	} {
		t.Setenv(k, v)
	}
	cfg, err := app.LoadConfig(os.Getenv)
	if err != nil {
		t.Fatalf("serve environment: %v", err)
	}
	return cfg
}

func migrationsPending(t *testing.T, dsn string) int {
	t.Helper()
	ctx := testContext(t, time.Minute)
	db, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("open database: %v", err)
	}
	defer db.Close()
	n, err := db.MigrationStatus(ctx)
	if err != nil {
		t.Fatalf("migration status: %v", err)
	}
	return n
}

func TestMigrate(t *testing.T) {
	st := integration.Shared(t)
	dsn := st.NewDatabase(t)
	clearServeEnv(t)
	t.Setenv("DATABASE_URL", dsn)
	if n := migrationsPending(t, dsn); n == 0 {
		t.Fatal("a new database has no pending migrations")
	}
	for _, run := range []string{"first", "second"} {
		code, stdout, stderr := runCLI(t, "migrate")
		if code != 0 {
			t.Fatalf("%s migrate: exit %d, stderr %q", run, code, stderr)
		}
		if want := "migrations applied\n"; stdout != want {
			t.Errorf("%s migrate: stdout = %q, want %q", run, stdout, want)
		}
		if n := migrationsPending(t, dsn); n != 0 {
			t.Errorf("after the %s migrate: %d migrations pending, want 0", run, n)
		}
	}
}

func TestMigrateFails(t *testing.T) {
	const password = "s3cr3t-value-xyz"
	tests := []struct {
		name, dsn, want string
	}{
		{"unset", "", "DATABASE_URL"},
		{"blank", "   ", "DATABASE_URL"},
		{"unreachable", "postgres://espmdm:" + password + "@127.0.0.1:1/espmdm?sslmode=disable", ""},
		{"malformed", "postgres://espmdm:" + password + "@127.0.0.1:port/espmdm", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearServeEnv(t)
			t.Setenv("DATABASE_URL", tt.dsn)
			code, stdout, stderr := runCLIContext(t, testContext(t, 2*time.Minute), "migrate")
			if code == 0 {
				t.Fatalf("exit 0, stdout %q", stdout)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not name %s", stderr, tt.want)
			}
			if strings.Contains(stderr, password) || strings.Contains(stdout, password) {
				t.Errorf("output shows the database password: stderr %q", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
		})
	}
}

func TestServeHelpListsEveryVariable(t *testing.T) {
	code, stdout, stderr := runCLI(t, "serve", "--help")
	if code != 0 {
		t.Fatalf("serve --help: exit %d, stderr %q", code, stderr)
	}
	lines := map[string]bool{}
	for _, line := range strings.Split(stdout, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			lines[f[0]] = true
		}
	}
	for _, v := range app.Vars {
		if !lines[v.Name] {
			t.Errorf("serve --help has no line for %s", v.Name)
		}
	}
}

func TestServeEmptyEnvironment(t *testing.T) {
	clearServeEnv(t)
	code, stdout, stderr := runCLIContext(t, testContext(t, 30*time.Second), "serve")
	if code == 0 {
		t.Fatalf("serve with an empty environment: exit 0, stderr %q", stderr)
	}
	if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 {
		t.Errorf("stderr has %d lines, want 1: %q", len(lines), stderr)
	}
	if !strings.Contains(stderr, "DATABASE_URL") {
		t.Errorf("stderr %q does not name DATABASE_URL", stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
}

// kcAdmin calls Keycloak's Admin REST API for the stack's realm with the
// admin service account's token, as an operator would with curl.
type kcAdmin struct {
	t  *testing.T
	st *integration.Stack
}

func (k kcAdmin) token() string {
	k.t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {k.st.AdminClientID}, "client_secret": {k.st.AdminClientSecret}}
	resp, err := http.PostForm(k.st.TokenURL, form)
	if err != nil {
		k.t.Fatalf("admin token: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		k.t.Fatalf("admin token response: %v", err)
	}
	if resp.StatusCode != http.StatusOK || body.AccessToken == "" {
		k.t.Fatalf("admin token: %s %s", resp.Status, body.Error)
	}
	return body.AccessToken
}

func (k kcAdmin) call(method, path string, body any) (*http.Response, []byte) {
	k.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			k.t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, k.st.KeycloakURL+"/admin/realms/"+k.st.Realm+path, r)
	if err != nil {
		k.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+k.token())
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		k.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		k.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp, b
}

// uuid returns the Keycloak id of the client clientID ("" when it does not
// exist).
func (k kcAdmin) uuid(clientID string) string {
	k.t.Helper()
	resp, body := k.call(http.MethodGet, "/clients?"+url.Values{"clientId": {clientID}}.Encode(), nil)
	if resp.StatusCode != http.StatusOK {
		k.t.Fatalf("find client %s: %s %s", clientID, resp.Status, body)
	}
	var found []struct {
		ID       string `json:"id"`
		ClientID string `json:"clientId"`
	}
	if err := json.Unmarshal(body, &found); err != nil {
		k.t.Fatalf("find client %s: %v", clientID, err)
	}
	for _, c := range found {
		if c.ClientID == clientID {
			return c.ID
		}
	}
	return ""
}

// create creates a confidential service-account client, with attributes,
// and deletes it when the test ends if it is still there.
func (k kcAdmin) create(clientID string, attributes map[string]string) {
	k.t.Helper()
	resp, body := k.call(http.MethodPost, "/clients", map[string]any{
		"clientId": clientID, "enabled": true, "protocol": "openid-connect", "publicClient": false,
		"clientAuthenticatorType": "client-secret", "serviceAccountsEnabled": true,
		"standardFlowEnabled": false, "directAccessGrantsEnabled": false, "implicitFlowEnabled": false,
		"attributes": attributes,
	})
	if resp.StatusCode != http.StatusCreated {
		k.t.Fatalf("create client %s: %s %s", clientID, resp.Status, body)
	}
	k.cleanup(clientID)
}

// cleanup deletes clientID when the test ends, if it still exists.
func (k kcAdmin) cleanup(clientID string) {
	k.t.Cleanup(func() {
		if id := k.uuid(clientID); id != "" {
			k.delete(clientID)
		}
	})
}

func (k kcAdmin) delete(clientID string) {
	k.t.Helper()
	id := k.uuid(clientID)
	if id == "" {
		k.t.Fatalf("delete client %s: it does not exist", clientID)
	}
	if resp, body := k.call(http.MethodDelete, "/clients/"+id, nil); resp.StatusCode != http.StatusNoContent {
		k.t.Fatalf("delete client %s: %s %s", clientID, resp.Status, body)
	}
}

type reconcileReport struct {
	DeletedOrphans []string `json:"deleted_orphans"`
	MissingClients []string `json:"missing_clients"`
	Failed         []string `json:"failed"`
}

// reconcileJSON runs `espmdm reconcile --json` and decodes its report.
func reconcileJSON(t *testing.T) (code int, rep reconcileReport, stderr string) {
	t.Helper()
	code, stdout, stderr := runCLIContext(t, testContext(t, 3*time.Minute), "reconcile", "--json")
	var keys map[string]json.RawMessage
	if err := json.Unmarshal([]byte(stdout), &keys); err != nil {
		t.Fatalf("reconcile --json: exit %d, stdout is not JSON (%v): %q, stderr %q", code, err, stdout, stderr)
	}
	keyNames := []string{"deleted_orphans", "missing_clients", "failed",
		"accounts_made", "accounts_repaired", "accounts_deleted", "accounts_failed"}
	for _, k := range keyNames {
		if raw, ok := keys[k]; !ok || !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("[")) {
			t.Errorf("reconcile --json: %s = %s, want a list", k, raw)
		}
	}
	if len(keys) != len(keyNames) {
		t.Errorf("reconcile --json has %d keys, want %d: %s", len(keys), len(keyNames), stdout)
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("reconcile --json: %v", err)
	}
	return code, rep, stderr
}

func TestReconcileDeletesOrphans(t *testing.T) {
	st := integration.Shared(t)
	serveEnv(t, st)
	kc := kcAdmin{t, st}
	code := "rc_orphan_" + randHex(3)
	// A client espmdm did not stamp (made by hand, or before the stamp
	// existed) counts as old; one stamped now is within the grace period
	// (its device row may still be on its way) and stays.
	old := model.ClientID(code, randHex(4))
	young := model.ClientID(code, randHex(4))
	kc.create(old, nil)
	kc.create(young, map[string]string{"espmdm.created": strconv.FormatInt(time.Now().Unix(), 10)})

	exit, rep, stderr := reconcileJSON(t)
	if exit != 0 {
		t.Errorf("reconcile --json: exit %d, want 0; stderr %q", exit, stderr)
	}
	if !slices.Contains(rep.DeletedOrphans, old) {
		t.Errorf("deleted_orphans = %v, want %s among them", rep.DeletedOrphans, old)
	}
	if n := len(rep.DeletedOrphans) - 1; n > 0 {
		// The realm is shared: orphans of other tests go too.
		t.Logf("reconcile also deleted %d other orphaned clients of the shared realm", n)
	}
	if slices.Contains(rep.DeletedOrphans, young) {
		t.Errorf("deleted_orphans = %v, want %s (created now) kept", rep.DeletedOrphans, young)
	}
	if len(rep.MissingClients) != 0 || len(rep.Failed) != 0 {
		t.Errorf("missing_clients = %v, failed = %v, want none (the database has no devices)", rep.MissingClients, rep.Failed)
	}
	if id := kc.uuid(old); id != "" {
		t.Errorf("orphan %s still exists in Keycloak", old)
	}
	if id := kc.uuid(young); id == "" {
		t.Errorf("young client %s was deleted from Keycloak", young)
	}
}

func TestReconcileReportsMissingClients(t *testing.T) {
	st := integration.Shared(t)
	cfg := serveEnv(t, st)
	kc := kcAdmin{t, st}

	var models ports.ModelAdmin
	var devs ports.DeviceAdmin
	core := fx.New(app.Core(cfg), fx.Populate(&models, &devs))
	if err := core.Err(); err != nil {
		t.Fatalf("build the core: %v", err)
	}
	ctx := testContext(t, 3*time.Minute)
	if err := core.Start(ctx); err != nil {
		t.Fatalf("start the core: %v", err)
	}
	t.Cleanup(func() {
		if err := core.Stop(testContext(t, time.Minute)); err != nil {
			t.Errorf("stop the core: %v", err)
		}
	})
	m, err := models.CreateModel(ctx, ports.NewModel{Code: "rc_missing_" + randHex(3), Name: "reconcile test"})
	if err != nil {
		t.Fatalf("create model: %v", err)
	}
	var devices []model.Device
	for range 2 {
		d, err := devs.CreateDevice(ctx, ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatalf("create device: %v", err)
		}
		kc.cleanup(d.ClientID())
		devices = append(devices, d)
	}
	lost, kept := devices[0].ClientID(), devices[1].ClientID()
	kc.delete(lost)

	t.Run("json", func(t *testing.T) {
		exit, rep, stderr := reconcileJSON(t)
		if exit != 1 {
			t.Errorf("exit %d, want 1; stderr %q", exit, stderr)
		}
		if want := []string{lost}; !slices.Equal(rep.MissingClients, want) {
			t.Errorf("missing_clients = %v, want %v", rep.MissingClients, want)
		}
		if slices.Contains(rep.DeletedOrphans, kept) {
			t.Errorf("deleted_orphans = %v: the client of an existing device was deleted", rep.DeletedOrphans)
		}
		if !strings.Contains(stderr, "reconcile found problems") {
			t.Errorf("stderr = %q, want it to say reconcile found problems", stderr)
		}
	})
	t.Run("text", func(t *testing.T) {
		exit, stdout, stderr := runCLIContext(t, testContext(t, 3*time.Minute), "reconcile")
		if exit != 1 {
			t.Errorf("exit %d, want 1; stderr %q", exit, stderr)
		}
		if want := "devices missing their client: 1\n  - " + lost + "\n"; !strings.Contains(stdout, want) {
			t.Errorf("stdout = %q, want it to contain %q", stdout, want)
		}
	})
	// Reconcile reports, it does not repair: the client is still missing,
	// the other device's client is untouched.
	if id := kc.uuid(lost); id != "" {
		t.Errorf("client %s exists again after reconcile, want it only reported", lost)
	}
	if id := kc.uuid(kept); id == "" {
		t.Errorf("client %s of an existing device is gone", kept)
	}
}
