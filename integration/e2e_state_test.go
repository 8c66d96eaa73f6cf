package integration_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
)

// Device state reports (SPEC §15) end to end: POST /iot/state with a real
// device token, the report in the device answers, the list filters, the
// audit entry of a version change and the fleet metrics.

// reportedDTO is a device answer's "reported" member.
type reportedDTO struct {
	FirmwareVersion string  `json:"firmware_version"`
	SecureVersion   *uint32 `json:"secure_version"`
	AppELFSHA256    string  `json:"app_elf_sha256"`
	Partition       string  `json:"partition"`
	OTAState        string  `json:"ota_state"`
	OTA             *struct {
		Target string `json:"target"`
		Result string `json:"result"`
	} `json:"ota"`
	ResetReason string `json:"reset_reason"`
	UptimeS     *int64 `json:"uptime_s"`
	FreeHeap    *int64 `json:"free_heap"`
	RSSI        *int   `json:"rssi"`
	IDFVersion  string `json:"idf_version"`
}

// reportedDevice is a device answer with its report and last sighting.
type reportedDevice struct {
	ID         int64           `json:"id"`
	LastSeenAt *string         `json:"last_seen_at"`
	Reported   *reportedDTO    `json:"reported"`
	ReportedAt *string         `json:"reported_at"`
	Raw        json.RawMessage `json:"-"`
}

func getReported(t *testing.T, s *server, id int64) reportedDevice {
	t.Helper()
	var d reportedDevice
	r := s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", id), s.viewer, nil).want(t, http.StatusOK, &d)
	d.Raw = r.body
	return d
}

