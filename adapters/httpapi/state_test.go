package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// POST /iot/state (SPEC §15) at the HTTP boundary: what a report may hold,
// how it shows in the device answers, the list filters and the fleet view.

func TestStateReport(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	d := e.cat.addDevice(1, "abcd1234", true)
	e.verifier.addDevice("tok-dev", d)

	r := e.get(fmt.Sprintf("/api/devices/%d", d.ID), tokAdmin)
	wantStatus(t, r, http.StatusOK)
	if !strings.Contains(string(r.body), `"reported":null,"reported_at":null`) {
		t.Errorf("before any report: %s, want reported and reported_at null", r.body)
	}

	// Integers in any JSON spelling of an integer, as everywhere.
	full := `{"firmware_version":"1.2.3","secure_version":2,"app_elf_sha256":"0a1b","partition":"ota_0",` +
		`"ota_state":"pending_verify","ota":{"target":"1.2.3","result":"installed"},"reset_reason":"sw",` +
		`"uptime_s":3.0,"free_heap":1e3,"rssi":-70,"idf_version":"v5.3.1"}`
	r = e.sendJSON(http.MethodPost, "/iot/state", "tok-dev", full)
	wantStatus(t, r, http.StatusNoContent)

	r = e.get(fmt.Sprintf("/api/devices/%d", d.ID), tokAdmin)
	var got struct {
		Reported   json.RawMessage `json:"reported"`
		ReportedAt *string         `json:"reported_at"`
		LastSeenAt *string         `json:"last_seen_at"`
	}
	r.json(t, &got)
	want := `{"firmware_version":"1.2.3","secure_version":2,"app_elf_sha256":"0a1b","partition":"ota_0",` +
		`"ota_state":"pending_verify","ota":{"target":"1.2.3","result":"installed"},"reset_reason":"sw",` +
		`"uptime_s":3,"free_heap":1000,"rssi":-70,"idf_version":"v5.3.1"}`
	if string(got.Reported) != want {
		t.Errorf("reported = %s\nwant       %s", got.Reported, want)
	}
	at := testEpoch.Add(24 * time.Hour).Format(time.RFC3339Nano)
	if got.ReportedAt == nil || *got.ReportedAt != at || got.LastSeenAt == nil || *got.LastSeenAt != at {
		t.Errorf("reported_at %v, last_seen_at %v, want both %s", got.ReportedAt, got.LastSeenAt, at)
	}

	// A minimal report replaces the whole report: what it leaves out is gone.
	wantStatus(t, e.sendJSON(http.MethodPost, "/iot/state", "tok-dev", `{"firmware_version":"1.2.4"}`), http.StatusNoContent)
	r = e.get(fmt.Sprintf("/api/devices/%d", d.ID), tokAdmin)
	r.json(t, &got)
	if string(got.Reported) != `{"firmware_version":"1.2.4"}` {
		t.Errorf("after a minimal report: reported = %s", got.Reported)
	}

	for _, tc := range []struct{ name, body, field string }{
		{"no firmware_version", `{"partition":"ota_0"}`, "firmware_version"},
		{"firmware_version null", `{"firmware_version":null}`, "firmware_version"},
		{"firmware_version empty", `{"firmware_version":""}`, "firmware_version"},
		{"firmware_version a number", `{"firmware_version":1}`, "firmware_version"},
		{"firmware_version too long", `{"firmware_version":"` + strings.Repeat("1", 32) + `"}`, "firmware_version"},
		{"firmware_version not printable", `{"firmware_version":"1.0\n"}`, "firmware_version"},
		{"firmware_version not ASCII", `{"firmware_version":"1.0é"}`, "firmware_version"},
		{"partition null", `{"firmware_version":"1","partition":null}`, "partition"},
		{"partition empty", `{"firmware_version":"1","partition":""}`, "partition"},
		{"partition too long", `{"firmware_version":"1","partition":"` + strings.Repeat("p", 17) + `"}`, "partition"},
		{"ota_state outside the words", `{"firmware_version":"1","ota_state":"verified"}`, "ota_state"},
		{"ota null", `{"firmware_version":"1","ota":null}`, "ota"},
		{"ota not an object", `{"firmware_version":"1","ota":"installed"}`, "ota"},
		{"ota without result", `{"firmware_version":"1","ota":{"target":"2"}}`, "ota.result"},
		{"ota without target", `{"firmware_version":"1","ota":{"result":"installed"}}`, "ota.target"},
		{"ota.result outside the words", `{"firmware_version":"1","ota":{"target":"2","result":"failed"}}`, "ota.result"},
		{"ota with an unknown member", `{"firmware_version":"1","ota":{"target":"2","result":"installed","why":"x"}}`, "ota"},
		{"ota with a member in another case", `{"firmware_version":"1","ota":{"Target":"2","result":"installed"}}`, "ota"},
		{"an unknown member", `{"firmware_version":"1","colour":"red"}`, ""},
		{"a member twice", `{"firmware_version":"1","firmware_version":"2"}`, ""},
		{"app_elf_sha256 upper case", `{"firmware_version":"1","app_elf_sha256":"0A"}`, "app_elf_sha256"},
		{"secure_version negative", `{"firmware_version":"1","secure_version":-1}`, "secure_version"},
		{"secure_version over 32 bits", `{"firmware_version":"1","secure_version":4294967296}`, "secure_version"},
		{"secure_version a string", `{"firmware_version":"1","secure_version":"1"}`, "secure_version"},
		{"uptime_s a fraction", `{"firmware_version":"1","uptime_s":1.5}`, "uptime_s"},
		{"free_heap null", `{"firmware_version":"1","free_heap":null}`, "free_heap"},
		{"rssi below -128", `{"firmware_version":"1","rssi":-129}`, "rssi"},
		{"not an object", `["firmware_version"]`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := wantProblem(t, e.sendJSON(http.MethodPost, "/iot/state", "tok-dev", tc.body), http.StatusBadRequest)
			if p.Field != tc.field {
				t.Errorf("problem %+v: field %q, want %q", p, p.Field, tc.field)
			}
		})
	}
	r = e.get(fmt.Sprintf("/api/devices/%d", d.ID), tokAdmin)
	r.json(t, &got)
	if string(got.Reported) != `{"firmware_version":"1.2.4"}` {
		t.Errorf("after refused reports: reported = %s, want the last good one", got.Reported)
	}

	// Over 4 KiB is refused by its Content-Length before the token is
	// read, and without one while it is read, never held whole.
	big := `{"firmware_version":"1","idf_version":"` + strings.Repeat("v", 4<<10) + `"}`
	wantProblem(t, e.sendJSON(http.MethodPost, "/iot/state", "", big), http.StatusRequestEntityTooLarge)
	wantProblem(t, e.sendJSON(http.MethodPost, "/iot/state", "tok-dev", big), http.StatusRequestEntityTooLarge)
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/iot/state", token: "tok-dev", contentType: "application/json",
		body: chunked(big)}), http.StatusRequestEntityTooLarge)
	wantProblem(t, e.sendJSON(http.MethodPost, "/iot/state", "", `{"firmware_version":"1"}`), http.StatusUnauthorized)
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/iot/state", token: "tok-dev", contentType: "text/plain",
		body: strings.NewReader(`{"firmware_version":"1"}`)}), http.StatusUnsupportedMediaType)
}

