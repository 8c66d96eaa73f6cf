package mdm_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// campaignEnv is a model with a released 1.0.0, an uploaded 2.0.0 (the
// target) and n devices, all on 1.0.0.
type campaignEnv struct {
	*env
	m       model.DeviceModel
	old     model.Firmware
	target  model.Firmware
	devices []model.Device
}

func withCampaigns() option {
	return func(d *mdm.Deps, _ *mdm.Config) {
		d.Campaigns = d.Devices.(*portstest.Store)
		d.Audit = d.Devices.(*portstest.Store)
	}
}

func newCampaignEnv(t *testing.T, n int) *campaignEnv {
	t.Helper()
	e := &campaignEnv{env: newEnv(t, withCampaigns())}
	e.m = e.model(t, "lamp", "")
	for i, v := range []string{"1.0.0", "2.0.0"} {
		// 1.0.0 released, 2.0.0 stored for the campaign.
		up, err := e.svc.UploadFirmware(t.Context(), e.m.ID, image(esp32image.ChipESP32, v), model.UploadOptions{Store: i == 1})
		if err != nil {
			t.Fatalf("UploadFirmware(%s): %v", v, err)
		}
		if i == 0 {
			e.old = up.Firmware
		} else {
			e.target = up.Firmware
		}
	}
	for range n {
		e.devices = append(e.devices, e.device(t, e.m, `{}`))
	}
	return e
}

func (e *campaignEnv) create(t *testing.T, in ports.NewCampaign) model.Campaign {
	t.Helper()
	if in.DeviceModelID == 0 {
		in.DeviceModelID = e.m.ID
	}
	if in.FirmwareSHA256 == "" {
		in.FirmwareSHA256 = e.target.SHA256
	}
	c, err := e.svc.CreateCampaign(t.Context(), in)
	if err != nil {
		t.Fatalf("CreateCampaign: %v", err)
	}
	return c
}

func (e *campaignEnv) tick(t *testing.T) mdm.CampaignTickReport {
	t.Helper()
	rep, err := e.svc.RunCampaignTick(t.Context())
	if err != nil {
		t.Fatalf("RunCampaignTick: %v", err)
	}
	return rep
}

func (e *campaignEnv) get(t *testing.T, id int64) ports.CampaignView {
	t.Helper()
	v, err := e.svc.GetCampaign(t.Context(), id)
	if err != nil {
		t.Fatalf("GetCampaign: %v", err)
	}
	return v
}

// report has device d report version with ota state and attempt.
func (e *campaignEnv) report(t *testing.T, d model.Device, version string, st model.OTAState, ota *model.OTAAttempt) {
	t.Helper()
	if err := e.svc.ReportState(t.Context(), d, model.StateReport{FirmwareVersion: version, OTAState: st, OTA: ota}); err != nil {
		t.Fatalf("ReportState: %v", err)
	}
}

func (e *campaignEnv) succeed(t *testing.T, d model.Device) {
	t.Helper()
	e.report(t, d, e.target.Version, model.OTAValid, &model.OTAAttempt{Target: e.target.Version, Result: model.OTAInstalled})
}

func (e *campaignEnv) fail(t *testing.T, d model.Device) {
	t.Helper()
	e.report(t, d, e.old.Version, model.OTAValid, &model.OTAAttempt{Target: e.target.Version, Result: model.OTARolledBack})
}

// inWave returns the devices of c's wave w.
func (e *campaignEnv) inWave(c model.Campaign, w int) []model.Device {
	var out []model.Device
	for _, d := range e.devices {
		if c.WaveOfKey(d.Key) == w {
			out = append(out, d)
		}
	}
	return out
}

func (e *campaignEnv) assignedCount() int {
	n := 0
	for _, d := range e.devices {
		if e.store.AssignedFirmware(d.ID) != 0 {
			n++
		}
	}
	return n
}

func (e *campaignEnv) nudges(kind, version string) int {
	n := 0
	for _, x := range e.notifier.Sent() {
		if x.Kind == kind && x.Version == version {
			n++
		}
	}
	return n
}

