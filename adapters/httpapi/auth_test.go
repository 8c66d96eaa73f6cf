package httpapi_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

func TestAdminAuth(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	d := e.cat.addDevice(1, "abcd1234", true)
	e.verifier.addDevice("tok-real-device", d)

	read := func(token string) response { return e.get("/api/device-models", token) }
	write := func(token string) response {
		return e.sendJSON(http.MethodPost, "/api/device-models", token, `{"code":"new_one","name":"n"}`)
	}
	rawAuth := func(header string) response {
		return e.do(request{method: http.MethodGet, path: "/api/device-models", header: map[string]string{"Authorization": header}})
	}

	tests := []struct {
		name      string
		call      func() response
		want      int
		wantAuthz string // WWW-Authenticate on 401
	}{
		{"admin reads", func() response { return read(tokAdmin) }, 200, ""},
		{"viewer reads", func() response { return read(tokViewer) }, 200, ""},
		{"admin writes", func() response { return write(tokAdmin) }, 201, ""},
		{"viewer cannot write", func() response { return write(tokViewer) }, 403, ""},
		{"no role cannot read", func() response { return read(tokNoRole) }, 403, ""},
		{"device-role token cannot read", func() response { return read(tokDeviceLike) }, 403, ""},
		{"device access token refused by the verifier", func() response { return read("tok-real-device") }, 401, `error_description="a device token is not accepted by the admin API"`},
		{"missing token", func() response { return read("") }, 401, `Bearer realm="espmdm"`},
		{"unknown token", func() response { return read("tok-forged") }, 401, `error="invalid_token", error_description="the token was refused"`},
		{"basic scheme", func() response { return rawAuth("Basic YWxpY2U6c2VjcmV0") }, 401, `error_description="the Authorization header is not Bearer <token>"`},
		{"bearer without token", func() response { return rawAuth("Bearer ") }, 401, ""},
		{"lower-case scheme accepted", func() response { return rawAuth("bearer " + tokViewer) }, 200, ""},
		{"unexpected verifier error is a 401", func() response { return read(tokWeird) }, 401, ""},
		{"viewer cannot fetch provisioning secrets", func() response { return e.get("/api/devices/2/provisioning", tokViewer) }, 403, ""},
		{"viewer cannot sync identity", func() response {
			return e.do(request{method: http.MethodPost, path: "/api/devices/2/identity/sync", token: tokViewer})
		}, 403, ""},
		{"viewer cannot upload firmware", func() response {
			return e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokViewer,
				body: strings.NewReader("\xe9"), contentType: "application/octet-stream"})
		}, 403, ""},
		{"viewer cannot delete", func() response {
			return e.do(request{method: http.MethodDelete, path: "/api/devices/2", token: tokViewer})
		}, 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.call()
			wantStatus(t, r, tt.want)
			if tt.want >= 400 {
				p := r.problem(t)
				if strings.Contains(p.Detail, "exploded") || strings.Contains(p.Detail, "signature") {
					t.Errorf("detail leaks verifier text: %q", p.Detail)
				}
			}
			if tt.want == 401 {
				got := r.header.Get("WWW-Authenticate")
				if !strings.HasPrefix(got, "Bearer") || !strings.Contains(got, tt.wantAuthz) {
					t.Errorf("WWW-Authenticate = %q, want Bearer with %q", got, tt.wantAuthz)
				}
			}
		})
	}
}

func TestAdminAuthIdentityProviderDown(t *testing.T) {
	e := newEnv(t)
	e.verifier.down = true
	p := wantProblem(t, e.get("/api/device-models", tokAdmin), http.StatusBadGateway)
	if strings.Contains(p.Detail, "10.0.0.7") || strings.Contains(p.Detail, "refused") {
		t.Errorf("detail leaks the dependency error: %q", p.Detail)
	}
	if p.Type != "urn:espmdm:problem:upstream-unavailable" {
		t.Errorf("type = %q", p.Type)
	}
}

func TestAuthDisabled(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.AuthDisabled = true }))
	wantStatus(t, e.get("/api/device-models", ""), http.StatusOK)
	wantStatus(t, e.sendJSON(http.MethodPost, "/api/device-models", "", `{"code":"c","name":"n"}`), http.StatusCreated)
	// The device API is never opened by AUTH_DISABLED.
	wantProblem(t, e.get("/iot/config", ""), http.StatusUnauthorized)
}

func TestCustomRoles(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.AdminRole, c.ViewerRole = "boss", "offline_access" }))
	// alice holds offline_access (the viewer role here) but not "boss".
	wantStatus(t, e.get("/api/device-models", tokAdmin), http.StatusOK)
	wantProblem(t, e.sendJSON(http.MethodPost, "/api/device-models", tokAdmin, `{"code":"c","name":"n"}`), http.StatusForbidden)
	wantProblem(t, e.get("/api/device-models", tokViewer), http.StatusForbidden)
}

// Keycloak access tokens with many roles run to several KiB: they must
// reach the verifier instead of failing as oversized headers.
func TestLargeTokenReachesVerifier(t *testing.T) {
	e := newEnv(t)
	big := "tok-" + strings.Repeat("A", 10<<10)
	r := e.get("/api/device-models", big)
	wantProblem(t, r, http.StatusUnauthorized)
	e.verifier.mu.Lock()
	defer e.verifier.mu.Unlock()
	if n := len(e.verifier.seen); n == 0 || e.verifier.seen[n-1] != big {
		t.Errorf("the verifier did not see the 10 KiB token")
	}
}

func TestAuthRefusalsSayWhy(t *testing.T) {
	e := newEnv(t)
	p := wantProblem(t, e.sendJSON(http.MethodPost, "/api/device-models", tokViewer, `{"code":"c","name":"n"}`), http.StatusForbidden)
	if p.Detail != "this needs the realm role mdm-admin" {
		t.Errorf("403 detail for a viewer writing = %q, want it to name the role", p.Detail)
	}
	p = wantProblem(t, e.get("/api/device-models", tokNoRole), http.StatusForbidden)
	if p.Detail != "this needs the realm role mdm-viewer or mdm-admin" {
		t.Errorf("403 detail for a reader without a role = %q", p.Detail)
	}

	r := e.get("/api/device-models", "forged-token-123")
	wantProblem(t, r, http.StatusUnauthorized)
	id := r.header.Get("X-Request-Id")
	found := false
	for _, entry := range e.logs.FilterMessage("authentication refused").All() {
		ctx := entry.ContextMap()
		if ctx["request_id"] == id {
			found = true
			if reason, _ := ctx["reason"].(string); !strings.Contains(reason, "signature invalid") {
				t.Errorf("logged reason %q, want the verifier's", reason)
			}
		}
	}
	if !found {
		t.Errorf("no \"authentication refused\" log entry with request id %s", id)
	}
}
