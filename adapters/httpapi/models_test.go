package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

type modelJSON struct {
	ID              int64           `json:"id"`
	Code            string          `json:"code"`
	Name            string          `json:"name"`
	FirmwareVersion *string         `json:"firmware_version"`
	ConfigSchema    json.RawMessage `json:"config_schema"`
	CreatedAt       string          `json:"created_at"`
	UpdatedAt       string          `json:"updated_at"`
}

func TestDeviceModelCRUD(t *testing.T) {
	e := newEnv(t)

	r := e.sendJSON(http.MethodPost, "/api/device-models", tokAdmin,
		`{"code":"sensor_v2","name":"Sensor v2","config_schema":{"type":"object"}}`)
	wantStatus(t, r, http.StatusCreated)
	var created modelJSON
	r.json(t, &created)
	if got, want := r.header.Get("Location"), "/api/device-models/1"; got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	if created.Code != "sensor_v2" || created.Name != "Sensor v2" || string(created.ConfigSchema) != `{"type":"object"}` {
		t.Errorf("created = %+v", created)
	}
	if created.FirmwareVersion != nil {
		t.Errorf("firmware_version = %q, want null", *created.FirmwareVersion)
	}
	if created.CreatedAt != "2026-03-07T08:00:00Z" {
		t.Errorf("created_at = %q, want RFC 3339 UTC", created.CreatedAt)
	}
	// The raw JSON names every field of SPEC §1, null included.
	var raw map[string]json.RawMessage
	r.json(t, &raw)
	for _, k := range []string{"id", "code", "name", "firmware_version", "config_schema", "created_at", "updated_at"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("member %q missing in %s", k, r.body)
		}
	}
	if string(raw["firmware_version"]) != "null" {
		t.Errorf("firmware_version = %s, want null", raw["firmware_version"])
	}

	r = e.get("/api/device-models/1", tokViewer)
	wantStatus(t, r, http.StatusOK)
	var got modelJSON
	r.json(t, &got)
	if got.ID != 1 || got.Code != "sensor_v2" {
		t.Errorf("get = %+v", got)
	}

	e.cat.addModel("relay", "")
	r = e.get("/api/device-models", tokViewer)
	wantStatus(t, r, http.StatusOK)
	var list struct {
		DeviceModels []modelJSON `json:"device_models"`
	}
	r.json(t, &list)
	if len(list.DeviceModels) != 2 || list.DeviceModels[1].Code != "relay" || string(list.DeviceModels[1].ConfigSchema) != "null" {
		t.Errorf("list = %s", r.body)
	}

	r = e.do(request{method: http.MethodDelete, path: "/api/device-models/1", token: tokAdmin})
	wantStatus(t, r, http.StatusNoContent)
	wantProblem(t, e.get("/api/device-models/1", tokAdmin), http.StatusNotFound)
}

func TestDeviceModelListEmptyIsArray(t *testing.T) {
	e := newEnv(t)
	r := e.get("/api/device-models", tokAdmin)
	wantStatus(t, r, http.StatusOK)
	if got, want := strings.TrimSpace(string(r.body)), `{"device_models":[]}`; got != want {
		t.Errorf("body = %s, want %s", got, want)
	}
}

func TestDeviceModelUpdateSchemaNullVersusAbsent(t *testing.T) {
	e := newEnv(t)
	m := e.cat.addModel("sensor", `{"type":"object"}`)
	path := "/api/device-models/1"
	_ = m

	// Absent config_schema: only the name changes.
	r := e.sendJSON(http.MethodPut, path, tokAdmin, `{"name":"Renamed"}`)
	wantStatus(t, r, http.StatusOK)
	var got modelJSON
	r.json(t, &got)
	if got.Name != "Renamed" || string(got.ConfigSchema) != `{"type":"object"}` {
		t.Errorf("after name-only PUT: %s", r.body)
	}
	if e.cat.lastUpdate.SetSchema {
		t.Errorf("absent config_schema was passed as SetSchema")
	}

	// A new schema replaces it.
	r = e.sendJSON(http.MethodPut, path, tokAdmin, `{"config_schema":{"type":"object","required":["x"]}}`)
	wantStatus(t, r, http.StatusOK)
	if u := e.cat.lastUpdate; !u.SetSchema || u.Name != nil || !strings.Contains(string(u.ConfigSchema), "required") {
		t.Errorf("update passed = %+v", u)
	}

	// Explicit null clears it.
	r = e.sendJSON(http.MethodPut, path, tokAdmin, `{"config_schema":null}`)
	wantStatus(t, r, http.StatusOK)
	r.json(t, &got)
	if string(got.ConfigSchema) != "null" {
		t.Errorf("config_schema after null = %s", got.ConfigSchema)
	}
	if u := e.cat.lastUpdate; !u.SetSchema || u.ConfigSchema != nil {
		t.Errorf("null schema passed as %+v, want SetSchema with nil schema", u)
	}

	// A null name is refused, not silently ignored.
	p := wantProblem(t, e.sendJSON(http.MethodPut, path, tokAdmin, `{"name":null}`), http.StatusBadRequest)
	if p.Field != "name" {
		t.Errorf("field = %q, want name", p.Field)
	}
	// code is immutable: not a member of the PUT body.
	if p := wantProblem(t, e.sendJSON(http.MethodPut, path, tokAdmin, `{"code":"other"}`), http.StatusBadRequest); p.Field != "code" || !strings.Contains(p.Detail, "immutable") {
		t.Errorf("changing the code: field %q, detail %q; want it called immutable", p.Field, p.Detail)
	}
}

