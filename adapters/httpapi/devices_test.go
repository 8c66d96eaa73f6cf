package httpapi_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/core/model"
)

type deviceJSON struct {
	ID                      int64           `json:"id"`
	Key                     string          `json:"key"`
	DeviceModelID           int64           `json:"device_model_id"`
	ClientID                string          `json:"client_id"`
	Config                  json.RawMessage `json:"config"`
	Active                  bool            `json:"active"`
	RotationState           string          `json:"rotation_state"`
	SecretCreatedAt         *string         `json:"secret_created_at"`
	LastRotationAttemptAt   *string         `json:"last_rotation_attempt_at"`
	LastRotationCompletedAt *string         `json:"last_rotation_completed_at"`
	LastSeenAt              *string         `json:"last_seen_at"`
	CreatedAt               string          `json:"created_at"`
	UpdatedAt               string          `json:"updated_at"`
}

type deviceListJSON struct {
	Devices    []deviceJSON `json:"devices"`
	NextCursor *string      `json:"next_cursor"`
}

func TestDeviceCRUD(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")

	r := e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, `{"device_model_id":1,"config":{"interval":30}}`)
	wantStatus(t, r, http.StatusCreated)
	var d deviceJSON
	r.json(t, &d)
	if got, want := r.header.Get("Location"), fmt.Sprintf("/api/devices/%d", d.ID); got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	if d.ClientID != "iotdevice-sensor-"+d.Key || !d.Active || d.RotationState != "OK" || string(d.Config) != `{"interval":30}` {
		t.Errorf("created = %s", r.body)
	}
	if e.cat.lastNewDevice.Active != nil {
		t.Errorf("absent active passed as %v, want nil (core default)", *e.cat.lastNewDevice.Active)
	}
	var raw map[string]json.RawMessage
	r.json(t, &raw)
	for _, k := range []string{"id", "key", "device_model_id", "config", "active", "rotation_state", "secret_created_at",
		"last_rotation_attempt_at", "last_rotation_completed_at", "last_seen_at", "created_at", "updated_at", "client_id"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("member %q missing in %s", k, r.body)
		}
	}
	if string(raw["last_seen_at"]) != "null" {
		t.Errorf("last_seen_at = %s, want null", raw["last_seen_at"])
	}

	r = e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, `{"device_model_id":1,"config":{},"active":false}`)
	wantStatus(t, r, http.StatusCreated)
	var inactive deviceJSON
	r.json(t, &inactive)
	if inactive.Active {
		t.Errorf("active:false ignored")
	}

	path := fmt.Sprintf("/api/devices/%d", d.ID)
	r = e.get(path, tokViewer)
	wantStatus(t, r, http.StatusOK)
	var got deviceJSON
	r.json(t, &got)
	if got.Key != d.Key {
		t.Errorf("get = %s", r.body)
	}

	r = e.sendJSON(http.MethodPut, path, tokAdmin, `{"config":{"interval":5},"active":false}`)
	wantStatus(t, r, http.StatusOK)
	r.json(t, &got)
	if got.Active || string(got.Config) != `{"interval":5}` {
		t.Errorf("updated = %s", r.body)
	}
	// Absent members are left alone.
	r = e.sendJSON(http.MethodPut, path, tokAdmin, `{"active":true}`)
	wantStatus(t, r, http.StatusOK)
	if u := e.cat.lastDevUpdate; u.Config != nil || u.Active == nil || !*u.Active {
		t.Errorf("update passed = %+v", u)
	}

	wantStatus(t, e.do(request{method: http.MethodDelete, path: path, token: tokAdmin}), http.StatusNoContent)
	wantProblem(t, e.get(path, tokViewer), http.StatusNotFound)
}

