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

// RunRepoContract runs the contract of ports.ModelRepo, ports.DeviceRepo
// (with its ports.RotationQueue) and ports.FirmwareRepo against the
// repositories newRepos returns. The three must share one store (deleting a
// model sees its devices). newRepos is called once per subtest; it may
// register cleanups on t. Every subtest creates its own models with unique
// codes and removes its devices and models when it ends.
//
// The rotation queue works on every device of the store (QueueRotations
// queues them all, StartRotations counts every PENDING one), so its
// subtests need a store that holds no other devices while they run: a
// store used by this suite alone (its subtests run one after the other),
// such as a fresh database. They fail at once when they find other
// devices.
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
		mustNoErr(t, "CreateModel", x.models.CreateModel(x.ctx(), &m, nil))
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
		wantErrIs(t, "CreateModel(duplicate)", x.models.CreateModel(x.ctx(), &dup, nil), model.ErrConflict)
	})

	t.Run("missing models are ErrNotFound", func(t *testing.T) {
		x := r(t)
		gone := x.model("ct_gone", nil)
		mustNoErr(t, "DeleteModel", x.models.DeleteModel(x.ctx(), gone.ID, nil))
		_, err := x.models.GetModel(x.ctx(), gone.ID)
		wantErrIs(t, "GetModel", err, model.ErrNotFound)
		_, err = x.models.GetModelByCode(x.ctx(), gone.Code)
		wantErrIs(t, "GetModelByCode", err, model.ErrNotFound)
		called := false
		_, err = x.models.UpdateModel(x.ctx(), gone.ID, func(*model.DeviceModel) ([]model.AuditEntry, error) { called = true; return nil, nil })
		wantErrIs(t, "UpdateModel", err, model.ErrNotFound)
		if called {
			t.Errorf("UpdateModel ran the closure for a missing model")
		}
		wantErrIs(t, "DeleteModel(again)", x.models.DeleteModel(x.ctx(), gone.ID, nil), model.ErrNotFound)
	})

	t.Run("UpdateModel stores name and schema, ignores code and ID", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_upd", json.RawMessage(`{"type":"object"}`))
		newSchema := json.RawMessage(`{"type":"object","required":["x"]}`)
		got, err := x.models.UpdateModel(x.ctx(), m.ID, func(cur *model.DeviceModel) ([]model.AuditEntry, error) {
			if cur.ID != m.ID || cur.Code != m.Code || cur.Name != m.Name {
				t.Errorf("closure got %+v, want the current row of %d", cur, m.ID)
			}
			cur.Name = "Renamed"
			cur.ConfigSchema = newSchema
			cur.Code = "changed_" + randomKey()
			cur.ID = m.ID + 1000000
			return nil, nil
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
		_, err = x.models.UpdateModel(x.ctx(), m.ID, func(cur *model.DeviceModel) ([]model.AuditEntry, error) { cur.ConfigSchema = nil; return nil, nil })
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
		_, err := x.models.UpdateModel(x.ctx(), m.ID, func(cur *model.DeviceModel) ([]model.AuditEntry, error) {
			cur.Name = "should not stick"
			return nil, boom
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
		wantErrIs(t, "DeleteModel(with device)", x.models.DeleteModel(x.ctx(), m.ID, nil), model.ErrConflict)
		if _, err := x.models.GetModel(x.ctx(), m.ID); err != nil {
			t.Errorf("GetModel after refused delete: %v", err)
		}
		mustNoErr(t, "DeleteDevice", x.devices.DeleteDevice(x.ctx(), d.ID, nil))
		mustNoErr(t, "DeleteModel(no devices)", x.models.DeleteModel(x.ctx(), m.ID, nil))
		_, err := x.models.GetModel(x.ctx(), m.ID)
		wantErrIs(t, "GetModel after delete", err, model.ErrNotFound)
	})

	t.Run("DeleteModel with firmware history and no devices succeeds", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_delfw", nil)
		f := x.fw(m, "1.0.0", now())
		mustNoErr(t, "RecordFirmware", x.firmware.RecordFirmware(x.ctx(), &f, nil))
		mustNoErr(t, "DeleteModel", x.models.DeleteModel(x.ctx(), m.ID, nil))
	})

	t.Run("CreateDevice sets ID, timestamps; Get and GetByKey return it with ModelCode", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_dev", nil)
		d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`{"led": true, "name": "kitchen", "n": 3}`),
			Active: false, RotationState: model.RotationOK}
		mustNoErr(t, "CreateDevice", x.devices.CreateDevice(x.ctx(), &d, nil))
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
			if got.LastSeenAt != nil || got.SecretCreatedAt != nil || got.NewSecretAt != nil || got.PreviousSecret != nil || got.SecretSHA256 != "" {
				t.Errorf("%s: optional fields set on a new device: %+v", name, got)
			}
		}
	})

	t.Run("CreateDevice with a duplicate key is ErrConflict", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_dupkey", nil)
		d := x.device(m, `{}`)
		dup := model.Device{Key: d.Key, DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true, RotationState: model.RotationOK}
		err := x.devices.CreateDevice(x.ctx(), &dup, nil)
		if err == nil {
			x.cleanupDevice(dup.ID)
		}
		wantErrIs(t, "CreateDevice(duplicate key)", err, model.ErrConflict)
	})

	t.Run("CreateDevice of an unknown model is ErrNotFound", func(t *testing.T) {
		x := r(t)
		gone := x.model("ct_nomodel", nil)
		mustNoErr(t, "DeleteModel", x.models.DeleteModel(x.ctx(), gone.ID, nil))
		d := model.Device{Key: randomKey(), DeviceModelID: gone.ID, Config: json.RawMessage(`{}`), Active: true, RotationState: model.RotationOK}
		err := x.devices.CreateDevice(x.ctx(), &d, nil)
		if err == nil {
			x.cleanupDevice(d.ID)
		}
		wantErrIs(t, "CreateDevice(unknown model)", err, model.ErrNotFound)
	})

	t.Run("missing devices are ErrNotFound", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_nodev", nil)
		d := x.device(m, `{}`)
		mustNoErr(t, "DeleteDevice", x.devices.DeleteDevice(x.ctx(), d.ID, nil))
		_, err := x.devices.GetDevice(x.ctx(), d.ID)
		wantErrIs(t, "GetDevice", err, model.ErrNotFound)
		_, err = x.devices.GetDeviceByKey(x.ctx(), d.Key)
		wantErrIs(t, "GetDeviceByKey", err, model.ErrNotFound)
		called := false
		_, err = x.devices.UpdateDevice(x.ctx(), d.ID, func(*model.Device) ([]model.AuditEntry, error) { called = true; return nil, nil })
		wantErrIs(t, "UpdateDevice", err, model.ErrNotFound)
		if called {
			t.Errorf("UpdateDevice ran the closure for a missing device")
		}
		wantErrIs(t, "DeleteDevice(again)", x.devices.DeleteDevice(x.ctx(), d.ID, nil), model.ErrNotFound)
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
			LastRotationFetchAt:     ptr(t0.Add(90 * time.Second)),
			LastRotationRenudgeAt:   ptr(t0.Add(100 * time.Second)),
			LastRotationCompletedAt: ptr(t0.Add(2 * time.Minute)),
			LastSeenAt:              ptr(t0.Add(3 * time.Minute)),
			NewSecretAt:             ptr(t0.Add(4 * time.Minute)),
			IATAfter:                ptr(t0.Add(5 * time.Minute).Truncate(time.Second)),
			PreviousSecret:          []byte{0, 1, 2, 0xfe, 0xff},
			SecretSHA256:            randomSHA256(),
		}
		got, err := x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			if cur.ID != d.ID || cur.Key != d.Key || cur.ModelCode != m.Code || !jsonEqual(cur.Config, d.Config) {
				t.Errorf("closure got %+v, want the current row of %d", cur, d.ID)
			}
			cur.Config = want.Config
			cur.Active = want.Active
			cur.RotationState = want.RotationState
			cur.SecretCreatedAt = want.SecretCreatedAt
			cur.LastRotationAttemptAt = want.LastRotationAttemptAt
			cur.LastRotationFetchAt = want.LastRotationFetchAt
			cur.LastRotationRenudgeAt = want.LastRotationRenudgeAt
			cur.LastRotationCompletedAt = want.LastRotationCompletedAt
			cur.LastSeenAt = want.LastSeenAt
			cur.NewSecretAt = want.NewSecretAt
			cur.IATAfter = want.IATAfter
			cur.PreviousSecret = want.PreviousSecret
			cur.SecretSHA256 = want.SecretSHA256
			cur.ID = d.ID + 1000000
			cur.Key = randomKey()
			cur.DeviceModelID = other.ID
			return nil, nil
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
				{"LastRotationFetchAt", g.LastRotationFetchAt, want.LastRotationFetchAt},
				{"LastRotationRenudgeAt", g.LastRotationRenudgeAt, want.LastRotationRenudgeAt},
				{"LastRotationCompletedAt", g.LastRotationCompletedAt, want.LastRotationCompletedAt},
				{"LastSeenAt", g.LastSeenAt, want.LastSeenAt},
				{"NewSecretAt", g.NewSecretAt, want.NewSecretAt},
				{"IATAfter", g.IATAfter, want.IATAfter},
			} {
				if !timeEq(c.got, c.want) {
					t.Errorf("%s: %s = %v, want %v", name, c.field, c.got, c.want)
				}
			}
			if g.SecretSHA256 != want.SecretSHA256 {
				t.Errorf("%s: SecretSHA256 = %q, want %q", name, g.SecretSHA256, want.SecretSHA256)
			}
			if string(g.PreviousSecret) != string(want.PreviousSecret) {
				t.Errorf("%s: PreviousSecret = %x, want %x", name, g.PreviousSecret, want.PreviousSecret)
			}
		}

		// Optional fields clear back to nil.
		_, err = x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.RotationState = model.RotationOK
			cur.NewSecretAt = nil
			cur.IATAfter = nil
			cur.PreviousSecret = nil
			cur.LastRotationAttemptAt = nil
			cur.SecretSHA256 = ""
			return nil, nil
		})
		mustNoErr(t, "UpdateDevice(clear)", err)
		stored, err = x.devices.GetDevice(x.ctx(), d.ID)
		mustNoErr(t, "GetDevice", err)
		if stored.NewSecretAt != nil || stored.IATAfter != nil || stored.PreviousSecret != nil || stored.LastRotationAttemptAt != nil || stored.SecretSHA256 != "" || stored.RotationState != model.RotationOK {
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
		_, err := x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.Config = json.RawMessage(`{"keep": false}`)
			cur.Active = false
			return nil, boom
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
			got, err := x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
				cur.RotationState, cur.Active = state, active
				return nil, nil
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
		mustNoErr(t, "DeleteDevice", x.devices.DeleteDevice(x.ctx(), d.ID, nil))
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

	t.Run("RecordFirmware's check sees the released firmware; its error records nothing", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_fwcheck", nil)
		v1 := x.fw(m, "1.0.0", now())
		var seen []*model.Firmware
		record := func(f *model.Firmware, fail error) error {
			return x.firmware.RecordFirmware(x.ctx(), f, func(cur ports.FirmwareHeads) ([]model.AuditEntry, error) {
				seen = append(seen, cur.Released)
				return nil, fail
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
				errs[i] = x.firmware.RecordFirmware(x.ctx(), &f, func(cur ports.FirmwareHeads) ([]model.AuditEntry, error) {
					if cur.Released != nil && cur.Released.ChipID != f.ChipID {
						return nil, model.ErrConflict
					}
					return nil, nil
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
		_, err := x.firmware.ReleasedFirmware(x.ctx(), m.ID)
		wantErrIs(t, "ReleasedFirmware(none)", err, model.ErrNotFound)
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

		cur, err := x.firmware.ReleasedFirmware(x.ctx(), m.ID)
		mustNoErr(t, "ReleasedFirmware", err)
		wantFirmware(t, "ReleasedFirmware", cur, v2)
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

	runStateContract(t, r)
	runReleaseContract(t, r)
	runTagsContract(t, r)
	runRotationQueueContract(t, r)
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
	mustNoErr(x.t, "CreateModel", x.models.CreateModel(x.ctx(), &m, nil))
	x.t.Cleanup(func() {
		ctx := context.Background()
		for {
			p, err := x.devices.ListDevices(ctx, ports.DeviceFilter{ModelID: &m.ID, Limit: 1000})
			if err != nil || len(p.Devices) == 0 {
				break
			}
			for _, d := range p.Devices {
				_ = x.devices.DeleteDevice(ctx, d.ID, nil)
			}
		}
		_ = x.models.DeleteModel(ctx, m.ID, nil)
	})
	return m
}

// device creates an active device of m with a random key.
func (x repoFixture) device(m model.DeviceModel, config string) model.Device {
	x.t.Helper()
	d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(config), Active: true, RotationState: model.RotationOK}
	mustNoErr(x.t, "CreateDevice", x.devices.CreateDevice(x.ctx(), &d, nil))
	x.cleanupDevice(d.ID)
	return d
}

func (x repoFixture) cleanupDevice(id int64) {
	x.t.Cleanup(func() { _ = x.devices.DeleteDevice(context.Background(), id, nil) })
}

func (x repoFixture) fw(m model.DeviceModel, version string, at time.Time) model.Firmware {
	sum := make([]byte, 32)
	_, _ = rand.Read(sum)
	return model.Firmware{
		DeviceModelID: m.ID, Version: version, ProjectName: "contract", IDFVersion: "v5.3.1",
		Chip: "esp32", ChipID: 0, SHA256: hex.EncodeToString(sum), Size: 123456, SecureVersion: 4294967295, UploadedAt: at,
		ReleasedAt: &at,
	}
}

func wantFirmware(t *testing.T, what string, got, want model.Firmware) {
	t.Helper()
	if got.ID != want.ID || got.DeviceModelID != want.DeviceModelID || got.Version != want.Version ||
		got.ProjectName != want.ProjectName || got.IDFVersion != want.IDFVersion || got.Chip != want.Chip ||
		got.ChipID != want.ChipID || got.SHA256 != want.SHA256 || got.Size != want.Size || got.SecureVersion != want.SecureVersion ||
		!got.UploadedAt.Equal(want.UploadedAt) {
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

// runRotationQueueContract is the ports.RotationQueue part of
// RunRepoContract. Each subtest first checks that the store holds no other
// devices (see RunRepoContract).
func runRotationQueueContract(t *testing.T, r func(t *testing.T) repoFixture) {
	t.Helper()
	const day = 24 * time.Hour

	t.Run("SecretSHA256 round-trips through CreateDevice and ListDevices; empty is none", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_sha", nil)
		sum := randomSHA256()
		d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true,
			RotationState: model.RotationOK, SecretSHA256: sum}
		mustNoErr(t, "CreateDevice", x.devices.CreateDevice(x.ctx(), &d, nil))
		x.cleanupDevice(d.ID)
		none := x.device(m, `{}`)
		p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{ModelID: &m.ID})
		mustNoErr(t, "ListDevices", err)
		got := map[int64]string{}
		for _, o := range p.Devices {
			got[o.ID] = o.SecretSHA256
		}
		if d.SecretSHA256 != sum || got[d.ID] != sum || got[none.ID] != "" || len(got) != 2 {
			t.Errorf("SecretSHA256: CreateDevice %q, listed %v; want %q for %d and empty for %d", d.SecretSHA256, got, sum, d.ID, none.ID)
		}
	})

	t.Run("QueueRotations queues every active OK device and nothing else", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_queue", nil)
		ok1 := x.deviceIn(m, rot(model.RotationOK, true, nil, nil))
		ok2 := x.deviceIn(m, rot(model.RotationOK, true, nil, nil))
		others := []model.Device{
			x.deviceIn(m, rot(model.RotationOK, false, nil, nil)),
			x.deviceIn(m, rot(model.RotationPending, true, nil, nil)),
			x.deviceIn(m, rot(model.RotationTimeout, true, nil, nil)),
			x.deviceIn(m, rot(model.RotationQueued, true, nil, nil)),
			x.deviceIn(m, rot(model.RotationTimeout, false, nil, nil)),
		}
		n, err := x.devices.QueueRotations(x.ctx())
		mustNoErr(t, "QueueRotations", err)
		if n != 2 {
			t.Errorf("QueueRotations: queued %d, want 2", n)
		}
		for _, d := range []model.Device{ok1, ok2} {
			if got := x.get(d.ID); got.RotationState != model.RotationQueued {
				t.Errorf("active OK device %d: state %s after QueueRotations, want QUEUED", d.ID, got.RotationState)
			}
		}
		for _, d := range others {
			if got := x.get(d.ID); got.RotationState != d.RotationState {
				t.Errorf("device %d (%s, active %v): state %s after QueueRotations, want it unchanged", d.ID, d.RotationState, d.Active, got.RotationState)
			}
		}
		n, err = x.devices.QueueRotations(x.ctx())
		mustNoErr(t, "QueueRotations(again)", err)
		if n != 0 {
			t.Errorf("QueueRotations again: queued %d, want 0", n)
		}
	})

	t.Run("StartRotations claims active QUEUED devices by oldest secret, then due TIMEOUT devices by oldest attempt", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_start", nil)
		t0 := now()
		retryBefore := t0.Add(-time.Hour)
		// Created in an order unlike the claim order, so that an id
		// order cannot pass for it.
		q3h := x.deviceIn(m, rot(model.RotationQueued, true, ptr(t0.Add(-3*time.Hour)), nil))
		qNeverA := x.deviceIn(m, rot(model.RotationQueued, true, nil, nil))
		timeout2h := x.deviceIn(m, rot(model.RotationTimeout, true, nil, ptr(t0.Add(-2*time.Hour))))
		q1h := x.deviceIn(m, rot(model.RotationQueued, true, ptr(t0.Add(-time.Hour)), nil))
		timeoutAtRetry := x.deviceIn(m, rot(model.RotationTimeout, true, ptr(t0.Add(-9*time.Hour)), ptr(retryBefore)))
		qNeverB := x.deviceIn(m, rot(model.RotationQueued, true, nil, nil))
		timeoutNever := x.deviceIn(m, rot(model.RotationTimeout, true, nil, nil))
		timeoutNotDue := x.deviceIn(m, rot(model.RotationTimeout, true, nil, ptr(retryBefore.Add(time.Microsecond))))
		untouched := []model.Device{
			x.deviceIn(m, rot(model.RotationQueued, false, nil, nil)),                        // inactive
			x.deviceIn(m, rot(model.RotationTimeout, false, nil, ptr(t0.Add(-5*time.Hour)))), // inactive
			x.deviceIn(m, rot(model.RotationOK, true, ptr(t0.Add(-99*day)), nil)),            // not queued
		}

		attempt := t0.Add(time.Second)
		var calls []int64
		start := func(d *model.Device) ([]model.AuditEntry, error) {
			calls = append(calls, d.ID)
			d.RotationState = model.RotationPending
			d.LastRotationAttemptAt = ptr(attempt)
			return nil, nil
		}
		for i, step := range []struct {
			limit       int
			retryBefore time.Time
			want        []model.Device
		}{
			{3, retryBefore, []model.Device{qNeverA, qNeverB, q3h}},
			{3, retryBefore, nil}, // three PENDING: no slot free
			{5, retryBefore, []model.Device{q1h, timeoutNever}},
			{100, retryBefore, []model.Device{timeout2h, timeoutAtRetry}},
			{100, retryBefore, nil}, // the rest is not due or not active
			{100, retryBefore.Add(time.Microsecond), []model.Device{timeoutNotDue}},
		} {
			calls = nil
			started, err := x.devices.StartRotations(x.ctx(), step.limit, step.retryBefore, start)
			mustNoErr(t, "StartRotations", err)
			if got, want := deviceIDs(started), deviceIDs(step.want); !slices.Equal(got, want) || !slices.Equal(calls, want) {
				t.Fatalf("step %d: StartRotations(limit %d) started %v (start called for %v), want %v", i, step.limit, got, calls, want)
			}
			for _, d := range started {
				if d.ModelCode != m.Code || d.RotationState != model.RotationPending || !timeEq(d.LastRotationAttemptAt, &attempt) {
					t.Errorf("step %d: started device %d: code %q state %s attempt %v; want %q PENDING %v",
						i, d.ID, d.ModelCode, d.RotationState, d.LastRotationAttemptAt, m.Code, attempt)
				}
				if got := x.get(d.ID); got.RotationState != model.RotationPending || !timeEq(got.LastRotationAttemptAt, &attempt) {
					t.Errorf("step %d: stored device %d: state %s attempt %v; want PENDING %v", i, d.ID, got.RotationState, got.LastRotationAttemptAt, attempt)
				}
			}
		}
		for _, d := range untouched {
			if got := x.get(d.ID); got.RotationState != d.RotationState || !timeEq(got.LastRotationAttemptAt, d.LastRotationAttemptAt) {
				t.Errorf("device %d (%s, active %v) changed: state %s attempt %v", d.ID, d.RotationState, d.Active, got.RotationState, got.LastRotationAttemptAt)
			}
		}
	})

	t.Run("StartRotations fills only the slots PENDING devices, active or not, leave free", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_slots", nil)
		t0 := now()
		x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(t0)))
		x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(t0)))
		x.deviceIn(m, rot(model.RotationPending, false, nil, ptr(t0)))
		for range 5 {
			x.deviceIn(m, rot(model.RotationQueued, true, nil, nil))
		}
		for _, step := range []struct{ limit, want int }{{4, 1}, {4, 0}, {3, 0}, {2, 0}, {6, 2}, {20, 2}, {20, 0}} {
			started, err := x.devices.StartRotations(x.ctx(), step.limit, t0, startPending(t0))
			mustNoErr(t, "StartRotations", err)
			if len(started) != step.want {
				t.Errorf("StartRotations(limit %d): started %d, want %d", step.limit, len(started), step.want)
			}
		}
		inFlight, err := x.devices.InFlight(x.ctx())
		mustNoErr(t, "InFlight", err)
		if len(inFlight) != 8 {
			t.Errorf("InFlight: %d devices, want 8", len(inFlight))
		}
	})

	t.Run("StartRotations with a limit below 1 starts nothing", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_nolimit", nil)
		q := x.deviceIn(m, rot(model.RotationQueued, true, nil, nil))
		for _, limit := range []int{0, -1} {
			started, err := x.devices.StartRotations(x.ctx(), limit, now(), func(*model.Device) ([]model.AuditEntry, error) {
				t.Errorf("limit %d: start called", limit)
				return nil, nil
			})
			mustNoErr(t, "StartRotations", err)
			if len(started) != 0 {
				t.Errorf("StartRotations(limit %d): started %v, want none", limit, deviceIDs(started))
			}
		}
		if got := x.get(q.ID); got.RotationState != model.RotationQueued {
			t.Errorf("queued device: state %s, want QUEUED", got.RotationState)
		}
	})

	t.Run("StartRotations stores nothing when start fails", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_startfail", nil)
		a := x.deviceIn(m, rot(model.RotationQueued, true, nil, nil))
		b := x.deviceIn(m, rot(model.RotationQueued, true, nil, nil))
		refused := errors.New("refused")
		calls := 0
		started, err := x.devices.StartRotations(x.ctx(), 10, now(), func(d *model.Device) ([]model.AuditEntry, error) {
			calls++
			d.RotationState = model.RotationPending
			d.LastRotationAttemptAt = ptr(now())
			if calls == 2 {
				return nil, refused
			}
			return nil, nil
		})
		if !errors.Is(err, refused) || len(started) != 0 {
			t.Fatalf("StartRotations with a failing start = %v, %v; want the start's error and nothing started", deviceIDs(started), err)
		}
		for _, d := range []model.Device{a, b} {
			if got := x.get(d.ID); got.RotationState != model.RotationQueued || got.LastRotationAttemptAt != nil {
				t.Errorf("device %d after the failed start: state %s, attempt %v; want QUEUED and none", d.ID, got.RotationState, got.LastRotationAttemptAt)
			}
		}
	})

	t.Run("StartRotations stores every change start makes, except the device's identity", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_startchg", nil)
		other := x.model("ct_startchg_o", nil)
		t0 := now()
		d := x.deviceIn(m, rot(model.RotationTimeout, true, ptr(t0.Add(-50*day)), ptr(t0.Add(-2*time.Hour))))
		sum := randomSHA256()
		started, err := x.devices.StartRotations(x.ctx(), 1, t0, func(cur *model.Device) ([]model.AuditEntry, error) {
			if cur.ID != d.ID || cur.Key != d.Key || cur.ModelCode != m.Code || cur.RotationState != model.RotationTimeout {
				t.Errorf("start got %+v, want the current row of %d", cur, d.ID)
			}
			cur.RotationState = model.RotationPending
			cur.LastRotationAttemptAt = ptr(t0)
			cur.NewSecretAt = ptr(t0.Add(-time.Minute))
			cur.PreviousSecret = []byte("sealed")
			cur.SecretSHA256 = sum
			cur.Config = json.RawMessage(`{"touched": true}`)
			cur.ID, cur.Key, cur.DeviceModelID = d.ID+1000000, randomKey(), other.ID
			return nil, nil
		})
		mustNoErr(t, "StartRotations", err)
		if len(started) != 1 {
			t.Fatalf("StartRotations: started %d, want 1", len(started))
		}
		for name, g := range map[string]model.Device{"StartRotations result": started[0], "GetDevice": x.get(d.ID)} {
			if g.ID != d.ID || g.Key != d.Key || g.DeviceModelID != m.ID || g.ModelCode != m.Code {
				t.Errorf("%s: identity changed: id %d key %s model %d code %s", name, g.ID, g.Key, g.DeviceModelID, g.ModelCode)
			}
			if g.RotationState != model.RotationPending || !timeEq(g.LastRotationAttemptAt, ptr(t0)) ||
				!timeEq(g.NewSecretAt, ptr(t0.Add(-time.Minute))) || string(g.PreviousSecret) != "sealed" ||
				g.SecretSHA256 != sum || !jsonEqual(g.Config, json.RawMessage(`{"touched": true}`)) ||
				!timeEq(g.SecretCreatedAt, d.SecretCreatedAt) {
				t.Errorf("%s: got %+v (config %s), want start's changes stored", name, g, g.Config)
			}
		}
	})

	t.Run("concurrent StartRotations never start more than the limit", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_startrace", nil)
		for range 30 {
			x.deviceIn(m, rot(model.RotationQueued, true, nil, nil))
		}
		const limit, workers = 5, 8
		t0 := now()
		var (
			mu      sync.Mutex
			started []int64
			wg      sync.WaitGroup
		)
		begin := make(chan struct{})
		for range workers {
			wg.Go(func() {
				<-begin
				for range 3 {
					ds, err := x.devices.StartRotations(context.Background(), limit, t0, startPending(t0))
					if err != nil {
						t.Errorf("StartRotations: %v", err)
						return
					}
					mu.Lock()
					started = append(started, deviceIDs(ds)...)
					mu.Unlock()
				}
			})
		}
		close(begin)
		wg.Wait()
		slices.Sort(started)
		if len(started) != limit || len(slices.Compact(slices.Clone(started))) != limit {
			t.Errorf("%d concurrent callers started %v, want %d distinct devices", workers, started, limit)
		}
		inFlight, err := x.devices.InFlight(x.ctx())
		mustNoErr(t, "InFlight", err)
		if !slices.Equal(inFlight, started) {
			t.Errorf("InFlight = %v, want the started %v", inFlight, started)
		}
	})

	t.Run("ExpiredRotations returns PENDING devices begun at or before the deadline, or inactive, oldest attempt first", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_expired", nil)
		t0 := now()
		before := t0.Add(-5 * time.Minute)
		mid := x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(t0.Add(-time.Hour))))
		inactiveRecent := x.deviceIn(m, rot(model.RotationPending, false, nil, ptr(t0)))
		old := x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(t0.Add(-2*time.Hour))))
		atDeadline := x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(before)))
		never := x.deviceIn(m, rot(model.RotationPending, true, nil, nil))
		x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(before.Add(time.Microsecond)))) // not yet
		x.deviceIn(m, rot(model.RotationTimeout, true, nil, ptr(t0.Add(-3*time.Hour))))         // not PENDING
		x.deviceIn(m, rot(model.RotationQueued, false, nil, ptr(t0.Add(-3*time.Hour))))         // not PENDING
		x.deviceIn(m, rot(model.RotationOK, true, nil, ptr(t0.Add(-3*time.Hour))))              // not PENDING
		all := deviceIDs([]model.Device{never, old, mid, atDeadline, inactiveRecent})
		for _, c := range []struct {
			limit int
			want  []int64
		}{{100, all}, {len(all), all}, {2, all[:2]}, {1, all[:1]}, {0, nil}, {-1, nil}} {
			got, err := x.devices.ExpiredRotations(x.ctx(), before, before, c.limit)
			mustNoErr(t, "ExpiredRotations", err)
			if len(got) != len(c.want) || (len(got) > 0 && !slices.Equal(got, c.want)) {
				t.Errorf("ExpiredRotations(limit %d) = %v, want %v", c.limit, got, c.want)
			}
		}
	})

	t.Run("ExpiredRotations times out unanswered attempts at the earlier deadline", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_unfetched", nil)
		t0 := now()
		before, unfetched := t0.Add(-5*time.Minute), t0.Add(-time.Minute)
		attempt := t0.Add(-2 * time.Minute) // between the two deadlines
		fetched := func(at *time.Time) func(*model.Device) {
			return func(d *model.Device) {
				rot(model.RotationPending, true, nil, ptr(attempt))(d)
				d.LastRotationFetchAt = at
			}
		}
		never := x.deviceIn(m, fetched(nil))
		lastAttempt := x.deviceIn(m, fetched(ptr(attempt.Add(-time.Hour)))) // fetched in an earlier attempt
		x.deviceIn(m, fetched(ptr(attempt.Add(time.Second))))               // answered: keeps the long deadline
		x.deviceIn(m, fetched(ptr(attempt)))                                // answered at the very start
		x.deviceIn(m, func(d *model.Device) {                               // unanswered, but too recent
			rot(model.RotationPending, true, nil, ptr(unfetched.Add(time.Second)))(d)
		})
		got, err := x.devices.ExpiredRotations(x.ctx(), before, unfetched, 100)
		mustNoErr(t, "ExpiredRotations", err)
		if want := deviceIDs([]model.Device{never, lastAttempt}); !slices.Equal(got, want) {
			t.Errorf("ExpiredRotations = %v, want the unanswered %v", got, want)
		}
	})

	t.Run("RotationCounts counts active devices by state, and inactive ones", func(t *testing.T) {
		x := r(t)
		x.alone()
		want := func(what string, byState map[model.RotationState]int, inactive int) {
			t.Helper()
			c, err := x.devices.RotationCounts(x.ctx())
			mustNoErr(t, "RotationCounts", err)
			for _, s := range []model.RotationState{model.RotationOK, model.RotationQueued, model.RotationPending, model.RotationTimeout} {
				if n, ok := c.ByState[s]; !ok || n != byState[s] {
					t.Errorf("%s: ByState[%s] = %d (present %v), want %d", what, s, n, ok, byState[s])
				}
			}
			if len(c.ByState) != 4 || c.Inactive != inactive {
				t.Errorf("%s: got %+v, want the four states and %d inactive", what, c, inactive)
			}
		}
		want("empty store", nil, 0)
		m := x.model("ct_counts", nil)
		for _, s := range []struct {
			state  model.RotationState
			active bool
		}{
			{model.RotationOK, true}, {model.RotationOK, true}, {model.RotationQueued, true}, {model.RotationPending, true},
			{model.RotationOK, false}, {model.RotationPending, false}, {model.RotationTimeout, false},
		} {
			x.deviceIn(m, rot(s.state, s.active, nil, nil))
		}
		want("mixed", map[model.RotationState]int{model.RotationOK: 2, model.RotationQueued: 1, model.RotationPending: 1}, 3)
	})

	t.Run("UnconfirmedRotations counts generated, unconfirmed secrets", func(t *testing.T) {
		x := r(t)
		x.alone()
		n, err := x.devices.UnconfirmedRotations(x.ctx())
		mustNoErr(t, "UnconfirmedRotations", err)
		if n != 0 {
			t.Errorf("empty store: UnconfirmedRotations = %d, want 0", n)
		}
		m := x.model("ct_unconfirmed", nil)
		generated := func(state model.RotationState, active bool) func(*model.Device) {
			return func(d *model.Device) {
				rot(state, active, nil, ptr(now()))(d)
				d.NewSecretAt = ptr(now())
			}
		}
		x.deviceIn(m, generated(model.RotationPending, true))
		x.deviceIn(m, generated(model.RotationTimeout, true))
		x.deviceIn(m, generated(model.RotationTimeout, false))
		x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(now()))) // not generated yet
		x.deviceIn(m, rot(model.RotationOK, true, nil, nil))
		n, err = x.devices.UnconfirmedRotations(x.ctx())
		mustNoErr(t, "UnconfirmedRotations", err)
		if n != 3 {
			t.Errorf("UnconfirmedRotations = %d, want 3 (active or not, PENDING or TIMEOUT)", n)
		}
	})

	t.Run("InFlight lists PENDING devices ascending; LastRotationCompleted is the latest completion", func(t *testing.T) {
		x := r(t)
		x.alone()
		ids, err := x.devices.InFlight(x.ctx())
		mustNoErr(t, "InFlight", err)
		last, err := x.devices.LastRotationCompleted(x.ctx())
		mustNoErr(t, "LastRotationCompleted", err)
		if len(ids) != 0 || last != nil {
			t.Errorf("empty store: InFlight %v, LastRotationCompleted %v; want none and nil", ids, last)
		}
		m := x.model("ct_inflight", nil)
		t0 := now()
		a := x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(t0)))
		b := x.deviceIn(m, func(d *model.Device) {
			rot(model.RotationPending, false, nil, ptr(t0.Add(-time.Hour)))(d)
			d.LastRotationCompletedAt = ptr(t0.Add(-time.Hour))
		})
		c := x.deviceIn(m, rot(model.RotationPending, true, nil, ptr(t0.Add(-2*time.Hour))))
		x.deviceIn(m, func(d *model.Device) {
			rot(model.RotationOK, true, nil, nil)(d)
			d.LastRotationCompletedAt = ptr(t0.Add(-2 * time.Hour))
		})
		x.deviceIn(m, rot(model.RotationTimeout, true, nil, ptr(t0)))
		ids, err = x.devices.InFlight(x.ctx())
		mustNoErr(t, "InFlight", err)
		if want := []int64{a.ID, b.ID, c.ID}; !slices.Equal(ids, want) {
			t.Errorf("InFlight = %v, want %v", ids, want)
		}
		last, err = x.devices.LastRotationCompleted(x.ctx())
		mustNoErr(t, "LastRotationCompleted", err)
		if !timeEq(last, ptr(t0.Add(-time.Hour))) {
			t.Errorf("LastRotationCompleted = %v, want %v (an inactive device's completion counts)", last, t0.Add(-time.Hour))
		}
	})

	t.Run("DashboardCounts and DashboardPage sort devices into groups", func(t *testing.T) {
		x := r(t)
		x.alone()
		t0 := now()
		q := ports.DashboardQuery{WarningBefore: t0.Add(-45 * day), CriticalBefore: t0.Add(-90 * day), UnconfirmedBefore: t0.Add(-84 * time.Hour)}
		counts, err := x.devices.DashboardCounts(x.ctx(), q)
		mustNoErr(t, "DashboardCounts", err)
		for _, g := range model.DashboardGroups {
			if n, ok := counts[g]; !ok || n != 0 {
				t.Errorf("empty store: DashboardCounts[%s] = %d (present %v), want 0", g, n, ok)
			}
		}

		m := x.model("ct_dash", nil)
		young := t0.Add(-day)
		unconfirmed := func(state model.RotationState, secretAt, newAt time.Time) func(*model.Device) {
			return func(d *model.Device) {
				rot(state, true, ptr(secretAt), nil)(d)
				d.NewSecretAt = ptr(newAt)
			}
		}
		want := map[model.DashboardGroup][]int64{}
		add := func(g model.DashboardGroup, set func(*model.Device)) model.Device {
			d := x.deviceIn(m, set)
			want[g] = append(want[g], d.ID)
			return d
		}
		add(model.DashboardHealthy, rot(model.RotationOK, true, ptr(young), nil))
		neverRotated := add(model.DashboardHealthy, rot(model.RotationOK, true, nil, nil)) // age from CreatedAt: now
		add(model.DashboardCritical, rot(model.RotationOK, true, ptr(q.CriticalBefore.Add(-time.Microsecond)), nil))
		add(model.DashboardHealthy, rot(model.RotationQueued, true, ptr(young), nil))
		add(model.DashboardWarning, rot(model.RotationOK, true, ptr(q.WarningBefore.Add(-time.Microsecond)), nil))
		add(model.DashboardHealthy, unconfirmed(model.RotationPending, young, t0.Add(-time.Hour)))
		add(model.DashboardInactive, rot(model.RotationOK, false, ptr(young), nil))
		add(model.DashboardHealthy, rot(model.RotationOK, true, ptr(q.WarningBefore), nil)) // not before: healthy
		add(model.DashboardWarning, rot(model.RotationTimeout, true, ptr(young), nil))
		add(model.DashboardCritical, unconfirmed(model.RotationPending, young, q.UnconfirmedBefore.Add(-time.Microsecond)))
		add(model.DashboardHealthy, unconfirmed(model.RotationPending, young, q.UnconfirmedBefore)) // not before: healthy
		add(model.DashboardWarning, rot(model.RotationOK, true, ptr(q.CriticalBefore), nil))        // not before: warning
		add(model.DashboardInactive, rot(model.RotationOK, false, ptr(t0.Add(-100*day)), nil))
		add(model.DashboardCritical, rot(model.RotationTimeout, true, ptr(t0.Add(-100*day)), nil))
		add(model.DashboardWarning, rot(model.RotationQueued, true, ptr(t0.Add(-60*day)), nil))
		add(model.DashboardCritical, unconfirmed(model.RotationTimeout, young, t0.Add(-5*day)))
		add(model.DashboardInactive, func(d *model.Device) {
			unconfirmed(model.RotationTimeout, t0.Add(-100*day), t0.Add(-5*day))(d)
			d.Active = false
		})

		counts, err = x.devices.DashboardCounts(x.ctx(), q)
		mustNoErr(t, "DashboardCounts", err)
		for _, g := range model.DashboardGroups {
			if counts[g] != len(want[g]) {
				t.Errorf("DashboardCounts[%s] = %d, want %d", g, counts[g], len(want[g]))
			}
			for _, limit := range []int{1, 2, 3, 1000} {
				if got := x.dashboardIDs(q, g, limit); !slices.Equal(got, want[g]) {
					t.Errorf("DashboardPage(%s, limit %d): paged %v, want %v", g, limit, got, want[g])
				}
			}
		}

		// A secret never rotated is as old as its device.
		for _, c := range []struct {
			q    ports.DashboardQuery
			want model.DashboardGroup
		}{
			{ports.DashboardQuery{WarningBefore: t0.Add(time.Hour), CriticalBefore: q.CriticalBefore, UnconfirmedBefore: q.UnconfirmedBefore}, model.DashboardWarning},
			{ports.DashboardQuery{WarningBefore: t0.Add(time.Hour), CriticalBefore: t0.Add(time.Hour), UnconfirmedBefore: q.UnconfirmedBefore}, model.DashboardCritical},
		} {
			if got := x.dashboardIDs(c.q, c.want, 1000); !slices.Contains(got, neverRotated.ID) {
				t.Errorf("thresholds %+v: device %d (created now, never rotated) not in %s %v", c.q, neverRotated.ID, c.want, got)
			}
		}
	})

	t.Run("DashboardPage pages by 100 when Limit is below 1 and by 1000 at most; an unknown group is a ValidationError", func(t *testing.T) {
		x := r(t)
		x.alone()
		m := x.model("ct_dashpage", nil)
		for range ports.DefaultPageSize + 1 {
			x.device(m, `{}`)
		}
		q := ports.DashboardQuery{WarningBefore: now().Add(-45 * day), CriticalBefore: now().Add(-90 * day), UnconfirmedBefore: now().Add(-84 * time.Hour)}
		for _, limit := range []int{0, -5} {
			p, err := x.devices.DashboardPage(x.ctx(), q, model.DashboardHealthy, limit, 0)
			mustNoErr(t, "DashboardPage", err)
			if len(p.Devices) != ports.DefaultPageSize || p.NextAfterID != p.Devices[len(p.Devices)-1].ID {
				t.Errorf("Limit %d: page of %d (next %d), want %d and more", limit, len(p.Devices), p.NextAfterID, ports.DefaultPageSize)
			}
		}
		p, err := x.devices.DashboardPage(x.ctx(), q, model.DashboardHealthy, ports.MaxPageSize+1, 0)
		mustNoErr(t, "DashboardPage", err)
		if len(p.Devices) != ports.DefaultPageSize+1 || p.NextAfterID != 0 {
			t.Errorf("Limit %d: page of %d (next %d), want all %d", ports.MaxPageSize+1, len(p.Devices), p.NextAfterID, ports.DefaultPageSize+1)
		}
		for _, d := range p.Devices {
			if d.ModelCode != m.Code {
				t.Fatalf("device %d: ModelCode %q, want %q", d.ID, d.ModelCode, m.Code)
			}
		}
		_, err = x.devices.DashboardPage(x.ctx(), q, model.DashboardGroup("bogus"), 10, 0)
		var ve *model.ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("DashboardPage(unknown group): got error %v, want a *model.ValidationError", err)
		}
	})
}

