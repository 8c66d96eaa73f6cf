package portstest

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// runStateContract is the state-report part of RunRepoContract (SPEC §15):
// DeviceRepo.ReportState, the ListDevices filters by report, and
// ports.FleetStats.
func runStateContract(t *testing.T, r func(t *testing.T) repoFixture) {
	t.Helper()

	t.Run("ReportState keeps every member, reported_at and last_seen_at; every read returns it", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_state", nil)
		d := x.device(m, `{}`)
		if d.Reported != nil {
			t.Fatalf("CreateDevice returned a report: %+v", d.Reported)
		}
		at := now().Add(-time.Hour)
		want := fullStateReport("1.4.2", at)
		var prevs []*model.StateReport
		mustNoErr(t, "ReportState", x.devices.ReportState(x.ctx(), d.ID, want, func(prev *model.StateReport) []model.AuditEntry {
			prevs = append(prevs, prev)
			return nil
		}))
		if len(prevs) == 0 || prevs[len(prevs)-1] != nil {
			t.Errorf("audit saw previous %v for the first report, want nil", prevs)
		}

		byID := x.get(d.ID)
		wantReport(t, "GetDevice", byID.Reported, &want)
		if byID.LastSeenAt == nil || !byID.LastSeenAt.Equal(at) {
			t.Errorf("LastSeenAt = %v, want the report's %v", byID.LastSeenAt, at)
		}
		if !byID.UpdatedAt.Equal(d.UpdatedAt) {
			t.Errorf("UpdatedAt moved from %v to %v: a report is no change of the device", d.UpdatedAt, byID.UpdatedAt)
		}
		byKey, err := x.devices.GetDeviceByKey(x.ctx(), d.Key)
		mustNoErr(t, "GetDeviceByKey", err)
		wantReport(t, "GetDeviceByKey", byKey.Reported, &want)
		p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{ModelID: &m.ID})
		mustNoErr(t, "ListDevices", err)
		if len(p.Devices) != 1 {
			t.Fatalf("ListDevices: %d devices, want 1", len(p.Devices))
		}
		wantReport(t, "ListDevices", p.Devices[0].Reported, &want)

		// The next report replaces the whole report; the closure sees the
		// one it replaces. An earlier time never moves last_seen_at back.
		mustNoErr(t, "TouchLastSeen", x.devices.TouchLastSeen(x.ctx(), d.ID, at.Add(10*time.Minute), time.Minute))
		second := model.StateReport{FirmwareVersion: "1.5.0", At: at.Add(5 * time.Minute)}
		prevs = nil
		mustNoErr(t, "ReportState", x.devices.ReportState(x.ctx(), d.ID, second, func(prev *model.StateReport) []model.AuditEntry {
			prevs = append(prevs, prev)
			return nil
		}))
		if len(prevs) == 0 {
			t.Fatal("ReportState did not call audit")
		}
		wantReport(t, "audit's previous report", prevs[len(prevs)-1], &want)
		got := x.get(d.ID)
		wantReport(t, "second report", got.Reported, &second)
		if got.LastSeenAt == nil || !got.LastSeenAt.Equal(at.Add(10*time.Minute)) {
			t.Errorf("LastSeenAt = %v, want the later %v kept", got.LastSeenAt, at.Add(10*time.Minute))
		}
	})

	t.Run("UpdateDevice and CreateDevice leave the report alone", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_state_keep", nil)
		planted := fullStateReport("9.9.9", now())
		d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: []byte(`{}`), Active: true, Reported: &planted}
		mustNoErr(t, "CreateDevice", x.devices.CreateDevice(x.ctx(), &d, nil))
		x.cleanupDevice(d.ID)
		if got := x.get(d.ID); got.Reported != nil {
			t.Errorf("CreateDevice stored a report: %+v", got.Reported)
		}
		want := fullStateReport("1.0.0", now())
		mustNoErr(t, "ReportState", x.devices.ReportState(x.ctx(), d.ID, want, func(*model.StateReport) []model.AuditEntry { return nil }))
		upd, err := x.devices.UpdateDevice(x.ctx(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			wantReport(t, "UpdateDevice's closure", cur.Reported, &want)
			cur.Active = false
			cur.Reported = &planted
			return nil, nil
		})
		mustNoErr(t, "UpdateDevice", err)
		wantReport(t, "UpdateDevice's result", upd.Reported, &want)
		wantReport(t, "after UpdateDevice", x.get(d.ID).Reported, &want)
	})

	t.Run("ReportState of an unknown device is ErrNotFound", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_state_gone", nil)
		d := x.device(m, `{}`)
		mustNoErr(t, "DeleteDevice", x.devices.DeleteDevice(x.ctx(), d.ID, nil))
		err := x.devices.ReportState(x.ctx(), d.ID, model.StateReport{FirmwareVersion: "1", At: now()},
			func(*model.StateReport) []model.AuditEntry { return nil })
		wantErrIs(t, "ReportState(deleted device)", err, model.ErrNotFound)
	})

	t.Run("ListDevices filters by reported firmware version and by last seen", func(t *testing.T) {
		x := r(t)
		m := x.model("ct_state_filter", nil)
		cut := now().Add(-time.Hour)
		never := x.device(m, `{}`)
		old := x.device(m, `{}`)
		recent := x.device(m, `{}`)
		touchedOnly := x.device(m, `{}`)
		atCut := x.device(m, `{}`)
		// A version only this test's devices run: other data in a shared
		// store cannot match it.
		v1, v2 := "ct-"+randomKey(), "ct-"+randomKey()
		x.report(old, v1, cut.Add(-time.Minute))
		x.report(recent, v2, cut.Add(time.Minute))
		x.report(atCut, v1, cut) // seen at the cut is not "before" it
		mustNoErr(t, "TouchLastSeen", x.devices.TouchLastSeen(x.ctx(), touchedOnly.ID, cut.Add(-2*time.Minute), time.Minute))

		for _, tc := range []struct {
			name   string
			filter ports.DeviceFilter
			want   []int64
		}{
			{"version 1", ports.DeviceFilter{FirmwareVersion: &v1}, []int64{old.ID, atCut.ID}},
			{"version 2", ports.DeviceFilter{FirmwareVersion: &v2}, []int64{recent.ID}},
			{"seen before the cut", ports.DeviceFilter{ModelID: &m.ID, SeenBefore: &cut}, []int64{never.ID, old.ID, touchedOnly.ID}},
			{"seen before, version 1", ports.DeviceFilter{SeenBefore: &cut, FirmwareVersion: &v1}, []int64{old.ID}},
			{"version 1 of another model", ports.DeviceFilter{ModelID: ptr(m.ID + 1_000_000), FirmwareVersion: &v1}, nil},
		} {
			f := tc.filter
			f.Limit = 1000
			p, err := x.devices.ListDevices(x.ctx(), f)
			mustNoErr(t, "ListDevices "+tc.name, err)
			if got := deviceIDs(p.Devices); !slices.Equal(got, tc.want) {
				t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
			}
		}
		// Paging within a filter.
		p, err := x.devices.ListDevices(x.ctx(), ports.DeviceFilter{FirmwareVersion: &v1, Limit: 1})
		mustNoErr(t, "ListDevices", err)
		if got := deviceIDs(p.Devices); !slices.Equal(got, []int64{old.ID}) || p.NextAfterID != old.ID {
			t.Errorf("first page of one: %v next %d, want [%d] next %d", got, p.NextAfterID, old.ID, old.ID)
		}
	})

	t.Run("FirmwareCounts counts active devices per model and reported version", func(t *testing.T) {
		x := r(t)
		a := x.model("ct_fleet_a", nil)
		b := x.model("ct_fleet_b", nil)
		at := now()
		x.report(x.device(a, `{}`), "1.0", at)
		x.report(x.device(a, `{}`), "1.0", at)
		x.report(x.device(a, `{}`), "2.0", at)
		x.device(a, `{}`) // never reported
		x.report(x.device(b, `{}`), "1.0", at)
		inactive := x.device(b, `{}`)
		x.report(inactive, "0.1", at)
		_, err := x.devices.UpdateDevice(x.ctx(), inactive.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.Active = false
			return nil, nil
		})
		mustNoErr(t, "UpdateDevice", err)

		all, err := x.devices.FirmwareCounts(x.ctx())
		mustNoErr(t, "FirmwareCounts", err)
		var got []model.FirmwareCount
		for _, c := range all {
			if c.ModelID == a.ID || c.ModelID == b.ID {
				got = append(got, c)
			}
		}
		want := []model.FirmwareCount{
			{ModelID: a.ID, ModelCode: a.Code, Version: "", Devices: 1},
			{ModelID: a.ID, ModelCode: a.Code, Version: "1.0", Devices: 2},
			{ModelID: a.ID, ModelCode: a.Code, Version: "2.0", Devices: 1},
			{ModelID: b.ID, ModelCode: b.Code, Version: "1.0", Devices: 1},
		}
		if !slices.Equal(got, want) {
			t.Errorf("FirmwareCounts of the test's models = %+v\nwant %+v", got, want)
		}
		if !slices.IsSortedFunc(all, func(p, q model.FirmwareCount) int {
			if c := strings.Compare(p.ModelCode, q.ModelCode); c != 0 {
				return c
			}
			return strings.Compare(p.Version, q.Version)
		}) {
			t.Errorf("FirmwareCounts is not ordered by model code, then version: %+v", all)
		}
	})

	t.Run("StaleCounts counts active devices silent since before the time, per model", func(t *testing.T) {
		x := r(t)
		a := x.model("ct_stale_a", nil)
		empty := x.model("ct_stale_empty", nil)
		cut := now().Add(time.Hour) // every device made now was created before it
		x.device(a, `{}`)           // never seen, created before the cut: stale
		seenOld := x.device(a, `{}`)
		mustNoErr(t, "TouchLastSeen", x.devices.TouchLastSeen(x.ctx(), seenOld.ID, cut.Add(-time.Minute), time.Minute))
		fresh := x.device(a, `{}`)
		x.report(fresh, "1", cut.Add(time.Minute))
		inactive := x.device(a, `{}`)
		_, err := x.devices.UpdateDevice(x.ctx(), inactive.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.Active = false
			return nil, nil
		})
		mustNoErr(t, "UpdateDevice", err)

		got, err := x.devices.StaleCounts(x.ctx(), cut)
		mustNoErr(t, "StaleCounts", err)
		if n, ok := got[a.Code]; !ok || n != 2 {
			t.Errorf("StaleCounts[%s] = %d (present %t), want 2", a.Code, n, ok)
		}
		if n, ok := got[empty.Code]; !ok || n != 0 {
			t.Errorf("StaleCounts[%s] = %d (present %t), want 0 and present", empty.Code, n, ok)
		}
		// A device created after the time is not silent since before it.
		got, err = x.devices.StaleCounts(x.ctx(), now().Add(-time.Hour))
		mustNoErr(t, "StaleCounts", err)
		if n := got[a.Code]; n != 0 {
			t.Errorf("StaleCounts before the devices existed = %d, want 0", n)
		}
	})
}

