package mdm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestUploadFirmware(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "lamp", "")
	data := image(esp32image.ChipESP32S3, "2.0.1")
	f, err := e.svc.UploadFirmware(t.Context(), m.ID, data, model.UploadOptions{})
	if err != nil {
		t.Fatalf("UploadFirmware: %v", err)
	}
	sum := sha256.Sum256(data)
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32S3)
	want := model.Firmware{
		ID: f.ID, DeviceModelID: m.ID, Version: "2.0.1", ProjectName: desc.ProjectName, IDFVersion: desc.IDFVersion,
		Chip: "esp32s3", ChipID: int(esp32image.ChipESP32S3), SHA256: hex.EncodeToString(sum[:]),
		Size: int64(len(data)), SecureVersion: desc.SecureVersion, ELFSHA256: hex.EncodeToString(desc.ELFSHA256[:]),
		UploadedAt: t0, ReleasedAt: ptr(t0),
	}
	if f.ID == 0 || !sameFirmware(f.Firmware, want) || f.Unchanged || !f.Released || len(f.Warnings) != 0 {
		t.Errorf("got %+v, want %+v", f, want)
	}
	if got, _ := e.svc.GetModel(t.Context(), m.ID); got.FirmwareVersion != "2.0.1" {
		t.Errorf("model FirmwareVersion %q, want 2.0.1", got.FirmwareVersion)
	}
	if sent := e.notifier.Sent(); !slices.Equal(sent, []portstest.Notification{{Kind: "firmware", ModelCode: "lamp", Version: "2.0.1"}}) {
		t.Errorf("notifications %v", sent)
	}
	cur, blob, err := e.svc.OpenFirmware(t.Context(), m.ID)
	if err != nil {
		t.Fatalf("OpenFirmware: %v", err)
	}
	defer blob.Close()
	content, _ := io.ReadAll(blob)
	if !sameFirmware(cur, f.Firmware) || !bytes.Equal(content, data) || blob.Size() != int64(len(data)) {
		t.Errorf("OpenFirmware: %+v, %d bytes (equal %v)", cur, len(content), bytes.Equal(content, data))
	}
}

func TestUploadFirmwareRejects(t *testing.T) {
	valid := image(esp32image.ChipESP32, "1.0.0")
	_, lay := esp32imagetest.New(esp32image.ChipESP32, 4, true, ptr(esp32imagetest.SampleDesc(esp32image.ChipESP32))).Build()
	flip := func(b []byte, off int) []byte {
		b = bytes.Clone(b)
		b[off] ^= 0x5A
		return b
	}
	for _, tc := range []struct {
		name     string
		data     []byte
		maxBytes int64
		tooLarge bool
		reason   []string
	}{
		{"too large", valid, int64(len(valid) - 1), true, nil},
		{"empty", nil, 0, false, []string{"empty"}},
		{"wrong magic", flip(valid, 0), 0, false, []string{"esp32image"}},
		{"truncated", valid[:len(valid)/2], 0, false, []string{"esp32image"}},
		{"bad checksum", flip(valid, lay.Checksum), 0, false, []string{"checksum"}},
		{"bad SHA-256", flip(valid, lay.Digest+3), 0, false, []string{"esp32image"}},
		{"no app descriptor", esp32imagetest.New(esp32image.ChipESP32, 3, true, nil).Bytes(), 0, false, []string{"descriptor"}},
		{"empty version", image(esp32image.ChipESP32, ""), 0, false, []string{"version"}},
		{"version not UTF-8", image(esp32image.ChipESP32, "1.0\xff\xfe"), 0, false, []string{"version", "UTF-8"}},
		{"version with a newline", image(esp32image.ChipESP32, "1.0\nINFO forged log line"), 0, false, []string{"version", "printable"}},
		{"not an image", []byte("#!/bin/sh\nrm -rf /\n"), 0, false, []string{"esp32image"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withConfig(func(c *mdm.Config) { c.FirmwareMaxBytes = tc.maxBytes }))
			m := e.model(t, "m", "")
			_, err := e.svc.UploadFirmware(t.Context(), m.ID, tc.data, model.UploadOptions{})
			if tc.tooLarge {
				wantIs(t, err, model.ErrTooLarge)
			} else {
				wantValidation(t, err, "firmware", tc.reason...)
			}
			if e.fw.Len() != 0 {
				t.Errorf("a binary was stored")
			}
			if h, _ := e.svc.ListFirmware(t.Context(), m.ID); len(h) != 0 {
				t.Errorf("history recorded: %v", h)
			}
			if sent := e.notifier.Sent(); len(sent) != 0 {
				t.Errorf("notified: %v", sent)
			}
		})
	}
}

