package main

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/nvs"
)

// consoleRealm sets up a realm of its own with `espmdm keycloak setup`
// (deleted at the end) and prepares the console for a server at base.
func consoleRealm(t *testing.T, st *integration.Stack, base string) (realm string, res setupResult, login consoleLogin) {
	t.Helper()
	realm = "console_" + randHex(4)
	m := masterAdmin{t, st, realm}
	m.deleteRealmAtEnd()
	code, stdout, stderr := runSetup(t, st, "--realm", realm, "--json")
	if code != 0 {
		t.Fatalf("setup: exit %d, stderr %q", code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("setup --json: %v", err)
	}
	s := masterSetup(t, st, realm)
	login, err := setupConsole(testContext(t, time.Minute), s, base)
	if err != nil {
		t.Fatalf("setupConsole: %v", err)
	}
	return realm, res, login
}

// masterSetup is the adapter's realm setup for realm as the stack's master
// admin, as `espmdm dev` makes it.
func masterSetup(t *testing.T, st *integration.Stack, realm string) *keycloak.RealmSetup {
	t.Helper()
	s, err := newRealmSetup(setupOptions{url: st.KeycloakURL, realm: realm, adminRealm: "master",
		adminUser: st.KeycloakAdminUser, password: st.KeycloakAdminPassword})
	if err != nil {
		t.Fatalf("newRealmSetup: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// passwordWorks logs in as the user through the realm's admin-cli client
// (the console's own client allows no password grant).
func passwordWorks(t *testing.T, st *integration.Stack, realm, user, password string) bool {
	t.Helper()
	resp, err := http.PostForm(st.KeycloakURL+"/realms/"+realm+"/protocol/openid-connect/token",
		url.Values{"grant_type": {"password"}, "client_id": {"admin-cli"}, "username": {user}, "password": {password}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func TestConsoleSetup(t *testing.T) {
	st := integration.Shared(t)
	base := "http://127.0.0.1:18080"
	realm, _, login := consoleRealm(t, st, base)
	m := masterAdmin{t, st, realm}

	var c map[string]any
	m.get("/clients/"+m.clientUUID(keycloak.SetupConsoleClient), &c)
	if c["publicClient"] != true || c["standardFlowEnabled"] != true || c["directAccessGrantsEnabled"] != false || c["implicitFlowEnabled"] != false {
		t.Errorf("console client: public %v, standard flow %v, direct grants %v, implicit %v; want a public code-flow client only",
			c["publicClient"], c["standardFlowEnabled"], c["directAccessGrantsEnabled"], c["implicitFlowEnabled"])
	}
	if got := stringList(c["redirectUris"]); !slices.Equal(slices.Sorted(slices.Values(got)), []string{base + "/api/docs", base + "/console/"}) {
		t.Errorf("redirect URIs = %q, want exactly %s/console/ and %[2]s/api/docs", got, base)
	}
	if got := stringList(c["webOrigins"]); !slices.Equal(got, []string{base}) {
		t.Errorf("web origins = %q, want exactly %s", got, base)
	}
	attrs, _ := c["attributes"].(map[string]any)
	if attrs["pkce.code.challenge.method"] != "S256" {
		t.Errorf("PKCE method = %v, want S256 enforced", attrs["pkce.code.challenge.method"])
	}
	if login.URL != base+"/console/" {
		t.Errorf("console URL = %q", login.URL)
	}
	for _, u := range []struct{ name, password, role, notRole string }{
		{login.User, login.Password, keycloak.SetupAdminRole, ""},
		{login.ViewerUser, login.ViewerPassword, keycloak.SetupViewerRole, keycloak.SetupAdminRole},
	} {
		if !passwordWorks(t, st, realm, u.name, u.password) {
			t.Errorf("user %s cannot log in with the password setupConsole returned", u.name)
		}
		var list []map[string]any
		m.get("/users?exact=true&username="+u.name, &list)
		if len(list) != 1 {
			t.Fatalf("users named %s: %d", u.name, len(list))
		}
		roles := m.roleNames("/users/" + list[0]["id"].(string) + "/role-mappings/realm")
		if !slices.Contains(roles, u.role) || (u.notRole != "" && slices.Contains(roles, u.notRole)) {
			t.Errorf("user %s has realm roles %q, want %s (and not %q)", u.name, roles, u.role, u.notRole)
		}
	}

	// A second run (the next `espmdm dev` start) creates nothing, and the
	// old passwords stop working.
	s := masterSetup(t, st, realm)
	again, err := setupConsole(testContext(t, time.Minute), s, base)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Changes()) != 0 {
		t.Errorf("second setupConsole changed %q, want nothing", s.Changes())
	}
	if passwordWorks(t, st, realm, login.User, login.Password) || !passwordWorks(t, st, realm, again.User, again.Password) {
		t.Error("after a second run the new password should work and the old one not")
	}

	// A server at another URL (a data directory moved, a new port) is
	// added to the existing client.
	other := "http://127.0.0.1:18081"
	if _, err := setupConsole(testContext(t, time.Minute), s, other); err != nil {
		t.Fatal(err)
	}
	m.get("/clients/"+m.clientUUID(keycloak.SetupConsoleClient), &c)
	for _, want := range []string{other + "/console/", other + "/api/docs", base + "/console/"} {
		if !slices.Contains(stringList(c["redirectUris"]), want) {
			t.Errorf("after a run for %s, redirect URIs = %q, missing %s", other, stringList(c["redirectUris"]), want)
		}
	}
	if !slices.Contains(stringList(c["webOrigins"]), other) {
		t.Errorf("web origins = %q, missing %s", stringList(c["webOrigins"]), other)
	}
}

// TestConsoleBrowser runs the console's Playwright tests (adapters/console/
// web/e2e) in Debian's Chromium against espmdm on a realm of its own: the
// real Keycloak login page, models, firmware, devices, provisioning,
// rotation, a viewer's read-only view and axe-core on every page. Then it
// decodes the partition the browser downloaded.
func TestConsoleBrowser(t *testing.T) {
	web, err := filepath.Abs("../../../adapters/console/web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(web, "../dist/index.html")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("the console is not built: make test builds it (make console)")
		}
		t.Skip("the console is not built (make console); make test builds it")
	}
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("no Chromium at %s (.ci/deps installs Debian's chromium): %v", chromium, err)
	}
	st := integration.Shared(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	base := "http://" + addr
	realm, res, login := consoleRealm(t, st, base)

	clearServeEnv(t)
	for k, v := range res.Env {
		if !strings.HasPrefix(k, "OPERATOR_") && k != "ROTATION_MODE" {
			t.Setenv(k, v)
		}
	}
	for k, v := range map[string]string{
		"DATABASE_URL": st.NewDatabase(t), "HTTP_ADDR": addr, "BASE_URL": base, "SECRET_KEY": randHex(32),
		"FIRMWARE_DIR": t.TempDir(), "MQTT_URL": "", "LOG_LEVEL": "error", "ROTATION_MODE": "auto",
		"WIFI_SSID": "console-e2e", "WIFI_PASSWORD": "not-a-real-password",
	} {
		t.Setenv(k, v)
	}
	cfg, err := app.LoadConfig(os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	a := app.New(cfg)
	if err := a.Start(testContext(t, 3*time.Minute)); err != nil {
		t.Fatalf("espmdm does not start: %v", err)
	}
	t.Cleanup(func() { _ = a.Stop(testContext(t, time.Minute)) })

	// CONSOLE_E2E_OUT keeps Playwright's traces and error contexts.
	out := os.Getenv("CONSOLE_E2E_OUT")
	if out == "" {
		out = t.TempDir()
	}
	image := filepath.Join(out, "sample.bin")
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
	desc.Version, desc.ProjectName = "1.2.3-e2e", "console_e2e"
	if err := os.WriteFile(image, esp32imagetest.New(esp32image.ChipESP32, 3, true, &desc).Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// The README's screenshots are rewritten only when asked
	// (UPDATE_SCREENSHOTS=1), so that a test run leaves the tree clean.
	docs := out
	if os.Getenv("UPDATE_SCREENSHOTS") != "" {
		if docs, err = filepath.Abs("../../../docs"); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.CommandContext(testContext(t, 8*time.Minute), "npx", "playwright", "test", "--reporter=line")
	cmd.Dir = web
	cmd.Env = append(os.Environ(),
		"PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1", "CHROMIUM="+chromium,
		"CONSOLE_URL="+login.URL, "CONSOLE_USER="+login.User, "CONSOLE_PASSWORD="+login.Password,
		"CONSOLE_VIEWER_USER="+login.ViewerUser, "CONSOLE_VIEWER_PASSWORD="+login.ViewerPassword,
		"E2E_SUFFIX="+randHex(3), "E2E_IMAGE="+image, "E2E_OUT="+out, "E2E_SCREENSHOTS="+docs,
	)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	began := time.Now()
	err = cmd.Run()
	t.Logf("playwright (%s):\n%s", time.Since(began).Round(time.Second), buf.String())
	if err != nil {
		t.Fatalf("playwright: %v", err)
	}

	// The partition the browser downloaded decodes to the device's fields.
	b, err := os.ReadFile(filepath.Join(out, "result.json"))
	if err != nil {
		t.Fatal(err)
	}
	var result struct {
		DeviceID int64  `json:"device_id"`
		ClientID string `json:"client_id"`
		Key      string `json:"key"`
		Download string `json:"download"`
		Size     int    `json:"size"`
	}
	if err := json.Unmarshal(b, &result); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(result.Download)
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != result.Size {
		t.Errorf("downloaded partition is %d bytes, want %d", len(img), result.Size)
	}
	entries, err := nvs.Decode(img)
	if err != nil {
		t.Fatalf("the downloaded partition does not decode: %v", err)
	}
	got := map[string]any{}
	for _, e := range entries {
		got[e.Key] = e.Value
	}
	want := fetchProvisioning(t, base, st, realm, res, result.DeviceID)
	for _, k := range []string{"device_key", "client_id", "client_secret", "token_url", "base_url", "wifi_ssid"} {
		if got[k] != want[k] || got[k] == nil {
			t.Errorf("partition %s = %v, want %v", k, redactIf(k, got[k]), redactIf(k, want[k]))
		}
	}
	// The browser flashed the server's image for the emulated board's nvs
	// partition (0x5000 bytes at 0xc000): byte for byte what espmdm builds.
	flashed, err := os.ReadFile(filepath.Join(out, "flashed-nvs.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if server := fetchNVS(t, base, st, realm, res, result.DeviceID, 0x5000); !bytes.Equal(flashed, server) {
		t.Errorf("the flashed nvs region (%d bytes) differs from espmdm's image for 0x5000 bytes (%d bytes)", len(flashed), len(server))
	}
	if got["device_key"] != result.Key || got["client_id"] != result.ClientID {
		t.Errorf("partition is for %v/%v, the browser created %s/%s", got["device_key"], got["client_id"], result.Key, result.ClientID)
	}
	// The batch the browser downloaded: three partitions that decode, and
	// devices.csv naming them.
	zr, err := zip.OpenReader(filepath.Join(out, "batch.zip"))
	if err != nil {
		t.Fatalf("the browser's batch ZIP: %v", err)
	}
	defer zr.Close()
	bins := 0
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		switch {
		case strings.HasSuffix(f.Name, ".bin"):
			bins++
			if _, err := nvs.Decode(data); err != nil || len(data) != 0x6000 {
				t.Errorf("batch %s: %d bytes, %v", f.Name, len(data), err)
			}
		case f.Name == "devices.csv":
			if n := strings.Count(string(data), "\n"); n != 4 {
				t.Errorf("batch devices.csv has %d lines, want a header and 3", n)
			}
		default:
			t.Errorf("batch ZIP holds %s", f.Name)
		}
	}
	if bins != 3 {
		t.Errorf("batch ZIP holds %d partitions, want 3", bins)
	}
}

func redactIf(k string, v any) any {
	if strings.Contains(k, "secret") || strings.Contains(k, "password") {
		if v == nil {
			return nil
		}
		return "(redacted)"
	}
	return v
}

// fetchNVS reads the device's NVS image for size bytes as the operator.
func fetchNVS(t *testing.T, base string, st *integration.Stack, realm string, res setupResult, id int64, size int) []byte {
	t.Helper()
	return operatorGet(t, base, st, realm, res, "/api/devices/"+strconv.FormatInt(id, 10)+"/provisioning?format=bin&size="+strconv.Itoa(size))
}

// fetchProvisioning reads the device's provisioning fields as the operator.
func fetchProvisioning(t *testing.T, base string, st *integration.Stack, realm string, res setupResult, id int64) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(operatorGet(t, base, st, realm, res, "/api/devices/"+strconv.FormatInt(id, 10)+"/provisioning?format=json"), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// operatorGet GETs path with an operator token and returns the body of a 200.
func operatorGet(t *testing.T, base string, st *integration.Stack, realm string, res setupResult, path string) []byte {
	t.Helper()
	tok := operatorToken(t, http.DefaultClient, map[string]string{
		"OIDC_TOKEN_URL":     st.KeycloakURL + "/realms/" + realm + "/protocol/openid-connect/token",
		"OPERATOR_CLIENT_ID": res.Env["OPERATOR_CLIENT_ID"], "OPERATOR_CLIENT_SECRET": res.Env["OPERATOR_CLIENT_SECRET"]})
	req, _ := http.NewRequest(http.MethodGet, base+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", path, resp.Status, body)
	}
	return body
}
