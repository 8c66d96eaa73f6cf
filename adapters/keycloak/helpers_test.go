package keycloak_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
)

// TestMain runs the tests on the shared stack and then fails the run when
// a test left a goroutine behind.
func TestMain(m *testing.M) { os.Exit(integration.VerifyNoLeaks(integration.RunTests(m))) }

// adminConfig is the adapter's configuration for the shared stack.
func adminConfig(st *integration.Stack) keycloak.AdminConfig {
	return keycloak.AdminConfig{
		BaseURL:        st.KeycloakURL,
		Realm:          st.Realm,
		ClientID:       st.AdminClientID,
		ClientSecret:   st.AdminClientSecret,
		DeviceAudience: st.DeviceAudience,
	}
}

func newAdmin(t *testing.T, cfg keycloak.AdminConfig) *keycloak.Admin {
	t.Helper()
	a, err := keycloak.NewAdmin(cfg)
	if err != nil {
		t.Fatalf("NewAdmin: %v", err)
	}
	t.Cleanup(a.Close)
	return a
}

func verifierConfig(st *integration.Stack) keycloak.VerifierConfig {
	return keycloak.VerifierConfig{IssuerURL: st.IssuerURL, DeviceAudience: st.DeviceAudience}
}

func newVerifier(t *testing.T, cfg keycloak.VerifierConfig) *keycloak.Verifier {
	t.Helper()
	v, err := keycloak.NewVerifier(cfg)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

const keyAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// randomKey is a random device key.
func randomKey() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = keyAlphabet[int(b[i])%len(keyAlphabet)]
	}
	return string(b)
}

// newClientID returns a fresh device client id, deleted (through the admin
// API) when the test ends.
func newClientID(t *testing.T, a *keycloak.Admin) string {
	t.Helper()
	id := model.ClientID("kc_test", randomKey())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.DeleteClient(ctx, id); err != nil {
			t.Errorf("cleanup: DeleteClient(%s): %v", id, err)
		}
	})
	return id
}

// createClient creates a fresh device client and returns its id and secret.
func createClient(t *testing.T, a *keycloak.Admin) (id, secret string) {
	t.Helper()
	id = newClientID(t, a)
	secret, err := a.CreateClient(t.Context(), id)
	if err != nil {
		t.Fatalf("CreateClient(%s): %v", id, err)
	}
	if secret == "" {
		t.Fatalf("CreateClient(%s) returned an empty secret", id)
	}
	return id, secret
}

// clientToken asks the token endpoint for a client_credentials token. It
// returns the access token, or "" and the HTTP status when refused.
func clientToken(t *testing.T, st *integration.Stack, clientID, secret string) (string, int) {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, st.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("token endpoint: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", resp.StatusCode
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil || tok.AccessToken == "" {
		t.Fatalf("token endpoint answered 200 without an access token (%v)", err)
	}
	return tok.AccessToken, resp.StatusCode
}

// mustToken is clientToken that fails the test when refused.
func mustToken(t *testing.T, st *integration.Stack, clientID, secret string) string {
	t.Helper()
	tok, code := clientToken(t, st, clientID, secret)
	if tok == "" {
		t.Fatalf("token endpoint refused %s: HTTP %d", clientID, code)
	}
	return tok
}

// unverifiedClaims decodes a token's claims without checking anything.
func unverifiedClaims(t *testing.T, raw string) (jwt.MapClaims, map[string]any) {
	t.Helper()
	c := jwt.MapClaims{}
	tok, _, err := jwt.NewParser().ParseUnverified(raw, c)
	if err != nil {
		t.Fatalf("decode token: %v", err)
	}
	return c, tok.Header
}

// adminAPI is a raw call to the Admin REST API (for tests that break a
// client by hand). It returns the status and body.
func adminAPI(t *testing.T, st *integration.Stack, method, path string, body any) (int, []byte) {
	t.Helper()
	tok := mustToken(t, st, st.AdminClientID, st.AdminClientSecret)
	return callAPI(t, tok, method, st.KeycloakURL+"/admin/realms/"+st.Realm+path, body)
}

// callAPI sends body as JSON to u with the bearer token and returns the
// status and body. It does not use t.Context(), so cleanups can call it.
func callAPI(t *testing.T, token, method, u string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// rawClient fetches a client's representation through the admin API.
func rawClient(t *testing.T, st *integration.Stack, clientID string) map[string]any {
	t.Helper()
	code, body := adminAPI(t, st, http.MethodGet, "/clients?clientId="+url.QueryEscape(clientID), nil)
	if code != http.StatusOK {
		t.Fatalf("look up %s: HTTP %d", clientID, code)
	}
	var list []map[string]any
	if err := json.Unmarshal(body, &list); err != nil || len(list) != 1 {
		t.Fatalf("look up %s: %d clients (%v)", clientID, len(list), err)
	}
	return list[0]
}

// closedURL returns an http URL of a loopback port nobody listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func wantErrIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %v, want %v", what, err, target)
	}
}

func mustNoErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// getJSON fetches a JSON object without authentication.
func getJSON(t *testing.T, u string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return resp.StatusCode, out
}

// adminCalls counts the Admin REST API requests by method; the rest pass
// through untouched.
type adminCalls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *adminCalls) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/admin/") {
		c.mu.Lock()
		if c.n == nil {
			c.n = map[string]int{}
		}
		c.n[r.Method]++
		c.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(r)
}

func (c *adminCalls) count(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[method]
}

// attrs returns a client representation's attributes.
func attrs(rep map[string]any) map[string]any {
	a, _ := rep["attributes"].(map[string]any)
	return a
}

// masterToken is an access token of the master realm's admin user.
func masterToken(t *testing.T, st *integration.Stack) string {
	t.Helper()
	form := url.Values{"grant_type": {"password"}, "client_id": {"admin-cli"},
		"username": {st.KeycloakAdminUser}, "password": {st.KeycloakAdminPassword}}
	resp, err := http.PostForm(st.KeycloakURL+"/realms/master/protocol/openid-connect/token", form)
	if err != nil {
		t.Fatalf("master token: %v", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		t.Fatalf("master token: HTTP %d (%v)", resp.StatusCode, err)
	}
	return tok.AccessToken
}

// importClient adds a client to the realm by a partial import, as the
// master realm's admin (the realm's admin client lacks manage-realm).
// Keycloak applies no client policy to a client imported so, as to one made
// before the realm's policies existed. The import does not create the
// service-account user; the first GET of it does, as Keycloak does for any
// client whose service accounts are enabled without one.
func importClient(t *testing.T, st *integration.Stack, rep map[string]any) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"ifResourceExists": "FAIL", "clients": []any{rep}})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, st.KeycloakURL+"/admin/realms/"+st.Realm+"/partialImport", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+masterToken(t, st))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("partial import: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("partial import: HTTP %d", resp.StatusCode)
	}
	uuid := rawClient(t, st, rep["clientId"].(string))["id"].(string)
	if code, _ := adminAPI(t, st, http.MethodGet, "/clients/"+uuid+"/service-account-user", nil); code != http.StatusOK {
		t.Fatalf("service-account user of the imported client: HTTP %d", code)
	}
}

// uncoveredClient creates a device client as espmdm does and replaces it by
// the same client (same secret, flags and mappers) made outside Keycloak's
// client policies, as a device client created before the realm's
// secret-rotation policy existed is: without the rotation attributes.
func uncoveredClient(t *testing.T, st *integration.Stack, a *keycloak.Admin) (id, secret string) {
	t.Helper()
	id, secret = createClient(t, a)
	rep := rawClient(t, st, id)
	if code, _ := adminAPI(t, st, http.MethodDelete, "/clients/"+rep["id"].(string), nil); code != http.StatusNoContent {
		t.Fatalf("delete %s: HTTP %d", id, code)
	}
	delete(rep, "id")
	delete(rep, "access")
	for k := range attrs(rep) {
		if strings.HasPrefix(k, "client.secret.") {
			delete(attrs(rep), k)
		}
	}
	mappers, _ := rep["protocolMappers"].([]any)
	for _, m := range mappers {
		delete(m.(map[string]any), "id")
	}
	rep["secret"] = secret
	importClient(t, st, rep)
	return id, secret
}
