package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// fakeCampaigns is a ports.CampaignAdmin holding one campaign, recording
// what it was asked.
type fakeCampaigns struct {
	created ports.NewCampaign
	filter  ports.CampaignFilter
	members ports.MemberFilter
	c       model.Campaign
}

var _ ports.CampaignAdmin = (*fakeCampaigns)(nil)

func (f *fakeCampaigns) CreateCampaign(_ context.Context, in ports.NewCampaign) (model.Campaign, error) {
	f.created = in
	if in.FirmwareSHA256 == strings.Repeat("0", 64) {
		return model.Campaign{}, model.ConflictOn("firmware_sha256", "is not an upload of device model lamp")
	}
	return f.c, nil
}

func (f *fakeCampaigns) view() ports.CampaignView {
	return ports.CampaignView{Campaign: f.c, Waves: []model.WaveCount{{Wave: 0, Members: 3, Succeeded: 2, Failed: 1}, {Wave: 1, Members: 7, Pending: 7}}}
}

func (f *fakeCampaigns) GetCampaign(_ context.Context, id int64) (ports.CampaignView, error) {
	if id != f.c.ID {
		return ports.CampaignView{}, model.ErrNotFound
	}
	return f.view(), nil
}

func (f *fakeCampaigns) ListCampaigns(_ context.Context, flt ports.CampaignFilter) (ports.CampaignPage, error) {
	f.filter = flt
	return ports.CampaignPage{Campaigns: []model.Campaign{f.c}}, nil
}

func (f *fakeCampaigns) ListCampaignMembers(_ context.Context, flt ports.MemberFilter) (ports.MemberPage, error) {
	f.members = flt
	at := f.c.CreatedAt
	return ports.MemberPage{Members: []model.CampaignMember{{
		CampaignID: f.c.ID, DeviceID: 4, Key: "abcd1234", ClientID: "iotdevice-lamp-abcd1234", Wave: 0,
		State: model.MemberFailed, AssignedAt: &at, ResolvedAt: &at, ReportedVersion: "1.0.0", ReportedOTAState: model.OTAValid,
		ReportedOTA: &model.OTAAttempt{Target: "2.0.0", Result: model.OTARolledBack}, ReportedAt: &at,
	}}, NextAfterID: 4}, nil
}

func (f *fakeCampaigns) step(id int64, do func(*model.Campaign) error) (ports.CampaignView, error) {
	if id != f.c.ID {
		return ports.CampaignView{}, model.ErrNotFound
	}
	if err := do(&f.c); err != nil {
		return ports.CampaignView{}, err
	}
	return f.view(), nil
}

func (f *fakeCampaigns) PauseCampaign(_ context.Context, id int64) (ports.CampaignView, error) {
	return f.step(id, func(c *model.Campaign) error { return c.Pause(c.CreatedAt) })
}

func (f *fakeCampaigns) ResumeCampaign(_ context.Context, id int64) (ports.CampaignView, error) {
	return f.step(id, func(c *model.Campaign) error { return c.Resume(c.CreatedAt) })
}

func (f *fakeCampaigns) AbortCampaign(_ context.Context, id int64) (ports.CampaignView, error) {
	return f.step(id, func(c *model.Campaign) error { return c.Abort("aborted by an admin", c.CreatedAt) })
}

func withCampaigns(c ports.CampaignAdmin) envOption {
	return func(_ *httpapi.Config, d *httpapi.Deps) { d.Campaigns = c }
}