func TestDeviceModelErrors(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("taken", "")
	e.cat.addDevice(1, "abcd1234", true)

	tests := []struct {
		name       string
		req        request
		wantStatus int
		wantType   string
		wantDetail string // substring
	}{
		{"malformed JSON", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{"code":`)},
			400, "urn:espmdm:problem:malformed-request", "malformed JSON"},
		{"syntax error", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{"code" "x"}`)},
			400, "urn:espmdm:problem:malformed-request", "byte offset"},
		{"not an object", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`[1,2]`)},
			400, "urn:espmdm:problem:malformed-request", "expected a JSON object"},
		{"wrong member type", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{"code":5,"name":"x"}`)},
			400, "urn:espmdm:problem:malformed-request", `"code"`},
		{"unknown field", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{"code":"a","name":"b","colour":"red"}`)},
			400, "urn:espmdm:problem:malformed-request", `unknown member "colour"`},
		{"trailing data", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{"code":"a","name":"b"} {}`)},
			400, "urn:espmdm:problem:malformed-request", "after the JSON object"},
		{"empty body", request{method: "POST", path: "/api/device-models", body: strings.NewReader(``)},
			400, "urn:espmdm:problem:malformed-request", "empty"},
		{"missing code", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{"name":"b"}`)},
			400, "urn:espmdm:problem:validation", "code: required"},
		{"core validation reason shown", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{"code":"Bad Code","name":"b"}`)},
			400, "urn:espmdm:problem:validation", "code: must match"},
		{"duplicate code", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{"code":"taken","name":"b"}`)},
			409, "urn:espmdm:problem:conflict", "conflicts"},
		{"wrong content type", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{}`), contentType: "text/plain"},
			415, "urn:espmdm:problem:unsupported-media-type", "application/json"},
		{"compressed body", request{method: "POST", path: "/api/device-models", body: strings.NewReader(`{}`), header: map[string]string{"Content-Encoding": "gzip"}},
			415, "urn:espmdm:problem:unsupported-media-type", "Content-Encoding"},
		{"bad id", request{method: "GET", path: "/api/device-models/abc"}, 400, "urn:espmdm:problem:validation", "id: must be a positive integer"},
		{"zero id", request{method: "GET", path: "/api/device-models/0"}, 400, "urn:espmdm:problem:validation", "id:"},
		{"id overflow", request{method: "GET", path: "/api/device-models/99999999999999999999"}, 400, "urn:espmdm:problem:validation", "id:"},
		{"not found", request{method: "GET", path: "/api/device-models/42"}, 404, "urn:espmdm:problem:not-found", "does not exist"},
		{"put not found", request{method: "PUT", path: "/api/device-models/42", body: strings.NewReader(`{"name":"x"}`)}, 404, "urn:espmdm:problem:not-found", ""},
		{"put bad id", request{method: "PUT", path: "/api/device-models/x", body: strings.NewReader(`{"name":"x"}`)}, 400, "urn:espmdm:problem:validation", "id:"},
		{"delete with devices", request{method: "DELETE", path: "/api/device-models/1"}, 409, "urn:espmdm:problem:conflict", ""},
		{"delete not found", request{method: "DELETE", path: "/api/device-models/9"}, 404, "urn:espmdm:problem:not-found", ""},
		{"delete bad id", request{method: "DELETE", path: "/api/device-models/-1"}, 400, "urn:espmdm:problem:validation", ""},
		{"method not allowed", request{method: "PATCH", path: "/api/device-models/1"}, 405, "urn:espmdm:problem:method-not-allowed", ""},
		{"no such route", request{method: "GET", path: "/api/nope"}, 404, "urn:espmdm:problem:not-found", "no route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.token = tokAdmin
			if tt.req.contentType == "" && tt.req.body != nil {
				tt.req.contentType = "application/json"
			}
			p := wantProblem(t, e.do(tt.req), tt.wantStatus)
			if p.Type != tt.wantType {
				t.Errorf("type = %q, want %q", p.Type, tt.wantType)
			}
			if !strings.Contains(p.Detail, tt.wantDetail) {
				t.Errorf("detail = %q, want it to contain %q", p.Detail, tt.wantDetail)
			}
			if p.RequestID == "" {
				t.Errorf("problem has no request_id")
			}
		})
	}
}

func TestJSONBodyLimit(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.JSONMaxBytes = 1024 }))
	body := `{"code":"big","name":"` + strings.Repeat("x", 2000) + `"}`
	p := wantProblem(t, e.sendJSON(http.MethodPost, "/api/device-models", tokAdmin, body), http.StatusRequestEntityTooLarge)
	if p.Type != "urn:espmdm:problem:too-large" {
		t.Errorf("type = %q", p.Type)
	}
}

func TestUpdateModelForce(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	wantStatus(t, e.sendJSON(http.MethodPut, "/api/device-models/1?force=true", tokAdmin, `{"config_schema":{"type":"object"}}`), http.StatusOK)
	if !e.cat.lastUpdate.Force {
		t.Error("?force=true did not reach the catalog")
	}
	wantStatus(t, e.sendJSON(http.MethodPut, "/api/device-models/1", tokAdmin, `{"config_schema":{"type":"object"}}`), http.StatusOK)
	if e.cat.lastUpdate.Force {
		t.Error("force without ?force=true")
	}
	p := wantProblem(t, e.sendJSON(http.MethodPut, "/api/device-models/1?force=yes", tokAdmin, `{"name":"x"}`), http.StatusBadRequest)
	if p.Field != "force" {
		t.Errorf("field = %q, want force", p.Field)
	}
}