// report stores a state report naming version for d, received at at.
func (x repoFixture) report(d model.Device, version string, at time.Time) {
	x.t.Helper()
	mustNoErr(x.t, "ReportState", x.devices.ReportState(x.ctx(), d.ID, model.StateReport{FirmwareVersion: version, At: at},
		func(*model.StateReport) []model.AuditEntry { return nil }))
}

// fullStateReport is a report with every member set, received at at.
func fullStateReport(version string, at time.Time) model.StateReport {
	return model.StateReport{
		FirmwareVersion: version,
		SecureVersion:   ptr(uint32(4294967295)),
		AppELFSHA256:    strings.Repeat("0f", 32),
		Partition:       "ota_1",
		OTAState:        model.OTAPendingVerify,
		OTA:             &model.OTAAttempt{Target: version, Result: model.OTARolledBack},
		ResetReason:     "panic",
		UptimeS:         ptr(int64(1) << 40),
		FreeHeap:        ptr(int64(123456)),
		RSSI:            ptr(-128),
		IDFVersion:      "v5.3.1-dirty",
		At:              at,
	}
}

// wantReport compares two reports member by member (At by instant).
func wantReport(t *testing.T, what string, got, want *model.StateReport) {
	t.Helper()
	if got == nil || want == nil {
		if got != want {
			t.Errorf("%s: report %+v, want %+v", what, got, want)
		}
		return
	}
	if !got.At.Equal(want.At) {
		t.Errorf("%s: At = %v, want %v", what, got.At, want.At)
	}
	g, w := *got, *want
	g.At, w.At = time.Time{}, time.Time{}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s: report %s\nwant %s", what, describeReport(g), describeReport(w))
	}
}

func describeReport(r model.StateReport) string {
	var b strings.Builder
	v := reflect.ValueOf(r)
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Kind() == reflect.Pointer && !f.IsNil() {
			f = f.Elem()
		}
		fmt.Fprintf(&b, "%s=%v ", v.Type().Field(i).Name, f.Interface())
	}
	return b.String()
}
