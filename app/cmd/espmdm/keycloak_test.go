package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/integration"
)

// masterAdmin calls Keycloak's Admin REST API for realm with a token of
// the stack's master-realm admin user, as the setup does.
type masterAdmin struct {
	t     *testing.T
	st    *integration.Stack
	realm string
}

func (m masterAdmin) token() string {
	m.t.Helper()
	form := url.Values{"grant_type": {"password"}, "client_id": {"admin-cli"},
		"username": {m.st.KeycloakAdminUser}, "password": {m.st.KeycloakAdminPassword}}
	resp, err := http.PostForm(m.st.KeycloakURL+"/realms/master/protocol/openid-connect/token", form)
	if err != nil {
		m.t.Fatalf("master admin token: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.AccessToken == "" {
		m.t.Fatalf("master admin token: %s %v", resp.Status, err)
	}
	return body.AccessToken
}

// call sends a request to path below /admin/realms/{realm} ("" for the
// realm itself; a path starting with "/admin" is used as is).
func (m masterAdmin) call(method, path string, body any) (int, []byte) {
	m.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			m.t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	full := m.st.KeycloakURL + "/admin/realms/" + m.realm + path
	if strings.HasPrefix(path, "/admin") {
		full = m.st.KeycloakURL + path
	}
	req, err := http.NewRequest(method, full, r)
	if err != nil {
		m.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+m.token())
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		m.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// get GETs path and decodes its 200 answer into v.
func (m masterAdmin) get(path string, v any) {
	m.t.Helper()
	status, body := m.call(http.MethodGet, path, nil)
	if status != http.StatusOK {
		m.t.Fatalf("GET %s: %d %s", path, status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		m.t.Fatalf("GET %s: %v", path, err)
	}
}

// deleteRealmAtEnd deletes the realm when the test ends (if it exists).
func (m masterAdmin) deleteRealmAtEnd() {
	m.t.Cleanup(func() {
		if status, body := m.call(http.MethodDelete, "", nil); status != http.StatusNoContent && status != http.StatusNotFound {
			m.t.Errorf("delete realm %s: %d %s", m.realm, status, body)
		}
	})
}

func (m masterAdmin) clientUUID(clientID string) string {
	m.t.Helper()
	var list []struct {
		ID       string `json:"id"`
		ClientID string `json:"clientId"`
	}
	m.get("/clients?"+url.Values{"clientId": {clientID}}.Encode(), &list)
	for _, c := range list {
		if c.ClientID == clientID {
			return c.ID
		}
	}
	return ""
}

// roleNames are the names of the roles a role-mappings GET returns.
func (m masterAdmin) roleNames(path string) []string {
	m.t.Helper()
	var roles []struct {
		Name string `json:"name"`
	}
	m.get(path, &roles)
	var names []string
	for _, r := range roles {
		names = append(names, r.Name)
	}
	return names
}

func (m masterAdmin) saUser(clientID string) string {
	m.t.Helper()
	var u struct {
		ID string `json:"id"`
	}
	m.get("/clients/"+m.clientUUID(clientID)+"/service-account-user", &u)
	return u.ID
}

// clientPolicies returns the realm's own client profiles and policies.
func (m masterAdmin) clientPolicies() (profiles, policies map[string]map[string]any) {
	m.t.Helper()
	var pr struct {
		Profiles []map[string]any `json:"profiles"`
	}
	var po struct {
		Policies []map[string]any `json:"policies"`
	}
	m.get("/client-policies/profiles", &pr)
	m.get("/client-policies/policies", &po)
	profiles, policies = map[string]map[string]any{}, map[string]map[string]any{}
	for _, p := range pr.Profiles {
		profiles[p["name"].(string)] = p
	}
	for _, p := range po.Policies {
		policies[p["name"].(string)] = p
	}
	return profiles, policies
}

// runSetup runs `espmdm keycloak setup` against the stack's Keycloak as
// its master admin.
func runSetup(t *testing.T, st *integration.Stack, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	t.Setenv(setupPasswordEnv, st.KeycloakAdminPassword)
	t.Setenv(setupClientSecretEnv, "")
	return runCLIContext(t, testContext(t, 5*time.Minute), append([]string{"keycloak", "setup", "--url", st.KeycloakURL}, args...)...)
}

// setupEnv reads the KEY=value lines of the setup's output.
func setupEnv(stdout string) map[string]string {
	env := map[string]string{}
	for _, line := range strings.Split(stdout, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") && !strings.Contains(k, " ") {
			env[k] = v
		}
	}
	return env
}

// jwtClaims decodes a token's payload (unverified: the test reads its own
// token from Keycloak).
func jwtClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("token payload: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatalf("token payload: %v", err)
	}
	return claims
}

// stringList reads a JSON list of strings (other entries are left out).
func stringList(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// realmRoles reads realm_access.roles of a token.
func realmRoles(t *testing.T, token string) []string {
	t.Helper()
	ra, _ := jwtClaims(t, token)["realm_access"].(map[string]any)
	return stringList(ra["roles"])
}

func TestKeycloakSetup(t *testing.T) {
	st := integration.Shared(t)
	realm := "setup_" + randHex(4)
	m := masterAdmin{t, st, realm}

	// The realm exists already, disabled, with a client profile and policy
	// of its own that the setup must keep, and the kc-admin-api client
	// scope of Keycloak 26.8.2 and later (made by hand here: the stack's
	// Keycloak is older).
	if status, body := m.call(http.MethodPost, "/admin/realms", map[string]any{"realm": realm, "enabled": false}); status != http.StatusCreated {
		t.Fatalf("create realm %s: %d %s", realm, status, body)
	}
	m.deleteRealmAtEnd()
	if status, body := m.call(http.MethodPost, "/client-scopes", map[string]any{"name": "kc-admin-api", "protocol": "openid-connect"}); status != http.StatusCreated {
		t.Fatalf("create client scope kc-admin-api: %d %s", status, body)
	}
	if status, body := m.call(http.MethodPut, "/client-policies/profiles", map[string]any{"profiles": []any{
		map[string]any{"name": "unrelated-profile", "description": "not espmdm's", "executors": []any{}},
	}}); status != http.StatusNoContent {
		t.Fatalf("create the unrelated profile: %d %s", status, body)
	}
	if status, body := m.call(http.MethodPut, "/client-policies/policies", map[string]any{"policies": []any{
		map[string]any{"name": "unrelated-policy", "enabled": false, "profiles": []any{"unrelated-profile"},
			"conditions": []any{map[string]any{"condition": "client-access-type", "configuration": map[string]any{"type": []any{"public"}}}}},
	}}); status != http.StatusNoContent {
		t.Fatalf("create the unrelated policy: %d %s", status, body)
	}

	code, stdout, stderr := runSetup(t, st, "--realm", realm, "--rotation-grace", "2d")
	if code != 0 {
		t.Fatalf("first setup: exit %d, stderr %q, stdout %q", code, stderr, stdout)
	}
	if stderr != "" {
		t.Errorf("first setup: stderr = %q, want nothing", stderr)
	}
	for _, want := range []string{
		"updated realm " + realm + ": enabled\n",
		"updated client iotsupport-admin: default client scope kc-admin-api\n",
		"created realm role iotdevice\n", "created realm role mdm-admin\n", "created realm role mdm-viewer\n",
		"created client iotsupport-admin\n", "created client espmdm-operator\n",
		"granted service-account-iotsupport-admin the realm-management roles manage-clients, view-clients, query-clients, view-realm\n",
		"granted service-account-espmdm-operator the realm role mdm-admin\n",
		"created realm role mdm-pipeline\n", "created client espmdm-pipeline\n",
		"granted service-account-espmdm-pipeline the realm role mdm-pipeline\n",
		"created client profile espmdm-secret-rotation", "created client policy espmdm-secret-rotation\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("first setup output lacks %q:\n%s", want, redactSetup(stdout))
		}
	}
	if strings.Contains(stdout, "created realm "+realm) || strings.Contains(stdout, "unchanged") {
		t.Errorf("first setup output on an existing realm:\n%s", redactSetup(stdout))
	}

	// What Keycloak now holds.
	for _, role := range []string{"iotdevice", "mdm-admin", "mdm-viewer"} {
		if status, body := m.call(http.MethodGet, "/roles/"+role, nil); status != http.StatusOK {
			t.Errorf("realm role %s: %d %s", role, status, body)
		}
	}
	for _, clientID := range []string{"iotsupport-admin", "espmdm-operator"} {
		var c map[string]any
		m.get("/clients/"+m.clientUUID(clientID), &c)
		for k, want := range map[string]any{"enabled": true, "publicClient": false, "serviceAccountsEnabled": true,
			"standardFlowEnabled": false, "implicitFlowEnabled": false, "directAccessGrantsEnabled": false} {
			if c[k] != want {
				t.Errorf("client %s: %s = %v, want %v", clientID, k, c[k], want)
			}
		}
	}
	var scopes []struct {
		Name string `json:"name"`
	}
	m.get("/clients/"+m.clientUUID("iotsupport-admin")+"/default-client-scopes", &scopes)
	if !slices.ContainsFunc(scopes, func(s struct {
		Name string `json:"name"`
	}) bool {
		return s.Name == "kc-admin-api"
	}) {
		t.Errorf("iotsupport-admin's default client scopes %v lack kc-admin-api", scopes)
	}
	rm := m.clientUUID("realm-management")
	adminRoles := m.roleNames("/users/" + m.saUser("iotsupport-admin") + "/role-mappings/clients/" + rm)
	for _, want := range keycloak.SetupAdminRoles {
		if !slices.Contains(adminRoles, want) {
			t.Errorf("iotsupport-admin's service account has realm-management roles %v, want %s among them", adminRoles, want)
		}
	}
	if got := m.roleNames("/users/" + m.saUser("espmdm-operator") + "/role-mappings/realm"); !slices.Contains(got, "mdm-admin") {
		t.Errorf("espmdm-operator's service account has realm roles %v, want mdm-admin among them", got)
	}
	profiles, policies := m.clientPolicies()
	if _, ok := profiles["unrelated-profile"]; !ok {
		t.Errorf("the realm's own profile is gone: %v", profiles)
	}
	if _, ok := policies["unrelated-policy"]; !ok {
		t.Errorf("the realm's own policy is gone: %v", policies)
	}
	prof, _ := json.Marshal(profiles["espmdm-secret-rotation"])
	for _, want := range []string{`"executor":"secret-rotation"`, `"rotated-expiration-period":"172800"`,
		`"expiration-period":"157680000"`, `"remaining-rotation-period":"0"`} {
		if !strings.Contains(string(prof), want) {
			t.Errorf("profile espmdm-secret-rotation = %s, want %s in it", prof, want)
		}
	}
	pol, _ := json.Marshal(policies["espmdm-secret-rotation"])
	for _, want := range []string{`"enabled":true`, `"condition":"client-access-type"`, `"type":["confidential"]`, `"profiles":["espmdm-secret-rotation"]`} {
		if !strings.Contains(string(pol), want) {
			t.Errorf("policy espmdm-secret-rotation = %s, want %s in it", pol, want)
		}
	}

	// The environment it printed.
	env := setupEnv(stdout)
	for k, want := range map[string]string{
		"KEYCLOAK_URL": st.KeycloakURL, "KEYCLOAK_REALM": realm, "KEYCLOAK_ADMIN_CLIENT_ID": "iotsupport-admin",
		"DEVICE_AUDIENCE": "espmdm-iot", "ROTATION_GRACE": "2d", "ROTATION_MODE": "grace", "OPERATOR_CLIENT_ID": "espmdm-operator",
	} {
		if env[k] != want {
			t.Errorf("printed %s = %q, want %q", k, env[k], want)
		}
	}
	if env["PIPELINE_CLIENT_ID"] != "espmdm-pipeline" {
		t.Errorf("printed PIPELINE_CLIENT_ID = %q, want espmdm-pipeline (the run created it)", env["PIPELINE_CLIENT_ID"])
	}
	for _, k := range []string{"KEYCLOAK_ADMIN_CLIENT_SECRET", "OPERATOR_CLIENT_SECRET", "PIPELINE_CLIENT_SECRET"} {
		if env[k] == "" {
			t.Fatalf("printed no %s:\n%s", k, redactSetup(stdout))
		}
		if n := strings.Count(stdout, env[k]); n != 1 {
			t.Errorf("%s appears %d times in the output, want once (in the environment block)", k, n)
		}
	}
	tokenURL := st.KeycloakURL + "/realms/" + realm + "/protocol/openid-connect/token"
	kc := kcAdmin{t, &integration.Stack{KeycloakURL: env["KEYCLOAK_URL"], Realm: env["KEYCLOAK_REALM"], TokenURL: tokenURL,
		AdminClientID: env["KEYCLOAK_ADMIN_CLIENT_ID"], AdminClientSecret: env["KEYCLOAK_ADMIN_CLIENT_SECRET"]}}
	if id := kc.uuid("espmdm-operator"); id == "" {
		t.Error("iotsupport-admin, with the printed secret, does not see espmdm-operator in the client list")
	}
	opEnv := map[string]string{"OIDC_TOKEN_URL": tokenURL, "OPERATOR_CLIENT_ID": env["OPERATOR_CLIENT_ID"], "OPERATOR_CLIENT_SECRET": env["OPERATOR_CLIENT_SECRET"]}
	if roles := realmRoles(t, operatorToken(t, http.DefaultClient, opEnv)); !slices.Contains(roles, "mdm-admin") {
		t.Errorf("operator token realm roles = %v, want mdm-admin among them", roles)
	}
	pipeEnv := map[string]string{"OIDC_TOKEN_URL": tokenURL, "OPERATOR_CLIENT_ID": env["PIPELINE_CLIENT_ID"], "OPERATOR_CLIENT_SECRET": env["PIPELINE_CLIENT_SECRET"]}
	if roles := realmRoles(t, operatorToken(t, http.DefaultClient, pipeEnv)); !slices.Contains(roles, "mdm-pipeline") || slices.Contains(roles, "mdm-admin") {
		t.Errorf("pipeline token realm roles = %v, want mdm-pipeline and not mdm-admin", roles)
	}

	// A second run changes nothing.
	code, again, stderr := runSetup(t, st, "--realm", realm, "--rotation-grace", "2d")
	if code != 0 {
		t.Fatalf("second setup: exit %d, stderr %q", code, stderr)
	}
	if !strings.HasPrefix(again, "unchanged: ") {
		t.Errorf("second setup does not say unchanged:\n%s", redactSetup(again))
	}
	for _, verb := range []string{"created", "updated", "granted"} {
		if strings.Contains(again, verb+" ") {
			t.Errorf("second setup changed something:\n%s", redactSetup(again))
		}
	}
	// The pipeline's secret is printed only by the run that made it.
	delete(env, "PIPELINE_CLIENT_ID")
	delete(env, "PIPELINE_CLIENT_SECRET")
	if got := setupEnv(again); !reflect.DeepEqual(got, env) {
		t.Errorf("second setup printed another environment")
	}
	if p2, q2 := m.clientPolicies(); !reflect.DeepEqual(p2, profiles) || !reflect.DeepEqual(q2, policies) {
		t.Errorf("second setup changed the client profiles or policies")
	}

	// Drift is repaired: a flow switched on, a role taken away.
	opUUID := m.clientUUID("espmdm-operator")
	var op map[string]any
	m.get("/clients/"+opUUID, &op)
	op["directAccessGrantsEnabled"] = true
	if status, body := m.call(http.MethodPut, "/clients/"+opUUID, op); status != http.StatusNoContent {
		t.Fatalf("switch on direct grants of espmdm-operator: %d %s", status, body)
	}
	var viewRealm map[string]any
	m.get("/clients/"+rm+"/roles/view-realm", &viewRealm)
	if status, body := m.call(http.MethodDelete, "/users/"+m.saUser("iotsupport-admin")+"/role-mappings/clients/"+rm, []any{viewRealm}); status != http.StatusNoContent {
		t.Fatalf("take view-realm from iotsupport-admin: %d %s", status, body)
	}
	code, repaired, stderr := runSetup(t, st, "--realm", realm, "--rotation-grace", "2d")
	if code != 0 {
		t.Fatalf("setup after drift: exit %d, stderr %q", code, stderr)
	}
	if want := "granted service-account-iotsupport-admin the realm-management roles view-realm\n" +
		"updated client espmdm-operator: directAccessGrantsEnabled\n\n"; !strings.HasPrefix(repaired, want) {
		t.Errorf("setup after drift printed:\n%s\nwant it to start with:\n%s", redactSetup(repaired), want)
	}
	if got := setupEnv(repaired); !reflect.DeepEqual(got, env) {
		t.Errorf("setup after drift printed another environment (a secret changed?)")
	}
	m.get("/clients/"+opUUID, &op)
	if op["directAccessGrantsEnabled"] != false {
		t.Errorf("espmdm-operator directAccessGrantsEnabled = %v after the repair", op["directAccessGrantsEnabled"])
	}

	// Another grace updates the profile, and only it.
	code, third, stderr := runSetup(t, st, "--realm", realm, "--rotation-grace", "36h", "--json")
	if code != 0 {
		t.Fatalf("third setup: exit %d, stderr %q", code, stderr)
	}
	var res setupResult
	if err := json.Unmarshal([]byte(third), &res); err != nil {
		t.Fatalf("setup --json: %v", err)
	}
	if len(res.Changes) != 1 || !strings.HasPrefix(res.Changes[0], "updated client profile espmdm-secret-rotation") {
		t.Errorf("setup with another grace: changes = %q, want the profile updated", res.Changes)
	}
	if res.Env["ROTATION_GRACE"] != "36h" || !res.RotationFeature {
		t.Errorf("setup --json: grace %q, feature %v", res.Env["ROTATION_GRACE"], res.RotationFeature)
	}
	profiles, policies = m.clientPolicies()
	if prof, _ := json.Marshal(profiles["espmdm-secret-rotation"]); !strings.Contains(string(prof), `"rotated-expiration-period":"129600"`) {
		t.Errorf("profile after a grace of 36h: %s", prof)
	}
	if _, ok := profiles["unrelated-profile"]; !ok {
		t.Error("the realm's own profile is gone after the update")
	}
	if _, ok := policies["unrelated-policy"]; !ok {
		t.Error("the realm's own policy is gone after the update")
	}
}

// redactSetup hides the secrets of a setup's output, for messages.
func redactSetup(stdout string) string {
	lines := strings.Split(stdout, "\n")
	for i, l := range lines {
		if k, _, ok := strings.Cut(l, "="); ok && strings.HasSuffix(k, "SECRET") {
			lines[i] = k + "=<redacted>"
		}
	}
	return strings.Join(lines, "\n")
}

// TestKeycloakSetupNewRealm creates a realm from nothing and serves espmdm
// on it with the printed environment: it starts in grace mode.
func TestKeycloakSetupNewRealm(t *testing.T) {
	st := integration.Shared(t)
	realm := "setup_" + randHex(4)
	m := masterAdmin{t, st, realm}
	m.deleteRealmAtEnd()
	code, stdout, stderr := runSetup(t, st, "--realm", realm, "--json", "--console-redirect", "http://127.0.0.1:1/console/*", "--console-url", "http://127.0.0.1:2/")
	if code != 0 {
		t.Fatalf("setup: exit %d, stderr %q", code, stderr)
	}
	var res setupResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("setup --json: %v", err)
	}
	if len(res.Changes) == 0 || res.Changes[0] != "created realm "+realm {
		t.Errorf("changes = %q, want the realm created first", res.Changes)
	}
	if !slices.Contains(res.Changes, "created client espmdm-console") {
		t.Errorf("changes = %q, want the console client created", res.Changes)
	}
	var console map[string]any
	m.get("/clients/"+m.clientUUID("espmdm-console"), &console)
	if console["publicClient"] != true || console["standardFlowEnabled"] != true ||
		!slices.Contains(stringList(console["redirectUris"]), "http://127.0.0.1:1/console/*") ||
		!slices.Contains(stringList(console["redirectUris"]), "http://127.0.0.1:2/console/") ||
		!slices.Contains(stringList(console["webOrigins"]), "http://127.0.0.1:2") {
		t.Errorf("console client = publicClient %v, standardFlowEnabled %v, redirectUris %v, webOrigins %v",
			console["publicClient"], console["standardFlowEnabled"], console["redirectUris"], console["webOrigins"])
	}
	if res.Env["ROTATION_MODE"] != "grace" || res.Env["ROTATION_GRACE"] != "7d" {
		t.Errorf("env ROTATION_MODE %q ROTATION_GRACE %q, want grace and 7d", res.Env["ROTATION_MODE"], res.Env["ROTATION_GRACE"])
	}

	// espmdm serves on that realm, in grace mode as ROTATION_MODE=auto
	// decides.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	clearServeEnv(t)
	for k, v := range res.Env {
		if !strings.HasPrefix(k, "OPERATOR_") && k != "ROTATION_MODE" {
			t.Setenv(k, v)
		}
	}
	for k, v := range map[string]string{
		"DATABASE_URL": st.NewDatabase(t), "HTTP_ADDR": addr, "BASE_URL": "http://" + addr, "SECRET_KEY": randHex(32),
		"FIRMWARE_DIR": t.TempDir(), "MQTT_URL": "", "LOG_LEVEL": "error", "ROTATION_MODE": "auto",
	} {
		t.Setenv(k, v)
	}
	cfg, err := app.LoadConfig(os.Getenv)
	if err != nil {
		t.Fatalf("the printed environment does not load: %v", err)
	}
	a := app.New(cfg)
	if err := a.Start(testContext(t, 3*time.Minute)); err != nil {
		t.Fatalf("espmdm does not start on the set-up realm: %v", err)
	}
	t.Cleanup(func() { _ = a.Stop(testContext(t, time.Minute)) })
	opEnv := map[string]string{"OIDC_TOKEN_URL": st.KeycloakURL + "/realms/" + realm + "/protocol/openid-connect/token",
		"OPERATOR_CLIENT_ID": res.Env["OPERATOR_CLIENT_ID"], "OPERATOR_CLIENT_SECRET": res.Env["OPERATOR_CLIENT_SECRET"]}
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/api/rotation/status", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+operatorToken(t, http.DefaultClient, opEnv))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("rotation status: %v", err)
	}
	defer resp.Body.Close()
	var status struct {
		Mode string `json:"mode"`
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &status) != nil {
		t.Fatalf("rotation status: %s %s", resp.Status, body)
	}
	if status.Mode != "grace" {
		t.Errorf("rotation status mode = %q, want grace", status.Mode)
	}
}

