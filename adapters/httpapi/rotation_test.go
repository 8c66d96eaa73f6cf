package httpapi_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// fakeRotation records what the rotation routes asked for.
type fakeRotation struct {
	rotated  []int64
	dashArgs string
}

func (f *fakeRotation) RotateDevice(_ context.Context, id int64) (ports.RotateResult, error) {
	f.rotated = append(f.rotated, id)
	switch id {
	case 1:
		return ports.RotateQueued, nil
	case 2:
		return ports.RotateAlreadyPending, nil
	case 3:
		return "", model.Conflict("device 3 is inactive")
	}
	return "", fmt.Errorf("device %d: %w", id, model.ErrNotFound)
}

func (f *fakeRotation) TriggerRotation(context.Context, int64) (int, error) { return 42, nil }

func (f *fakeRotation) RotationStatus(context.Context) (ports.RotationStatus, error) {
	done := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	return ports.RotationStatus{
		Mode: model.RotationGrace,
		Counts: model.RotationCounts{ByState: map[model.RotationState]int{
			model.RotationOK: 5, model.RotationQueued: 4, model.RotationPending: 2, model.RotationTimeout: 1}, Inactive: 3},
		InFlight: []int64{7, 9}, LastCompletedAt: &done, LeaseHolder: "espmdm@a:1",
	}, nil
}

func (f *fakeRotation) RotationDashboard(_ context.Context, g model.DashboardGroup, limit int, after int64) (ports.Dashboard, error) {
	f.dashArgs = fmt.Sprintf("%s/%d/%d", g, limit, after)
	if g != model.DashboardCritical && g != model.DashboardHealthy {
		return ports.Dashboard{}, model.Invalid("group", "must be one of healthy, warning, critical, inactive")
	}
	made := time.Now().Add(-100 * 24 * time.Hour)
	return ports.Dashboard{
		Counts: map[model.DashboardGroup]int{model.DashboardCritical: 1, model.DashboardHealthy: 9},
		Group:  g,
		Page: ports.DevicePage{Devices: []model.Device{{ID: 5, Key: "abcd1234", ModelCode: "sensor",
			RotationState: model.RotationOK, SecretCreatedAt: &made}}, NextAfterID: 5},
	}, nil
}

func (f *fakeRotation) RunRotationCycle(context.Context) (ports.CycleReport, error) {
	return ports.CycleReport{}, nil
}

func withRotation(r ports.Rotation) envOption {
	return func(_ *httpapi.Config, d *httpapi.Deps) { d.Rotation = r }
}

func TestRotationAdminRoutes(t *testing.T) {
	rot := &fakeRotation{}
	e := newEnv(t, withRotation(rot))

	r := e.do(request{method: http.MethodPost, path: "/api/devices/1/rotate", token: tokAdmin})
	wantStatus(t, r, http.StatusAccepted)
	if got := strings.TrimSpace(string(r.body)); got != `{"status":"queued"}` {
		t.Errorf("rotate queued = %s", got)
	}
	r = e.do(request{method: http.MethodPost, path: "/api/devices/2/rotate", token: tokAdmin})
	wantStatus(t, r, http.StatusOK)
	if got := strings.TrimSpace(string(r.body)); got != `{"status":"already_pending"}` {
		t.Errorf("rotate pending = %s", got)
	}
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/devices/3/rotate", token: tokAdmin}), http.StatusConflict)
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/devices/4/rotate", token: tokAdmin}), http.StatusNotFound)
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/devices/0/rotate", token: tokAdmin}), http.StatusBadRequest)
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/devices/1/rotate", token: tokViewer}), http.StatusForbidden)
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/rotation/trigger", token: tokViewer}), http.StatusForbidden)
	for _, bad := range []string{"0", "-1", "x", "1.5"} {
		wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/rotation/trigger?device_model_id=" + bad, token: tokAdmin}), http.StatusBadRequest)
	}
	wantProblem(t, e.get("/api/rotation/status", ""), http.StatusUnauthorized)

	r = e.do(request{method: http.MethodPost, path: "/api/rotation/trigger", token: tokAdmin})
	wantStatus(t, r, http.StatusAccepted)
	if got := strings.TrimSpace(string(r.body)); got != `{"queued_count":42}` {
		t.Errorf("trigger = %s", got)
	}

	r = e.get("/api/rotation/status", tokViewer)
	wantStatus(t, r, http.StatusOK)
	want := `{"mode":"grace","counts_by_state":{"OK":5,"QUEUED":4,"PENDING":2,"TIMEOUT":1},"inactive":3,"in_flight":[7,9],` +
		`"last_rotation_completed_at":"2026-12-01T08:00:00Z","next_scheduled_rotation":null,"lease_holder":"espmdm@a:1"}`
	if got := strings.TrimSpace(string(r.body)); got != want {
		t.Errorf("status =\n%s\nwant\n%s", got, want)
	}

	var dash struct {
		Counts  map[string]int `json:"counts"`
		Group   string         `json:"group"`
		Devices []struct {
			ID            int64   `json:"id"`
			ClientID      string  `json:"client_id"`
			SecretAgeDays float64 `json:"secret_age_days"`
		} `json:"devices"`
		NextCursor *string `json:"next_cursor"`
	}
	r = e.get("/api/rotation/dashboard", tokViewer)
	wantStatus(t, r, http.StatusOK)
	r.json(t, &dash)
	if rot.dashArgs != "critical/100/0" || dash.Group != "critical" || dash.Counts["healthy"] != 9 || dash.Counts["warning"] != 0 ||
		len(dash.Devices) != 1 || dash.Devices[0].ClientID != "iotdevice-sensor-abcd1234" || dash.Devices[0].SecretAgeDays < 99.9 || dash.NextCursor == nil {
		t.Errorf("dashboard = %+v (args %s)", dash, rot.dashArgs)
	}
	r = e.get("/api/rotation/dashboard?group=HEALTHY&limit=5&cursor="+*dash.NextCursor, tokViewer)
	wantStatus(t, r, http.StatusOK)
	if rot.dashArgs != "healthy/5/5" {
		t.Errorf("dashboard args = %s, want healthy/5/5", rot.dashArgs)
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "cursor=bogus", "group=nope"} {
		p := wantProblem(t, e.get("/api/rotation/dashboard?"+q, tokViewer), http.StatusBadRequest)
		if p.Field == "" {
			t.Errorf("dashboard ?%s: problem without a field", q)
		}
	}
}