// JSON Schema's integer includes every spelling of an integer: 1.0 and
// 1e0 name model 1 as 1 does.
func TestCreateDeviceModelIDSpellings(t *testing.T) {
	for _, id := range []string{"1", "1.0", "1e0", "0.1e1", "10e-1"} {
		t.Run(id, func(t *testing.T) {
			e := newEnv(t)
			e.cat.addModel("sensor", "")
			r := e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, `{"device_model_id":`+id+`,"config":{}}`)
			wantStatus(t, r, http.StatusCreated)
			var d struct {
				DeviceModelID int64 `json:"device_model_id"`
			}
			r.json(t, &d)
			if d.DeviceModelID != 1 {
				t.Errorf("device_model_id %s made a device of model %d", id, d.DeviceModelID)
			}
		})
	}
}

func TestDeviceErrors(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	e.cat.addDevice(1, "abcd1234", true)

	tests := []struct {
		name      string
		method    string
		path      string
		body      string
		want      int
		wantField string
	}{
		{"create: missing model", "POST", "/api/devices", `{"config":{}}`, 400, "device_model_id"},
		{"create: missing config", "POST", "/api/devices", `{"device_model_id":1}`, 400, "config"},
		{"create: null config", "POST", "/api/devices", `{"device_model_id":1,"config":null}`, 400, "config"},
		{"create: active not bool", "POST", "/api/devices", `{"device_model_id":1,"config":{},"active":"yes"}`, 400, "active"},
		{"create: unknown model", "POST", "/api/devices", `{"device_model_id":99,"config":{}}`, 409, "device_model_id"},
		{"create: model id 0", "POST", "/api/devices", `{"device_model_id":0,"config":{}}`, 400, "device_model_id"},
		{"create: model id fractional", "POST", "/api/devices", `{"device_model_id":1.5,"config":{}}`, 400, "device_model_id"},
		{"create: model id a string", "POST", "/api/devices", `{"device_model_id":"1","config":{}}`, 400, "device_model_id"},
		{"create: model id past int64", "POST", "/api/devices", `{"device_model_id":9223372036854775808,"config":{}}`, 400, "device_model_id"},
		{"create: model id with a huge exponent", "POST", "/api/devices", `{"device_model_id":1e999999999,"config":{}}`, 400, "device_model_id"},
		{"create: model id null", "POST", "/api/devices", `{"device_model_id":null,"config":{}}`, 400, "device_model_id"},
		{"create: unknown member", "POST", "/api/devices", `{"device_model_id":1,"config":{},"key":"abcdefgh"}`, 400, ""},
		{"create: malformed", "POST", "/api/devices", `{"device_model_id":1,`, 400, ""},
		{"get: bad id", "GET", "/api/devices/1e3x", "", 400, "id"},
		{"get: id 1e3 is 1000 (JSON Schema's integer), which does not exist", "GET", "/api/devices/1e3", "", 404, ""},
		{"get: fractional id", "GET", "/api/devices/1.5", "", 400, "id"},
		{"get: missing", "GET", "/api/devices/404", "", 404, ""},
		{"put: missing", "PUT", "/api/devices/404", `{"active":true}`, 404, ""},
		{"put: null active", "PUT", "/api/devices/2", `{"active":null}`, 400, "active"},
		{"put: null config", "PUT", "/api/devices/2", `{"config":null}`, 400, "config"},
		{"put: unknown member", "PUT", "/api/devices/2", `{"rotation_state":"OK"}`, 400, ""},
		{"put: bad id", "PUT", "/api/devices/two", `{"active":true}`, 400, "id"},
		{"delete: missing", "DELETE", "/api/devices/404", "", 404, ""},
		{"delete: bad id", "DELETE", "/api/devices/-2", "", 400, "id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request{method: tt.method, path: tt.path, token: tokAdmin}
			if tt.body != "" {
				req.body, req.contentType = strings.NewReader(tt.body), "application/json"
			}
			p := wantProblem(t, e.do(req), tt.want)
			if p.Field != tt.wantField {
				t.Errorf("field = %q, want %q (detail %q)", p.Field, tt.wantField, p.Detail)
			}
		})
	}
}