func TestKeycloakSetupFails(t *testing.T) {
	st := integration.Shared(t)
	const password = "wr0ng-Pa55word-xyz"
	realm := "setup_" + randHex(4)
	tests := []struct {
		name           string
		args           []string
		password       string
		clientSecret   string
		want, notShown string
	}{
		{"wrong password", []string{"--url", st.KeycloakURL}, password, "", "KEYCLOAK_SETUP_PASSWORD", password},
		{"no password", []string{"--url", st.KeycloakURL}, "", "", "KEYCLOAK_SETUP_PASSWORD", ""},
		{"unknown admin realm", []string{"--url", st.KeycloakURL, "--admin-realm", "nope_" + randHex(3)}, st.KeycloakAdminPassword, "", "--admin-realm", st.KeycloakAdminPassword},
		{"unreachable", []string{"--url", "http://127.0.0.1:1"}, st.KeycloakAdminPassword, "", "cannot reach Keycloak at http://127.0.0.1:1", st.KeycloakAdminPassword},
		{"no url", nil, st.KeycloakAdminPassword, "", "--url", st.KeycloakAdminPassword},
		{"bad grace", []string{"--url", st.KeycloakURL, "--rotation-grace", "1.5s"}, st.KeycloakAdminPassword, "", "--rotation-grace", st.KeycloakAdminPassword},
		// A service account without realm-management roles (the stack's
		// operator) may not administer the realm.
		{"not permitted", []string{"--url", st.KeycloakURL, "--admin-realm", st.Realm, "--admin-client-id", st.OperatorClientID},
			"", st.OperatorClientSecret, "may not do this", st.OperatorClientSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(setupPasswordEnv, tt.password)
			t.Setenv(setupClientSecretEnv, tt.clientSecret)
			args := append([]string{"keycloak", "setup", "--realm", realm}, tt.args...)
			code, stdout, stderr := runCLIContext(t, testContext(t, 2*time.Minute), args...)
			if code == 0 {
				t.Fatalf("exit 0, stdout %q", redactSetup(stdout))
			}
			if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1: %q", len(lines), stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not say %q", stderr, tt.want)
			}
			if tt.notShown != "" && (strings.Contains(stderr, tt.notShown) || strings.Contains(stdout, tt.notShown)) {
				t.Errorf("output shows the password or secret: %q", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
		})
	}
	if status, _ := (masterAdmin{t, st, realm}).call(http.MethodGet, "", nil); status != http.StatusNotFound {
		t.Errorf("realm %s: GET %d after failed setups, want 404 (nothing created)", realm, status)
	}
}