func TestRotationRoutesWithoutRotation(t *testing.T) {
	e := newEnv(t)
	for _, r := range []request{
		{method: http.MethodPost, path: "/api/devices/1/rotate", token: tokAdmin},
		{method: http.MethodPost, path: "/api/rotation/trigger", token: tokAdmin},
		{method: http.MethodGet, path: "/api/rotation/status", token: tokAdmin},
		{method: http.MethodGet, path: "/api/rotation/dashboard", token: tokAdmin},
	} {
		wantProblem(t, e.do(r), http.StatusServiceUnavailable)
	}
}

func TestDeviceRotationFetchAndAck(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	d := e.cat.addDevice(1, "abcd1234", true)
	e.verifier.addDevice("tok-dev", d)

	r := e.get("/iot/provisioning", "tok-dev")
	wantStatus(t, r, http.StatusOK)
	var p map[string]string
	r.json(t, &p)
	if p["client_secret"] != fakeSecret || p["client_id"] != "iotdevice-sensor-abcd1234" || p["device_key"] != "abcd1234" {
		t.Errorf("fetch = %v", p)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("fetch Cache-Control = %q, want no-store", cc)
	}
	wantProblem(t, e.get("/iot/provisioning", ""), http.StatusUnauthorized)

	sum := sha256.Sum256([]byte(fakeSecret))
	good := hex.EncodeToString(sum[:])
	r = e.sendJSON(http.MethodPost, "/iot/provisioning/ack", "tok-dev", `{"client_secret_sha256":"`+good+`"}`)
	wantStatus(t, r, http.StatusNoContent)
	if len(r.body) != 0 {
		t.Errorf("204 with a body: %s", r.body)
	}
	wantProblem(t, e.sendJSON(http.MethodPost, "/iot/provisioning/ack", "tok-dev", `{"client_secret_sha256":"`+strings.Repeat("0", 64)+`"}`), http.StatusConflict)
	for _, body := range []string{`{}`, `{"client_secret_sha256":null}`, `{"client_secret_sha256":1}`, `{"sha":"x"}`, `nope`, ``} {
		wantProblem(t, e.sendJSON(http.MethodPost, "/iot/provisioning/ack", "tok-dev", body), http.StatusBadRequest)
	}
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/iot/provisioning/ack", token: "tok-dev",
		body: strings.NewReader(`{"client_secret_sha256":"` + good + `"}`), contentType: "text/plain"}), http.StatusUnsupportedMediaType)
	wantProblem(t, e.sendJSON(http.MethodPost, "/iot/provisioning/ack", "", `{"client_secret_sha256":"`+good+`"}`), http.StatusUnauthorized)
	// An admin token is not a device token.
	wantProblem(t, e.get("/iot/provisioning", tokAdmin), http.StatusUnauthorized)
}

func TestConflictReasonIsTheDetail(t *testing.T) {
	e := newEnv(t, withRotation(&fakeRotation{}))
	p := wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/devices/3/rotate", token: tokAdmin}), http.StatusConflict)
	if p.Detail != "device 3 is inactive" {
		t.Errorf("detail = %q, want the conflict's reason", p.Detail)
	}
}
