package portstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// AuditEnv is what RunAuditContract works on: an audit log and the
// repositories that write a change's audit entries into it. Each call
// of the suite's constructor must return a log no other test writes to.
type AuditEnv struct {
	Log      ports.AuditLog
	Models   ports.ModelRepo
	Devices  ports.DeviceRepo
	Firmware ports.FirmwareRepo
	Schedule ports.ScheduleRepo
}

// RunAuditContract checks an audit log and its repositories: appended
// entries read back as written, paged and filtered; the entries of a
// change's batch are stored exactly when the change is (with the created
// row's id), and not when the change fails.
func RunAuditContract(t *testing.T, newEnv func(t *testing.T) AuditEnv) {
	at := time.Date(2025, 6, 1, 12, 0, 0, 123456000, time.UTC)
	entry := func(kind model.AuditKind, deviceID int64, detail string) model.AuditEntry {
		return model.AuditEntry{
			At: at, Kind: kind, Actor: model.Actor{Type: model.ActorAdmin, Subject: "sub-1", ClientID: "console", Name: "alice"},
			DeviceID: deviceID, ClientID: "iotdevice-x-abcdefgh", Outcome: model.OutcomeSuccess, Detail: detail,
		}
	}
	all := func(t *testing.T, log ports.AuditLog, f ports.AuditFilter) []model.AuditEntry {
		t.Helper()
		var out []model.AuditEntry
		for range 1000 {
			p, err := log.ListAudit(t.Context(), f)
			mustNoErr(t, "ListAudit", err)
			out = append(out, p.Entries...)
			if p.NextAfterID == 0 {
				return out
			}
			if p.NextAfterID != p.Entries[len(p.Entries)-1].ID {
				t.Fatalf("NextAfterID %d is not the page's last id %d", p.NextAfterID, p.Entries[len(p.Entries)-1].ID)
			}
			f.AfterID = p.NextAfterID
		}
		t.Fatal("ListAudit never reached its last page")
		return nil
	}
	kinds := func(es []model.AuditEntry) []model.AuditKind {
		out := make([]model.AuditKind, len(es))
		for i, e := range es {
			out[i] = e.Kind
		}
		return out
	}

	t.Run("AppendAndList", func(t *testing.T) {
		env := newEnv(t)
		want := entry(model.AuditProvisioningDownloaded, 7, "NVS partition of 0x6000 bytes")
		want.ModelID = 3
		mustNoErr(t, "AppendAudit", env.Log.AppendAudit(t.Context(), want, entry(model.AuditIdentityRepaired, 8, "")))
		got := all(t, env.Log, ports.AuditFilter{})
		if len(got) != 2 {
			t.Fatalf("got %d entries, want 2", len(got))
		}
		g := got[0]
		if g.ID <= 0 || got[1].ID <= g.ID {
			t.Errorf("ids %d, %d: want positive and increasing", g.ID, got[1].ID)
		}
		want.ID = g.ID
		if !g.At.Equal(want.At) || g.At.Location() != time.UTC {
			t.Errorf("At = %v, want %v in UTC", g.At, want.At)
		}
		g.At = want.At
		if g != want {
			t.Errorf("read back %+v\nwant %+v", g, want)
		}
	})

	t.Run("PagesAndFilters", func(t *testing.T) {
		env := newEnv(t)
		ctx := t.Context()
		var es []model.AuditEntry
		for i := range 7 {
			e := entry(model.AuditSecretFetched, int64(1+i%2), "")
			e.At = at.Add(time.Duration(i) * time.Minute)
			if i == 3 {
				e.Actor = model.DeviceActor("iotdevice-x-zzzzzzzz")
				e.Kind = model.AuditSecretConfirmed
			}
			es = append(es, e)
		}
		mustNoErr(t, "AppendAudit", env.Log.AppendAudit(ctx, es...))
		for _, c := range []struct {
			name string
			f    ports.AuditFilter
			want int
		}{
			{"all, pages of 2", ports.AuditFilter{Limit: 2}, 7},
			{"device 1", ports.AuditFilter{DeviceID: 1, Limit: 3}, 4},
			{"kind", ports.AuditFilter{Kind: model.AuditSecretConfirmed}, 1},
			{"actor subject", ports.AuditFilter{Actor: "sub-1"}, 6},
			{"actor client", ports.AuditFilter{Actor: "iotdevice-x-zzzzzzzz"}, 1},
			{"actor name", ports.AuditFilter{Actor: "alice"}, 6},
			{"since", ports.AuditFilter{Since: at.Add(5 * time.Minute)}, 2},
			{"nothing", ports.AuditFilter{DeviceID: 99}, 0},
		} {
			if got := all(t, env.Log, c.f); len(got) != c.want {
				t.Errorf("%s: %d entries, want %d", c.name, len(got), c.want)
			}
		}
		p, err := env.Log.ListAudit(ctx, ports.AuditFilter{Limit: 7})
		mustNoErr(t, "ListAudit", err)
		if p.NextAfterID != 0 || len(p.Entries) != 7 {
			t.Errorf("a page holding every entry: %d entries, next %d; want 7 and 0", len(p.Entries), p.NextAfterID)
		}
	})

	t.Run("ChangesCarryTheirEntries", func(t *testing.T) {
		env := newEnv(t)
		ctx := t.Context()
		one := func(k model.AuditKind, deviceID int64, detail string) []model.AuditEntry {
			return []model.AuditEntry{entry(k, deviceID, detail)}
		}

		m := model.DeviceModel{Code: UniqueCode("auc"), Name: "audit contract"}
		mustNoErr(t, "CreateModel", env.Models.CreateModel(ctx, &m, one(model.AuditModelCreated, 0, "code")))

		d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true, RotationState: model.RotationOK}
		mustNoErr(t, "CreateDevice", env.Devices.CreateDevice(ctx, &d, one(model.AuditDeviceCreated, 0, "")))

		_, err := env.Devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.Active = false
			return one(model.AuditDeviceUpdated, cur.ID, "in the closure"), nil
		})
		mustNoErr(t, "UpdateDevice", err)

		// A closure that fails: neither the change nor its entry.
		refused := errors.New("refused")
		if _, err := env.Devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			return one(model.AuditRotationQueued, cur.ID, "must not be stored"), refused
		}); !errors.Is(err, refused) {
			t.Fatalf("UpdateDevice with a failing closure = %v", err)
		}
		// A create that fails (duplicate key): no entry.
		dup := model.Device{Key: d.Key, DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true}
		if err := env.Devices.CreateDevice(ctx, &dup, one(model.AuditDeviceCreated, 0, "must not be stored")); !errors.Is(err, model.ErrConflict) {
			t.Fatalf("duplicate CreateDevice = %v", err)
		}
		// A model with devices cannot go: no entry.
		if err := env.Models.DeleteModel(ctx, m.ID, one(model.AuditModelDeleted, 0, "must not be stored")); !errors.Is(err, model.ErrConflict) {
			t.Fatalf("DeleteModel with devices = %v", err)
		}

		_, err = env.Models.UpdateModel(ctx, m.ID, func(cur *model.DeviceModel) ([]model.AuditEntry, error) {
			cur.Name = "renamed"
			return one(model.AuditModelUpdated, 0, ""), nil
		})
		mustNoErr(t, "UpdateModel", err)

		sum := randomSHA256()
		f := model.Firmware{DeviceModelID: m.ID, Version: "1", Chip: "esp32", SHA256: sum, Size: 1, UploadedAt: at}
		mustNoErr(t, "RecordFirmware", env.Firmware.RecordFirmware(ctx, &f, func(ports.FirmwareHeads) ([]model.AuditEntry, error) {
			return one(model.AuditFirmwareUploaded, 0, ""), nil
		}))
		again := model.Firmware{DeviceModelID: m.ID, Version: "2", Chip: "esp32", SHA256: randomSHA256(), Size: 1, UploadedAt: at}
		if err := env.Firmware.RecordFirmware(ctx, &again, func(ports.FirmwareHeads) ([]model.AuditEntry, error) {
			return one(model.AuditFirmwareUploaded, 0, "must not be stored"), refused
		}); !errors.Is(err, refused) {
			t.Fatalf("RecordFirmware with a failing check = %v", err)
		}

		mustNoErr(t, "DeleteDevice", env.Devices.DeleteDevice(ctx, d.ID, one(model.AuditDeviceDeleted, d.ID, "")))
		if err := env.Devices.DeleteDevice(ctx, d.ID, one(model.AuditDeviceDeleted, d.ID, "must not be stored")); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("second DeleteDevice = %v", err)
		}
		mustNoErr(t, "DeleteModel", env.Models.DeleteModel(ctx, m.ID, one(model.AuditModelDeleted, 0, "")))

		got := all(t, env.Log, ports.AuditFilter{})
		want := []model.AuditKind{model.AuditModelCreated, model.AuditDeviceCreated, model.AuditDeviceUpdated,
			model.AuditModelUpdated, model.AuditFirmwareUploaded, model.AuditDeviceDeleted, model.AuditModelDeleted}
		if g := kinds(got); len(g) != len(want) {
			t.Fatalf("entries %v, want %v", g, want)
		}
		for i, e := range got {
			if e.Kind != want[i] {
				t.Fatalf("entries %v, want %v", kinds(got), want)
			}
			if e.Detail == "must not be stored" {
				t.Errorf("entry %d of a failed change was stored", e.ID)
			}
			if e.ModelID != m.ID {
				t.Errorf("%s: model %d, want %d", e.Kind, e.ModelID, m.ID)
			}
			if e.Kind != model.AuditModelCreated && e.Kind != model.AuditModelUpdated && e.Kind != model.AuditFirmwareUploaded &&
				e.Kind != model.AuditModelDeleted && e.DeviceID != d.ID {
				t.Errorf("%s: device %d, want %d (set from the created row)", e.Kind, e.DeviceID, d.ID)
			}
		}
	})

	t.Run("ReportStateCarriesItsEntries", func(t *testing.T) {
		env := newEnv(t)
		ctx := t.Context()
		m := model.DeviceModel{Code: UniqueCode("aus"), Name: "audit state"}
		mustNoErr(t, "CreateModel", env.Models.CreateModel(ctx, &m, nil))
		d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true, RotationState: model.RotationOK}
		mustNoErr(t, "CreateDevice", env.Devices.CreateDevice(ctx, &d, nil))
		t.Cleanup(func() {
			_ = env.Devices.DeleteDevice(context.Background(), d.ID, nil)
			_ = env.Models.DeleteModel(context.Background(), m.ID, nil)
		})
		changed := func(prev *model.StateReport) []model.AuditEntry {
			if prev != nil && prev.FirmwareVersion == "1" {
				return nil
			}
			e := entry(model.AuditFirmwareReported, 0, "version")
			e.Actor = model.DeviceActor(d.ClientID())
			return []model.AuditEntry{e}
		}
		for _, v := range []string{"1", "1"} {
			mustNoErr(t, "ReportState", env.Devices.ReportState(ctx, d.ID, model.StateReport{FirmwareVersion: v, At: at}, changed))
		}
		mustNoErr(t, "DeleteDevice", env.Devices.DeleteDevice(ctx, d.ID, nil))
		if err := env.Devices.ReportState(ctx, d.ID, model.StateReport{FirmwareVersion: "2", At: at}, changed); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("ReportState of a deleted device = %v, want ErrNotFound", err)
		}
		got := all(t, env.Log, ports.AuditFilter{})
		if len(got) != 1 || got[0].Kind != model.AuditFirmwareReported {
			t.Fatalf("entries %v, want one %s", kinds(got), model.AuditFirmwareReported)
		}
		if got[0].DeviceID != d.ID || got[0].ModelID != m.ID {
			t.Errorf("entry names device %d model %d, want %d and %d (set by the repository)", got[0].DeviceID, got[0].ModelID, d.ID, m.ID)
		}
	})

	t.Run("RotationAndScheduleCarryTheirEntries", func(t *testing.T) {
		env := newEnv(t)
		m := model.DeviceModel{Code: UniqueCode("aur"), Name: "audit rotation"}
		mustNoErr(t, "CreateModel", env.Models.CreateModel(t.Context(), &m, nil))
		d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true, RotationState: model.RotationQueued}
		mustNoErr(t, "CreateDevice", env.Devices.CreateDevice(t.Context(), &d, nil))
		t.Cleanup(func() {
			_ = env.Devices.DeleteDevice(context.Background(), d.ID, nil)
			_ = env.Models.DeleteModel(context.Background(), m.ID, nil)
		})
		started, err := env.Devices.StartRotations(t.Context(), 1000, at, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.RotationState = model.RotationPending
			now := at
			cur.LastRotationAttemptAt = &now
			if cur.ID == d.ID {
				return []model.AuditEntry{entry(model.AuditRotationStarted, cur.ID, "")}, nil
			}
			return nil, nil
		})
		mustNoErr(t, "StartRotations", err)
		found := false
		for _, s := range started {
			found = found || s.ID == d.ID
		}
		if !found {
			t.Fatalf("StartRotations did not start device %d", d.ID)
		}

		name := UniqueCode("sched")
		ok, err := env.Schedule.AdvanceFire(t.Context(), name, time.Time{}, at, []model.AuditEntry{entry(model.AuditScheduleFired, 0, "first")})
		mustNoErr(t, "AdvanceFire", err)
		if !ok {
			t.Fatal("first AdvanceFire did not move")
		}
		if ok, err := env.Schedule.AdvanceFire(t.Context(), name, at.Add(-time.Hour), at.Add(time.Hour),
			[]model.AuditEntry{entry(model.AuditScheduleFired, 0, "must not be stored")}); err != nil || ok {
			t.Fatalf("AdvanceFire from a stale time = %t, %v; want false", ok, err)
		}
		// The expression: recorded the first time and at each change, with
		// its entry; the same again stores nothing.
		for i, c := range []struct{ expr, prev string }{{"0 8 * * 6#1 (UTC)", ""}, {"0 8 * * 6#1 (UTC)", "0 8 * * 6#1 (UTC)"}, {"0 9 * * 1 (UTC)", "0 8 * * 6#1 (UTC)"}} {
			detail := "must not be stored"
			if c.expr != c.prev {
				detail = fmt.Sprint("change ", i)
			}
			prev, err := env.Schedule.RecordExpression(t.Context(), name, c.expr, []model.AuditEntry{entry(model.AuditScheduleChanged, 0, detail)})
			mustNoErr(t, "RecordExpression", err)
			if prev != c.prev {
				t.Errorf("RecordExpression(%q) returned previous %q, want %q", c.expr, prev, c.prev)
			}
		}
		got := all(t, env.Log, ports.AuditFilter{})
		if g := kinds(got); len(g) != 4 || g[0] != model.AuditRotationStarted || g[1] != model.AuditScheduleFired ||
			g[2] != model.AuditScheduleChanged || g[3] != model.AuditScheduleChanged || got[3].Detail != "change 2" {
			t.Fatalf("entries %v, want [rotation_started rotation_schedule_fired rotation_schedule_changed x2]", g)
		}
		if got[0].DeviceID != d.ID {
			t.Errorf("rotation_started device %d, want %d", got[0].DeviceID, d.ID)
		}
	})
}
