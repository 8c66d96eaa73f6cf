package portstest

import (
	"slices"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// runReleaseContract is the released/stored firmware and effective
// firmware part of RunRepoContract (SPEC §16): FirmwareRepo's release
// methods and DeviceRepo.AssignFirmware.
func runReleaseContract(t *testing.T, r func(t *testing.T) repoFixture) {
	t.Helper()

	t.Run("a stored upload is history only; ReleaseFirmware releases it, again is unchanged, an earlier one rolls back", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_rel", nil)
		t0 := now().Add(-time.Hour)
		v1 := x.fw(m, "1.0.0", t0)
		mustNoErr(t, "RecordFirmware v1", x.firmware.RecordFirmware(x.ctx(), &v1, nil))
		if v1.ReleasedAt == nil {
			t.Fatalf("RecordFirmware of a released upload left ReleasedAt nil")
		}
		v2 := x.fw(m, "2.0.0", t0.Add(time.Minute))
		v2.ReleasedAt = nil
		var heads ports.FirmwareHeads
		mustNoErr(t, "RecordFirmware v2 (stored)", x.firmware.RecordFirmware(x.ctx(), &v2, func(h ports.FirmwareHeads) ([]model.AuditEntry, error) {
			heads = h
			return nil, nil
		}))
		if heads.Released == nil || heads.Released.ID != v1.ID || heads.Newest == nil || heads.Newest.ID != v1.ID {
			t.Errorf("check saw %+v, want v1 released and newest", heads)
		}
		if v2.ReleasedAt != nil {
			t.Errorf("stored v2 has ReleasedAt %v", v2.ReleasedAt)
		}
		x.wantReleased(m, v1, "1.0.0")

		// The check sees the stored upload as the newest, v1 still released;
		// it may hold a release back by clearing ReleasedAt.
		v3 := x.fw(m, "3.0.0", t0.Add(2*time.Minute))
		mustNoErr(t, "RecordFirmware v3 (held by its check)", x.firmware.RecordFirmware(x.ctx(), &v3, func(h ports.FirmwareHeads) ([]model.AuditEntry, error) {
			heads = h
			v3.ReleasedAt = nil
			return nil, nil
		}))
		if heads.Released == nil || heads.Released.ID != v1.ID || heads.Newest == nil || heads.Newest.ID != v2.ID {
			t.Errorf("check saw released %+v newest %+v, want v1 and v2", heads.Released, heads.Newest)
		}
		x.wantReleased(m, v1, "1.0.0")

		type call struct {
			id      int64
			already bool
		}
		var calls []call
		audit := func(f model.Firmware, already bool) []model.AuditEntry {
			calls = append(calls, call{f.ID, already})
			return nil
		}
		got, changed, err := x.firmware.ReleaseFirmware(x.ctx(), m.ID, v2.SHA256, audit)
		mustNoErr(t, "ReleaseFirmware v2", err)
		if !changed || got.ID != v2.ID || got.ReleasedAt == nil || !got.ReleasedAt.After(*v1.ReleasedAt) {
			t.Fatalf("ReleaseFirmware v2 = %+v, %v; want v2 released after v1 (%v)", got, changed, v1.ReleasedAt)
		}
		x.wantReleased(m, v2, "2.0.0")
		again, changed, err := x.firmware.ReleaseFirmware(x.ctx(), m.ID, v2.SHA256, audit)
		mustNoErr(t, "ReleaseFirmware v2 again", err)
		if changed || again.ID != v2.ID || !again.ReleasedAt.Equal(*got.ReleasedAt) {
			t.Errorf("ReleaseFirmware of the released one = %+v, %v; want it unchanged", again, changed)
		}
		back, changed, err := x.firmware.ReleaseFirmware(x.ctx(), m.ID, v1.SHA256, audit)
		mustNoErr(t, "ReleaseFirmware v1 (rollback)", err)
		if !changed || back.ID != v1.ID || !back.ReleasedAt.After(*got.ReleasedAt) {
			t.Errorf("rollback to v1 = %+v, %v; want v1 released after v2 (%v)", back, changed, got.ReleasedAt)
		}
		x.wantReleased(m, v1, "1.0.0")
		if want := []call{{v2.ID, false}, {v2.ID, true}, {v1.ID, false}}; !slices.Equal(calls, want) {
			t.Errorf("audit calls %v, want %v", calls, want)
		}

		hist, err := x.firmware.ListFirmware(x.ctx(), m.ID)
		mustNoErr(t, "ListFirmware", err)
		if len(hist) != 3 || hist[0].ID != v3.ID || hist[0].ReleasedAt != nil || hist[1].ReleasedAt == nil {
			t.Fatalf("history %+v, want v3 (stored), v2, v1 (released)", hist)
		}
		if rel, ok := model.ReleasedIn(hist); !ok || rel.ID != v1.ID {
			t.Errorf("ReleasedIn(history) = %+v, %v; want v1", rel, ok)
		}

		_, _, err = x.firmware.ReleaseFirmware(x.ctx(), m.ID, randomSHA256(), audit)
		wantErrIs(t, "ReleaseFirmware(unknown sha256)", err, model.ErrNotFound)
		_, _, err = x.firmware.ReleaseFirmware(x.ctx(), m.ID+1_000_000, v1.SHA256, audit)
		wantErrIs(t, "ReleaseFirmware(unknown model)", err, model.ErrNotFound)
	})

	t.Run("FirmwareBySHA256 is the newest upload of an image; ReleasedFirmware none while all are stored", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_bysha", nil)
		a := x.fw(m, "1.0.0", now())
		a.ReleasedAt = nil
		mustNoErr(t, "RecordFirmware a", x.firmware.RecordFirmware(x.ctx(), &a, nil))
		_, err := x.firmware.ReleasedFirmware(x.ctx(), m.ID)
		wantErrIs(t, "ReleasedFirmware(only stored)", err, model.ErrNotFound)
		if got, err := x.models.GetModel(x.ctx(), m.ID); err != nil || got.FirmwareVersion != "" {
			t.Errorf("model after a stored upload: %+v, %v; want no firmware_version", got, err)
		}
		b := a
		b.ID, b.Version = 0, "1.0.0-again"
		mustNoErr(t, "RecordFirmware b (same image)", x.firmware.RecordFirmware(x.ctx(), &b, nil))
		got, err := x.firmware.FirmwareBySHA256(x.ctx(), m.ID, a.SHA256)
		mustNoErr(t, "FirmwareBySHA256", err)
		wantFirmware(t, "FirmwareBySHA256", got, b)
		_, err = x.firmware.FirmwareBySHA256(x.ctx(), m.ID, randomSHA256())
		wantErrIs(t, "FirmwareBySHA256(unknown)", err, model.ErrNotFound)
		other := x.model("ct_bysha_o", nil)
		_, err = x.firmware.FirmwareBySHA256(x.ctx(), other.ID, a.SHA256)
		wantErrIs(t, "FirmwareBySHA256(another model's)", err, model.ErrNotFound)
	})

	t.Run("EffectiveFirmware is the assigned upload, else the released one; AssignFirmware sets and clears", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_eff", nil)
		other := x.model("ct_eff_o", nil)
		d1 := x.device(m, `{}`)
		d2 := x.device(m, `{}`)
		od := x.device(other, `{}`)
		if d1.AssignedFirmwareID != nil {
			t.Fatalf("a new device has AssignedFirmwareID %d", *d1.AssignedFirmwareID)
		}
		_, err := x.firmware.EffectiveFirmware(x.ctx(), d1.ID)
		wantErrIs(t, "EffectiveFirmware(nothing)", err, model.ErrNotFound)
		_, err = x.firmware.EffectiveFirmware(x.ctx(), d1.ID+1_000_000)
		wantErrIs(t, "EffectiveFirmware(no such device)", err, model.ErrNotFound)

		t0 := now().Add(-time.Hour)
		rel := x.fw(m, "1.0.0", t0)
		mustNoErr(t, "RecordFirmware rel", x.firmware.RecordFirmware(x.ctx(), &rel, nil))
		stored := x.fw(m, "2.0.0", t0.Add(time.Minute))
		stored.ReleasedAt = nil
		mustNoErr(t, "RecordFirmware stored", x.firmware.RecordFirmware(x.ctx(), &stored, nil))
		ofw := x.fw(other, "9.0.0", t0)
		mustNoErr(t, "RecordFirmware other", x.firmware.RecordFirmware(x.ctx(), &ofw, nil))

		eff := func(what string, d model.Device, want model.Firmware) {
			t.Helper()
			got, err := x.firmware.EffectiveFirmware(x.ctx(), d.ID)
			mustNoErr(t, "EffectiveFirmware "+what, err)
			wantFirmware(t, "EffectiveFirmware "+what, got, want)
		}
		eff("unassigned", d1, rel)
		eff("of another model's device", od, ofw)

		n, err := x.devices.AssignFirmware(x.ctx(), []int64{d1.ID, od.ID, d1.ID + 1_000_000}, &stored.ID)
		mustNoErr(t, "AssignFirmware", err)
		if n != 1 {
			t.Errorf("AssignFirmware changed %d devices, want 1 (d1; not another model's, not an unknown id)", n)
		}
		got := x.get(d1.ID)
		if got.AssignedFirmwareID == nil || *got.AssignedFirmwareID != stored.ID {
			t.Errorf("d1 AssignedFirmwareID = %v, want %d", got.AssignedFirmwareID, stored.ID)
		}
		if !got.UpdatedAt.Equal(d1.UpdatedAt) {
			t.Errorf("UpdatedAt moved from %v to %v: an assignment is no admin change", d1.UpdatedAt, got.UpdatedAt)
		}
		byKey, err := x.devices.GetDeviceByKey(x.ctx(), d1.Key)
		mustNoErr(t, "GetDeviceByKey", err)
		if byKey.AssignedFirmwareID == nil || *byKey.AssignedFirmwareID != stored.ID {
			t.Errorf("GetDeviceByKey AssignedFirmwareID = %v, want %d", byKey.AssignedFirmwareID, stored.ID)
		}
		if x.get(od.ID).AssignedFirmwareID != nil || x.get(d2.ID).AssignedFirmwareID != nil {
			t.Errorf("AssignFirmware touched a device it was not meant to")
		}
		eff("assigned the stored upload", d1, stored)
		eff("of its unassigned neighbour", d2, rel)
		eff("of another model's device, not assigned another model's upload", od, ofw)
		if n, err := x.devices.AssignFirmware(x.ctx(), []int64{d1.ID}, &stored.ID); err != nil || n != 0 {
			t.Errorf("AssignFirmware of the assigned one again = %d, %v; want 0", n, err)
		}

		// UpdateDevice leaves the assignment alone.
		_, err = x.devices.UpdateDevice(x.ctx(), d1.ID, func(d *model.Device) ([]model.AuditEntry, error) {
			d.AssignedFirmwareID = nil
			d.Active = false
			return nil, nil
		})
		mustNoErr(t, "UpdateDevice", err)
		if a := x.get(d1.ID).AssignedFirmwareID; a == nil || *a != stored.ID {
			t.Errorf("after UpdateDevice AssignedFirmwareID = %v, want %d kept", a, stored.ID)
		}

		n, err = x.devices.AssignFirmware(x.ctx(), []int64{d1.ID, d2.ID}, nil)
		mustNoErr(t, "AssignFirmware(nil)", err)
		if n != 1 || x.get(d1.ID).AssignedFirmwareID != nil {
			t.Errorf("AssignFirmware(nil) changed %d, d1 %v; want 1 and cleared", n, x.get(d1.ID).AssignedFirmwareID)
		}
		eff("after the assignment is cleared", d1, rel)
		if n, err := x.devices.AssignFirmware(x.ctx(), nil, &stored.ID); err != nil || n != 0 {
			t.Errorf("AssignFirmware(no ids) = %d, %v", n, err)
		}
	})
}