// alone fails the test unless the store holds no devices: the rotation
// queue works on all of them.
func (x repoFixture) alone() {
	x.t.Helper()
	p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{Limit: 1})
	mustNoErr(x.t, "ListDevices", err)
	if len(p.Devices) > 0 {
		x.t.Fatalf("the store holds other devices (device %d): the rotation queue subtests need a store of their own", p.Devices[0].ID)
	}
}

// deviceIn creates an active OK device of m, then applies set to it with
// UpdateDevice.
func (x repoFixture) deviceIn(m model.DeviceModel, set func(*model.Device)) model.Device {
	x.t.Helper()
	d := x.device(m, `{}`)
	got, err := x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) { set(cur); return nil, nil })
	mustNoErr(x.t, "UpdateDevice", err)
	return got
}

func (x repoFixture) get(id int64) model.Device {
	x.t.Helper()
	d, err := x.devices.GetDevice(x.ctx(), id)
	mustNoErr(x.t, "GetDevice", err)
	return d
}

// dashboardIDs reads every page of group g, limit devices at a time, and
// checks the paging rules on the way.
func (x repoFixture) dashboardIDs(q ports.DashboardQuery, g model.DashboardGroup, limit int) []int64 {
	x.t.Helper()
	var ids []int64
	after := int64(0)
	for pages := 0; ; pages++ {
		if pages > 1000 {
			x.t.Fatalf("DashboardPage(%s, limit %d): pagination does not end", g, limit)
		}
		p, err := x.devices.DashboardPage(x.ctx(), q, g, limit, after)
		mustNoErr(x.t, "DashboardPage", err)
		if len(p.Devices) > limit {
			x.t.Fatalf("DashboardPage(%s, limit %d): a page of %d", g, limit, len(p.Devices))
		}
		ids = append(ids, deviceIDs(p.Devices)...)
		if p.NextAfterID == 0 {
			return ids
		}
		if n := len(p.Devices); n != limit || p.NextAfterID != p.Devices[n-1].ID {
			x.t.Fatalf("DashboardPage(%s, limit %d): page %v with NextAfterID %d, want a full page ending at it", g, limit, deviceIDs(p.Devices), p.NextAfterID)
		}
		after = p.NextAfterID
	}
}

