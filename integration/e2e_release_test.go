package integration_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/esp32image"
)

// Released and stored firmware, the effective firmware of a device and
// device tags (SPEC §16) end to end: ?release=false, the release route
// (and a rollback through it), an assignment seeded through the
// repository (what a campaign's worker does) followed by /iot/firmware-version
// and /iot/firmware, and the tag filter.

type releaseFirmwareDTO struct {
	ID         int64    `json:"id"`
	Version    string   `json:"version"`
	SHA256     string   `json:"sha256"`
	Released   bool     `json:"released"`
	ReleasedAt *string  `json:"released_at"`
	Warnings   []string `json:"warnings"`
}

func TestE2EReleaseTagsEffectiveFirmware(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, nil)
	var a, b struct {
		ID   int64    `json:"id"`
		Tags []string `json:"tags"`
	}
	s.do(http.MethodPost, "/api/devices", s.admin, fmt.Sprintf(`{"device_model_id":%d,"config":{},"tags":["site:berlin","canary","canary"]}`, m.ID)).
		want(t, http.StatusCreated, &a)
	s.do(http.MethodPost, "/api/devices", s.admin, fmt.Sprintf(`{"device_model_id":%d,"config":{},"tags":["site:berlin"]}`, m.ID)).
		want(t, http.StatusCreated, &b)
	if !slices.Equal(a.Tags, []string{"canary", "site:berlin"}) {
		t.Errorf("created with tags %v, want [canary site:berlin] (sorted, the duplicate once)", a.Tags)
	}
	tokA, tokB := deviceTokenOf(t, s, a.ID), deviceTokenOf(t, s, b.ID)

	upload := func(version, query string, status int) (releaseFirmwareDTO, []byte) {
		t.Helper()
		img := firmwareImage(esp32image.ChipESP32C3, version)
		var f releaseFirmwareDTO
		s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware%s", m.ID, query), s.admin,
			strings.NewReader(string(img)), "Content-Type", "application/octet-stream").want(t, status, &f)
		return f, img
	}
	offered := func(tok string) (version, sum string) {
		t.Helper()
		var v struct {
			FirmwareVersion *string `json:"firmware_version"`
			SHA256          *string `json:"sha256"`
		}
		s.do(http.MethodGet, "/iot/firmware-version", tok, nil).want(t, http.StatusOK, &v)
		if v.FirmwareVersion == nil || v.SHA256 == nil {
			return "", ""
		}
		return *v.FirmwareVersion, *v.SHA256
	}
	wantOffered := func(what, tok string, want releaseFirmwareDTO, img []byte) {
		t.Helper()
		if v, sum := offered(tok); v != want.Version || sum != want.SHA256 {
			t.Errorf("%s: /iot/firmware-version = %s %s, want %s %s", what, v, sum, want.Version, want.SHA256)
		}
		r := s.do(http.MethodGet, "/iot/firmware", tok, nil).want(t, http.StatusOK, nil)
		got := sha256.Sum256(r.body)
		if hex.EncodeToString(got[:]) != want.SHA256 || r.header.Get("ETag") != `"`+want.SHA256+`"` || len(r.body) != len(img) {
			t.Errorf("%s: /iot/firmware served %d bytes with sha256 %x and ETag %s, want %s", what, len(r.body), got, r.header.Get("ETag"), want.SHA256)
		}
	}
	modelVersion := func() string {
		t.Helper()
		var mm struct {
			FirmwareVersion *string `json:"firmware_version"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/device-models/%d", m.ID), s.viewer, nil).want(t, http.StatusOK, &mm)
		if mm.FirmwareVersion == nil {
			return ""
		}
		return *mm.FirmwareVersion
	}
	history := func() []releaseFirmwareDTO {
		t.Helper()
		var h struct {
			Versions []releaseFirmwareDTO `json:"versions"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/device-models/%d/firmware/versions", m.ID), s.viewer, nil).want(t, http.StatusOK, &h)
		return h.Versions
	}
	release := func(sum string, status int) releaseFirmwareDTO {
		t.Helper()
		var f releaseFirmwareDTO
		s.do(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware/%s/release", m.ID, sum), s.admin, nil).want(t, status, &f)
		return f
	}

	v1, img1 := upload("1.0.0", "", http.StatusCreated)
	if !v1.Released || v1.ReleasedAt == nil {
		t.Fatalf("default upload: %+v, want released", v1)
	}
	v2, img2 := upload("2.0.0", "?release=false", http.StatusCreated)
	if v2.Released || v2.ReleasedAt != nil || len(v2.Warnings) != 0 {
		t.Fatalf("release=false upload: %+v, want stored", v2)
	}
	if got := modelVersion(); got != "1.0.0" {
		t.Errorf("model firmware_version after a stored upload = %q, want 1.0.0", got)
	}
	if h := history(); len(h) != 2 || h[0].ID != v2.ID || h[0].Released || h[0].ReleasedAt != nil || !h[1].Released {
		t.Errorf("history %+v, want 2.0.0 stored, 1.0.0 released", h)
	}
	wantOffered("released 1.0.0", tokA, v1, img1)
	// Storing the same image again changes nothing.
	if again, _ := upload("2.0.0", "?release=false", http.StatusOK); again.ID != v2.ID {
		t.Errorf("storing 2.0.0 again answered %+v", again)
	}

	// A campaign's assignment, seeded as its worker would.
	ctx := ctxT(t, time.Minute)
	db, err := postgres.Open(ctx, s.cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	devices := postgres.NewDeviceRepo(db)
	if n, err := devices.AssignFirmware(ctx, []int64{a.ID}, &v2.ID); err != nil || n != 1 {
		t.Fatalf("AssignFirmware = %d, %v", n, err)
	}
	wantOffered("a assigned the stored 2.0.0", tokA, v2, img2)
	wantOffered("b on the released 1.0.0", tokB, v1, img1)

	// Releasing the stored upload: every unassigned device follows.
	if f := release(v2.SHA256, http.StatusOK); f.ID != v2.ID || !f.Released || f.ReleasedAt == nil {
		t.Errorf("release 2.0.0 answered %+v", f)
	}
	if got := modelVersion(); got != "2.0.0" {
		t.Errorf("model firmware_version after the release = %q", got)
	}
	wantOffered("b after 2.0.0's release", tokB, v2, img2)
	release(v2.SHA256, http.StatusOK) // the released one: unchanged, not audited
	if e, _ := auditLog(t, s, "kind=firmware_released", 100); len(e) != 1 {
		t.Errorf("%d firmware_released entries, want 1 (the second release changed nothing)", len(e))
	}

	// Rolling back: 1.0.0 released again; the assigned device keeps 2.0.0.
	release(v1.SHA256, http.StatusOK)
	if got := modelVersion(); got != "1.0.0" {
		t.Errorf("model firmware_version after the rollback = %q", got)
	}
	if h := history(); !h[1].Released || h[0].Released {
		t.Errorf("history after the rollback %+v, want 1.0.0 released", h)
	}
	wantOffered("b after the rollback", tokB, v1, img1)
	wantOffered("a (assigned) after the rollback", tokA, v2, img2)
	if n, err := devices.AssignFirmware(ctx, []int64{a.ID}, nil); err != nil || n != 1 {
		t.Fatalf("AssignFirmware(nil) = %d, %v", n, err)
	}
	wantOffered("a unassigned", tokA, v1, img1)
	s.do(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware/%s/release", m.ID, strings.Repeat("0", 64)), s.admin, nil).
		wantProblem(t, http.StatusNotFound)

	// Tags.
	q := fmt.Sprintf("model_id=%d&", m.ID)
	for _, c := range []struct {
		query string
		want  []int64
	}{
		{"tag=canary", []int64{a.ID}},
		{"tag=site:berlin", []int64{a.ID, b.ID}},
		{"tag=site:berlin&tag=canary", []int64{a.ID}},
		{"tag=nowhere", nil},
	} {
		if got := listIDs(t, s, q+c.query); !slices.Equal(got, c.want) {
			t.Errorf("GET /api/devices?%s = %v, want %v", c.query, got, c.want)
		}
	}
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", b.ID), s.admin, `{"tags":["canary"]}`).want(t, http.StatusOK, &b)
	if !slices.Equal(b.Tags, []string{"canary"}) {
		t.Errorf("PUT tags answered %v", b.Tags)
	}
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", b.ID), s.admin, `{"active":true}`).want(t, http.StatusOK, &b)
	if !slices.Equal(b.Tags, []string{"canary"}) {
		t.Errorf("PUT without tags changed them to %v", b.Tags)
	}
	if got := listIDs(t, s, q+"tag=canary"); !slices.Equal(got, []int64{a.ID, b.ID}) {
		t.Errorf("tag=canary after the PUT = %v", got)
	}
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", b.ID), s.admin, `{"tags":["Not A Tag"]}`).wantProblem(t, http.StatusBadRequest)
	s.do(http.MethodGet, "/api/devices?tag=Bad", s.viewer, nil).wantProblem(t, http.StatusBadRequest)
}