func TestUploadFirmwareChipAndHistory(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	v1, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32C3, "1.0.0"), model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	_, err = e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32S3, "1.1.0"), model.UploadOptions{})
	wantValidation(t, err, "firmware", "esp32s3", "esp32c3")
	e.clock.Advance(time.Hour)
	v2, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32C3, "1.2.0"), model.UploadOptions{})
	if err != nil {
		t.Fatalf("same-chip upload: %v", err)
	}
	hist, err := e.svc.ListFirmware(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 || !sameFirmware(hist[0], v2.Firmware) || !sameFirmware(hist[1], v1.Firmware) {
		t.Errorf("history %+v, want [v2 v1]", hist)
	}
	if got, _ := e.svc.GetModel(t.Context(), m.ID); got.FirmwareVersion != "1.2.0" {
		t.Errorf("FirmwareVersion %q", got.FirmwareVersion)
	}
	// Another model keeps its own chip.
	other := e.model(t, "other", "")
	if _, err := e.svc.UploadFirmware(t.Context(), other.ID, image(esp32image.ChipESP32S3, "9"), model.UploadOptions{}); err != nil {
		t.Errorf("another model's first upload: %v", err)
	}
}

func TestFirmwareMissing(t *testing.T) {
	e := newEnv(t)
	_, err := e.svc.UploadFirmware(t.Context(), 3, image(esp32image.ChipESP32, "1"), model.UploadOptions{})
	wantIs(t, err, model.ErrNotFound)
	_, _, err = e.svc.OpenFirmware(t.Context(), 3)
	wantIs(t, err, model.ErrNotFound)
	_, err = e.svc.ListFirmware(t.Context(), 3)
	wantIs(t, err, model.ErrNotFound)
	m := e.model(t, "m", "")
	_, _, err = e.svc.OpenFirmware(t.Context(), m.ID)
	wantIs(t, err, model.ErrNotFound)
}

func TestUploadFirmwareFailures(t *testing.T) {
	t.Run("store fails: nothing recorded", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		boom := errors.New("disk full")
		e.fw.Hook = func(string) error { return boom }
		_, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32, "1"), model.UploadOptions{})
		wantIs(t, err, boom)
		if h, _ := e.svc.ListFirmware(t.Context(), m.ID); len(h) != 0 {
			t.Errorf("history recorded: %v", h)
		}
	})
	t.Run("notifier fails: upload succeeds, OnError told", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		e.notifier.Err = errors.New("broker down")
		if _, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32, "1"), model.UploadOptions{}); err != nil {
			t.Fatal(err)
		}
		if r := e.reported(); len(r) != 1 || !strings.Contains(r[0].err.Error(), "broker down") {
			t.Errorf("OnError got %v", r)
		}
	})
}