// chunked is a body of unknown length (sent chunked, no Content-Length).
func chunked(s string) *onlyReader { return &onlyReader{strings.NewReader(s)} }

type onlyReader struct{ r *strings.Reader }

func (o *onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestDeviceListStateFilters(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	e.cat.addDevice(1, "abcd1234", true)

	wantStatus(t, e.get("/api/devices?firmware_version=1.0.0&seen_before=2026-12-07T10:00:00.5%2B01:00", tokAdmin), http.StatusOK)
	f := e.cat.lastFilter
	if f.FirmwareVersion == nil || *f.FirmwareVersion != "1.0.0" {
		t.Errorf("firmware_version passed as %v", f.FirmwareVersion)
	}
	if want := time.Date(2026, 12, 7, 9, 0, 0, 5e8, time.UTC); f.SeenBefore == nil || !f.SeenBefore.Equal(want) {
		t.Errorf("seen_before passed as %v, want %v", f.SeenBefore, want)
	}
	for _, q := range []string{
		"seen_before=yesterday", "seen_before=2026-12-07", "seen_before=2026-12-07T10:00:00", "seen_before=",
		"firmware_version=" + strings.Repeat("9", 32), "firmware_version=a%0Ab", "firmware_version=",
	} {
		p := wantProblem(t, e.get("/api/devices?"+q, tokAdmin), http.StatusBadRequest)
		if name, _, _ := strings.Cut(q, "="); p.Field != name {
			t.Errorf("?%s: problem %+v, want field %s", q, p, name)
		}
	}
}

func TestFleetFirmware(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	e.cat.addModel("gate", "")
	for i, v := range []string{"1.0.0", "2.0.0", "2.0.0", "", "inactive"} {
		d := e.cat.addDevice(1, fmt.Sprintf("sens%04d", i), v != "inactive")
		if v != "" {
			tok := fmt.Sprintf("tok-%d", i)
			e.verifier.addDevice(tok, d)
			if v != "inactive" {
				wantStatus(t, e.sendJSON(http.MethodPost, "/iot/state", tok, `{"firmware_version":"`+v+`"}`), http.StatusNoContent)
			}
		}
	}
	e.cat.addDevice(2, "gate0000", true)
	r := e.get("/api/fleet/firmware", tokViewer)
	wantStatus(t, r, http.StatusOK)
	want := `{"models":[` +
		`{"device_model_id":2,"code":"gate","devices":1,"versions":[{"firmware_version":null,"devices":1}]},` +
		`{"device_model_id":1,"code":"sensor","devices":4,"versions":[{"firmware_version":"1.0.0","devices":1},` +
		`{"firmware_version":"2.0.0","devices":2},{"firmware_version":null,"devices":1}]}]}`
	if got := strings.TrimSpace(string(r.body)); got != want {
		t.Errorf("fleet = %s\nwant    %s", got, want)
	}
	e.cat.setFail("FirmwareCounts", model.ErrUnavailable)
	wantProblem(t, e.get("/api/fleet/firmware", tokViewer), http.StatusBadGateway)
}