// TestKeycloakSetupWithoutRotationFeature runs the setup through a proxy
// that makes the stack's Keycloak report the client-secret-rotation
// feature off: no profile or policy is made, and restore mode is advised.
func TestKeycloakSetupWithoutRotationFeature(t *testing.T) {
	st := integration.Shared(t)
	target, err := url.Parse(st.KeycloakURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path != "/admin/serverinfo" || resp.StatusCode != http.StatusOK {
			return nil
		}
		var info map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
			return err
		}
		_ = resp.Body.Close()
		features, _ := info["features"].([]any)
		for _, f := range features {
			if m, ok := f.(map[string]any); ok && m["name"] == "CLIENT_SECRET_ROTATION" {
				m["enabled"] = false
			}
		}
		b, err := json.Marshal(info)
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)

	realm := "setup_" + randHex(4)
	m := masterAdmin{t, st, realm}
	m.deleteRealmAtEnd()
	t.Setenv(setupPasswordEnv, st.KeycloakAdminPassword)
	t.Setenv(setupClientSecretEnv, "")
	code, stdout, stderr := runCLIContext(t, testContext(t, 5*time.Minute), "keycloak", "setup", "--url", srv.URL, "--realm", realm)
	if code != 0 {
		t.Fatalf("setup: exit %d, stderr %q", code, stderr)
	}
	if !strings.Contains(stdout, "note: Keycloak's client-secret-rotation feature is off") || !strings.Contains(stdout, "restore mode") {
		t.Errorf("setup does not say the feature is off and espmdm runs in restore mode:\n%s", redactSetup(stdout))
	}
	if strings.Contains(stdout, "client profile") || strings.Contains(stdout, "client policy") {
		t.Errorf("setup made a rotation profile or policy without the feature:\n%s", redactSetup(stdout))
	}
	if env := setupEnv(stdout); env["ROTATION_MODE"] != "restore" {
		t.Errorf("ROTATION_MODE = %q, want restore", env["ROTATION_MODE"])
	}
	if profiles, policies := m.clientPolicies(); profiles[keycloak.SetupRotationName] != nil || policies[keycloak.SetupRotationName] != nil {
		t.Errorf("realm has the rotation profile or policy: %v %v", profiles, policies)
	}
}