// rot sets a device's rotation state, active flag, secret creation and
// last attempt times.
func rot(state model.RotationState, active bool, secretAt, attemptAt *time.Time) func(*model.Device) {
	return func(d *model.Device) {
		d.RotationState, d.Active = state, active
		d.SecretCreatedAt, d.LastRotationAttemptAt = secretAt, attemptAt
	}
}

// startPending is a StartRotations start function: PENDING since at.
func startPending(at time.Time) func(*model.Device) ([]model.AuditEntry, error) {
	return func(d *model.Device) ([]model.AuditEntry, error) {
		d.RotationState = model.RotationPending
		d.LastRotationAttemptAt = ptr(at)
		return nil, nil
	}
}

// randomSHA256 returns a random lower-case hex SHA-256.
func randomSHA256() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RunScheduleRepoContract runs the contract of ports.ScheduleRepo against
// the repositories newRepo returns (once per subtest). Schedule names are
// unique per subtest, so the store may be shared and hold other schedules.
func RunScheduleRepoContract(t *testing.T, newRepo func(t *testing.T) ports.ScheduleRepo) {
	t.Helper()
	t0 := now().Add(-time.Hour)

	t.Run("a schedule that never fired fires once from zero", func(t *testing.T) {
		s, name := newRepo(t), UniqueCode("ct_sched")
		got, err := s.LastFire(t.Context(), name)
		mustNoErr(t, "LastFire", err)
		if !got.IsZero() {
			t.Fatalf("LastFire of a new schedule = %v, want zero", got)
		}
		ok, err := s.AdvanceFire(t.Context(), name, time.Time{}, t0, nil)
		mustNoErr(t, "AdvanceFire(first)", err)
		if !ok {
			t.Fatalf("AdvanceFire(zero -> t0) = false, want true")
		}
		got, err = s.LastFire(t.Context(), name)
		mustNoErr(t, "LastFire", err)
		if !got.Equal(t0) {
			t.Errorf("LastFire = %v, want %v", got, t0)
		}
		ok, err = s.AdvanceFire(t.Context(), name, time.Time{}, t0.Add(time.Minute), nil)
		mustNoErr(t, "AdvanceFire(first, again)", err)
		if ok {
			t.Errorf("AdvanceFire(zero -> ...) of a schedule that fired = true, want false")
		}
		if got, _ := s.LastFire(t.Context(), name); !got.Equal(t0) {
			t.Errorf("LastFire after a refused first fire = %v, want %v", got, t0)
		}
	})

	t.Run("AdvanceFire moves the last fire only from its current value", func(t *testing.T) {
		s, name := newRepo(t), UniqueCode("ct_sched")
		steps := []struct {
			from, to time.Time
			want     bool
			last     time.Time
		}{
			{time.Time{}, t0, true, t0},
			{t0, t0.Add(time.Minute), true, t0.Add(time.Minute)},
			{t0, t0.Add(2 * time.Minute), false, t0.Add(time.Minute)}, // stale from
			{t0.Add(time.Minute), t0.Add(time.Hour), true, t0.Add(time.Hour)},
			{time.Time{}, t0.Add(2 * time.Hour), false, t0.Add(time.Hour)},
		}
		for i, st := range steps {
			ok, err := s.AdvanceFire(t.Context(), name, st.from, st.to, nil)
			mustNoErr(t, "AdvanceFire", err)
			got, err := s.LastFire(t.Context(), name)
			mustNoErr(t, "LastFire", err)
			if ok != st.want || !got.Equal(st.last) {
				t.Errorf("step %d: AdvanceFire(%v -> %v) = %v, last fire %v; want %v, %v", i, st.from, st.to, ok, got, st.want, st.last)
			}
		}
		// A schedule that never fired cannot be moved from a time.
		other := UniqueCode("ct_sched")
		ok, err := s.AdvanceFire(t.Context(), other, t0, t0.Add(time.Minute), nil)
		mustNoErr(t, "AdvanceFire(unknown from)", err)
		if got, _ := s.LastFire(t.Context(), other); ok || !got.IsZero() {
			t.Errorf("AdvanceFire(t0 -> ...) of a schedule that never fired = %v, last %v; want false, zero", ok, got)
		}
	})

	t.Run("of processes racing to fire one tick exactly one wins", func(t *testing.T) {
		s, name := newRepo(t), UniqueCode("ct_sched")
		for round, from := range []time.Time{{}, t0} {
			const racers = 8
			wins := make(chan int, racers)
			var wg sync.WaitGroup
			for i := range racers {
				wg.Go(func() {
					ok, err := s.AdvanceFire(context.Background(), name, from, t0.Add(time.Duration(i+1)*time.Second), nil)
					if err != nil {
						t.Errorf("AdvanceFire: %v", err)
					}
					if ok {
						wins <- i
					}
				})
			}
			wg.Wait()
			close(wins)
			var winners []int
			for i := range wins {
				winners = append(winners, i)
			}
			if len(winners) != 1 {
				t.Fatalf("round %d: winners %v, want exactly one", round, winners)
			}
			got, err := s.LastFire(t.Context(), name)
			mustNoErr(t, "LastFire", err)
			if want := t0.Add(time.Duration(winners[0]+1) * time.Second); !got.Equal(want) {
				t.Errorf("round %d: LastFire = %v, want the winner's %v", round, got, want)
			}
			if round == 0 {
				// Start the second round from t0.
				if ok, err := s.AdvanceFire(t.Context(), name, got, t0, nil); err != nil || !ok {
					t.Fatalf("AdvanceFire(back to t0) = %v, %v", ok, err)
				}
			}
		}
	})

	t.Run("times are kept and compared at microsecond precision", func(t *testing.T) {
		s, name := newRepo(t), UniqueCode("ct_sched")
		fine := time.Date(2030, 5, 4, 8, 0, 0, 123456789, time.FixedZone("CEST", 2*3600))
		ok, err := s.AdvanceFire(t.Context(), name, time.Time{}, fine, nil)
		mustNoErr(t, "AdvanceFire", err)
		got, err := s.LastFire(t.Context(), name)
		mustNoErr(t, "LastFire", err)
		if want := fine.Truncate(time.Microsecond); !ok || !got.Equal(want) {
			t.Fatalf("AdvanceFire(zero -> %v) = %v, LastFire %v; want true, %v", fine, ok, got, want)
		}
		// The caller's own nanosecond value still matches what was stored.
		ok, err = s.AdvanceFire(t.Context(), name, fine, fine.Add(time.Hour), nil)
		mustNoErr(t, "AdvanceFire", err)
		if !ok {
			t.Errorf("AdvanceFire from the nanosecond time it advanced to = false, want true")
		}
	})

	t.Run("schedules are independent", func(t *testing.T) {
		s := newRepo(t)
		a, b := UniqueCode("ct_sched_a"), UniqueCode("ct_sched_b")
		if ok, err := s.AdvanceFire(t.Context(), a, time.Time{}, t0, nil); err != nil || !ok {
			t.Fatalf("AdvanceFire(a) = %v, %v", ok, err)
		}
		if ok, err := s.AdvanceFire(t.Context(), b, time.Time{}, t0.Add(time.Minute), nil); err != nil || !ok {
			t.Fatalf("AdvanceFire(b) = %v, %v; another schedule's fire must not count", ok, err)
		}
		ga, _ := s.LastFire(t.Context(), a)
		gb, _ := s.LastFire(t.Context(), b)
		if !ga.Equal(t0) || !gb.Equal(t0.Add(time.Minute)) {
			t.Errorf("LastFire: a %v, b %v; want %v, %v", ga, gb, t0, t0.Add(time.Minute))
		}
	})
}

