package console_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/adapters/console"
)

const issuer = "http://127.0.0.1:8081/realms/iot"

func built() fstest.MapFS {
	return fstest.MapFS{
		"index.html":                {Data: []byte(`<!doctype html><script type="module" src="/console/assets/index-AbC123.js"></script>`)},
		"assets/index-AbC123.js":    {Data: []byte(`console.log(1)`)},
		"assets/index-Zz9.css":      {Data: []byte(`body{}`)},
		"favicon.svg":               {Data: []byte(`<svg/>`)},
		"PLACEHOLDER":               {Data: []byte(`x`)},
		"assets/stub_esp32-Q1.json": {Data: []byte(`{}`)},
	}
}

func newApp(t *testing.T, assets fstest.MapFS) *fiber.App {
	t.Helper()
	h, err := console.New(console.Config{IssuerURL: issuer, AdminRole: "mdm-admin", ViewerRole: "mdm-viewer", Assets: assets})
	if err != nil {
		t.Fatal(err)
	}
	app := fiber.New()
	h.Register(app)
	return app
}

type answer struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, app *fiber.App, path string, hdr ...string) answer {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := app.Test(req, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func TestRedirects(t *testing.T) {
	app := newApp(t, built())
	for _, p := range []string{"/", "/console"} {
		r := get(t, app, p)
		if r.status != http.StatusFound || r.header.Get("Location") != "/console/" {
			t.Errorf("GET %s = %d Location %q, want 302 to /console/", p, r.status, r.header.Get("Location"))
		}
	}
}

func TestCaching(t *testing.T) {
	app := newApp(t, built())
	tests := []struct {
		path, wantCache, wantType string
		wantStatus                int
	}{
		{"/console/", "no-cache", "text/html; charset=utf-8", 200},
		{"/console/devices/7", "no-cache", "text/html; charset=utf-8", 200},
		{"/console/assets/index-AbC123.js", "public, max-age=31536000, immutable", "text/javascript; charset=utf-8", 200},
		{"/console/assets/index-Zz9.css", "public, max-age=31536000, immutable", "text/css; charset=utf-8", 200},
		{"/console/favicon.svg", "no-cache", "image/svg+xml", 200},
		{"/console/assets/gone-1234.js", "no-cache", "text/plain; charset=utf-8", 404},
		{"/console/PLACEHOLDER", "", "", 200}, // not a file of the build: the app
		{"/console/config.json", "no-cache", "application/json", 200},
	}
	for _, tt := range tests {
		r := get(t, app, tt.path)
		if r.status != tt.wantStatus {
			t.Errorf("GET %s = %d, want %d", tt.path, r.status, tt.wantStatus)
		}
		if tt.wantCache != "" && r.header.Get("Cache-Control") != tt.wantCache {
			t.Errorf("GET %s Cache-Control = %q, want %q", tt.path, r.header.Get("Cache-Control"), tt.wantCache)
		}
		if tt.wantType != "" && r.header.Get("Content-Type") != tt.wantType {
			t.Errorf("GET %s Content-Type = %q, want %q", tt.path, r.header.Get("Content-Type"), tt.wantType)
		}
	}
	if r := get(t, app, "/console/PLACEHOLDER"); !strings.Contains(r.body, "index-AbC123.js") {
		t.Errorf("GET /console/PLACEHOLDER = %q, want the app's index.html", r.body)
	}
}

func TestIndexRevalidates(t *testing.T) {
	app := newApp(t, built())
	first := get(t, app, "/console/")
	etag := first.header.Get("ETag")
	if etag == "" {
		t.Fatal("index.html has no ETag")
	}
	if r := get(t, app, "/console/", "If-None-Match", etag); r.status != http.StatusNotModified || r.body != "" {
		t.Errorf("revalidation = %d %q, want 304 and no body", r.status, r.body)
	}
}

func TestTraversalRefused(t *testing.T) {
	app := newApp(t, built())
	for _, p := range []string{"/console/../go.mod", "/console/%2e%2e/console.go", "/console/assets/..%2f..%2fconsole.go"} {
		if r := get(t, app, p); r.status == http.StatusOK && !strings.Contains(r.body, "index-AbC123.js") {
			t.Errorf("GET %s = %d %q, served something that is not the app", p, r.status, r.body)
		}
	}
}

func TestCSP(t *testing.T) {
	app := newApp(t, built())
	for _, p := range []string{"/console/", "/console/assets/index-AbC123.js", "/console/config.json"} {
		r := get(t, app, p)
		csp := r.header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'",
			"connect-src 'self' http://127.0.0.1:8081", "frame-ancestors 'none'", "base-uri 'none'", "object-src 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s CSP = %q, missing %q", p, csp, want)
			}
		}
		for _, bad := range []string{"unsafe-inline", "unsafe-eval", "*"} {
			if strings.Contains(csp, bad) {
				t.Errorf("GET %s CSP = %q allows %s", p, csp, bad)
			}
		}
		if r.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s without nosniff", p)
		}
	}
}

func TestConfig(t *testing.T) {
	r := get(t, newApp(t, built()), "/console/config.json")
	var got map[string]string
	if err := json.Unmarshal([]byte(r.body), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"issuer": issuer, "client_id": console.DefaultClientID, "admin_role": "mdm-admin", "viewer_role": "mdm-viewer"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("config[%s] = %q, want %q", k, got[k], v)
		}
	}
}

func TestNotBuilt(t *testing.T) {
	app := newApp(t, fstest.MapFS{"PLACEHOLDER": {Data: []byte("x")}})
	for _, p := range []string{"/console/", "/console/devices"} {
		r := get(t, app, p)
		if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "not built") || !strings.Contains(r.body, "make build") {
			t.Errorf("GET %s without a build = %d %q, want 503 saying it is not built and how to build it", p, r.status, r.body)
		}
		if !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
			t.Errorf("GET %s Content-Type = %q", p, r.header.Get("Content-Type"))
		}
	}
	if r := get(t, app, "/"); r.status != http.StatusFound {
		t.Errorf("GET / without a build = %d, want the redirect still", r.status)
	}
}

func TestEmbeddedBuilds(t *testing.T) {
	// The embedded assets are either a real build or only the placeholder;
	// both must give a working handler.
	h, err := console.New(console.Config{IssuerURL: issuer})
	if err != nil {
		t.Fatal(err)
	}
	app := fiber.New()
	h.Register(app)
	r := get(t, app, "/console/")
	if h.Built() && r.status != http.StatusOK || !h.Built() && r.status != http.StatusServiceUnavailable {
		t.Errorf("embedded console (built %v): GET /console/ = %d", h.Built(), r.status)
	}
}

func TestBadIssuer(t *testing.T) {
	if _, err := console.New(console.Config{IssuerURL: "not a url"}); err == nil {
		t.Error("New accepted an issuer that is not a URL")
	}
}