// waitReported polls GET /api/devices/{id} until its report satisfies ok.
func waitReported(t *testing.T, s *server, id int64, timeout time.Duration, what string, ok func(r reportedDTO) bool) reportedDTO {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d := getReported(t, s, id)
		if d.Reported != nil && ok(*d.Reported) {
			return *d.Reported
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %d: no report %s after %s; the device answer is %s", id, what, timeout, d.Raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deviceTokenOf is a device token of the device, from its provisioning
// data.
func deviceTokenOf(t *testing.T, s *server, id int64) string {
	t.Helper()
	var p provisioningDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", id), s.admin, nil).want(t, http.StatusOK, &p)
	return s.token(p.ClientID, p.ClientSecret)
}

// listIDs is GET /api/devices?query (one page) as ids.
func listIDs(t *testing.T, s *server, query string) []int64 {
	t.Helper()
	var page struct {
		Devices []struct {
			ID int64 `json:"id"`
		} `json:"devices"`
		NextCursor *string `json:"next_cursor"`
	}
	s.do(http.MethodGet, "/api/devices?limit=1000&"+query, s.viewer, nil).want(t, http.StatusOK, &page)
	if page.NextCursor != nil {
		t.Fatalf("GET /api/devices?%s: more than one page", query)
	}
	var ids []int64
	for _, d := range page.Devices {
		ids = append(ids, d.ID)
	}
	return ids
}

func TestE2EStateReports(t *testing.T) {
	s := startServer(t, map[string]string{"DEVICE_STALE_SECONDS": "1"})
	m := newModel(t, s, nil)
	a := newDevice(t, s, m.ID, `{}`)
	b := newDevice(t, s, m.ID, `{}`)
	never := newDevice(t, s, m.ID, `{}`)
	tokA, tokB := deviceTokenOf(t, s, a.ID), deviceTokenOf(t, s, b.ID)

	if d := getReported(t, s, a.ID); d.Reported != nil || d.ReportedAt != nil || !bytes.Contains(d.Raw, []byte(`"reported":null`)) {
		t.Fatalf("a device that never reported: %s, want \"reported\" and \"reported_at\" null", d.Raw)
	}

	t.Run("firmware-version names the offered image's sha256", func(t *testing.T) {
		img := firmwareImage(esp32image.ChipESP32, "2.0.0")
		sum := sha256.Sum256(img)
		var fw firmwareDTO
		s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
			bytes.NewReader(img), "Content-Type", "application/octet-stream").want(t, http.StatusCreated, &fw)
		var v struct {
			FirmwareVersion *string `json:"firmware_version"`
			SHA256          *string `json:"sha256"`
		}
		s.do(http.MethodGet, "/iot/firmware-version", tokA, nil).want(t, http.StatusOK, &v)
		if v.FirmwareVersion == nil || *v.FirmwareVersion != "2.0.0" || v.SHA256 == nil || *v.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("firmware-version = %+v, want 2.0.0 with sha256 %x", v, sum)
		}
	})

	before := time.Now().UTC()
	full := map[string]any{
		"firmware_version": "1.0.0", "secure_version": 1, "app_elf_sha256": strings.Repeat("ab", 32),
		"partition": "factory", "ota_state": "valid", "reset_reason": "poweron", "uptime_s": 3,
		"free_heap": 181234, "rssi": -57, "idf_version": "v5.3.1",
	}
	s.do(http.MethodPost, "/iot/state", tokA, full).want(t, http.StatusNoContent, nil)
	s.do(http.MethodPost, "/iot/state", tokB, map[string]any{"firmware_version": "1.0.0"}).want(t, http.StatusNoContent, nil)
	s.do(http.MethodPost, "/iot/state", tokB, map[string]any{
		"firmware_version": "2.0.0", "partition": "ota_0", "ota_state": "pending_verify",
		"ota": map[string]any{"target": "2.0.0", "result": "installed"},
	}).want(t, http.StatusNoContent, nil)

	t.Run("a device's token changes its own row only", func(t *testing.T) {
		// b reported twice after a; a's report and reported_at are as a
		// left them, and never's row has no report.
		da, dn := getReported(t, s, a.ID), getReported(t, s, never.ID)
		if da.Reported == nil || da.Reported.FirmwareVersion != "1.0.0" || da.Reported.Partition != "factory" {
			t.Errorf("a after b's reports: %s, want a's own 1.0.0 report", da.Raw)
		}
		if dn.Reported != nil || dn.ReportedAt != nil || dn.LastSeenAt != nil {
			t.Errorf("a device that never called: %s, want no report and never seen", dn.Raw)
		}
		// A body naming another device is no way in: the report has no
		// member for it (refused), and the token decides whose row it is.
		s.request(http.MethodPost, "/iot/state", tokB, strings.NewReader(fmt.Sprintf(`{"firmware_version":"6.6.6","device_id":%d}`, a.ID)),
			"Content-Type", "application/json").wantProblem(t, http.StatusBadRequest)
		if r := getReported(t, s, a.ID).Reported; r == nil || r.FirmwareVersion != "1.0.0" {
			t.Errorf("a after b named it: %+v", r)
		}
	})

	t.Run("the report shows in the device answers", func(t *testing.T) {
		d := getReported(t, s, a.ID)
		r := d.Reported
		if r == nil {
			t.Fatalf("device %d: no report in %s", a.ID, d.Raw)
		}
		if r.FirmwareVersion != "1.0.0" || r.SecureVersion == nil || *r.SecureVersion != 1 || r.AppELFSHA256 != strings.Repeat("ab", 32) ||
			r.Partition != "factory" || r.OTAState != "valid" || r.OTA != nil || r.ResetReason != "poweron" ||
			r.UptimeS == nil || *r.UptimeS != 3 || r.FreeHeap == nil || *r.FreeHeap != 181234 || r.RSSI == nil || *r.RSSI != -57 ||
			r.IDFVersion != "v5.3.1" {
			t.Errorf("reported %s, want the members sent", d.Raw)
		}
		if d.ReportedAt == nil {
			t.Fatalf("device %d: no reported_at in %s", a.ID, d.Raw)
		}
		at, err := time.Parse(time.RFC3339Nano, *d.ReportedAt)
		if err != nil || at.Before(before.Add(-5*time.Second)) || at.After(time.Now().Add(5*time.Second)) {
			t.Errorf("reported_at %q (%v), want about now", *d.ReportedAt, err)
		}
		// last_seen_at moves with the report (never back): the report is
		// the device's latest sighting.
		if seen, err := time.Parse(time.RFC3339Nano, deref(d.LastSeenAt)); err != nil || seen.Before(at) {
			t.Errorf("last_seen_at %v after a report received at %s, want at least that", d.LastSeenAt, at)
		}
		rb := getReported(t, s, b.ID).Reported
		if rb == nil || rb.FirmwareVersion != "2.0.0" || rb.OTAState != "pending_verify" || rb.OTA == nil ||
			rb.OTA.Target != "2.0.0" || rb.OTA.Result != "installed" || rb.UptimeS != nil {
			t.Errorf("b's latest report %+v, want 2.0.0 pending_verify with its OTA and nothing else", rb)
		}
		// The list answers carry it too.
		var page struct {
			Devices []reportedDevice `json:"devices"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/devices?model_id=%d", m.ID), s.viewer, nil).want(t, http.StatusOK, &page)
		for _, d := range page.Devices {
			if (d.ID == never.ID) != (d.Reported == nil) {
				t.Errorf("list: device %d reported %+v", d.ID, d.Reported)
			}
		}
	})

	t.Run("a bad report is refused and changes nothing", func(t *testing.T) {
		was := getReported(t, s, a.ID)
		for _, tc := range []struct {
			name   string
			body   string
			status int
			field  string
		}{
			{"unknown member", `{"firmware_version":"9","colour":"red"}`, http.StatusBadRequest, "colour"},
			{"ota_state outside the words", `{"firmware_version":"9","ota_state":"verified"}`, http.StatusBadRequest, "ota_state"},
			{"ota.result outside the words", `{"firmware_version":"9","ota":{"target":"9","result":"failed"}}`, http.StatusBadRequest, "ota.result"},
			{"unknown member in ota", `{"firmware_version":"9","ota":{"target":"9","result":"installed","why":"x"}}`, http.StatusBadRequest, "why"},
			{"no firmware_version", `{"partition":"ota_0"}`, http.StatusBadRequest, "firmware_version"},
			{"a number for a string", `{"firmware_version":9}`, http.StatusBadRequest, "firmware_version"},
			{"an empty member", `{"firmware_version":"9","partition":""}`, http.StatusBadRequest, "partition"},
			{"not an object", `["firmware_version"]`, http.StatusBadRequest, ""},
			{"over 4 KiB", `{"firmware_version":"9","idf_version":"` + strings.Repeat("v", 4200) + `"}`, http.StatusRequestEntityTooLarge, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := s.request(http.MethodPost, "/iot/state", tokA, strings.NewReader(tc.body), "Content-Type", "application/json")
				detail := r.wantProblem(t, tc.status)
				if tc.field != "" && !strings.Contains(string(r.body), tc.field) {
					t.Errorf("problem %s (%s) does not name %s", r.body, detail, tc.field)
				}
			})
		}
		now := getReported(t, s, a.ID)
		if r := now.Reported; r == nil || r.FirmwareVersion != "1.0.0" || deref(now.ReportedAt) != deref(was.ReportedAt) {
			t.Errorf("after refused reports a is %s, want as before: %s", now.Raw, was.Raw)
		}
		s.do(http.MethodPost, "/iot/state", "", map[string]any{"firmware_version": "1"}).wantProblem(t, http.StatusUnauthorized)
		s.do(http.MethodPost, "/iot/state", s.admin, map[string]any{"firmware_version": "1"}).wantProblem(t, http.StatusUnauthorized)
	})

	t.Run("filters", func(t *testing.T) {
		mid := fmt.Sprintf("model_id=%d", m.ID)
		for _, tc := range []struct {
			query string
			want  []int64
		}{
			{mid + "&firmware_version=1.0.0", []int64{a.ID}},
			{mid + "&firmware_version=2.0.0", []int64{b.ID}},
			{mid + "&firmware_version=3.0.0", nil},
			{mid + "&seen_before=" + url.QueryEscape(time.Now().Add(time.Minute).Format(time.RFC3339)), []int64{a.ID, b.ID, never.ID}},
			{mid + "&seen_before=" + url.QueryEscape(before.Add(-time.Minute).Format(time.RFC3339)), []int64{never.ID}},
			{mid + "&firmware_version=1.0.0&seen_before=" + url.QueryEscape(before.Add(-time.Minute).Format(time.RFC3339)), nil},
		} {
			if got := listIDs(t, s, tc.query); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("GET /api/devices?%s = %v, want %v", tc.query, got, tc.want)
			}
		}
		for _, q := range []string{"seen_before=yesterday", "seen_before=2026-12-07", "firmware_version=" + strings.Repeat("9", 40), "firmware_version=a%0Ab"} {
			detail := s.do(http.MethodGet, "/api/devices?"+q, s.viewer, nil).wantProblem(t, http.StatusBadRequest)
			name, _, _ := strings.Cut(q, "=")
			if !strings.Contains(detail, name) {
				t.Errorf("?%s: problem %q does not name %s", q, detail, name)
			}
		}
	})

	t.Run("a version change is audited", func(t *testing.T) {
		entries, _ := auditLog(t, s, fmt.Sprintf("kind=device_firmware_changed&device_id=%d", b.ID), 100)
		var details []string
		for _, e := range entries {
			details = append(details, e.Detail)
			if e.Actor.Type != "device" || e.Actor.ClientID != b.ClientID || e.Outcome != "success" {
				t.Errorf("entry %+v, want by the device, success", e)
			}
		}
		if want := []string{`first report: "1.0.0"`, `from "1.0.0" to "2.0.0"`}; fmt.Sprint(details) != fmt.Sprint(want) {
			t.Errorf("b's device_firmware_changed entries %q, want %q", details, want)
		}
		// Reporting the same version again is no change.
		s.do(http.MethodPost, "/iot/state", tokA, full).want(t, http.StatusNoContent, nil)
		if got, _ := auditLog(t, s, fmt.Sprintf("kind=device_firmware_changed&device_id=%d", a.ID), 100); len(got) != 1 {
			t.Errorf("a reported 1.0.0 twice: %d entries, want 1", len(got))
		}
	})

	t.Run("the fleet view", func(t *testing.T) {
		var fleet struct {
			Models []struct {
				DeviceModelID int64  `json:"device_model_id"`
				Code          string `json:"code"`
				Devices       int    `json:"devices"`
				Versions      []struct {
					FirmwareVersion *string `json:"firmware_version"`
					Devices         int     `json:"devices"`
				} `json:"versions"`
			} `json:"models"`
		}
		s.do(http.MethodGet, "/api/fleet/firmware", s.viewer, nil).want(t, http.StatusOK, &fleet)
		var got []string
		for _, fm := range fleet.Models {
			if fm.DeviceModelID != m.ID {
				continue
			}
			if fm.Code != m.Code || fm.Devices != 3 {
				t.Errorf("fleet: model %+v, want code %s with 3 active devices", fm, m.Code)
			}
			for _, v := range fm.Versions {
				got = append(got, fmt.Sprintf("%s=%d", deref(v.FirmwareVersion), v.Devices))
			}
		}
		if want := []string{"1.0.0=1", "2.0.0=1", "<nil>=1"}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("fleet view of model %d: %v, want %v (the unreported device last)", m.ID, got, want)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		time.Sleep(1100 * time.Millisecond) // DEVICE_STALE_SECONDS=1: every device is silent for longer now
		body := string(s.do(http.MethodGet, "/metrics", "", nil).want(t, http.StatusOK, nil).body)
		for _, want := range []string{
			fmt.Sprintf(`espmdm_devices_firmware_version{firmware_version="1.0.0",model=%q} 1`, m.Code),
			fmt.Sprintf(`espmdm_devices_firmware_version{firmware_version="2.0.0",model=%q} 1`, m.Code),
			fmt.Sprintf(`espmdm_devices_stale{model=%q} 3`, m.Code),
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}