func TestDeviceCreateConflictAndIdentityFailure(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	e.cat.setFail("CreateDevice", fmt.Errorf("key collision after retries: %w", model.ErrConflict))
	wantProblem(t, e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, `{"device_model_id":1,"config":{}}`), http.StatusConflict)

	e.cat.setFail("CreateDevice", &model.UnavailableError{Service: "keycloak", Err: fmt.Errorf("POST https://kc.internal/admin/realms/iot/clients: 503")})
	p := wantProblem(t, e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, `{"device_model_id":1,"config":{}}`), http.StatusBadGateway)
	if strings.Contains(p.Detail, "kc.internal") {
		t.Errorf("detail leaks: %q", p.Detail)
	}
}

func TestDeviceListPagination(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("a", "")
	e.cat.addModel("b", "")
	var want []int64
	for i := 0; i < 7; i++ {
		d := e.cat.addDevice(1+int64(i%2), fmt.Sprintf("key%05d", i), true)
		want = append(want, d.ID)
	}

	var got []int64
	path := "/api/devices?limit=3"
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		r := e.get(path, tokViewer)
		wantStatus(t, r, http.StatusOK)
		var page deviceListJSON
		r.json(t, &page)
		if len(page.Devices) > 3 {
			t.Fatalf("page of %d devices, limit 3", len(page.Devices))
		}
		for _, d := range page.Devices {
			got = append(got, d.ID)
		}
		if page.NextCursor == nil {
			if !strings.Contains(string(r.body), `"next_cursor":null`) {
				t.Errorf("last page lacks next_cursor:null: %s", r.body)
			}
			break
		}
		if last := got[len(got)-1]; *page.NextCursor == fmt.Sprintf("c1.%d", last) || *page.NextCursor == fmt.Sprintf("c1.%016x", last) {
			t.Errorf("cursor %q exposes the raw id", *page.NextCursor)
		}
		path = "/api/devices?limit=3&cursor=" + url.QueryEscape(*page.NextCursor)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ids over all pages = %v, want %v", got, want)
	}

	// Default limit and filters reach the catalog.
	wantStatus(t, e.get("/api/devices", tokViewer), http.StatusOK)
	if f := e.cat.lastFilter; f.Limit != 100 || f.AfterID != 0 || f.ModelID != nil || f.Active != nil || f.RotationState != nil {
		t.Errorf("default filter = %+v", f)
	}
	r := e.get("/api/devices?model_id=2&rotation_state=pending&active=false&limit=1000", tokViewer)
	wantStatus(t, r, http.StatusOK)
	f := e.cat.lastFilter
	if f.Limit != 1000 || f.ModelID == nil || *f.ModelID != 2 || f.Active == nil || *f.Active ||
		f.RotationState == nil || *f.RotationState != model.RotationPending {
		t.Errorf("filter = %+v", f)
	}
	r = e.get("/api/devices?model_id=2&active=true", tokViewer)
	var page deviceListJSON
	r.json(t, &page)
	if len(page.Devices) != 3 {
		t.Errorf("model 2 has %d devices listed, want 3", len(page.Devices))
	}
	if got := strings.TrimSpace(string(e.get("/api/devices?model_id=77", tokViewer).body)); got != `{"devices":[],"next_cursor":null}` {
		t.Errorf("empty list = %s", got)
	}
}

