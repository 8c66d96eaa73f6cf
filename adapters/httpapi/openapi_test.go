package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

type openAPIDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

var fiberParam = regexp.MustCompile(`:([A-Za-z_][A-Za-z0-9_]*)`)

// registeredRoutes lists "METHOD /path/{param}" for every route the app
// serves. HEAD twins that Fiber adds to every GET are left out.
func registeredRoutes(srv *httpapi.Server) []string {
	seen := map[string]bool{}
	for _, r := range srv.App().GetRoutes(true) {
		if r.Method == http.MethodHead {
			continue
		}
		seen[r.Method+" "+fiberParam.ReplaceAllString(r.Path, "{$1}")] = true
	}
	return sortedKeys(seen)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	e := newEnv(t)
	r := e.get("/api/openapi.json", "")
	wantStatus(t, r, http.StatusOK)
	var doc openAPIDoc
	r.json(t, &doc)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi = %q", doc.OpenAPI)
	}

	documented := map[string]bool{}
	for path, item := range doc.Paths {
		for method := range item {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	registered := registeredRoutes(e.srv)
	if len(registered) < 20 {
		t.Fatalf("only %d routes registered: %v", len(registered), registered)
	}
	for _, rt := range registered {
		if !documented[rt] {
			t.Errorf("route %s is served but missing from the OpenAPI document", rt)
		}
		delete(documented, rt)
	}
	for _, rt := range sortedKeys(documented) {
		t.Errorf("the OpenAPI document names %s, which the app does not serve", rt)
	}
}

func TestOpenAPIDocumentIsComplete(t *testing.T) {
	e := newEnv(t)
	r := e.get("/api/openapi.json", "")
	var doc map[string]any
	r.json(t, &doc)

	// Every $ref resolves.
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				if resolvePointer(doc, ref) == nil {
					t.Errorf("unresolved $ref %q", ref)
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)

	schemes := resolvePointer(doc, "#/components/securitySchemes").(map[string]any)
	if schemes["adminBearer"] == nil || schemes["deviceBearer"] == nil {
		t.Errorf("security schemes = %v", schemes)
	}
	paths := doc["paths"].(map[string]any)
	for path, item := range paths {
		for method, opv := range item.(map[string]any) {
			op := opv.(map[string]any)
			resp := op["responses"].(map[string]any)
			if resp["500"] == nil {
				t.Errorf("%s %s: no 500 response", method, path)
			}
			sec, _ := op["security"].([]any)
			protected := strings.HasPrefix(path, "/iot/") || (strings.HasPrefix(path, "/api/") && path != "/api/openapi.json" && path != "/api/docs")
			if protected {
				if len(sec) == 0 {
					t.Errorf("%s %s: no security requirement", method, path)
				}
				for _, code := range []string{"401", "403"} {
					if resp[code] == nil {
						t.Errorf("%s %s: no %s response", method, path, code)
					}
				}
			}
			if strings.Contains(path, "{id}") && resp["400"] == nil {
				t.Errorf("%s %s: takes an id but documents no 400", method, path)
			}
		}
	}
	problem := resolvePointer(doc, "#/components/responses/NotFound").(map[string]any)
	if _, ok := problem["content"].(map[string]any)[httpapi.ContentTypeProblem]; !ok {
		t.Errorf("error responses are not %s: %v", httpapi.ContentTypeProblem, problem)
	}
}

func resolvePointer(doc map[string]any, ref string) any {
	if !strings.HasPrefix(ref, "#/") {
		return nil
	}
	var cur any = doc
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

func TestDocsPage(t *testing.T) {
	e := newEnv(t)
	r := e.get("/api/docs", "")
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type = %q", ct)
	}
	page := string(r.body)
	if !strings.Contains(page, `fetch("/api/openapi.json"`) {
		t.Errorf("docs page does not load the spec")
	}
	// Offline machines: nothing may come from elsewhere.
	if m := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`).FindString(page); m != "" {
		t.Errorf("docs page loads an external asset: %q", m)
	}
}

func TestOpenAPIServersIsTheBaseURL(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.BaseURL = "https://mdm.example.com" }))
	var doc struct {
		Servers []struct {
			URL string `json:"url"`
		} `json:"servers"`
	}
	e.get("/api/openapi.json", "").json(t, &doc)
	if len(doc.Servers) != 1 || doc.Servers[0].URL != "https://mdm.example.com" {
		t.Errorf("servers = %+v, want the base URL", doc.Servers)
	}
}

// TestOpenAPINoNullableIDs: no response member that names a resource by
// its id may be null. Tools infer links from such members (device_id to
// /api/devices/{id}), and follow a null one to /api/devices/None/...; a
// member that is absent instead is not followed.
func TestOpenAPINoNullableIDs(t *testing.T) {
	e := newEnv(t)
	var doc map[string]any
	e.get("/api/openapi.json", "").json(t, &doc)
	schemas := resolvePointer(doc, "#/components/schemas").(map[string]any)
	for name, sv := range schemas {
		props, _ := sv.(map[string]any)["properties"].(map[string]any)
		for prop, pv := range props {
			if prop != "id" && !strings.HasSuffix(prop, "_id") {
				continue
			}
			if typ := fmt.Sprint(pv.(map[string]any)["type"]); strings.Contains(typ, "integer") && strings.Contains(typ, "null") {
				t.Errorf("%s.%s is a nullable id (%s): leave it out instead of null", name, prop, typ)
			}
		}
	}
}
