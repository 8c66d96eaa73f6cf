package mdm_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

func report(version string) model.StateReport {
	return model.StateReport{
		FirmwareVersion: version,
		Partition:       "ota_0",
		OTAState:        model.OTAValid,
		UptimeS:         ptr(int64(5)),
	}
}

// firmwareEntries are the audit log's device_firmware_changed entries.
func firmwareEntries(e *env) []model.AuditEntry {
	var out []model.AuditEntry
	for _, x := range e.store.Audit().Entries() {
		if x.Kind == model.AuditFirmwareReported {
			out = append(out, x)
		}
	}
	return out
}

func TestReportStateKeepsTheLatestReport(t *testing.T) {
	e := newEnv(t, withAudit())
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	if d.Reported != nil {
		t.Fatalf("a new device has a report: %+v", d.Reported)
	}
	before, _ := e.svc.GetDevice(t.Context(), d.ID)

	e.clock.Advance(time.Hour)
	r := report("1.0.0")
	r.OTA = &model.OTAAttempt{Target: "1.0.0", Result: model.OTAInstalled}
	r.At = t0.Add(-48 * time.Hour) // the device's own idea of the time is ignored
	if err := e.svc.ReportState(t.Context(), d, r); err != nil {
		t.Fatalf("ReportState: %v", err)
	}
	got, err := e.svc.GetDevice(t.Context(), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now()
	if got.Reported == nil {
		t.Fatal("no report kept")
	}
	if got.Reported.FirmwareVersion != "1.0.0" || got.Reported.Partition != "ota_0" ||
		got.Reported.OTAState != model.OTAValid || got.Reported.OTA == nil || *got.Reported.OTA != *r.OTA ||
		got.Reported.UptimeS == nil || *got.Reported.UptimeS != 5 {
		t.Errorf("kept report = %+v, want the one sent", got.Reported)
	}
	if !got.Reported.At.Equal(now) {
		t.Errorf("reported_at = %v, want the time of receipt %v", got.Reported.At, now)
	}
	if got.LastSeenAt == nil || !got.LastSeenAt.Equal(now) {
		t.Errorf("last_seen_at = %v, want %v", got.LastSeenAt, now)
	}
	if !got.UpdatedAt.Equal(before.UpdatedAt) {
		t.Errorf("updated_at moved from %v to %v: a report is no change of the device", before.UpdatedAt, got.UpdatedAt)
	}

	// A later report replaces it whole: members it leaves out are gone.
	e.clock.Advance(time.Minute)
	if err := e.svc.ReportState(t.Context(), d, model.StateReport{FirmwareVersion: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	got, _ = e.svc.GetDevice(t.Context(), d.ID)
	if got.Reported.Partition != "" || got.Reported.OTA != nil || got.Reported.UptimeS != nil {
		t.Errorf("second report = %+v, want only its firmware version", got.Reported)
	}
	if !got.Reported.At.Equal(e.clock.Now()) {
		t.Errorf("reported_at = %v, want %v", got.Reported.At, e.clock.Now())
	}

	// An admin's change of the device leaves the report alone.
	if _, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Config: []byte(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.svc.GetDevice(t.Context(), d.ID); got.Reported == nil || got.Reported.FirmwareVersion != "1.0.0" {
		t.Errorf("after UpdateDevice the report is %+v", got.Reported)
	}
}

func TestReportStateRefusesAnInvalidReport(t *testing.T) {
	e := newEnv(t, withAudit())
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	for _, tc := range []struct {
		r     model.StateReport
		field string
	}{
		{model.StateReport{}, "firmware_version"},
		{model.StateReport{FirmwareVersion: "1", OTAState: "broken"}, "ota_state"},
		{model.StateReport{FirmwareVersion: "1", OTA: &model.OTAAttempt{Target: "2", Result: "exploded"}}, "ota.result"},
	} {
		wantValidation(t, e.svc.ReportState(t.Context(), d, tc.r), tc.field)
	}
	got, _ := e.svc.GetDevice(t.Context(), d.ID)
	if got.Reported != nil || got.LastSeenAt != nil {
		t.Errorf("a refused report left report %+v, last seen %v", got.Reported, got.LastSeenAt)
	}
	if n := len(firmwareEntries(e)); n != 0 {
		t.Errorf("refused reports made %d audit entries", n)
	}
}

func TestReportStateAuditsAVersionChange(t *testing.T) {
	e := newEnv(t, withAudit())
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	for _, v := range []string{"1.0.0", "1.0.0", "1.1.0", "1.1.0", "1.0.0"} {
		e.clock.Advance(time.Minute)
		if err := e.svc.ReportState(t.Context(), d, report(v)); err != nil {
			t.Fatalf("ReportState(%s): %v", v, err)
		}
	}
	got := firmwareEntries(e)
	var details []string
	for _, x := range got {
		details = append(details, x.Detail)
		if x.Actor != model.DeviceActor(d.ClientID()) {
			t.Errorf("actor = %+v, want the device", x.Actor)
		}
		if x.DeviceID != d.ID || x.ModelID != m.ID || x.ClientID != d.ClientID() || x.Outcome != model.OutcomeSuccess {
			t.Errorf("entry = %+v, want device %d of model %d, success", x, d.ID, m.ID)
		}
	}
	want := []string{`first report: "1.0.0"`, `from "1.0.0" to "1.1.0"`, `from "1.1.0" to "1.0.0"`}
	if !slices.Equal(details, want) {
		t.Errorf("audit details = %q, want %q", details, want)
	}
}

func TestReportStateStoreFailure(t *testing.T) {
	e := newEnv(t, withAudit())
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	boom := errors.New("database down")
	e.store.Hook = func(op string) error {
		if op == "ReportState" {
			return boom
		}
		return nil
	}
	if err := e.svc.ReportState(t.Context(), d, report("1")); !errors.Is(err, boom) {
		t.Fatalf("ReportState = %v, want the store's error", err)
	}
	e.store.Hook = nil
	if got, _ := e.svc.GetDevice(t.Context(), d.ID); got.Reported != nil {
		t.Errorf("a failed report was kept: %+v", got.Reported)
	}
}

func TestReportStateOfADeletedDevice(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	if err := e.svc.DeleteDevice(t.Context(), d.ID); err != nil {
		t.Fatal(err)
	}
	wantIs(t, e.svc.ReportState(t.Context(), d, report("1")), model.ErrNotFound)
}

func TestListDevicesByReportedState(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	never := e.device(t, m, `{}`)
	old := e.device(t, m, `{}`)
	recent := e.device(t, m, `{}`)
	if err := e.svc.ReportState(t.Context(), old, report("1.0.0")); err != nil {
		t.Fatal(err)
	}
	cut := e.clock.Advance(time.Hour)
	if err := e.svc.ReportState(t.Context(), recent, report("2.0.0")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    ports.DeviceFilter
		want []int64
	}{
		{"version 1.0.0", ports.DeviceFilter{FirmwareVersion: ptr("1.0.0")}, []int64{old.ID}},
		{"version 2.0.0", ports.DeviceFilter{FirmwareVersion: ptr("2.0.0")}, []int64{recent.ID}},
		{"a version nobody runs", ports.DeviceFilter{FirmwareVersion: ptr("3")}, nil},
		{"seen before the cut, or never", ports.DeviceFilter{SeenBefore: &cut}, []int64{never.ID, old.ID}},
		{"seen before the first report: only the never seen", ports.DeviceFilter{SeenBefore: ptr(t0)}, []int64{never.ID}},
		{"both", ports.DeviceFilter{SeenBefore: &cut, FirmwareVersion: ptr("1.0.0")}, []int64{old.ID}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := e.svc.ListDevices(t.Context(), tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := deviceIDsOf(p.Devices); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	for _, v := range []string{"", "a\nb", "0123456789012345678901234567890123"} {
		_, err := e.svc.ListDevices(t.Context(), ports.DeviceFilter{FirmwareVersion: &v})
		wantValidation(t, err, "firmware_version")
	}
}

func deviceIDsOf(ds []model.Device) []int64 {
	var ids []int64
	for _, d := range ds {
		ids = append(ids, d.ID)
	}
	return ids
}

func TestFirmwareCounts(t *testing.T) {
	e := newEnv(t)
	a := e.model(t, "a", "")
	b := e.model(t, "b", "")
	for _, v := range []string{"1", "1", "2", ""} {
		d := e.device(t, a, `{}`)
		if v != "" {
			if err := e.svc.ReportState(t.Context(), d, report(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	db := e.device(t, b, `{}`)
	if err := e.svc.ReportState(t.Context(), db, report("1")); err != nil {
		t.Fatal(err)
	}
	// An inactive device is out of the fleet's counts.
	off := e.device(t, b, `{}`)
	if err := e.svc.ReportState(t.Context(), off, report("9")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.UpdateDevice(t.Context(), off.ID, ports.DeviceUpdate{Active: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	got, err := e.svc.FirmwareCounts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []model.FirmwareCount{
		{ModelID: a.ID, ModelCode: "a", Version: "", Devices: 1},
		{ModelID: a.ID, ModelCode: "a", Version: "1", Devices: 2},
		{ModelID: a.ID, ModelCode: "a", Version: "2", Devices: 1},
		{ModelID: b.ID, ModelCode: "b", Version: "1", Devices: 1},
	}
	if !slices.Equal(got, want) {
		t.Errorf("FirmwareCounts = %+v, want %+v", got, want)
	}
}

func TestOfferedFirmware(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	if _, err := e.svc.OfferedFirmware(t.Context(), d); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("OfferedFirmware without firmware = %v, want ErrNotFound", err)
	}
	up, err := e.svc.UploadFirmware(t.Context(), m.ID, image(0, "3.1.0"), model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := e.svc.OfferedFirmware(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if f.Version != "3.1.0" || f.SHA256 != up.SHA256 || len(f.SHA256) != 64 {
		t.Errorf("offered %s %s, want 3.1.0 %s", f.Version, f.SHA256, up.SHA256)
	}
}