// wantReleased checks the model's released firmware and firmware_version.
func (x repoFixture) wantReleased(m model.DeviceModel, want model.Firmware, version string) {
	x.t.Helper()
	got, err := x.firmware.ReleasedFirmware(x.ctx(), m.ID)
	mustNoErr(x.t, "ReleasedFirmware", err)
	if got.ID != want.ID {
		x.t.Errorf("ReleasedFirmware = %s (id %d), want %s (id %d)", got.Version, got.ID, want.Version, want.ID)
	}
	mm, err := x.models.GetModel(x.ctx(), m.ID)
	mustNoErr(x.t, "GetModel", err)
	if mm.FirmwareVersion != version {
		x.t.Errorf("FirmwareVersion = %q, want %q", mm.FirmwareVersion, version)
	}
}

// runTagsContract is the device tags part of RunRepoContract (SPEC §16).
func runTagsContract(t *testing.T, r func(t *testing.T) repoFixture) {
	t.Helper()

	t.Run("tags are kept by CreateDevice and UpdateDevice; ListDevices keeps devices carrying every tag asked", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_tags", nil)
		plain := x.device(m, `{}`)
		if plain.Tags == nil || len(plain.Tags) != 0 {
			t.Errorf("a device without tags has Tags %#v, want an empty set", plain.Tags)
		}
		mk := func(tags ...string) model.Device {
			t.Helper()
			return x.deviceIn(m, func(d *model.Device) { d.Tags = tags })
		}
		created := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: []byte(`{}`), Active: true,
			RotationState: model.RotationOK, Tags: []string{"made", "with:tags"}}
		mustNoErr(t, "CreateDevice", x.devices.CreateDevice(x.ctx(), &created, nil))
		x.cleanupDevice(created.ID)
		if !slices.Equal(created.Tags, []string{"made", "with:tags"}) || !slices.Equal(x.get(created.ID).Tags, created.Tags) {
			t.Errorf("CreateDevice Tags = %v, read back %v", created.Tags, x.get(created.ID).Tags)
		}
		ab := mk("a", "b:1")
		a := mk("a")
		b := mk("b:1")
		if got := x.get(ab.ID).Tags; !slices.Equal(got, []string{"a", "b:1"}) {
			t.Errorf("GetDevice Tags = %v, want [a b:1]", got)
		}
		byKey, err := x.devices.GetDeviceByKey(x.ctx(), ab.Key)
		mustNoErr(t, "GetDeviceByKey", err)
		if !slices.Equal(byKey.Tags, []string{"a", "b:1"}) {
			t.Errorf("GetDeviceByKey Tags = %v", byKey.Tags)
		}
		list := func(tags ...string) []int64 {
			t.Helper()
			p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{ModelID: &m.ID, Tags: tags, Limit: 100})
			mustNoErr(t, "ListDevices", err)
			return deviceIDs(p.Devices)
		}
		for _, c := range []struct {
			tags []string
			want []int64
		}{
			{nil, []int64{plain.ID, created.ID, ab.ID, a.ID, b.ID}},
			{[]string{"a"}, []int64{ab.ID, a.ID}},
			{[]string{"b:1"}, []int64{ab.ID, b.ID}},
			{[]string{"a", "b:1"}, []int64{ab.ID}},
			{[]string{"c"}, nil},
		} {
			if got := list(c.tags...); !slices.Equal(got, c.want) {
				t.Errorf("ListDevices(tags %v) = %v, want %v", c.tags, got, c.want)
			}
		}
		_, err = x.devices.UpdateDevice(x.ctx(), a.ID, func(d *model.Device) ([]model.AuditEntry, error) {
			d.Tags = []string{"b:1", "c"}
			return nil, nil
		})
		mustNoErr(t, "UpdateDevice", err)
		if got := x.get(a.ID).Tags; !slices.Equal(got, []string{"b:1", "c"}) {
			t.Errorf("after UpdateDevice Tags = %v, want [b:1 c]", got)
		}
		if got := list("b:1"); !slices.Equal(got, []int64{ab.ID, a.ID, b.ID}) {
			t.Errorf("ListDevices(b:1) after the update = %v", got)
		}
		_, err = x.devices.UpdateDevice(x.ctx(), a.ID, func(d *model.Device) ([]model.AuditEntry, error) {
			d.Tags = nil
			return nil, nil
		})
		mustNoErr(t, "UpdateDevice(no tags)", err)
		if got := x.get(a.ID).Tags; got == nil || len(got) != 0 {
			t.Errorf("after clearing Tags = %#v, want an empty set", got)
		}
	})
}
