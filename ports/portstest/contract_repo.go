package portstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// RunRepoContract runs the contract of ports.ModelRepo, ports.DeviceRepo and
// ports.FirmwareRepo against the repositories newRepos returns. The three
// must share one store (deleting a model sees its devices). newRepos is
// called once per subtest; it may register cleanups on t. Every subtest
// creates its own models with unique codes, so the store may hold other
// data and subtests may run in parallel with other packages' tests.
func RunRepoContract(t *testing.T, newRepos func(t *testing.T) (ports.ModelRepo, ports.DeviceRepo, ports.FirmwareRepo)) {
	t.Helper()
	r := func(t *testing.T) repoFixture {
		m, d, f := newRepos(t)
		return repoFixture{t: t, models: m, devices: d, firmware: f}
	}

	t.Run("CreateModel sets ID and timestamps; Get, GetByCode and List see it", func(t *testing.T) {
		x := r(t)
		schema := json.RawMessage(`{"type": "object", "properties": {"led": {"type": "boolean"}}}`)
		m := model.DeviceModel{Code: UniqueCode("ct_model"), Name: "Contract Model", ConfigSchema: schema}
		mustNoErr(t, "CreateModel", x.models.CreateModel(x.ctx(), &m))
		if m.ID == 0 || m.CreatedAt.IsZero() || m.UpdatedAt.IsZero() {
			t.Fatalf("CreateModel left ID/CreatedAt/UpdatedAt unset: %+v", m)
		}
		byID, err := x.models.GetModel(x.ctx(), m.ID)
		mustNoErr(t, "GetModel", err)
		byCode, err := x.models.GetModelByCode(x.ctx(), m.Code)
		mustNoErr(t, "GetModelByCode", err)
		for name, got := range map[string]model.DeviceModel{"GetModel": byID, "GetModelByCode": byCode} {
			if got.ID != m.ID || got.Code != m.Code || got.Name != m.Name || got.FirmwareVersion != "" {
				t.Errorf("%s: got %+v, want id %d code %q name %q and no firmware version", name, got, m.ID, m.Code, m.Name)
			}
			if !jsonEqual(got.ConfigSchema, schema) {
				t.Errorf("%s: got schema %s, want %s", name, got.ConfigSchema, schema)
			}
			if got.CreatedAt.IsZero() || got.UpdatedAt.IsZero() {
				t.Errorf("%s: timestamps unset: %+v", name, got)
			}
		}
		all, err := x.models.ListModels(x.ctx())
		mustNoErr(t, "ListModels", err)
		if !slices.ContainsFunc(all, func(o model.DeviceModel) bool { return o.ID == m.ID && o.Code == m.Code }) {
			t.Errorf("ListModels: model %d (%s) missing from %d models", m.ID, m.Code, len(all))
		}
	})

	t.Run("CreateModel without schema stores none", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_noschema", nil)
		got, err := x.models.GetModel(x.ctx(), m.ID)
		mustNoErr(t, "GetModel", err)
		if !isNullJSON(got.ConfigSchema) {
			t.Errorf("GetModel: got schema %s, want none", got.ConfigSchema)
		}
	})

	t.Run("CreateModel with a duplicate code is ErrConflict", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_dup", nil)
		dup := model.DeviceModel{Code: m.Code, Name: "again"}
		wantErrIs(t, "CreateModel(duplicate)", x.models.CreateModel(x.ctx(), &dup), model.ErrConflict)
	})

	t.Run("missing models are ErrNotFound", func(t *testing.T) {
		x := r(t)
		gone := x.model("ct_gone", nil)
		mustNoErr(t, "DeleteModel", x.models.DeleteModel(x.ctx(), gone.ID))
		_, err := x.models.GetModel(x.ctx(), gone.ID)
		wantErrIs(t, "GetModel", err, model.ErrNotFound)
		_, err = x.models.GetModelByCode(x.ctx(), gone.Code)
		wantErrIs(t, "GetModelByCode", err, model.ErrNotFound)
		called := false
		_, err = x.models.UpdateModel(x.ctx(), gone.ID, func(*model.DeviceModel) error { called = true; return nil })
		wantErrIs(t, "UpdateModel", err, model.ErrNotFound)
		if called {
			t.Errorf("UpdateModel ran the closure for a missing model")
		}
		wantErrIs(t, "DeleteModel(again)", x.models.DeleteModel(x.ctx(), gone.ID), model.ErrNotFound)
	})

	t.Run("UpdateModel stores name and schema, ignores code and ID", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_upd", json.RawMessage(`{"type":"object"}`))
		newSchema := json.RawMessage(`{"type":"object","required":["x"]}`)
		got, err := x.models.UpdateModel(x.ctx(), m.ID, func(cur *model.DeviceModel) error {
			if cur.ID != m.ID || cur.Code != m.Code || cur.Name != m.Name {
				t.Errorf("closure got %+v, want the current row of %d", cur, m.ID)
			}
			cur.Name = "Renamed"
			cur.ConfigSchema = newSchema
			cur.Code = "changed_" + randomKey()
			cur.ID = m.ID + 1000000
			return nil
		})
		mustNoErr(t, "UpdateModel", err)
		stored, err := x.models.GetModel(x.ctx(), m.ID)
		mustNoErr(t, "GetModel", err)
		for name, g := range map[string]model.DeviceModel{"UpdateModel result": got, "GetModel after update": stored} {
			if g.ID != m.ID || g.Code != m.Code || g.Name != "Renamed" || !jsonEqual(g.ConfigSchema, newSchema) {
				t.Errorf("%s: got id %d code %q name %q schema %s; want id %d code %q name Renamed schema %s",
					name, g.ID, g.Code, g.Name, g.ConfigSchema, m.ID, m.Code, newSchema)
			}
		}
		if stored.UpdatedAt.Before(m.UpdatedAt) {
			t.Errorf("UpdatedAt went back: %v -> %v", m.UpdatedAt, stored.UpdatedAt)
		}

		// A nil schema clears it.
		_, err = x.models.UpdateModel(x.ctx(), m.ID, func(cur *model.DeviceModel) error { cur.ConfigSchema = nil; return nil })
		mustNoErr(t, "UpdateModel(clear schema)", err)
		stored, err = x.models.GetModel(x.ctx(), m.ID)
		mustNoErr(t, "GetModel", err)
		if !isNullJSON(stored.ConfigSchema) {
			t.Errorf("after clearing: got schema %s, want none", stored.ConfigSchema)
		}
	})

	t.Run("UpdateModel closure error aborts the update", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_abort", nil)
		boom := errors.New("closure refuses")
		_, err := x.models.UpdateModel(x.ctx(), m.ID, func(cur *model.DeviceModel) error {
			cur.Name = "should not stick"
			return boom
		})
		wantErrIs(t, "UpdateModel", err, boom)
		got, err := x.models.GetModel(x.ctx(), m.ID)
		mustNoErr(t, "GetModel", err)
		if got.Name != m.Name {
			t.Errorf("after aborted update: got name %q, want %q", got.Name, m.Name)
		}
	})

	t.Run("DeleteModel is ErrConflict while devices use it", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_delconf", nil)
		d := x.device(m, `{}`)
		wantErrIs(t, "DeleteModel(with device)", x.models.DeleteModel(x.ctx(), m.ID), model.ErrConflict)
		if _, err := x.models.GetModel(x.ctx(), m.ID); err != nil {
			t.Errorf("GetModel after refused delete: %v", err)
		}
		mustNoErr(t, "DeleteDevice", x.devices.DeleteDevice(x.ctx(), d.ID))
		mustNoErr(t, "DeleteModel(no devices)", x.models.DeleteModel(x.ctx(), m.ID))
		_, err := x.models.GetModel(x.ctx(), m.ID)
		wantErrIs(t, "GetModel after delete", err, model.ErrNotFound)
	})

	t.Run("DeleteModel with firmware history and no devices succeeds", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_delfw", nil)
		f := x.fw(m, "1.0.0", now())
		mustNoErr(t, "RecordFirmware", x.firmware.RecordFirmware(x.ctx(), &f, nil))
		mustNoErr(t, "DeleteModel", x.models.DeleteModel(x.ctx(), m.ID))
	})

	t.Run("CreateDevice sets ID, timestamps; Get and GetByKey return it with ModelCode", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_dev", nil)
		d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`{"led": true, "name": "kitchen", "n": 3}`),
			Active: false, RotationState: model.RotationOK}
		mustNoErr(t, "CreateDevice", x.devices.CreateDevice(x.ctx(), &d))
		x.cleanupDevice(d.ID)
		if d.ID == 0 || d.CreatedAt.IsZero() || d.UpdatedAt.IsZero() {
			t.Fatalf("CreateDevice left ID/timestamps unset: %+v", d)
		}
		byID, err := x.devices.GetDevice(x.ctx(), d.ID)
		mustNoErr(t, "GetDevice", err)
		byKey, err := x.devices.GetDeviceByKey(x.ctx(), d.Key)
		mustNoErr(t, "GetDeviceByKey", err)
		for name, got := range map[string]model.Device{"GetDevice": byID, "GetDeviceByKey": byKey} {
			if got.ID != d.ID || got.Key != d.Key || got.DeviceModelID != m.ID || got.ModelCode != m.Code ||
				got.Active || got.RotationState != model.RotationOK || !jsonEqual(got.Config, d.Config) {
				t.Errorf("%s: got %+v (config %s), want id %d key %s model %d code %s inactive OK config %s",
					name, got, got.Config, d.ID, d.Key, m.ID, m.Code, d.Config)
			}
			if got.ClientID() != model.ClientID(m.Code, d.Key) {
				t.Errorf("%s: ClientID() = %q", name, got.ClientID())
			}
			if got.CreatedAt.IsZero() || got.UpdatedAt.IsZero() {
				t.Errorf("%s: timestamps unset", name)
			}
			if got.LastSeenAt != nil || got.SecretCreatedAt != nil || got.NewSecretAt != nil || got.PreviousSecret != nil {
				t.Errorf("%s: optional fields set on a new device: %+v", name, got)
			}
		}
	})

	t.Run("CreateDevice with a duplicate key is ErrConflict", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_dupkey", nil)
		d := x.device(m, `{}`)
		dup := model.Device{Key: d.Key, DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true, RotationState: model.RotationOK}
		err := x.devices.CreateDevice(x.ctx(), &dup)
		if err == nil {
			x.cleanupDevice(dup.ID)
		}
		wantErrIs(t, "CreateDevice(duplicate key)", err, model.ErrConflict)
	})

	t.Run("CreateDevice of an unknown model is ErrNotFound", func(t *testing.T) {
		x := r(t)
		gone := x.model("ct_nomodel", nil)
		mustNoErr(t, "DeleteModel", x.models.DeleteModel(x.ctx(), gone.ID))
		d := model.Device{Key: randomKey(), DeviceModelID: gone.ID, Config: json.RawMessage(`{}`), Active: true, RotationState: model.RotationOK}
		err := x.devices.CreateDevice(x.ctx(), &d)
		if err == nil {
			x.cleanupDevice(d.ID)
		}
		wantErrIs(t, "CreateDevice(unknown model)", err, model.ErrNotFound)
	})

	t.Run("missing devices are ErrNotFound", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_nodev", nil)
		d := x.device(m, `{}`)
		mustNoErr(t, "DeleteDevice", x.devices.DeleteDevice(x.ctx(), d.ID))
		_, err := x.devices.GetDevice(x.ctx(), d.ID)
		wantErrIs(t, "GetDevice", err, model.ErrNotFound)
		_, err = x.devices.GetDeviceByKey(x.ctx(), d.Key)
		wantErrIs(t, "GetDeviceByKey", err, model.ErrNotFound)
		called := false
		_, err = x.devices.UpdateDevice(x.ctx(), d.ID, func(*model.Device) error { called = true; return nil })
		wantErrIs(t, "UpdateDevice", err, model.ErrNotFound)
		if called {
			t.Errorf("UpdateDevice ran the closure for a missing device")
		}
		wantErrIs(t, "DeleteDevice(again)", x.devices.DeleteDevice(x.ctx(), d.ID), model.ErrNotFound)
	})

	t.Run("UpdateDevice stores every mutable field and ignores ID, Key and model", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_devupd", nil)
		other := x.model("ct_devupd_other", nil)
		d := x.device(m, `{"a": 1}`)
		t0 := now().Add(-time.Hour)
		want := model.Device{
			Config:                  json.RawMessage(`{"a": 2, "nested": {"b": [1, 2]}}`),
			Active:                  false,
			RotationState:           model.RotationPending,
			SecretCreatedAt:         ptr(t0),
			LastRotationAttemptAt:   ptr(t0.Add(time.Minute)),
			LastRotationCompletedAt: ptr(t0.Add(2 * time.Minute)),
			LastSeenAt:              ptr(t0.Add(3 * time.Minute)),
			NewSecretAt:             ptr(t0.Add(4 * time.Minute)),
			PreviousSecret:          []byte{0, 1, 2, 0xfe, 0xff},
		}
		got, err := x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) error {
			if cur.ID != d.ID || cur.Key != d.Key || cur.ModelCode != m.Code || !jsonEqual(cur.Config, d.Config) {
				t.Errorf("closure got %+v, want the current row of %d", cur, d.ID)
			}
			cur.Config = want.Config
			cur.Active = want.Active
			cur.RotationState = want.RotationState
			cur.SecretCreatedAt = want.SecretCreatedAt
			cur.LastRotationAttemptAt = want.LastRotationAttemptAt
			cur.LastRotationCompletedAt = want.LastRotationCompletedAt
			cur.LastSeenAt = want.LastSeenAt
			cur.NewSecretAt = want.NewSecretAt
			cur.PreviousSecret = want.PreviousSecret
			cur.ID = d.ID + 1000000
			cur.Key = randomKey()
			cur.DeviceModelID = other.ID
			return nil
		})
		mustNoErr(t, "UpdateDevice", err)
		stored, err := x.devices.GetDevice(x.ctx(), d.ID)
		mustNoErr(t, "GetDevice", err)
		for name, g := range map[string]model.Device{"UpdateDevice result": got, "GetDevice after update": stored} {
			if g.ID != d.ID || g.Key != d.Key || g.DeviceModelID != m.ID || g.ModelCode != m.Code {
				t.Errorf("%s: identity changed: id %d key %s model %d code %s; want %d %s %d %s",
					name, g.ID, g.Key, g.DeviceModelID, g.ModelCode, d.ID, d.Key, m.ID, m.Code)
			}
			if !jsonEqual(g.Config, want.Config) || g.Active != want.Active || g.RotationState != want.RotationState {
				t.Errorf("%s: got config %s active %v state %s; want %s %v %s",
					name, g.Config, g.Active, g.RotationState, want.Config, want.Active, want.RotationState)
			}
			for _, c := range []struct {
				field     string
				got, want *time.Time
			}{
				{"SecretCreatedAt", g.SecretCreatedAt, want.SecretCreatedAt},
				{"LastRotationAttemptAt", g.LastRotationAttemptAt, want.LastRotationAttemptAt},
				{"LastRotationCompletedAt", g.LastRotationCompletedAt, want.LastRotationCompletedAt},
				{"LastSeenAt", g.LastSeenAt, want.LastSeenAt},
				{"NewSecretAt", g.NewSecretAt, want.NewSecretAt},
			} {
				if !timeEq(c.got, c.want) {
					t.Errorf("%s: %s = %v, want %v", name, c.field, c.got, c.want)
				}
			}
			if string(g.PreviousSecret) != string(want.PreviousSecret) {
				t.Errorf("%s: PreviousSecret = %x, want %x", name, g.PreviousSecret, want.PreviousSecret)
			}
		}

		// Optional fields clear back to nil.
		_, err = x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) error {
			cur.RotationState = model.RotationOK
			cur.NewSecretAt = nil
			cur.PreviousSecret = nil
			cur.LastRotationAttemptAt = nil
			return nil
		})
		mustNoErr(t, "UpdateDevice(clear)", err)
		stored, err = x.devices.GetDevice(x.ctx(), d.ID)
		mustNoErr(t, "GetDevice", err)
		if stored.NewSecretAt != nil || stored.PreviousSecret != nil || stored.LastRotationAttemptAt != nil || stored.RotationState != model.RotationOK {
			t.Errorf("after clearing: got %+v", stored)
		}
		if !timeEq(stored.SecretCreatedAt, want.SecretCreatedAt) {
			t.Errorf("after clearing others: SecretCreatedAt = %v, want %v", stored.SecretCreatedAt, want.SecretCreatedAt)
		}
	})

	t.Run("UpdateDevice closure error aborts the update", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_devabort", nil)
		d := x.device(m, `{"keep": true}`)
		boom := errors.New("closure refuses")
		_, err := x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) error {
			cur.Config = json.RawMessage(`{"keep": false}`)
			cur.Active = false
			return boom
		})
		wantErrIs(t, "UpdateDevice", err, boom)
		got, err := x.devices.GetDevice(x.ctx(), d.ID)
		mustNoErr(t, "GetDevice", err)
		if !jsonEqual(got.Config, d.Config) || !got.Active {
			t.Errorf("after aborted update: got config %s active %v, want %s true", got.Config, got.Active, d.Config)
		}
	})

	t.Run("ListDevices pages by AfterID and Limit in ID order", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_page", nil)
		var want []int64
		for range 5 {
			want = append(want, x.device(m, `{}`).ID)
		}
		for _, limit := range []int{1, 2, 3, 5, 6} {
			var got []int64
			after := int64(0)
			for pages := 0; ; pages++ {
				if pages > 10 {
					t.Fatalf("limit %d: pagination does not end", limit)
				}
				p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{ModelID: &m.ID, Limit: limit, AfterID: after})
				mustNoErr(t, "ListDevices", err)
				if len(p.Devices) > limit {
					t.Fatalf("limit %d: got a page of %d", limit, len(p.Devices))
				}
				for _, d := range p.Devices {
					if d.ModelCode != m.Code {
						t.Errorf("limit %d: device %d has ModelCode %q, want %q", limit, d.ID, d.ModelCode, m.Code)
					}
					got = append(got, d.ID)
				}
				if p.NextAfterID == 0 {
					break
				}
				if len(p.Devices) < limit {
					t.Errorf("limit %d: short page of %d with NextAfterID %d, want 0", limit, len(p.Devices), p.NextAfterID)
				}
				if n := len(p.Devices); n == 0 || p.NextAfterID != p.Devices[n-1].ID {
					t.Fatalf("limit %d: NextAfterID %d is not the last ID of the page %v", limit, p.NextAfterID, p.Devices)
				}
				after = p.NextAfterID
			}
			if !slices.Equal(got, want) {
				t.Errorf("limit %d: paged IDs %v, want %v", limit, got, want)
			}
		}
		p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{ModelID: &m.ID, Limit: 10, AfterID: want[2]})
		mustNoErr(t, "ListDevices", err)
		if got := deviceIDs(p.Devices); !slices.Equal(got, want[3:]) || p.NextAfterID != 0 {
			t.Errorf("AfterID %d: got %v next %d, want %v next 0", want[2], got, p.NextAfterID, want[3:])
		}
	})

	t.Run("ListDevices pages by 100 when Limit is below 1 and by 1000 at most", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_pagesize", nil)
		for range ports.DefaultPageSize + 1 {
			x.device(m, `{}`)
		}
		for _, limit := range []int{0, -5} {
			p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{ModelID: &m.ID, Limit: limit})
			mustNoErr(t, "ListDevices", err)
			if len(p.Devices) != ports.DefaultPageSize || p.NextAfterID == 0 {
				t.Errorf("Limit %d: page of %d (next %d), want %d and more", limit, len(p.Devices), p.NextAfterID, ports.DefaultPageSize)
			}
		}
		p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{ModelID: &m.ID, Limit: ports.MaxPageSize + 1})
		mustNoErr(t, "ListDevices", err)
		if len(p.Devices) != ports.DefaultPageSize+1 || p.NextAfterID != 0 {
			t.Errorf("Limit %d: page of %d (next %d), want all %d", ports.MaxPageSize+1, len(p.Devices), p.NextAfterID, ports.DefaultPageSize+1)
		}
	})

	t.Run("ListDevices filters by model, rotation state and active", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_filter", nil)
		other := x.model("ct_filter_other", nil)
		set := func(d model.Device, state model.RotationState, active bool) model.Device {
			t.Helper()
			got, err := x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) error {
				cur.RotationState, cur.Active = state, active
				return nil
			})
			mustNoErr(t, "UpdateDevice", err)
			return got
		}
		okActive := set(x.device(m, `{}`), model.RotationOK, true)
		okInactive := set(x.device(m, `{}`), model.RotationOK, false)
		queued := set(x.device(m, `{}`), model.RotationQueued, true)
		pending := set(x.device(m, `{}`), model.RotationPending, true)
		timeout := set(x.device(m, `{}`), model.RotationTimeout, false)
		otherDev := set(x.device(other, `{}`), model.RotationQueued, true)

		for _, tc := range []struct {
			name   string
			filter ports.DeviceFilter
			want   []int64
		}{
			{"model", ports.DeviceFilter{ModelID: &m.ID}, []int64{okActive.ID, okInactive.ID, queued.ID, pending.ID, timeout.ID}},
			{"other model", ports.DeviceFilter{ModelID: &other.ID}, []int64{otherDev.ID}},
			{"model+OK", ports.DeviceFilter{ModelID: &m.ID, RotationState: ptr(model.RotationOK)}, []int64{okActive.ID, okInactive.ID}},
			{"model+QUEUED", ports.DeviceFilter{ModelID: &m.ID, RotationState: ptr(model.RotationQueued)}, []int64{queued.ID}},
			{"model+PENDING", ports.DeviceFilter{ModelID: &m.ID, RotationState: ptr(model.RotationPending)}, []int64{pending.ID}},
			{"model+TIMEOUT", ports.DeviceFilter{ModelID: &m.ID, RotationState: ptr(model.RotationTimeout)}, []int64{timeout.ID}},
			{"model+active", ports.DeviceFilter{ModelID: &m.ID, Active: ptr(true)}, []int64{okActive.ID, queued.ID, pending.ID}},
			{"model+inactive", ports.DeviceFilter{ModelID: &m.ID, Active: ptr(false)}, []int64{okInactive.ID, timeout.ID}},
			{"model+OK+inactive", ports.DeviceFilter{ModelID: &m.ID, RotationState: ptr(model.RotationOK), Active: ptr(false)}, []int64{okInactive.ID}},
			{"model+PENDING+inactive", ports.DeviceFilter{ModelID: &m.ID, RotationState: ptr(model.RotationPending), Active: ptr(false)}, nil},
		} {
			f := tc.filter
			f.Limit = 1000
			p, err := x.devices.ListDevices(x.ctx(), f)
			mustNoErr(t, "ListDevices "+tc.name, err)
			if got := deviceIDs(p.Devices); !slices.Equal(got, tc.want) || p.NextAfterID != 0 {
				t.Errorf("%s: got %v next %d, want %v next 0", tc.name, got, p.NextAfterID, tc.want)
			}
		}

		// Without a model filter the other filters still apply (other
		// data in a shared store may add rows, never remove ours).
		for _, tc := range []struct {
			name   string
			filter ports.DeviceFilter
			in     []int64
			out    []int64
		}{
			{"QUEUED", ports.DeviceFilter{RotationState: ptr(model.RotationQueued)}, []int64{queued.ID, otherDev.ID}, []int64{okActive.ID, pending.ID, timeout.ID}},
			{"inactive", ports.DeviceFilter{Active: ptr(false)}, []int64{okInactive.ID, timeout.ID}, []int64{okActive.ID, queued.ID, otherDev.ID}},
		} {
			f := tc.filter
			f.Limit = 1000
			f.AfterID = okActive.ID - 1
			var got []int64
			for {
				p, err := x.devices.ListDevices(x.ctx(), f)
				mustNoErr(t, "ListDevices "+tc.name, err)
				got = append(got, deviceIDs(p.Devices)...)
				if p.NextAfterID == 0 {
					break
				}
				f.AfterID = p.NextAfterID
			}
			for _, id := range tc.in {
				if !slices.Contains(got, id) {
					t.Errorf("%s: device %d missing", tc.name, id)
				}
			}
			for _, id := range tc.out {
				if slices.Contains(got, id) {
					t.Errorf("%s: device %d should be filtered out", tc.name, id)
				}
			}
		}
	})

	t.Run("TouchLastSeen writes at most once per interval", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_touch", nil)
		d := x.device(m, `{}`)
		t0 := now().Add(-time.Hour)
		steps := []struct {
			at   time.Time
			want time.Time
		}{
			{t0, t0},                       // first touch always writes
			{t0.Add(30 * time.Second), t0}, // within the interval: unchanged
			{t0.Add(59 * time.Second), t0}, // still within
			{t0.Add(61 * time.Second), t0.Add(61 * time.Second)}, // past it: written
			{t0, t0.Add(61 * time.Second)},                       // an older time never moves it back
		}
		for i, s := range steps {
			mustNoErr(t, "TouchLastSeen", x.devices.TouchLastSeen(x.ctx(), d.ID, s.at, time.Minute))
			got, err := x.devices.GetDevice(x.ctx(), d.ID)
			mustNoErr(t, "GetDevice", err)
			if got.LastSeenAt == nil || !got.LastSeenAt.Equal(s.want) {
				t.Errorf("step %d (touch at %v): LastSeenAt = %v, want %v", i, s.at, got.LastSeenAt, s.want)
			}
		}
		// A device deleted since it authenticated is not an error.
		mustNoErr(t, "DeleteDevice", x.devices.DeleteDevice(x.ctx(), d.ID))
		mustNoErr(t, "TouchLastSeen(deleted device)", x.devices.TouchLastSeen(x.ctx(), d.ID, t0, time.Minute))
	})

	t.Run("DeviceKeysExist returns the keys that have a device", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_keys", nil)
		a, b := x.device(m, `{}`), x.device(m, `{}`)
		missing1, missing2 := randomKey(), randomKey()
		got, err := x.devices.DeviceKeysExist(x.ctx(), []string{a.Key, missing1, b.Key, missing2})
		mustNoErr(t, "DeviceKeysExist", err)
		if !got[a.Key] || !got[b.Key] || got[missing1] || got[missing2] || len(got) != 2 {
			t.Errorf("DeviceKeysExist: got %v, want exactly %s and %s", got, a.Key, b.Key)
		}
		got, err = x.devices.DeviceKeysExist(x.ctx(), nil)
		mustNoErr(t, "DeviceKeysExist(nil)", err)
		if len(got) != 0 {
			t.Errorf("DeviceKeysExist(nil): got %v, want empty", got)
		}
	})

	t.Run("RecordFirmware's check sees the current firmware; its error records nothing", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_fwcheck", nil)
		v1 := x.fw(m, "1.0.0", now())
		var seen []*model.Firmware
		record := func(f *model.Firmware, fail error) error {
			return x.firmware.RecordFirmware(x.ctx(), f, func(cur *model.Firmware) error {
				seen = append(seen, cur)
				return fail
			})
		}
		mustNoErr(t, "RecordFirmware v1", record(&v1, nil))
		boom := errors.New("refused by check")
		v2 := x.fw(m, "2.0.0", now())
		if err := record(&v2, boom); !errors.Is(err, boom) {
			t.Fatalf("RecordFirmware with a failing check: %v, want the check's error", err)
		}
		if len(seen) != 2 || seen[0] != nil || seen[1] == nil || seen[1].ID != v1.ID {
			t.Fatalf("check saw %v, want nil then v1 (id %d)", seen, v1.ID)
		}
		hist, err := x.firmware.ListFirmware(x.ctx(), m.ID)
		mustNoErr(t, "ListFirmware", err)
		if len(hist) != 1 || hist[0].ID != v1.ID {
			t.Errorf("history after a refused record: %v, want only v1", hist)
		}
		got, err := x.models.GetModel(x.ctx(), m.ID)
		mustNoErr(t, "GetModel", err)
		if got.FirmwareVersion != "1.0.0" {
			t.Errorf("FirmwareVersion = %q after a refused record, want 1.0.0", got.FirmwareVersion)
		}
	})

	t.Run("concurrent RecordFirmware calls see each other's rows in their checks", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_fwrace", nil)
		chips := []struct {
			name string
			id   int
		}{{"esp32", 0}, {"esp32c3", 5}}
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f := x.fw(m, fmt.Sprintf("1.0.%d", i), now())
				f.Chip, f.ChipID = chips[i%2].name, chips[i%2].id
				errs[i] = x.firmware.RecordFirmware(x.ctx(), &f, func(cur *model.Firmware) error {
					if cur != nil && cur.ChipID != f.ChipID {
						return model.ErrConflict
					}
					return nil
				})
			}()
		}
		wg.Wait()
		hist, err := x.firmware.ListFirmware(x.ctx(), m.ID)
		mustNoErr(t, "ListFirmware", err)
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else if !errors.Is(err, model.ErrConflict) {
				t.Errorf("RecordFirmware: %v", err)
			}
		}
		if ok == 0 || len(hist) != ok {
			t.Fatalf("%d calls succeeded, %d rows recorded", ok, len(hist))
		}
		for _, f := range hist {
			if f.ChipID != hist[0].ChipID {
				t.Fatalf("history mixes chips %d and %d: the checks did not serialise", hist[0].ChipID, f.ChipID)
			}
		}
	})

	t.Run("RecordFirmware sets the model's version; history is newest first", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_fw", nil)
		other := x.model("ct_fw_other", nil)
		_, err := x.firmware.CurrentFirmware(x.ctx(), m.ID)
		wantErrIs(t, "CurrentFirmware(none)", err, model.ErrNotFound)
		hist, err := x.firmware.ListFirmware(x.ctx(), m.ID)
		mustNoErr(t, "ListFirmware(none)", err)
		if len(hist) != 0 {
			t.Errorf("ListFirmware(none): got %d entries", len(hist))
		}

		t0 := now().Add(-time.Hour)
		v1 := x.fw(m, "1.0.0", t0)
		mustNoErr(t, "RecordFirmware v1", x.firmware.RecordFirmware(x.ctx(), &v1, nil))
		if v1.ID == 0 {
			t.Fatalf("RecordFirmware left ID unset")
		}
		v2 := x.fw(m, "1.1.0-rc1", t0.Add(time.Minute))
		v2.Chip, v2.ChipID = "esp32s3", 9
		mustNoErr(t, "RecordFirmware v2", x.firmware.RecordFirmware(x.ctx(), &v2, nil))
		o1 := x.fw(other, "9.9.9", t0.Add(2*time.Minute))
		mustNoErr(t, "RecordFirmware other", x.firmware.RecordFirmware(x.ctx(), &o1, nil))

		cur, err := x.firmware.CurrentFirmware(x.ctx(), m.ID)
		mustNoErr(t, "CurrentFirmware", err)
		wantFirmware(t, "CurrentFirmware", cur, v2)
		hist, err = x.firmware.ListFirmware(x.ctx(), m.ID)
		mustNoErr(t, "ListFirmware", err)
		if len(hist) != 2 {
			t.Fatalf("ListFirmware: got %d entries, want 2", len(hist))
		}
		wantFirmware(t, "ListFirmware[0]", hist[0], v2)
		wantFirmware(t, "ListFirmware[1]", hist[1], v1)

		for _, c := range []struct {
			m    model.DeviceModel
			want string
		}{{m, v2.Version}, {other, o1.Version}} {
			got, err := x.models.GetModel(x.ctx(), c.m.ID)
			mustNoErr(t, "GetModel", err)
			if got.FirmwareVersion != c.want {
				t.Errorf("model %s: FirmwareVersion = %q, want %q", c.m.Code, got.FirmwareVersion, c.want)
			}
		}
	})
}

