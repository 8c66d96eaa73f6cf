package portstest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// CampaignEnv is what RunCampaignRepoContract works on: the campaign
// repository and the model, device and firmware repositories of the same
// store, with how to set a device's tags and read its assigned firmware.
type CampaignEnv struct {
	Models    ports.ModelRepo
	Devices   ports.DeviceRepo
	Firmware  ports.FirmwareRepo
	Campaigns ports.CampaignRepo
	// SetTags sets a device's tags; Assigned reads its assigned firmware
	// id (0 when none).
	SetTags  func(t *testing.T, deviceID int64, tags ...string)
	Assigned func(t *testing.T, deviceID int64) int64
}

// RunCampaignRepoContract runs the contract of ports.CampaignRepo (SPEC
// §16). Each subtest works on models of its own.
func RunCampaignRepoContract(t *testing.T, newEnv func(t *testing.T) CampaignEnv) {
	t.Helper()
	type fixture struct {
		repoFixture
		e       CampaignEnv
		m       model.DeviceModel
		target  model.Firmware
		devices []model.Device
	}
	fix := func(t *testing.T, n int) fixture {
		e := newEnv(t)
		x := fixture{repoFixture: repoFixture{t: t, models: e.Models, devices: e.Devices, firmware: e.Firmware}, e: e}
		x.m = x.model("ct_camp", nil)
		x.target = x.fw(x.m, "2.0.0", now())
		mustNoErr(t, "RecordFirmware", e.Firmware.RecordFirmware(x.ctx(), &x.target, nil))
		for range n {
			x.devices = append(x.devices, x.device(x.m, `{}`))
		}
		return x
	}
	newCampaign := func(x fixture, waves []int, tags ...string) model.Campaign {
		return model.Campaign{
			DeviceModelID: x.m.ID, FirmwareID: x.target.ID, FirmwareSHA256: x.target.SHA256, FirmwareVersion: x.target.Version,
			SelectorTags: tags, Waves: waves, WaveSoakSeconds: 0, MaxFailureRatio: 0.5, DeviceTimeoutSeconds: 60,
			RollbackOnAbort: true, State: model.CampaignRunning, CurrentWave: -1, CreatedBy: "alice",
		}
	}
	// byIndex puts device i in wave i % len(waves).
	byIndex := func(x fixture, waves int) func(int64, string) int {
		return func(_ int64, key string) int {
			for i, d := range x.devices {
				if d.Key == key {
					return i % waves
				}
			}
			return 0
		}
	}
	create := func(x fixture, c *model.Campaign, waveOf func(int64, string) int) {
		x.t.Helper()
		mustNoErr(x.t, "CreateCampaign", x.e.Campaigns.CreateCampaign(x.ctx(), c, waveOf, nil))
	}
	start := func(x fixture, id int64, w int, at time.Time) (model.Campaign, int, error) {
		return x.e.Campaigns.StartWave(x.ctx(), id, at, func(c *model.Campaign) ([]model.AuditEntry, error) {
			return nil, c.StartWave(w, at)
		})
	}
	members := func(x fixture, id int64, st *model.MemberState) []model.CampaignMember {
		x.t.Helper()
		p, err := x.e.Campaigns.ListMembers(x.ctx(), ports.MemberFilter{CampaignID: id, State: st, Limit: ports.MaxPageSize})
		mustNoErr(x.t, "ListMembers", err)
		return p.Members
	}
	observe := func(x fixture, d model.Device, r model.StateReport) (model.CampaignMember, bool) {
		x.t.Helper()
		_, m, found, err := x.e.Campaigns.ObserveReport(x.ctx(), d.ID, func(c model.Campaign, m *model.CampaignMember) { m.Observe(c, r) })
		mustNoErr(x.t, "ObserveReport", err)
		return m, found
	}

	t.Run("CreateCampaign fixes the active members carrying every selector tag; one running or paused campaign per model", func(t *testing.T) {
		x := fix(t, 4)
		x.e.SetTags(t, x.devices[0].ID, "beta", "eu")
		x.e.SetTags(t, x.devices[1].ID, "eu")
		x.e.SetTags(t, x.devices[2].ID, "beta", "eu", "x")
		x.e.SetTags(t, x.devices[3].ID, "beta", "eu")
		_, err := x.e.Devices.UpdateDevice(x.ctx(), x.devices[3].ID, func(d *model.Device) ([]model.AuditEntry, error) { d.Active = false; return nil, nil })
		mustNoErr(t, "UpdateDevice", err)
		c := newCampaign(x, []int{50, 100}, "eu", "beta")
		var seen []int64
		create(x, &c, func(id int64, key string) int { seen = append(seen, id); return 1 })
		if c.ID == 0 || c.Members != 2 || c.CreatedAt.IsZero() || c.CreatedBy != "alice" {
			t.Fatalf("created %+v, want an id and 2 members", c)
		}
		if len(seen) != 2 || seen[0] != c.ID {
			t.Errorf("waveOf was given campaign ids %v, want %d twice", seen, c.ID)
		}
		ms := members(x, c.ID, nil)
		got := []int64{}
		for _, m := range ms {
			got = append(got, m.DeviceID)
			if m.Wave != 1 || m.State != model.MemberPending || m.AssignedAt != nil || m.ClientID != model.ClientID(x.m.Code, m.Key) {
				t.Errorf("member %+v", m)
			}
		}
		if want := []int64{x.devices[0].ID, x.devices[2].ID}; !slices.Equal(got, want) {
			t.Errorf("members %v, want %v", got, want)
		}
		back, err := x.e.Campaigns.GetCampaign(x.ctx(), c.ID)
		mustNoErr(t, "GetCampaign", err)
		if back.Members != 2 || !slices.Equal(back.Waves, c.Waves) || !slices.Equal(back.SelectorTags, c.SelectorTags) ||
			back.FirmwareSHA256 != x.target.SHA256 || back.CurrentWave != -1 || back.MaxFailureRatio != 0.5 || back.State != model.CampaignRunning {
			t.Errorf("GetCampaign %+v, want %+v", back, c)
		}
		active, err := x.e.Campaigns.ActiveCampaign(x.ctx(), x.m.ID)
		mustNoErr(t, "ActiveCampaign", err)
		if active.ID != c.ID {
			t.Errorf("ActiveCampaign %d, want %d", active.ID, c.ID)
		}

		second := newCampaign(x, []int{100})
		err = x.e.Campaigns.CreateCampaign(x.ctx(), &second, func(int64, string) int { return 0 }, nil)
		wantErrIs(t, "a second campaign of the model", err, model.ErrConflict)
		_, err = x.e.Campaigns.UpdateCampaign(x.ctx(), c.ID, func(c *model.Campaign) ([]model.AuditEntry, error) { return nil, c.Pause(now()) })
		mustNoErr(t, "pause", err)
		err = x.e.Campaigns.CreateCampaign(x.ctx(), &second, func(int64, string) int { return 0 }, nil)
		wantErrIs(t, "a campaign while another is paused", err, model.ErrConflict)
		_, _, err = x.e.Campaigns.AbortCampaign(x.ctx(), c.ID, true, func(c *model.Campaign) ([]model.AuditEntry, error) { return nil, c.Abort("test", now()) })
		mustNoErr(t, "abort", err)
		_, err = x.e.Campaigns.ActiveCampaign(x.ctx(), x.m.ID)
		wantErrIs(t, "ActiveCampaign after the abort", err, model.ErrNotFound)
		create(x, &second, func(int64, string) int { return 0 })
		if second.Members != 3 {
			t.Errorf("a campaign without a selector has %d members, want the 3 active devices", second.Members)
		}

		lost := newCampaign(x, []int{100})
		lost.DeviceModelID = x.m.ID + 1_000_000
		err = x.e.Campaigns.CreateCampaign(x.ctx(), &lost, func(int64, string) int { return 0 }, nil)
		wantErrIs(t, "a campaign of an unknown model", err, model.ErrNotFound)
	})

	t.Run("StartWave assigns the wave's members once, owes their nudges; a wave is never started twice", func(t *testing.T) {
		x := fix(t, 6)
		c := newCampaign(x, []int{50, 100})
		create(x, &c, byIndex(x, 2))
		at := now()
		got, n, err := start(x, c.ID, 0, at)
		mustNoErr(t, "StartWave(0)", err)
		if n != 3 || got.CurrentWave != 0 || len(got.WaveStartedAt) != 1 || !got.WaveStartedAt[0].Equal(at) {
			t.Fatalf("StartWave(0): %+v, %d assigned; want wave 0 started at %v with 3", got, n, at)
		}
		for i, d := range x.devices {
			want := int64(0)
			if i%2 == 0 {
				want = x.target.ID
			}
			if a := x.e.Assigned(t, d.ID); a != want {
				t.Errorf("device %d (wave %d) assigned %d, want %d", d.ID, i%2, a, want)
			}
		}
		owed, err := x.e.Campaigns.OwedNudges(x.ctx(), c.ID, 100)
		mustNoErr(t, "OwedNudges", err)
		if len(owed) != 3 || owed[0].Rollback || owed[0].ClientID == "" {
			t.Fatalf("owed %+v, want 3 assignment nudges", owed)
		}
		two, err := x.e.Campaigns.OwedNudges(x.ctx(), c.ID, 2)
		mustNoErr(t, "OwedNudges", err)
		mustNoErr(t, "NudgesSent", x.e.Campaigns.NudgesSent(x.ctx(), c.ID, two))
		owed, err = x.e.Campaigns.OwedNudges(x.ctx(), c.ID, 100)
		mustNoErr(t, "OwedNudges", err)
		if len(owed) != 1 {
			t.Errorf("after two were sent %d owed, want 1", len(owed))
		}
		for _, m := range members(x, c.ID, nil) {
			if (m.Wave == 0) != (m.AssignedAt != nil) {
				t.Errorf("member %+v: assigned exactly when in wave 0", m)
			}
		}

		_, n, err = start(x, c.ID, 0, at.Add(time.Second))
		wantErrIs(t, "StartWave(0) again", err, model.ErrConflict)
		if n != 0 {
			t.Errorf("a refused start assigned %d", n)
		}
		_, _, err = start(x, c.ID, 2, at)
		wantErrIs(t, "StartWave past the last", err, model.ErrConflict)
		got, n, err = start(x, c.ID, 1, at.Add(time.Minute))
		mustNoErr(t, "StartWave(1)", err)
		if n != 3 || got.CurrentWave != 1 || len(got.WaveStartedAt) != 2 {
			t.Errorf("StartWave(1): %+v, %d", got, n)
		}
	})

	t.Run("ObserveReport resolves the member of the device's most recent campaign; counts follow", func(t *testing.T) {
		x := fix(t, 4)
		d := x.devices
		if _, found := observe(x, d[0], model.StateReport{FirmwareVersion: "1.0.0", At: now()}); found {
			t.Fatal("ObserveReport found a member before any campaign")
		}
		old := newCampaign(x, []int{100})
		create(x, &old, func(int64, string) int { return 0 })
		_, _, err := x.e.Campaigns.AbortCampaign(x.ctx(), old.ID, false, func(c *model.Campaign) ([]model.AuditEntry, error) { return nil, c.Abort("t", now()) })
		mustNoErr(t, "abort", err)
		c := newCampaign(x, []int{100})
		create(x, &c, func(int64, string) int { return 0 })
		_, _, err = start(x, c.ID, 0, now())
		mustNoErr(t, "StartWave", err)

		okAt := now()
		m, found := observe(x, d[0], model.StateReport{FirmwareVersion: "2.0.0", OTAState: model.OTAValid,
			OTA: &model.OTAAttempt{Target: "2.0.0", Result: model.OTAInstalled}, At: okAt})
		if !found || m.CampaignID != c.ID || m.State != model.MemberSucceeded {
			t.Fatalf("ObserveReport: %+v (found %v), want succeeded in campaign %d", m, found, c.ID)
		}
		observe(x, d[1], model.StateReport{FirmwareVersion: "1.0.0", OTAState: model.OTAValid,
			OTA: &model.OTAAttempt{Target: "2.0.0", Result: model.OTARolledBack}, At: now()})
		observe(x, d[2], model.StateReport{FirmwareVersion: "2.0.0", OTAState: model.OTAPendingVerify, At: now()})

		st := model.MemberSucceeded
		ok := members(x, c.ID, &st)
		if len(ok) != 1 || ok[0].DeviceID != d[0].ID || ok[0].ReportedVersion != "2.0.0" || ok[0].ReportedOTAState != model.OTAValid ||
			ok[0].ReportedOTA == nil || ok[0].ReportedOTA.Result != model.OTAInstalled || ok[0].ResolvedAt == nil || !ok[0].ResolvedAt.Equal(okAt) {
			t.Errorf("succeeded members %+v", ok)
		}
		wc, err := x.e.Campaigns.WaveCount(x.ctx(), c.ID, 0)
		mustNoErr(t, "WaveCount", err)
		if wc.Members != 4 || wc.Succeeded != 1 || wc.Failed != 1 || wc.Pending != 2 || wc.LastSuccessAt == nil || !wc.LastSuccessAt.Equal(okAt) {
			t.Errorf("WaveCount %+v", wc)
		}
		if p, err := x.e.Campaigns.WavePending(x.ctx(), c.ID, 0); err != nil || !p {
			t.Errorf("WavePending with 2 pending = %v, %v; want true", p, err)
		}
		all, err := x.e.Campaigns.WaveCounts(x.ctx(), c.ID)
		mustNoErr(t, "WaveCounts", err)
		if len(all) != 1 || all[0].Members != wc.Members || all[0].Failed != 1 {
			t.Errorf("WaveCounts %+v", all)
		}
		// The earlier campaign's member is left alone.
		for _, m := range members(x, old.ID, nil) {
			if m.ReportedAt != nil {
				t.Errorf("the report reached the older campaign: %+v", m)
			}
		}

		// Timeouts: the one on probation fails, the silent one times out;
		// those assigned later are left.
		n, err := x.e.Campaigns.TimeOutMembers(x.ctx(), c, 0, now().Add(-time.Hour), now())
		mustNoErr(t, "TimeOutMembers", err)
		if n != 0 {
			t.Errorf("TimeOutMembers before the timeout resolved %d", n)
		}
		n, err = x.e.Campaigns.TimeOutMembers(x.ctx(), c, 0, now(), now())
		mustNoErr(t, "TimeOutMembers", err)
		wc, err = x.e.Campaigns.WaveCount(x.ctx(), c.ID, 0)
		mustNoErr(t, "WaveCount", err)
		if n != 2 || wc.Failed != 2 || wc.TimedOut != 1 || wc.Pending != 0 {
			t.Errorf("after the timeout: %d resolved, %+v; want 2 (one failed on probation, one timed out)", n, wc)
		}
		if p, err := x.e.Campaigns.WavePending(x.ctx(), c.ID, 0); err != nil || p {
			t.Errorf("WavePending with none pending = %v, %v; want false", p, err)
		}
	})

	t.Run("AbortCampaign with rollback takes the target from failed and pending members only, owing rollback nudges", func(t *testing.T) {
		x := fix(t, 4)
		d := x.devices
		c := newCampaign(x, []int{100})
		create(x, &c, func(int64, string) int { return 0 })
		_, _, err := start(x, c.ID, 0, now())
		mustNoErr(t, "StartWave", err)
		assigned, err := x.e.Campaigns.OwedNudges(x.ctx(), c.ID, 100)
		mustNoErr(t, "OwedNudges", err)
		observe(x, d[0], model.StateReport{FirmwareVersion: "2.0.0", OTAState: model.OTAValid, At: now()})
		observe(x, d[1], model.StateReport{FirmwareVersion: "1.0.0", OTA: &model.OTAAttempt{Target: "2.0.0", Result: model.OTAVerifyFailed}, At: now()})
		got, n, err := x.e.Campaigns.AbortCampaign(x.ctx(), c.ID, true, func(c *model.Campaign) ([]model.AuditEntry, error) {
			return nil, c.Abort("too many failures", now())
		})
		mustNoErr(t, "AbortCampaign", err)
		if got.State != model.CampaignAborted || got.AbortReason != "too many failures" || got.FinishedAt == nil || n != 3 {
			t.Fatalf("aborted %+v, %d rolled back; want aborted with its reason and 3 rolled back", got, n)
		}
		if a := x.e.Assigned(t, d[0].ID); a != x.target.ID {
			t.Errorf("the succeeded member's assignment is %d, want it kept", a)
		}
		for _, dv := range d[1:] {
			if a := x.e.Assigned(t, dv.ID); a != 0 {
				t.Errorf("device %d keeps assignment %d after the rollback", dv.ID, a)
			}
		}
		// The assignment nudges read before the abort are sent after it:
		// the rollback nudges stay owed.
		mustNoErr(t, "NudgesSent", x.e.Campaigns.NudgesSent(x.ctx(), c.ID, assigned))
		owed, err := x.e.Campaigns.OwedNudges(x.ctx(), c.ID, 100)
		mustNoErr(t, "OwedNudges", err)
		if len(owed) != 3 || !owed[0].Rollback {
			t.Errorf("owed %+v, want the 3 rollback nudges", owed)
		}
		_, _, err = x.e.Campaigns.AbortCampaign(x.ctx(), c.ID, true, func(c *model.Campaign) ([]model.AuditEntry, error) { return nil, c.Abort("again", now()) })
		var ce *model.CampaignError
		if !errors.As(err, &ce) {
			t.Errorf("a second abort: %v, want the transition's *CampaignError as it is", err)
		}
		// A report after the abort is recorded, its state left.
		m, found := observe(x, d[2], model.StateReport{FirmwareVersion: "2.0.0", OTAState: model.OTAValid, At: now()})
		if !found || m.State != model.MemberPending || m.ReportedVersion != "2.0.0" {
			t.Errorf("a report after the abort: %+v", m)
		}
	})

	t.Run("ListCampaigns filters and pages; RunningCampaigns and CampaignCounts see every state", func(t *testing.T) {
		x := fix(t, 1)
		other := x
		other.m = x.model("ct_camp", nil)
		other.target = x.fw(other.m, "3.0.0", now())
		mustNoErr(t, "RecordFirmware", x.e.Firmware.RecordFirmware(x.ctx(), &other.target, nil))
		a := newCampaign(x, []int{100})
		create(x, &a, func(int64, string) int { return 0 })
		_, _, err := x.e.Campaigns.AbortCampaign(x.ctx(), a.ID, false, func(c *model.Campaign) ([]model.AuditEntry, error) { return nil, c.Abort("t", now()) })
		mustNoErr(t, "abort", err)
		b := newCampaign(x, []int{100})
		create(x, &b, func(int64, string) int { return 0 })
		c := newCampaign(other, []int{100})
		create(other, &c, func(int64, string) int { return 0 })

		p, err := x.e.Campaigns.ListCampaigns(x.ctx(), ports.CampaignFilter{ModelID: &x.m.ID, Limit: 1})
		mustNoErr(t, "ListCampaigns", err)
		if len(p.Campaigns) != 1 || p.Campaigns[0].ID != a.ID || p.NextAfterID != a.ID {
			t.Fatalf("first page %+v", p)
		}
		p, err = x.e.Campaigns.ListCampaigns(x.ctx(), ports.CampaignFilter{ModelID: &x.m.ID, Limit: 1, AfterID: p.NextAfterID})
		mustNoErr(t, "ListCampaigns", err)
		if len(p.Campaigns) != 1 || p.Campaigns[0].ID != b.ID || p.NextAfterID != 0 {
			t.Fatalf("second page %+v", p)
		}
		aborted := model.CampaignAborted
		p, err = x.e.Campaigns.ListCampaigns(x.ctx(), ports.CampaignFilter{ModelID: &x.m.ID, State: &aborted})
		mustNoErr(t, "ListCampaigns", err)
		if len(p.Campaigns) != 1 || p.Campaigns[0].ID != a.ID {
			t.Errorf("aborted campaigns %+v", p.Campaigns)
		}
		running, err := x.e.Campaigns.RunningCampaigns(x.ctx())
		mustNoErr(t, "RunningCampaigns", err)
		var ids []int64
		for _, r := range running {
			ids = append(ids, r.ID)
		}
		if !slices.Contains(ids, b.ID) || !slices.Contains(ids, c.ID) || slices.Contains(ids, a.ID) {
			t.Errorf("running %v, want %d and %d, not %d", ids, b.ID, c.ID, a.ID)
		}
		counts, err := x.e.Campaigns.CampaignCounts(x.ctx())
		mustNoErr(t, "CampaignCounts", err)
		for _, st := range model.CampaignStates {
			if _, ok := counts[st]; !ok {
				t.Errorf("CampaignCounts lacks %s", st)
			}
		}
		if counts[model.CampaignRunning] < 2 || counts[model.CampaignAborted] < 1 {
			t.Errorf("CampaignCounts %v", counts)
		}
		_, err = x.e.Campaigns.ListMembers(x.ctx(), ports.MemberFilter{CampaignID: c.ID + 1_000_000})
		wantErrIs(t, "ListMembers of an unknown campaign", err, model.ErrNotFound)
		_, err = x.e.Campaigns.GetCampaign(x.ctx(), c.ID+1_000_000)
		wantErrIs(t, "GetCampaign of an unknown id", err, model.ErrNotFound)
	})
}
