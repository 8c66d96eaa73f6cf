package httpapi_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/core/model"
)

func TestDeviceAPI(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	d := e.cat.addDevice(1, "abcd1234", true)
	e.verifier.addDevice("tok-dev", d)

	r := e.get("/iot/config", "tok-dev")
	wantStatus(t, r, http.StatusOK)
	if string(r.body) != `{"interval":60}` || r.header.Get("Content-Type") != "application/json" {
		t.Errorf("config = %s (%s)", r.body, r.header.Get("Content-Type"))
	}

	r = e.get("/iot/firmware-version", "tok-dev")
	wantStatus(t, r, http.StatusOK)
	if got := strings.TrimSpace(string(r.body)); got != `{"firmware_version":null,"sha256":null}` {
		t.Errorf("version before upload = %s", got)
	}
	wantProblem(t, e.get("/iot/firmware", "tok-dev"), http.StatusNotFound)

	img := testImage(2048)
	fw := e.cat.addFirmware(1, "3.0.1", img)
	r = e.get("/iot/firmware-version", "tok-dev")
	if got, want := strings.TrimSpace(string(r.body)), `{"firmware_version":"3.0.1","sha256":"`+fw.SHA256+`"}`; got != want {
		t.Errorf("version = %s", got)
	}

	r = e.get("/iot/firmware", "tok-dev")
	wantStatus(t, r, http.StatusOK)
	if !bytes.Equal(r.body, img) || r.header.Get("ETag") != `"`+fw.SHA256+`"` ||
		r.header.Get("Content-Disposition") != `attachment; filename="sensor-3.0.1.bin"` {
		t.Errorf("firmware: %d bytes, headers %v", len(r.body), r.header)
	}
	r = e.do(request{method: http.MethodGet, path: "/iot/firmware", token: "tok-dev", header: map[string]string{"Range": "bytes=1024-"}})
	wantStatus(t, r, http.StatusPartialContent)
	if !bytes.Equal(r.body, img[1024:]) {
		t.Errorf("range body: %d bytes", len(r.body))
	}
	r = e.do(request{method: http.MethodGet, path: "/iot/firmware", token: "tok-dev", header: map[string]string{"If-None-Match": `"` + fw.SHA256 + `"`}})
	wantStatus(t, r, http.StatusNotModified)
}

func TestDeviceAPIRefusals(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	e.cat.addModel("relay", "")
	active := e.cat.addDevice(1, "abcd1234", true)
	inactive := e.cat.addDevice(1, "zzzz9999", false)
	e.verifier.addDevice("tok-dev", active)
	e.verifier.addDevice("tok-inactive", inactive)
	// A token for a key that exists, but under another model's code.
	wrongModel := active
	wrongModel.ModelCode = "relay"
	e.verifier.addDevice("tok-wrong-model", wrongModel)
	ghost := model.Device{Key: "ghost123", ModelCode: "sensor"}
	e.verifier.addDevice("tok-ghost", ghost)

	for _, path := range []string{"/iot/config", "/iot/firmware", "/iot/firmware-version"} {
		tests := []struct {
			name  string
			token string
			want  int
		}{
			{"missing token", "", 401},
			{"forged token", "tok-forged", 401},
			{"admin token", tokAdmin, 401},
			{"inactive device", "tok-inactive", 403},
			{"model mismatch", "tok-wrong-model", 401},
			{"unknown device", "tok-ghost", 401},
			{"verifier fails oddly", tokWeird, 401},
		}
		for _, tt := range tests {
			t.Run(path+" "+tt.name, func(t *testing.T) {
				p := wantProblem(t, e.get(path, tt.token), tt.want)
				if strings.Contains(p.Detail, "exploded") || strings.Contains(p.Detail, "inactive") {
					t.Errorf("detail leaks internal text: %q", p.Detail)
				}
			})
		}
	}

	t.Run("unexpected authentication error is 401, never 500", func(t *testing.T) {
		e.dev.setFail("AuthenticateDevice", errors.New("sql: connection is already closed"))
		defer e.dev.setFail("AuthenticateDevice", nil)
		p := wantProblem(t, e.get("/iot/config", "tok-dev"), http.StatusUnauthorized)
		if strings.Contains(p.Detail, "sql") {
			t.Errorf("detail leaks: %q", p.Detail)
		}
	})
	t.Run("identity provider down is 502", func(t *testing.T) {
		e.verifier.mu.Lock()
		e.verifier.down = true
		e.verifier.mu.Unlock()
		defer func() { e.verifier.mu.Lock(); e.verifier.down = false; e.verifier.mu.Unlock() }()
		wantProblem(t, e.get("/iot/config", "tok-dev"), http.StatusBadGateway)
	})
	t.Run("database failure after authentication is 503 with Retry-After", func(t *testing.T) {
		e.dev.setFail("DeviceConfig", &model.UnavailableError{Service: model.ServiceDatabase, Err: fmt.Errorf("conn reset")})
		defer e.dev.setFail("DeviceConfig", nil)
		r := e.get("/iot/config", "tok-dev")
		p := wantProblem(t, r, http.StatusServiceUnavailable)
		if ra := r.header.Get("Retry-After"); ra != "5" || strings.Contains(p.Detail, "conn reset") {
			t.Errorf("Retry-After %q, detail %q; want 5 and nothing of the cause", ra, p.Detail)
		}
	})
	t.Run("broker failure after authentication is 502", func(t *testing.T) {
		e.dev.setFail("DeviceConfig", &model.UnavailableError{Service: "mqtt", Err: fmt.Errorf("conn reset")})
		defer e.dev.setFail("DeviceConfig", nil)
		wantProblem(t, e.get("/iot/config", "tok-dev"), http.StatusBadGateway)
	})
}