func (e *campaignEnv) auditKinds(kind model.AuditKind) int {
	n := 0
	p, _ := e.store.ListAudit(context.Background(), ports.AuditFilter{Limit: 1000})
	for _, x := range p.Entries {
		if x.Kind == kind {
			n++
		}
	}
	return n
}

func TestCreateCampaignDefaults(t *testing.T) {
	e := newCampaignEnv(t, 5)
	c := e.create(t, ports.NewCampaign{})
	want := model.Campaign{
		ID: c.ID, DeviceModelID: e.m.ID, FirmwareID: e.target.ID, FirmwareSHA256: e.target.SHA256, FirmwareVersion: "2.0.0",
		WaveSoakSeconds: 600, MaxFailureRatio: 0.1, DeviceTimeoutSeconds: 3600, RollbackOnAbort: true,
		State: model.CampaignRunning, CurrentWave: -1, Members: 5,
	}
	if c.ID == 0 || c.FirmwareID != want.FirmwareID || c.FirmwareVersion != want.FirmwareVersion || c.WaveSoakSeconds != 600 ||
		c.MaxFailureRatio != 0.1 || c.DeviceTimeoutSeconds != 3600 || !c.RollbackOnAbort || c.ReleaseOnComplete ||
		c.State != model.CampaignRunning || c.CurrentWave != -1 || c.Members != 5 || len(c.Waves) != 4 || c.Waves[3] != 100 {
		t.Fatalf("got %+v, want %+v with waves [1 10 50 100]", c, want)
	}
	if got := e.auditKinds(model.AuditCampaignCreated); got != 1 {
		t.Errorf("%d campaign_created entries, want 1", got)
	}
}