func TestDeviceListBadQuery(t *testing.T) {
	e := newEnv(t)
	forged := base64.RawURLEncoding.EncodeToString([]byte("5"))
	for _, q := range []struct{ query, field string }{
		{"limit=0", "limit"}, {"limit=1001", "limit"}, {"limit=ten", "limit"}, {"limit=-5", "limit"},
		{"cursor=garbage", "cursor"}, {"cursor=" + forged, "cursor"}, {"cursor=c1.%21%21", "cursor"}, {"cursor=c1.LTU", "cursor"},
		{"model_id=x", "model_id"}, {"model_id=0", "model_id"},
		{"rotation_state=DONE", "rotation_state"},
		{"active=maybe", "active"},
		// Declared parameters given without a value are refused, not
		// taken as absent.
		{"limit=", "limit"}, {"cursor=", "cursor"}, {"active=", "active"}, {"rotation_state=&limit=5", "rotation_state"},
	} {
		t.Run(q.query, func(t *testing.T) {
			p := wantProblem(t, e.get("/api/devices?"+q.query, tokViewer), http.StatusBadRequest)
			if p.Field != q.field {
				t.Errorf("field = %q, want %q", p.Field, q.field)
			}
		})
	}
}

func TestProvisioning(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	d := e.cat.addDevice(1, "abcd1234", true)
	base := fmt.Sprintf("/api/devices/%d/provisioning", d.ID)

	r := e.get(base, tokAdmin)
	wantStatus(t, r, http.StatusOK)
	var nvs struct {
		Partition string `json:"partition"`
		Size      int    `json:"size"`
		Data      string `json:"data"`
	}
	r.json(t, &nvs)
	img, err := base64.StdEncoding.DecodeString(nvs.Data)
	if err != nil || nvs.Partition != "nvs" || nvs.Size != 0x6000 || len(img) != 0x6000 || !bytes.HasPrefix(img, []byte("NVSIMAGE")) {
		t.Errorf("nvs = partition %q size %d, %d bytes (%v)", nvs.Partition, nvs.Size, len(img), err)
	}
	if got := r.header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", got)
	}

	for _, tt := range []struct {
		size string
		want int
	}{{"0x3000", 0x3000}, {"0X10000", 0x10000}, {"20480", 0x5000}, {"0x100000", 0x100000}, {"12288.0", 0x3000}} {
		r := e.get(base+"?size="+tt.size, tokAdmin)
		wantStatus(t, r, http.StatusOK)
		if e.cat.lastNVSSize != tt.want {
			t.Errorf("size=%s: catalog got 0x%x, want 0x%x", tt.size, e.cat.lastNVSSize, tt.want)
		}
	}
	for _, bad := range []string{"0x2000", "0x3001", "0x101000", "12288.5", "big", "0x", "-12288", "format=nvs&size=0x0"} {
		q := "?size=" + bad
		if strings.Contains(bad, "=") {
			q = "?" + bad
		}
		p := wantProblem(t, e.get(base+q, tokAdmin), http.StatusBadRequest)
		if p.Field != "size" {
			t.Errorf("size=%s: field %q", bad, p.Field)
		}
	}

	r = e.get(base+"?format=json", tokAdmin)
	wantStatus(t, r, http.StatusOK)
	var fields map[string]string
	r.json(t, &fields)
	want := map[string]string{
		"device_key": "abcd1234", "client_id": "iotdevice-sensor-abcd1234", "client_secret": "s3cret-abcd1234",
		"token_url": "http://kc/token", "base_url": "http://mdm", "mqtt_url": "mqtt://broker:1883",
	}
	if fmt.Sprint(fields) != fmt.Sprint(want) {
		t.Errorf("json fields = %v, want %v (empty wifi omitted)", fields, want)
	}
	// format=bin: the partition itself, for esptool.
	r = e.get(base+"?format=bin&size=0x3000", tokAdmin)
	wantStatus(t, r, http.StatusOK)
	if len(r.body) != 0x3000 || !bytes.HasPrefix(r.body, []byte("NVSIMAGE")) ||
		r.header.Get("Content-Type") != "application/octet-stream" ||
		r.header.Get("Content-Disposition") != `attachment; filename="device-2-nvs.bin"` || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("format=bin: %d bytes, headers %v", len(r.body), r.header)
	}
	p0 := wantProblem(t, e.get(base+"?format=bin&size=0x2000", tokAdmin), http.StatusBadRequest)
	if p0.Field != "size" {
		t.Errorf("format=bin with a bad size: field %q", p0.Field)
	}
	wantProblem(t, e.get(base+"?format=csv", tokAdmin), http.StatusBadRequest)
	// A valid size is accepted (and has no use) with format=json: the
	// OpenAPI document cannot make one parameter depend on another. An
	// invalid one is refused with every format.
	wantStatus(t, e.get(base+"?format=json&size=0x3000", tokAdmin), http.StatusOK)
	wantProblem(t, e.get(base+"?format=json&size=0x2000", tokAdmin), http.StatusBadRequest)
	wantProblem(t, e.get(base+"?format=json&size=", tokAdmin), http.StatusBadRequest)
	wantProblem(t, e.get("/api/devices/999/provisioning", tokAdmin), http.StatusNotFound)
	wantProblem(t, e.get("/api/devices/x/provisioning", tokAdmin), http.StatusBadRequest)

	e.cat.setFail("ProvisioningNVS", model.Invalid("size", "0x3000 is too small for the provisioning data"))
	p := wantProblem(t, e.get(base+"?size=0x3000", tokAdmin), http.StatusBadRequest)
	if p.Detail != "size: 0x3000 is too small for the provisioning data" {
		t.Errorf("detail = %q", p.Detail)
	}
	e.cat.setFail("Provisioning", &model.UnavailableError{Service: "keycloak", Err: fmt.Errorf("timeout")})
	wantProblem(t, e.get(base+"?format=json", tokAdmin), http.StatusBadGateway)
}