// LeaseEnv is one shared lease domain (one database) for RunLeaseContract.
type LeaseEnv struct {
	// New returns the lease of a new process named holder.
	New func(holder string) ports.Lease
	// Kill ends the process named holder as a crash or a lost connection
	// would (for PostgreSQL: terminate its session's backend), without
	// Release. It returns once the lease can be taken by another process.
	Kill func(holder string)
}

// RunLeaseContract runs the contract of ports.Lease. newEnv is called once
// per subtest and must return a lease domain of its own, that no other
// process holds (for PostgreSQL: a fresh database; advisory locks are per
// database).
func RunLeaseContract(t *testing.T, newEnv func(t *testing.T) LeaseEnv) {
	t.Helper()
	hold := func(t *testing.T, who string, l ports.Lease, want bool) {
		t.Helper()
		got, err := l.Hold(t.Context())
		mustNoErr(t, who+".Hold", err)
		if got != want {
			t.Fatalf("%s.Hold = %v, want %v", who, got, want)
		}
	}
	holder := func(t *testing.T, l ports.Lease, want string) {
		t.Helper()
		got, err := l.Holder(t.Context())
		mustNoErr(t, "Holder", err)
		if got != want {
			t.Fatalf("Holder = %q, want %q", got, want)
		}
	}

	t.Run("one of two processes holds the lease; Holder names it", func(t *testing.T) {
		env := newEnv(t)
		a, b := env.New("proc-a"), env.New("proc-b")
		holder(t, a, "")
		hold(t, "a", a, true)
		hold(t, "b", b, false)
		hold(t, "a", a, true) // keeps it
		hold(t, "b", b, false)
		holder(t, a, "proc-a")
		holder(t, b, "proc-a")
		mustNoErr(t, "a.Release", a.Release(t.Context()))
		holder(t, b, "")
	})

	t.Run("Release hands the lease over; releasing a lease not held is no error", func(t *testing.T) {
		env := newEnv(t)
		a, b := env.New("proc-a"), env.New("proc-b")
		mustNoErr(t, "Release(never held)", a.Release(t.Context()))
		hold(t, "a", a, true)
		mustNoErr(t, "b.Release(not holding)", b.Release(t.Context()))
		hold(t, "a", a, true)
		mustNoErr(t, "a.Release", a.Release(t.Context()))
		mustNoErr(t, "a.Release(again)", a.Release(t.Context()))
		hold(t, "b", b, true)
		holder(t, a, "proc-b")
		hold(t, "a", a, false)
		mustNoErr(t, "b.Release", b.Release(t.Context()))
		hold(t, "a", a, true)
		holder(t, b, "proc-a")
		mustNoErr(t, "a.Release", a.Release(t.Context()))
	})

	t.Run("a dead holder's lease is taken over; the dead one reports it lost", func(t *testing.T) {
		env := newEnv(t)
		a, b := env.New("proc-a"), env.New("proc-b")
		hold(t, "a", a, true)
		hold(t, "b", b, false)
		env.Kill("proc-a")
		hold(t, "b", b, true)
		holder(t, b, "proc-b")
		hold(t, "a", a, false) // lost, and b holds it now
		hold(t, "a", a, false)
		mustNoErr(t, "b.Release", b.Release(t.Context()))
		hold(t, "a", a, true)
		mustNoErr(t, "a.Release", a.Release(t.Context()))
	})

	t.Run("a lease lost while nobody else wants it is reported not held once, then taken again", func(t *testing.T) {
		env := newEnv(t)
		a := env.New("proc-a")
		hold(t, "a", a, true)
		env.Kill("proc-a")
		hold(t, "a", a, false)
		hold(t, "a", a, true)
		holder(t, a, "proc-a")
		mustNoErr(t, "a.Release", a.Release(t.Context()))
	})

	t.Run("a holder killed and released is free to take it again", func(t *testing.T) {
		env := newEnv(t)
		a, b := env.New("proc-a"), env.New("proc-b")
		hold(t, "a", a, true)
		env.Kill("proc-a")
		mustNoErr(t, "a.Release(after death)", a.Release(t.Context()))
		hold(t, "a", a, true)
		hold(t, "b", b, false)
		mustNoErr(t, "a.Release", a.Release(t.Context()))
	})

	t.Run("of many processes holding at once exactly one holds the lease", func(t *testing.T) {
		env := newEnv(t)
		const procs = 6
		leases := make([]ports.Lease, procs)
		for i := range leases {
			leases[i] = env.New(fmt.Sprintf("proc-%d", i))
		}
		for round := range 3 {
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				holders []int
			)
			for i, l := range leases {
				for range 2 { // and each one from two goroutines
					wg.Go(func() {
						ok, err := l.Hold(context.Background())
						if err != nil {
							t.Errorf("Hold: %v", err)
						}
						if ok {
							mu.Lock()
							holders = append(holders, i)
							mu.Unlock()
						}
					})
				}
			}
			wg.Wait()
			if len(holders) == 0 || len(slices.Compact(slices.Sorted(slices.Values(holders)))) != 1 {
				t.Fatalf("round %d: holders %v, want exactly one process", round, holders)
			}
			holder(t, leases[0], fmt.Sprintf("proc-%d", holders[0]))
			mustNoErr(t, "Release", leases[holders[0]].Release(t.Context()))
		}
	})
}