func TestCreateCampaignRefusals(t *testing.T) {
	e := newCampaignEnv(t, 2)
	other := e.model(t, "fan", "")
	up, err := e.svc.UploadFirmware(t.Context(), other.ID, image(esp32image.ChipESP32, "9.0.0"), model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unknown := sha256.Sum256([]byte("never uploaded"))

	_, err = e.svc.CreateCampaign(t.Context(), ports.NewCampaign{DeviceModelID: e.m.ID, FirmwareSHA256: "abc"})
	wantValidation(t, err, "firmware_sha256", "64 hex")
	_, err = e.svc.CreateCampaign(t.Context(), ports.NewCampaign{DeviceModelID: e.m.ID, FirmwareSHA256: hex.EncodeToString(unknown[:])})
	wantConflictOn(t, err, "firmware_sha256", "not an upload of device model lamp")
	_, err = e.svc.CreateCampaign(t.Context(), ports.NewCampaign{DeviceModelID: e.m.ID, FirmwareSHA256: up.SHA256})
	wantConflictOn(t, err, "firmware_sha256", "not an upload of device model lamp")
	_, err = e.svc.CreateCampaign(t.Context(), ports.NewCampaign{DeviceModelID: 999, FirmwareSHA256: e.target.SHA256})
	wantConflictOn(t, err, "device_model_id", "999")
	_, err = e.svc.CreateCampaign(t.Context(), ports.NewCampaign{DeviceModelID: e.m.ID, FirmwareSHA256: e.target.SHA256, Waves: []int{50, 40, 100}})
	wantValidation(t, err, "waves")
	_, err = e.svc.CreateCampaign(t.Context(), ports.NewCampaign{DeviceModelID: e.m.ID, FirmwareSHA256: e.target.SHA256, MaxFailureRatio: ptr(1.5)})
	wantValidation(t, err, "max_failure_ratio")

	first := e.create(t, ports.NewCampaign{})
	_, err = e.svc.CreateCampaign(t.Context(), ports.NewCampaign{DeviceModelID: e.m.ID, FirmwareSHA256: e.old.SHA256})
	wantIs(t, err, model.ErrConflict)
	if _, err := e.svc.PauseCampaign(t.Context(), first.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.CreateCampaign(t.Context(), ports.NewCampaign{DeviceModelID: e.m.ID, FirmwareSHA256: e.old.SHA256})
	wantIs(t, err, model.ErrConflict)
	if _, err := e.svc.AbortCampaign(t.Context(), first.ID); err != nil {
		t.Fatal(err)
	}
	e.create(t, ports.NewCampaign{FirmwareSHA256: e.old.SHA256}) // after an abort, another may run
}

func TestCampaignSelector(t *testing.T) {
	e := newCampaignEnv(t, 4)
	e.store.SetDeviceTags(e.devices[0].ID, "eu", "beta")
	e.store.SetDeviceTags(e.devices[1].ID, "eu")
	e.store.SetDeviceTags(e.devices[2].ID, "beta", "eu", "x")
	inactive := false
	if _, err := e.svc.UpdateDevice(t.Context(), e.devices[2].ID, ports.DeviceUpdate{Active: &inactive}); err != nil {
		t.Fatal(err)
	}
	c := e.create(t, ports.NewCampaign{SelectorTags: []string{"eu", "beta"}})
	if c.Members != 1 {
		t.Fatalf("%d members, want 1 (active, with both tags)", c.Members)
	}
	p, err := e.svc.ListCampaignMembers(t.Context(), ports.MemberFilter{CampaignID: c.ID})
	if err != nil || len(p.Members) != 1 || p.Members[0].DeviceID != e.devices[0].ID {
		t.Fatalf("members %+v (%v), want device %d", p.Members, err, e.devices[0].ID)
	}
}

// TestCampaignCompletes runs a campaign over 200 devices in three waves
// to completion, checking the soak, the assignments and the nudges.
func TestCampaignCompletes(t *testing.T) {
	e := newCampaignEnv(t, 200)
	c := e.create(t, ports.NewCampaign{Waves: []int{10, 50, 100}, WaveSoakSeconds: ptr[int64](60), DeviceTimeoutSeconds: ptr[int64](600)})
	assignedBefore := 0
	for w := range c.Waves {
		rep := e.tick(t)
		members := e.inWave(c, w)
		if rep.WavesStarts != 1 || rep.Assigned != len(members) {
			t.Fatalf("wave %d: tick %+v, want one wave started with %d assigned", w, rep, len(members))
		}
		if got, want := e.assignedCount(), assignedBefore+len(members); got != want {
			t.Fatalf("wave %d: %d devices assigned, want %d", w, got, want)
		}
		assignedBefore += len(members)
		if got := e.nudges("assigned", "2.0.0"); got != assignedBefore {
			t.Fatalf("wave %d: %d assignment nudges, want %d", w, got, assignedBefore)
		}
		// Nothing moves while a member is pending.
		for i, d := range members {
			if i == len(members)-1 {
				e.report(t, d, "2.0.0", model.OTAPendingVerify, &model.OTAAttempt{Target: "2.0.0", Result: model.OTAInstalled})
				if rep := e.tick(t); rep.WavesStarts != 0 || rep.Completed != 0 {
					t.Fatalf("wave %d advanced with a member on probation: %+v", w, rep)
				}
			}
			e.succeed(t, d)
		}
		v := e.get(t, c.ID)
		if v.Waves[w].Succeeded != len(members) || v.Waves[w].Pending != 0 {
			t.Fatalf("wave %d counts %+v, want %d succeeded", w, v.Waves[w], len(members))
		}
		// The soak runs from the last success.
		e.clock.Advance(59 * time.Second)
		if rep := e.tick(t); rep.WavesStarts != 0 || rep.Completed != 0 {
			t.Fatalf("wave %d advanced before its soak: %+v", w, rep)
		}
		e.clock.Advance(time.Second)
	}
	rep := e.tick(t)
	if rep.Completed != 1 {
		t.Fatalf("last tick %+v, want the campaign completed", rep)
	}
	v := e.get(t, c.ID)
	if v.Campaign.State != model.CampaignCompleted || v.Campaign.FinishedAt == nil {
		t.Fatalf("campaign %+v, want completed", v.Campaign)
	}
	if e.assignedCount() != 200 {
		t.Errorf("%d devices keep the target, want 200 (assignments outlive the campaign)", e.assignedCount())
	}
	for kind, want := range map[model.AuditKind]int{model.AuditCampaignWaveStarted: 3, model.AuditCampaignCompleted: 1} {
		if got := e.auditKinds(kind); got != want {
			t.Errorf("%d %s entries, want %d", got, kind, want)
		}
	}
	for _, step := range []func(context.Context, int64) (ports.CampaignView, error){e.svc.PauseCampaign, e.svc.ResumeCampaign, e.svc.AbortCampaign} {
		_, err := step(t.Context(), c.ID)
		var ce *model.CampaignError
		if !errors.As(err, &ce) || !errors.Is(err, model.ErrConflict) {
			t.Errorf("transition of a completed campaign: %v, want a conflict", err)
		}
	}
	if rep := e.tick(t); rep.Campaigns != 0 {
		t.Errorf("a completed campaign is still worked: %+v", rep)
	}
}

// TestCampaignAbortThreshold: with 20 members in wave 0 and ratio 0.1,
// two failures (exactly 10%) do not abort, the third aborts at once, on
// the report, with the rollback.
func TestCampaignAbortThreshold(t *testing.T) {
	e := newCampaignEnv(t, 20)
	c := e.create(t, ports.NewCampaign{Waves: []int{100}, MaxFailureRatio: ptr(0.1)})
	e.tick(t)
	ds := e.devices
	e.succeed(t, ds[0])
	e.fail(t, ds[1])
	e.fail(t, ds[2])
	if v := e.get(t, c.ID); v.Campaign.State != model.CampaignRunning || v.Waves[0].Failed != 2 {
		t.Fatalf("at exactly the threshold: %s with %+v, want running with 2 failed", v.Campaign.State, v.Waves[0])
	}
	if rep := e.tick(t); rep.Aborted != 0 {
		t.Fatalf("the tick aborted at exactly the threshold: %+v", rep)
	}
	e.fail(t, ds[3])
	v := e.get(t, c.ID)
	if v.Campaign.State != model.CampaignAborted || v.Campaign.AbortReason == "" {
		t.Fatalf("just above the threshold: %+v, want aborted with a reason", v.Campaign)
	}
	// The succeeded member keeps the target; the failed and pending ones
	// lost it and were nudged back to the released firmware.
	if e.store.AssignedFirmware(ds[0].ID) != e.target.ID {
		t.Errorf("the succeeded member lost its assignment")
	}
	for _, d := range ds[1:] {
		if e.store.AssignedFirmware(d.ID) != 0 {
			t.Errorf("device %d keeps the target after the abort", d.ID)
		}
	}
	if got := e.nudges("assigned", e.old.Version); got != 19 {
		t.Errorf("%d rollback nudges to %s, want 19", got, e.old.Version)
	}
	// A report after the abort is recorded and changes nothing else.
	e.succeed(t, ds[5])
	p, err := e.svc.ListCampaignMembers(t.Context(), ports.MemberFilter{CampaignID: c.ID, State: ptr(model.MemberPending)})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range p.Members {
		if m.DeviceID == ds[5].ID && m.ReportedVersion != "2.0.0" {
			t.Errorf("the report after the abort is not recorded: %+v", m)
		}
	}
	if len(p.Members) != 16 {
		t.Errorf("%d pending members after the abort, want 16 (a later report changes no state)", len(p.Members))
	}
	if got := e.auditKinds(model.AuditCampaignAborted); got != 1 {
		t.Errorf("%d campaign_aborted entries, want 1", got)
	}
}

// TestCampaignAbortSparesLaterWaves: an abort in wave 0 never assigns a
// member of a later wave.
func TestCampaignAbortSparesLaterWaves(t *testing.T) {
	e := newCampaignEnv(t, 100)
	c := e.create(t, ports.NewCampaign{Waves: []int{20, 100}, MaxFailureRatio: ptr(0.0), RollbackOnAbort: ptr(false)})
	e.tick(t)
	first := e.inWave(c, 0)
	e.fail(t, first[0])
	e.tick(t)
	e.clock.Advance(24 * time.Hour)
	e.tick(t)
	if got := e.assignedCount(); got != len(first) {
		t.Fatalf("%d devices assigned, want only wave 0's %d (no rollback asked)", got, len(first))
	}
	for _, d := range e.inWave(c, 1) {
		if e.store.AssignedFirmware(d.ID) != 0 {
			t.Fatalf("device %d of wave 1 was assigned the target", d.ID)
		}
	}
}

func TestCampaignTimeouts(t *testing.T) {
	e := newCampaignEnv(t, 3)
	c := e.create(t, ports.NewCampaign{Waves: []int{100}, WaveSoakSeconds: ptr[int64](0), DeviceTimeoutSeconds: ptr[int64](300), MaxFailureRatio: ptr(0.5)})
	e.tick(t)
	ds := e.devices
	e.succeed(t, ds[0])
	e.report(t, ds[1], "2.0.0", model.OTAPendingVerify, nil) // stuck on probation
	// ds[2] stays silent (offline): timed out, not failed.
	e.clock.Advance(299 * time.Second)
	if rep := e.tick(t); rep.TimedOut != 0 {
		t.Fatalf("timed out early: %+v", rep)
	}
	e.clock.Advance(time.Second)
	rep := e.tick(t)
	if rep.TimedOut != 2 || rep.Completed != 1 {
		t.Fatalf("tick at the timeout %+v, want 2 timed out and the campaign completed", rep)
	}
	v := e.get(t, c.ID)
	if w := v.Waves[0]; w.Succeeded != 1 || w.Failed != 1 || w.TimedOut != 1 {
		t.Fatalf("counts %+v, want 1 succeeded, 1 failed (pending_verify at the timeout), 1 timed out", w)
	}
}

func TestCampaignPause(t *testing.T) {
	e := newCampaignEnv(t, 50)
	c := e.create(t, ports.NewCampaign{Waves: []int{50, 100}, WaveSoakSeconds: ptr[int64](0)})
	e.tick(t)
	if v, err := e.svc.PauseCampaign(t.Context(), c.ID); err != nil || v.Campaign.State != model.CampaignPaused {
		t.Fatalf("PauseCampaign: %v %v", v.Campaign.State, err)
	}
	_, err := e.svc.PauseCampaign(t.Context(), c.ID)
	wantIs(t, err, model.ErrConflict)
	for _, d := range e.inWave(c, 0) {
		e.succeed(t, d) // recorded while paused
	}
	if rep := e.tick(t); rep.Campaigns != 0 || rep.WavesStarts != 0 {
		t.Fatalf("a paused campaign advanced: %+v", rep)
	}
	if v, err := e.svc.ResumeCampaign(t.Context(), c.ID); err != nil || v.Campaign.State != model.CampaignRunning {
		t.Fatalf("ResumeCampaign: %v %v", v.Campaign.State, err)
	}
	_, err = e.svc.ResumeCampaign(t.Context(), c.ID)
	wantIs(t, err, model.ErrConflict)
	if rep := e.tick(t); rep.WavesStarts != 1 {
		t.Fatalf("after resume: %+v, want wave 1 started", rep)
	}
	for _, k := range []model.AuditKind{model.AuditCampaignPaused, model.AuditCampaignResumed} {
		if got := e.auditKinds(k); got != 1 {
			t.Errorf("%d %s entries, want 1", got, k)
		}
	}
}

// TestCampaignWaveStartsOnce: a second process (or a restarted one)
// asking to start a wave already started is refused, assigning nobody
// twice.
func TestCampaignWaveStartsOnce(t *testing.T) {
	e := newCampaignEnv(t, 10)
	c := e.create(t, ports.NewCampaign{Waves: []int{100}})
	stale := c // what another worker read before the first started wave 0
	e.tick(t)
	_, n, err := e.store.StartWave(t.Context(), stale.ID, e.clock.Now(), func(c *model.Campaign) ([]model.AuditEntry, error) {
		return nil, c.StartWave(0, e.clock.Now())
	})
	if !errors.Is(err, model.ErrConflict) || n != 0 {
		t.Fatalf("second start of wave 0: %d assigned, %v; want a conflict", n, err)
	}
	if got := e.nudges("assigned", "2.0.0"); got != 10 {
		t.Fatalf("%d nudges, want 10 (one per member)", got)
	}
}

// TestCampaignNudgesSurviveNotifierFailure: nudges the notifier could not
// take stay owed and go out at a later tick.
func TestCampaignNudgesSurviveNotifierFailure(t *testing.T) {
	e := newCampaignEnv(t, 5)
	e.create(t, ports.NewCampaign{Waves: []int{100}})
	e.notifier.Err = errors.New("broker gone")
	e.tick(t)
	e.notifier.Err = nil
	before := e.nudges("assigned", "2.0.0")
	rep := e.tick(t)
	if rep.Nudged != 5 || e.nudges("assigned", "2.0.0") != before+5 {
		t.Fatalf("tick after the failure: %+v, want the 5 owed nudges sent", rep)
	}
}

// TestCampaignHoldsReleases: while a model has a running or paused
// campaign an upload is stored (with a warning) and a release by hand is
// a conflict; once it has ended both work again.
func TestCampaignHoldsReleases(t *testing.T) {
	e := newCampaignEnv(t, 3)
	c := e.create(t, ports.NewCampaign{Waves: []int{100}})
	up, err := e.svc.UploadFirmware(t.Context(), e.m.ID, image(esp32image.ChipESP32, "3.0.0"), model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if up.Released || len(up.Warnings) == 0 || !strings.Contains(strings.Join(up.Warnings, " "), "campaign") {
		t.Fatalf("upload during a campaign: released %v, warnings %q; want stored with a warning naming the campaign", up.Released, up.Warnings)
	}
	_, _, err = e.svc.ReleaseFirmware(t.Context(), e.m.ID, up.SHA256)
	wantIs(t, err, model.ErrConflict)
	if _, err := e.svc.PauseCampaign(t.Context(), c.ID); err != nil {
		t.Fatal(err)
	}
	_, _, err = e.svc.ReleaseFirmware(t.Context(), e.m.ID, up.SHA256)
	wantIs(t, err, model.ErrConflict)
	if _, err := e.svc.AbortCampaign(t.Context(), c.ID); err != nil {
		t.Fatal(err)
	}
	if _, changed, err := e.svc.ReleaseFirmware(t.Context(), e.m.ID, up.SHA256); err != nil || !changed {
		t.Fatalf("release after the abort: changed %v, %v", changed, err)
	}
}

// TestCampaignReleaseOnComplete: the completed campaign's target becomes
// the model's released firmware, offered to devices outside the campaign.
func TestCampaignReleaseOnComplete(t *testing.T) {
	e := newCampaignEnv(t, 4)
	outside := e.devices[3]
	e.store.SetDeviceTags(outside.ID, "lab")
	for _, d := range e.devices[:3] {
		e.store.SetDeviceTags(d.ID, "field")
	}
	c := e.create(t, ports.NewCampaign{Waves: []int{100}, SelectorTags: []string{"field"}, WaveSoakSeconds: ptr[int64](0), ReleaseOnComplete: ptr(true)})
	if c.Members != 3 {
		t.Fatalf("%d members, want 3", c.Members)
	}
	e.tick(t)
	for _, d := range e.devices[:3] {
		e.succeed(t, d)
	}
	if rep := e.tick(t); rep.Completed != 1 {
		t.Fatalf("tick %+v, want completed", rep)
	}
	rel, err := e.store.ReleasedFirmware(t.Context(), e.m.ID)
	if err != nil || rel.SHA256 != e.target.SHA256 {
		t.Fatalf("released firmware %s (%v), want the target", rel.Version, err)
	}
	d, err := e.store.GetDevice(t.Context(), outside.ID)
	if err != nil {
		t.Fatal(err)
	}
	f, err := e.svc.OfferedFirmware(t.Context(), d)
	if err != nil || f.Version != "2.0.0" {
		t.Fatalf("the device outside the campaign is offered %q (%v), want 2.0.0", f.Version, err)
	}
	if got := e.auditKinds(model.AuditFirmwareReleased); got != 1 {
		t.Errorf("%d firmware_released entries, want 1", got)
	}
}

// TestCampaignWakes: the worker is woken when progress became possible —
// a campaign created or resumed, the last pending member of the running
// campaign's current wave resolved (by a success or a failure) — and not
// by reports that leave the wave pending, reports on a paused campaign,
// or reports after the campaign ended.
func TestCampaignWakes(t *testing.T) {
	e := newCampaignEnv(t, 40)
	woke := func() bool {
		select {
		case <-e.svc.CampaignWake():
			return true
		default:
			return false
		}
	}
	c := e.create(t, ports.NewCampaign{Waves: []int{50, 100}, WaveSoakSeconds: ptr[int64](0), MaxFailureRatio: ptr(0.5)})
	if !woke() {
		t.Fatal("no wake after CreateCampaign")
	}
	if rep := e.tick(t); rep.WavesStarts != 1 {
		t.Fatalf("first tick %+v", rep)
	}
	if woke() {
		t.Fatal("a tick woke the worker")
	}
	w0 := e.inWave(c, 0)
	if len(w0) < 3 {
		t.Fatalf("wave 0 has %d members; the test needs 3", len(w0))
	}
	e.fail(t, w0[0])
	for _, d := range w0[1 : len(w0)-1] {
		e.succeed(t, d)
	}
	// A report that resolves nothing (on probation) never wakes.
	e.report(t, w0[len(w0)-1], "2.0.0", model.OTAPendingVerify, &model.OTAAttempt{Target: "2.0.0", Result: model.OTAInstalled})
	if woke() {
		t.Fatal("woken while wave 0 still had a pending member")
	}
	e.succeed(t, w0[len(w0)-1])
	if !woke() {
		t.Fatal("no wake when wave 0's last pending member succeeded")
	}
	if rep := e.tick(t); rep.WavesStarts != 1 {
		t.Fatalf("woken tick %+v, want wave 1 started", rep)
	}

	// Paused: the wave's last report does not wake; the resume does.
	if _, err := e.svc.PauseCampaign(t.Context(), c.ID); err != nil {
		t.Fatalf("PauseCampaign: %v", err)
	}
	w1 := e.inWave(c, 1)
	for _, d := range w1 {
		e.succeed(t, d)
	}
	if woke() {
		t.Fatal("woken by reports on a paused campaign")
	}
	if _, err := e.svc.ResumeCampaign(t.Context(), c.ID); err != nil {
		t.Fatalf("ResumeCampaign: %v", err)
	}
	if !woke() {
		t.Fatal("no wake after ResumeCampaign")
	}
	if rep := e.tick(t); rep.Completed != 1 {
		t.Fatalf("tick after resume %+v, want completed", rep)
	}
	// After the end: recorded, no wake.
	e.succeed(t, w1[0])
	if woke() {
		t.Fatal("woken by a report on a completed campaign")
	}
}

// TestCampaignWakeOnLastFailure: a failure that resolves the wave's last
// pending member wakes too (under the ratio: the next wave starts).
func TestCampaignWakeOnLastFailure(t *testing.T) {
	e := newCampaignEnv(t, 20)
	c := e.create(t, ports.NewCampaign{Waves: []int{50, 100}, WaveSoakSeconds: ptr[int64](0), MaxFailureRatio: ptr(0.5)})
	<-e.svc.CampaignWake()
	e.tick(t)
	w0 := e.inWave(c, 0)
	for _, d := range w0[:len(w0)-1] {
		e.succeed(t, d)
	}
	select {
	case <-e.svc.CampaignWake():
		t.Fatal("woken with a member pending")
	default:
	}
	e.fail(t, w0[len(w0)-1])
	select {
	case <-e.svc.CampaignWake():
	default:
		t.Fatal("no wake when the last pending member failed")
	}
	if rep := e.tick(t); rep.WavesStarts != 1 {
		t.Fatalf("woken tick %+v, want wave 1 started", rep)
	}
}