func TestIdentity(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	d := e.cat.addDevice(1, "abcd1234", true)

	r := e.get(fmt.Sprintf("/api/devices/%d/identity", d.ID), tokViewer)
	wantStatus(t, r, http.StatusOK)
	var st struct {
		ClientID       string   `json:"client_id"`
		Exists         bool     `json:"exists"`
		Enabled        bool     `json:"enabled"`
		ServiceAccount bool     `json:"service_account"`
		Problems       []string `json:"problems"`
	}
	r.json(t, &st)
	if st.ClientID != "iotdevice-sensor-abcd1234" || !st.Exists || st.ServiceAccount || len(st.Problems) != 1 {
		t.Errorf("identity = %s", r.body)
	}

	r = e.do(request{method: http.MethodPost, path: fmt.Sprintf("/api/devices/%d/identity/sync", d.ID), token: tokAdmin})
	wantStatus(t, r, http.StatusOK)
	if !strings.Contains(string(r.body), `"problems":[]`) || !strings.Contains(string(r.body), `"service_account":true`) {
		t.Errorf("sync = %s", r.body)
	}

	wantProblem(t, e.get("/api/devices/9/identity", tokViewer), http.StatusNotFound)
	wantProblem(t, e.get("/api/devices/nine/identity", tokViewer), http.StatusBadRequest)
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/devices/9/identity/sync", token: tokAdmin}), http.StatusNotFound)
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/devices/x/identity/sync", token: tokAdmin}), http.StatusBadRequest)

	down := &model.UnavailableError{Service: "keycloak", Err: fmt.Errorf("dial tcp 10.1.1.1:8080: i/o timeout")}
	e.cat.setFail("IdentityStatus", down)
	e.cat.setFail("SyncIdentity", down)
	for _, r := range []response{
		e.get(fmt.Sprintf("/api/devices/%d/identity", d.ID), tokViewer),
		e.do(request{method: http.MethodPost, path: fmt.Sprintf("/api/devices/%d/identity/sync", d.ID), token: tokAdmin}),
	} {
		p := wantProblem(t, r, http.StatusBadGateway)
		if strings.Contains(p.Detail, "10.1.1.1") {
			t.Errorf("detail leaks: %q", p.Detail)
		}
	}
}
