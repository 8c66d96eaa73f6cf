package keycloak_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
)

// masterAPI calls the Admin REST API (path below /admin) as the stack's
// master admin user and returns the status and body.
func masterAPI(t *testing.T, st *integration.Stack, method, path string, body any) (int, []byte) {
	t.Helper()
	return callAPI(t, masterToken(t, st), method, st.KeycloakURL+"/admin"+path, body)
}

// masterGet GETs path below /admin as the master admin into v.
func masterGet(t *testing.T, st *integration.Stack, path string, v any) {
	t.Helper()
	code, body := masterAPI(t, st, http.MethodGet, path, nil)
	if code != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d %s", path, code, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// sortedStrings reads a JSON list of strings, sorted.
func sortedStrings(v any) []string {
	l, _ := v.([]any)
	var out []string
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// setupRealm names a realm for one test and deletes it when the test ends.
func setupRealm(t *testing.T, st *integration.Stack) string {
	t.Helper()
	realm := "setup_" + randomKey()
	t.Cleanup(func() {
		if code, body := masterAPI(t, st, http.MethodDelete, "/realms/"+realm, nil); code != http.StatusNoContent && code != http.StatusNotFound {
			t.Errorf("delete realm %s: HTTP %d %s", realm, code, body)
		}
	})
	return realm
}

// masterSetup is a RealmSetup of realm run by the stack's master admin.
func masterSetup(t *testing.T, st *integration.Stack, realm string, grace time.Duration) *keycloak.RealmSetup {
	t.Helper()
	s, err := keycloak.NewRealmSetup(keycloak.SetupConfig{BaseURL: st.KeycloakURL, Realm: realm,
		User: st.KeycloakAdminUser, Password: st.KeycloakAdminPassword, RotationGrace: grace})
	if err != nil {
		t.Fatalf("NewRealmSetup: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// realmClient is the representation of a client of realm.
func realmClient(t *testing.T, st *integration.Stack, realm, clientID string) map[string]any {
	t.Helper()
	var list []map[string]any
	masterGet(t, st, "/realms/"+realm+"/clients?"+url.Values{"clientId": {clientID}}.Encode(), &list)
	if len(list) != 1 {
		t.Fatalf("realm %s has %d clients %s, want 1", realm, len(list), clientID)
	}
	return list[0]
}

// serviceAccountRoles lists the realm roles, or the client roles of the
// client with UUID rolesOf, of a client's service account.
func serviceAccountRoles(t *testing.T, st *integration.Stack, realm, uuid, rolesOf string) []string {
	t.Helper()
	var user struct {
		ID string `json:"id"`
	}
	masterGet(t, st, "/realms/"+realm+"/clients/"+uuid+"/service-account-user", &user)
	path := "/realms/" + realm + "/users/" + user.ID + "/role-mappings/realm"
	if rolesOf != "" {
		path = "/realms/" + realm + "/users/" + user.ID + "/role-mappings/clients/" + rolesOf
	}
	var roles []struct {
		Name string `json:"name"`
	}
	masterGet(t, st, path, &roles)
	var names []string
	for _, r := range roles {
		names = append(names, r.Name)
	}
	return names
}

// A realm set up from nothing serves the adapter: its Admin, built from
// what Run returns, pings, manages device clients and finds the rotation
// policy with the grace asked for. A second run changes nothing; drift is
// repaired, and another grace updates the profile alone.
func TestRealmSetup(t *testing.T) {
	st := integration.Shared(t)
	realm := setupRealm(t, st)
	s := masterSetup(t, st, realm, 2*24*time.Hour)

	res, err := s.Run(t.Context())
	mustNoErr(t, "Run", err)
	want := []string{
		"created realm " + realm,
		"created realm role iotdevice", "created realm role mdm-admin", "created realm role mdm-viewer",
		"created realm role mdm-pipeline",
		"created client iotsupport-admin",
		"granted service-account-iotsupport-admin the realm-management roles manage-clients, view-clients, query-clients, view-realm",
		"created client espmdm-operator",
		"granted service-account-espmdm-operator the realm role mdm-admin",
		"created client espmdm-pipeline",
		"granted service-account-espmdm-pipeline the realm role mdm-pipeline",
		"created client profile espmdm-secret-rotation (secret-rotation: rotated-expiration-period 172800 s = 2d)",
		"created client policy espmdm-secret-rotation",
	}
	if !slices.Equal(res.Changes, want) {
		t.Errorf("changes:\n%q\nwant:\n%q", res.Changes, want)
	}
	if !res.RotationFeature || len(res.Notes) != 0 {
		t.Errorf("rotation feature %v, notes %q; want the stack's feature on and no notes", res.RotationFeature, res.Notes)
	}
	if res.AdminClientSecret == "" || res.OperatorClientSecret == "" || res.AdminClientSecret == res.OperatorClientSecret {
		t.Fatal("Run returned empty or equal client secrets")
	}
	if res.PipelineClientSecret == "" || res.PipelineClientSecret == res.OperatorClientSecret {
		t.Fatal("Run returned no pipeline secret (or the operator's) when it created the pipeline client")
	}
	for _, clientID := range []string{keycloak.SetupAdminClient, keycloak.SetupOperatorClient, keycloak.SetupPipelineClient} {
		c := realmClient(t, st, realm, clientID)
		for k, want := range map[string]any{"enabled": true, "publicClient": false, "serviceAccountsEnabled": true,
			"standardFlowEnabled": false, "implicitFlowEnabled": false, "directAccessGrantsEnabled": false} {
			if c[k] != want {
				t.Errorf("client %s: %s = %v, want %v", clientID, k, c[k], want)
			}
		}
	}
	opUUID := realmClient(t, st, realm, keycloak.SetupOperatorClient)["id"].(string)
	if roles := serviceAccountRoles(t, st, realm, opUUID, ""); !slices.Contains(roles, keycloak.SetupAdminRole) {
		t.Errorf("operator's realm roles %q lack %s", roles, keycloak.SetupAdminRole)
	}
	pipeUUID := realmClient(t, st, realm, keycloak.SetupPipelineClient)["id"].(string)
	if roles := serviceAccountRoles(t, st, realm, pipeUUID, ""); !slices.Contains(roles, keycloak.SetupPipelineRole) ||
		slices.Contains(roles, keycloak.SetupAdminRole) || slices.Contains(roles, keycloak.SetupViewerRole) {
		t.Errorf("pipeline's realm roles %q: want %s and neither admin nor viewer", roles, keycloak.SetupPipelineRole)
	}

	// The adapter runs on the realm with what the setup returned.
	admin := newAdmin(t, keycloak.AdminConfig{BaseURL: st.KeycloakURL, Realm: realm, ClientID: keycloak.SetupAdminClient,
		ClientSecret: res.AdminClientSecret, DeviceAudience: st.DeviceAudience})
	mustNoErr(t, "Ping on the set-up realm", admin.Ping(t.Context()))
	policy, err := admin.RotationPolicy(t.Context())
	mustNoErr(t, "RotationPolicy", err)
	if !policy.FeatureEnabled || !policy.Covered || policy.RotatedExpiration != 48*time.Hour || len(policy.Problems) != 0 {
		t.Errorf("rotation policy = %+v, want covered by %s with a grace of 48h and no problems", policy, keycloak.SetupRotationName)
	}
	id := model.ClientID("setup_t", randomKey())
	if _, err := admin.CreateClient(t.Context(), id); err != nil {
		t.Fatalf("CreateClient on the set-up realm: %v", err)
	}
	mustNoErr(t, "DeleteClient", admin.DeleteClient(t.Context(), id))

	// A second run changes nothing and returns the same secrets.
	again, err := masterSetup(t, st, realm, 2*24*time.Hour).Run(t.Context())
	mustNoErr(t, "second Run", err)
	if len(again.Changes) != 0 {
		t.Errorf("second run changed %q, want nothing", again.Changes)
	}
	if again.AdminClientSecret != res.AdminClientSecret || again.OperatorClientSecret != res.OperatorClientSecret {
		t.Error("second run returned other secrets")
	}
	if again.PipelineClientSecret != "" {
		t.Error("second run returned the pipeline's secret; it is shown only when the client is created")
	}

	// Drift: a flow switched on, a realm-management role taken away.
	op := realmClient(t, st, realm, keycloak.SetupOperatorClient)
	op["directAccessGrantsEnabled"] = true
	if code, body := masterAPI(t, st, http.MethodPut, "/realms/"+realm+"/clients/"+opUUID, op); code != http.StatusNoContent {
		t.Fatalf("switch on direct grants: HTTP %d %s", code, body)
	}
	rm := realmClient(t, st, realm, "realm-management")["id"].(string)
	var viewRealm map[string]any
	masterGet(t, st, "/realms/"+realm+"/clients/"+rm+"/roles/view-realm", &viewRealm)
	adminUUID := realmClient(t, st, realm, keycloak.SetupAdminClient)["id"].(string)
	var saUser struct {
		ID string `json:"id"`
	}
	masterGet(t, st, "/realms/"+realm+"/clients/"+adminUUID+"/service-account-user", &saUser)
	if code, body := masterAPI(t, st, http.MethodDelete, "/realms/"+realm+"/users/"+saUser.ID+"/role-mappings/clients/"+rm, []any{viewRealm}); code != http.StatusNoContent {
		t.Fatalf("take view-realm away: HTTP %d %s", code, body)
	}
	repaired, err := masterSetup(t, st, realm, 36*time.Hour).Run(t.Context())
	mustNoErr(t, "Run after drift", err)
	want = []string{
		"granted service-account-iotsupport-admin the realm-management roles view-realm",
		"updated client espmdm-operator: directAccessGrantsEnabled",
		"updated client profile espmdm-secret-rotation (secret-rotation: rotated-expiration-period 129600 s = 36h)",
	}
	if !slices.Equal(repaired.Changes, want) {
		t.Errorf("changes after drift and another grace:\n%q\nwant:\n%q", repaired.Changes, want)
	}
	if c := realmClient(t, st, realm, keycloak.SetupOperatorClient); c["directAccessGrantsEnabled"] != false {
		t.Errorf("directAccessGrantsEnabled = %v after the repair", c["directAccessGrantsEnabled"])
	}
	if roles := serviceAccountRoles(t, st, realm, adminUUID, rm); !slices.Contains(roles, "view-realm") {
		t.Errorf("admin client's realm-management roles after the repair: %q", roles)
	}
	policy, err = admin.RotationPolicy(t.Context())
	mustNoErr(t, "RotationPolicy after another grace", err)
	if policy.RotatedExpiration != 36*time.Hour {
		t.Errorf("rotated expiration = %s after a run with 36h", policy.RotatedExpiration)
	}
}

// The console's client and users: a public PKCE client with exactly the
// redirect URIs given (later ones added), users that log in with the
// password set and hold their role; a second run only resets passwords.
func TestRealmSetupConsole(t *testing.T) {
	st := integration.Shared(t)
	realm := setupRealm(t, st)
	first := "http://127.0.0.1:18080/console/"
	s, err := keycloak.NewRealmSetup(keycloak.SetupConfig{BaseURL: st.KeycloakURL, Realm: realm,
		User: st.KeycloakAdminUser, Password: st.KeycloakAdminPassword, ConsoleRedirects: []string{first}})
	mustNoErr(t, "NewRealmSetup", err)
	t.Cleanup(s.Close)
	res, err := s.Run(t.Context())
	mustNoErr(t, "Run", err)
	if !slices.Contains(res.Changes, "created client "+keycloak.SetupConsoleClient) {
		t.Errorf("changes %q lack the console client", res.Changes)
	}

	second := "http://127.0.0.1:18081/api/docs"
	mustNoErr(t, "EnsureConsoleClient", s.EnsureConsoleClient(t.Context(), []string{second}))
	c := realmClient(t, st, realm, keycloak.SetupConsoleClient)
	if c["publicClient"] != true || c["standardFlowEnabled"] != true || c["directAccessGrantsEnabled"] != false ||
		attrs(c)["pkce.code.challenge.method"] != "S256" {
		t.Errorf("console client: public %v, standard flow %v, direct grants %v, PKCE %v; want a public code-flow client with S256",
			c["publicClient"], c["standardFlowEnabled"], c["directAccessGrantsEnabled"], attrs(c)["pkce.code.challenge.method"])
	}
	if got, want := sortedStrings(c["redirectUris"]), []string{first, second}; !slices.Equal(got, want) {
		t.Errorf("redirect URIs = %q, want %q", got, want)
	}
	if got, want := sortedStrings(c["webOrigins"]), []string{"http://127.0.0.1:18080", "http://127.0.0.1:18081"}; !slices.Equal(got, want) {
		t.Errorf("web origins = %q, want %q", got, want)
	}
	if err := s.EnsureConsoleClient(t.Context(), []string{"/console/"}); err == nil {
		t.Error("EnsureConsoleClient took a redirect URI without scheme and host")
	}

	login := func(user, password string) int {
		t.Helper()
		resp, err := http.PostForm(st.KeycloakURL+"/realms/"+realm+"/protocol/openid-connect/token",
			url.Values{"grant_type": {"password"}, "client_id": {"admin-cli"}, "username": {user}, "password": {password}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	mustNoErr(t, "EnsureUser", s.EnsureUser(t.Context(), "viewer", "first-Pa55word", keycloak.SetupViewerRole))
	if code := login("viewer", "first-Pa55word"); code != http.StatusOK {
		t.Errorf("the new user cannot log in: HTTP %d", code)
	}
	var users []map[string]any
	masterGet(t, st, "/realms/"+realm+"/users?exact=true&username=viewer", &users)
	if len(users) != 1 {
		t.Fatalf("users named viewer: %d", len(users))
	}
	var roles []struct {
		Name string `json:"name"`
	}
	masterGet(t, st, "/realms/"+realm+"/users/"+users[0]["id"].(string)+"/role-mappings/realm", &roles)
	if !slices.ContainsFunc(roles, func(r struct {
		Name string `json:"name"`
	}) bool {
		return r.Name == keycloak.SetupViewerRole
	}) {
		t.Errorf("viewer's realm roles %v lack %s", roles, keycloak.SetupViewerRole)
	}

	before := len(s.Changes())
	mustNoErr(t, "EnsureUser again", s.EnsureUser(t.Context(), "viewer", "second-Pa55word", keycloak.SetupViewerRole))
	if got := s.Changes()[before:]; len(got) != 0 {
		t.Errorf("a second EnsureUser changed %q, want nothing", got)
	}
	if login("viewer", "first-Pa55word") == http.StatusOK || login("viewer", "second-Pa55word") != http.StatusOK {
		t.Error("after a second EnsureUser the new password should work and the old one not")
	}
}

// A setup that cannot log in or may not administer the realm fails with
// an error that says why and never shows the password or secret, and
// leaves nothing behind.
func TestRealmSetupFails(t *testing.T) {
	st := integration.Shared(t)
	realm := setupRealm(t, st)
	html := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "<html>not keycloak</html>")
	}))
	t.Cleanup(html.Close)
	const wrong = "wr0ng-Pa55word-xyz"
	tests := []struct {
		name    string
		cfg     keycloak.SetupConfig
		failure keycloak.LoginFailure // 0: not a login failure
		status  int
		want    string
		secret  string
	}{
		{"wrong password", keycloak.SetupConfig{BaseURL: st.KeycloakURL, User: st.KeycloakAdminUser, Password: wrong},
			keycloak.LoginRefused, http.StatusBadRequest, "log in to Keycloak as user " + st.KeycloakAdminUser + " of realm master: refused (HTTP 400 invalid_grant: Invalid user credentials)", wrong},
		{"unknown admin realm", keycloak.SetupConfig{BaseURL: st.KeycloakURL, AdminRealm: "nope_" + randomKey(), User: st.KeycloakAdminUser, Password: st.KeycloakAdminPassword},
			keycloak.LoginRealmNotFound, http.StatusNotFound, "not found (HTTP 404)", st.KeycloakAdminPassword},
		{"unreachable", keycloak.SetupConfig{BaseURL: closedURL(t), User: st.KeycloakAdminUser, Password: st.KeycloakAdminPassword},
			keycloak.LoginUnreachable, 0, "cannot reach it", st.KeycloakAdminPassword},
		{"not keycloak", keycloak.SetupConfig{BaseURL: html.URL, User: st.KeycloakAdminUser, Password: st.KeycloakAdminPassword},
			keycloak.LoginNotOIDC, http.StatusBadRequest, "HTTP 400 and no OpenID Connect answer", st.KeycloakAdminPassword},
		// A service account without realm-management roles (the stack's
		// operator) may not administer the realm.
		{"not permitted", keycloak.SetupConfig{BaseURL: st.KeycloakURL, AdminRealm: st.Realm, ClientID: st.OperatorClientID, ClientSecret: st.OperatorClientSecret},
			0, 0, "service account " + st.OperatorClientID + " of realm " + st.Realm + " may not do this", st.OperatorClientSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Realm = realm
			s, err := keycloak.NewRealmSetup(tt.cfg)
			mustNoErr(t, "NewRealmSetup", err)
			t.Cleanup(s.Close)
			_, err = s.Run(t.Context())
			if err == nil {
				t.Fatal("Run succeeded")
			}
			wantErrIs(t, "Run", err, model.ErrUnavailable)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if strings.Contains(err.Error(), tt.secret) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error shows the password or secret, or has several lines: %q", err)
			}
			var le *keycloak.LoginError
			switch {
			case tt.failure == 0 && errors.As(err, &le):
				t.Errorf("a login error (%v) for a refused admin call", le)
			case tt.failure != 0 && !errors.As(err, &le):
				t.Errorf("error %v is no *LoginError", err)
			case tt.failure != 0 && (le.Failure != tt.failure || le.Status != tt.status):
				t.Errorf("login failure %d HTTP %d, want %d HTTP %d", le.Failure, le.Status, tt.failure, tt.status)
			}
		})
	}
	if code, _ := masterAPI(t, st, http.MethodGet, "/realms/"+realm, nil); code != http.StatusNotFound {
		t.Errorf("realm %s: HTTP %d after failed setups, want 404 (nothing created)", realm, code)
	}
}

func TestNewRealmSetupChecksConfig(t *testing.T) {
	good := keycloak.SetupConfig{BaseURL: "http://127.0.0.1:1", Realm: "iot", User: "admin", Password: "pw"}
	tests := []struct {
		name string
		edit func(*keycloak.SetupConfig)
	}{
		{"no base URL", func(c *keycloak.SetupConfig) { c.BaseURL = "" }},
		{"base URL with credentials", func(c *keycloak.SetupConfig) { c.BaseURL = "http://u:p@127.0.0.1:1" }},
		{"no realm", func(c *keycloak.SetupConfig) { c.Realm = "" }},
		{"no password", func(c *keycloak.SetupConfig) { c.Password = "" }},
		{"client without secret", func(c *keycloak.SetupConfig) { c.ClientID = "setup" }},
		{"negative grace", func(c *keycloak.SetupConfig) { c.RotationGrace = -time.Second }},
		{"grace in milliseconds", func(c *keycloak.SetupConfig) { c.RotationGrace = 1500 * time.Millisecond }},
		{"grace beyond the secrets' lifetime", func(c *keycloak.SetupConfig) { c.RotationGrace = keycloak.SetupSecretLifetime }},
		{"relative console redirect", func(c *keycloak.SetupConfig) { c.ConsoleRedirects = []string{"/console/"} }},
		{"negative timeout", func(c *keycloak.SetupConfig) { c.Timeout = -time.Second }},
	}
	s, err := keycloak.NewRealmSetup(good)
	if err != nil {
		t.Fatalf("NewRealmSetup(%+v): %v", good, err)
	}
	s.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			if _, err := keycloak.NewRealmSetup(cfg); err == nil {
				t.Errorf("NewRealmSetup accepted %+v", cfg)
			} else if strings.Contains(err.Error(), "pw") {
				t.Errorf("error shows the password: %v", err)
			}
		})
	}
}