func TestUploadFirmwareAgainIsIdempotent(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	img := image(esp32image.ChipESP32C3, "1.0.0")
	v1, err := e.svc.UploadFirmware(t.Context(), m.ID, img, model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	again, err := e.svc.UploadFirmware(t.Context(), m.ID, img, model.UploadOptions{})
	if err != nil || !sameFirmware(again.Firmware, v1.Firmware) || !again.Unchanged || v1.Unchanged {
		t.Fatalf("re-upload = %+v, %v; want the existing record %+v", again, err, v1)
	}
	hist, _ := e.svc.ListFirmware(t.Context(), m.ID)
	if len(hist) != 1 {
		t.Errorf("history after a re-upload has %d rows, want 1", len(hist))
	}
	notified := 0
	for _, n := range e.notifier.Sent() {
		if n.Kind == "firmware" {
			notified++
		}
	}
	if notified != 1 {
		t.Errorf("devices were told %d times, want once", notified)
	}
	// An older image made current again is a new release.
	v2, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32C3, "2.0.0"), model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	back, err := e.svc.UploadFirmware(t.Context(), m.ID, img, model.UploadOptions{})
	if err != nil || back.ID == v1.ID || back.ID == v2.ID || back.Version != "1.0.0" {
		t.Errorf("going back to 1.0.0 = %+v, %v; want a new history row", back, err)
	}
}

func imageSecure(chip esp32image.ChipID, version string, secure uint32) []byte {
	desc := esp32imagetest.SampleDesc(chip)
	desc.Version, desc.SecureVersion = version, secure
	return esp32imagetest.New(chip, 4, true, &desc).Bytes()
}

func TestUploadFirmwareSecureVersionBackwards(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	if _, err := e.svc.UploadFirmware(t.Context(), m.ID, imageSecure(esp32image.ChipESP32C3, "1.4.0", 5), model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	older := imageSecure(esp32image.ChipESP32C3, "1.5.0", 4)
	_, err := e.svc.UploadFirmware(t.Context(), m.ID, older, model.UploadOptions{})
	var ce *model.ConflictError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "secure_version 4 is lower than 5") ||
		!strings.Contains(err.Error(), "1.4.0") {
		t.Fatalf("lower secure_version = %v; want a conflict naming 4, 5 and the current version 1.4.0", err)
	}
	if hist, _ := e.svc.ListFirmware(t.Context(), m.ID); len(hist) != 1 {
		t.Errorf("a refused upload left %d history rows, want 1", len(hist))
	}
	forced, err := e.svc.UploadFirmware(t.Context(), m.ID, older, model.UploadOptions{Force: true})
	if err != nil || forced.SecureVersion != 4 || len(forced.Warnings) != 1 ||
		!strings.Contains(forced.Warnings[0], "secure_version goes backwards from 5 (firmware 1.4.0) to 4") {
		t.Fatalf("forced = %+v, %v; want it stored with one secure_version warning", forced, err)
	}
	// Same secure_version, lower version string: accepted with a warning.
	back, err := e.svc.UploadFirmware(t.Context(), m.ID, imageSecure(esp32image.ChipESP32C3, "1.3.9", 4), model.UploadOptions{})
	if err != nil || !slices.Equal(back.Warnings, []string{"version goes backwards from 1.5.0 to 1.3.9"}) {
		t.Errorf("older version = %+v, %v; want the version warning only", back, err)
	}
	// Higher: no warning.
	up, err := e.svc.UploadFirmware(t.Context(), m.ID, imageSecure(esp32image.ChipESP32C3, "v2.0.0-rc1", 6), model.UploadOptions{})
	if err != nil || len(up.Warnings) != 0 {
		t.Errorf("newer = %+v, %v; want no warnings", up, err)
	}
}

func TestVersionBefore(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"1.2.3", "1.2.4", true}, {"1.2.4", "1.2.3", false}, {"1.2", "1.2.0", false}, {"1.2", "1.2.1", true},
		{"v1.10.0", "1.9.9", false}, {"1.0.0-rc1", "1.0.1", true}, {"abc", "1.0", false}, {"1.0", "nightly", false},
		{"", "1", false}, {"1..2", "1.3", false},
	} {
		if got := mdm.VersionBefore(tc.a, tc.b); got != tc.want {
			t.Errorf("versionBefore(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