type repoFixture struct {
	t        *testing.T
	models   ports.ModelRepo
	devices  ports.DeviceRepo
	firmware ports.FirmwareRepo
}

func (x repoFixture) ctx() context.Context { return x.t.Context() }

// model creates a model with a unique code starting with prefix and
// removes it (with its devices) when the test ends.
func (x repoFixture) model(prefix string, schema json.RawMessage) model.DeviceModel {
	x.t.Helper()
	m := model.DeviceModel{Code: UniqueCode(prefix), Name: "Model " + prefix, ConfigSchema: schema}
	mustNoErr(x.t, "CreateModel", x.models.CreateModel(x.ctx(), &m))
	x.t.Cleanup(func() {
		ctx := context.Background()
		for {
			p, err := x.devices.ListDevices(ctx, ports.DeviceFilter{ModelID: &m.ID, Limit: 1000})
			if err != nil || len(p.Devices) == 0 {
				break
			}
			for _, d := range p.Devices {
				_ = x.devices.DeleteDevice(ctx, d.ID)
			}
		}
		_ = x.models.DeleteModel(ctx, m.ID)
	})
	return m
}

// device creates an active device of m with a random key.
func (x repoFixture) device(m model.DeviceModel, config string) model.Device {
	x.t.Helper()
	d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(config), Active: true, RotationState: model.RotationOK}
	mustNoErr(x.t, "CreateDevice", x.devices.CreateDevice(x.ctx(), &d))
	x.cleanupDevice(d.ID)
	return d
}

func (x repoFixture) cleanupDevice(id int64) {
	x.t.Cleanup(func() { _ = x.devices.DeleteDevice(context.Background(), id) })
}

func (x repoFixture) fw(m model.DeviceModel, version string, at time.Time) model.Firmware {
	sum := make([]byte, 32)
	_, _ = rand.Read(sum)
	return model.Firmware{
		DeviceModelID: m.ID, Version: version, ProjectName: "contract", IDFVersion: "v5.3.1",
		Chip: "esp32", ChipID: 0, SHA256: hex.EncodeToString(sum), Size: 123456, UploadedAt: at,
	}
}

func wantFirmware(t *testing.T, what string, got, want model.Firmware) {
	t.Helper()
	if got.ID != want.ID || got.DeviceModelID != want.DeviceModelID || got.Version != want.Version ||
		got.ProjectName != want.ProjectName || got.IDFVersion != want.IDFVersion || got.Chip != want.Chip ||
		got.ChipID != want.ChipID || got.SHA256 != want.SHA256 || got.Size != want.Size || !got.UploadedAt.Equal(want.UploadedAt) {
		t.Errorf("%s: got %+v, want %+v", what, got, want)
	}
}

func deviceIDs(ds []model.Device) []int64 {
	var out []int64
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}