func TestCampaignRoutes(t *testing.T) {
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	fc := &fakeCampaigns{c: model.Campaign{
		ID: 9, DeviceModelID: 1, FirmwareID: 2, FirmwareSHA256: strings.Repeat("ab", 32), FirmwareVersion: "2.0.0",
		SelectorTags: []string{"eu"}, Waves: []int{30, 100}, WaveSoakSeconds: 0, MaxFailureRatio: 0.1, DeviceTimeoutSeconds: 60,
		RollbackOnAbort: true, State: model.CampaignRunning, CurrentWave: 0, WaveStartedAt: []time.Time{at},
		Members: 10, CreatedBy: "alice", CreatedAt: at, UpdatedAt: at,
	}}
	e := newEnv(t, withCampaigns(fc))

	body := `{"device_model_id":1.0,"firmware_sha256":"` + strings.Repeat("ab", 32) + `","selector":{"tags":["eu"]},` +
		`"waves":[30,100],"wave_soak_seconds":0,"max_failure_ratio":0.1,"device_timeout_seconds":60e0}`
	r := e.sendJSON(http.MethodPost, "/api/campaigns", tokAdmin, body)
	wantStatus(t, r, http.StatusCreated)
	if got := r.header.Get("Location"); got != "/api/campaigns/9" {
		t.Errorf("Location %q", got)
	}
	in := fc.created
	if in.DeviceModelID != 1 || len(in.Waves) != 2 || in.Waves[0] != 30 || *in.WaveSoakSeconds != 0 || *in.DeviceTimeoutSeconds != 60 ||
		*in.MaxFailureRatio != 0.1 || in.RollbackOnAbort != nil || in.ReleaseOnComplete != nil || in.SelectorTags[0] != "eu" {
		t.Errorf("decoded %+v", in)
	}
	var detail struct {
		ID          int64 `json:"id"`
		CurrentWave *int  `json:"current_wave"`
		Progress    []struct {
			Percent   int     `json:"percent"`
			Members   int     `json:"members"`
			Failed    int     `json:"failed"`
			StartedAt *string `json:"started_at"`
		} `json:"progress"`
	}
	r.json(t, &detail)
	if detail.ID != 9 || detail.CurrentWave == nil || *detail.CurrentWave != 0 || len(detail.Progress) != 2 ||
		detail.Progress[0].Percent != 30 || detail.Progress[0].Failed != 1 || detail.Progress[0].StartedAt == nil || detail.Progress[1].StartedAt != nil {
		t.Errorf("answer %s", r.body)
	}

	// Only the two required members: every other is its default.
	r = e.sendJSON(http.MethodPost, "/api/campaigns", tokAdmin, `{"device_model_id":1,"firmware_sha256":"`+strings.Repeat("ab", 32)+`"}`)
	wantStatus(t, r, http.StatusCreated)
	if in := fc.created; in.Waves != nil || in.WaveSoakSeconds != nil || in.MaxFailureRatio != nil || in.SelectorTags != nil {
		t.Errorf("defaults decoded as %+v", in)
	}

	for _, tc := range []struct{ body, field string }{
		{`{"firmware_sha256":"` + strings.Repeat("ab", 32) + `"}`, "device_model_id"},
		{`{"device_model_id":1}`, "firmware_sha256"},
		{`{"device_model_id":1,"firmware_sha256":"XYZ"}`, "firmware_sha256"},
		{`{"device_model_id":1,"firmware_sha256":"` + strings.Repeat("ab", 32) + `","waves":[0,100]}`, "waves"},
		{`{"device_model_id":1,"firmware_sha256":"` + strings.Repeat("ab", 32) + `","waves":null}`, "waves"},
		{`{"device_model_id":1,"firmware_sha256":"` + strings.Repeat("ab", 32) + `","max_failure_ratio":1.5}`, "max_failure_ratio"},
		{`{"device_model_id":1,"firmware_sha256":"` + strings.Repeat("ab", 32) + `","wave_soak_seconds":-1}`, "wave_soak_seconds"},
		{`{"device_model_id":1,"firmware_sha256":"` + strings.Repeat("ab", 32) + `","selector":{"tags":"eu"}}`, "selector.tags"},
		{`{"device_model_id":1,"firmware_sha256":"` + strings.Repeat("ab", 32) + `","selector":{"other":1}}`, "selector"},
		{`{"device_model_id":1,"firmware_sha256":"` + strings.Repeat("ab", 32) + `","rollback_on_abort":"yes"}`, "rollback_on_abort"},
	} {
		p := wantProblem(t, e.sendJSON(http.MethodPost, "/api/campaigns", tokAdmin, tc.body), http.StatusBadRequest)
		if p.Field != tc.field {
			t.Errorf("%s: field %q, want %q (%s)", tc.body, p.Field, tc.field, p.Detail)
		}
	}
	p := wantProblem(t, e.sendJSON(http.MethodPost, "/api/campaigns", tokAdmin,
		`{"device_model_id":1,"firmware_sha256":"`+strings.Repeat("0", 64)+`"}`), http.StatusConflict)
	if p.Field != "firmware_sha256" {
		t.Errorf("unknown upload: field %q", p.Field)
	}
	wantProblem(t, e.sendJSON(http.MethodPost, "/api/campaigns", tokViewer, body), http.StatusForbidden)

	// Reads: a viewer may.
	r = e.get("/api/campaigns?device_model_id=1&state=RUNNING&limit=5", tokViewer)
	wantStatus(t, r, http.StatusOK)
	if fc.filter.ModelID == nil || *fc.filter.ModelID != 1 || fc.filter.State == nil || *fc.filter.State != model.CampaignRunning || fc.filter.Limit != 5 {
		t.Errorf("list filter %+v", fc.filter)
	}
	wantProblem(t, e.get("/api/campaigns?state=done", tokViewer), http.StatusBadRequest)
	wantStatus(t, e.get("/api/campaigns/9", tokViewer), http.StatusOK)
	wantProblem(t, e.get("/api/campaigns/8", tokViewer), http.StatusNotFound)
	r = e.get("/api/campaigns/9/devices?state=failed", tokViewer)
	wantStatus(t, r, http.StatusOK)
	if fc.members.CampaignID != 9 || fc.members.State == nil || *fc.members.State != model.MemberFailed {
		t.Errorf("member filter %+v", fc.members)
	}
	for _, part := range []string{`"key":"abcd1234"`, `"state":"failed"`, `"reported":{"firmware_version":"1.0.0","ota_state":"valid","ota":{"target":"2.0.0","result":"rolled_back"}`, `"next_cursor":"`} {
		if !strings.Contains(string(r.body), part) {
			t.Errorf("devices answer %s lacks %s", r.body, part)
		}
	}

	// Transitions, and 409 once finished.
	wantProblem(t, e.sendJSON(http.MethodPost, "/api/campaigns/9/pause", tokViewer, ""), http.StatusForbidden)
	wantStatus(t, e.sendJSON(http.MethodPost, "/api/campaigns/9/pause", tokAdmin, ""), http.StatusOK)
	wantProblem(t, e.sendJSON(http.MethodPost, "/api/campaigns/9/pause", tokAdmin, ""), http.StatusConflict)
	wantStatus(t, e.sendJSON(http.MethodPost, "/api/campaigns/9/resume", tokAdmin, ""), http.StatusOK)
	r = e.sendJSON(http.MethodPost, "/api/campaigns/9/abort", tokAdmin, "")
	wantStatus(t, r, http.StatusOK)
	if !strings.Contains(string(r.body), `"state":"aborted"`) || !strings.Contains(string(r.body), `"abort_reason":"aborted by an admin"`) {
		t.Errorf("abort answer %s", r.body)
	}
	for _, step := range []string{"pause", "resume", "abort"} {
		p := wantProblem(t, e.sendJSON(http.MethodPost, fmt.Sprintf("/api/campaigns/9/%s", step), tokAdmin, ""), http.StatusConflict)
		if !strings.Contains(p.Detail, "aborted") {
			t.Errorf("%s of an aborted campaign: %q", step, p.Detail)
		}
	}
}

func TestCampaignRoutesUnconfigured(t *testing.T) {
	e := newEnv(t)
	wantProblem(t, e.get("/api/campaigns", tokAdmin), http.StatusServiceUnavailable)
}
