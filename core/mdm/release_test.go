package mdm_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// Released and stored firmware, the effective firmware of a device and
// device tags (SPEC §16).

func (e *env) firmwareNotes() []portstest.Notification {
	var out []portstest.Notification
	for _, n := range e.notifier.Sent() {
		if n.Kind == "firmware" {
			out = append(out, n)
		}
	}
	return out
}

func (e *env) auditOf(kind model.AuditKind) []model.AuditEntry {
	var out []model.AuditEntry
	for _, x := range e.store.Audit().Entries() {
		if x.Kind == kind {
			out = append(out, x)
		}
	}
	return out
}

func (e *env) wantModelVersion(t *testing.T, m model.DeviceModel, want string) {
	t.Helper()
	got, err := e.svc.GetModel(t.Context(), m.ID)
	if err != nil || got.FirmwareVersion != want {
		t.Errorf("model firmware_version = %q, %v; want %q", got.FirmwareVersion, err, want)
	}
}

func TestStoredUploadAndRelease(t *testing.T) {
	e := newEnv(t, withAudit())
	m := e.model(t, "m", "")
	ctx := adminCtx(t)
	v1, err := e.svc.UploadFirmware(ctx, m.ID, image(esp32image.ChipESP32C3, "1.0.0"), model.UploadOptions{})
	if err != nil || !v1.Released || v1.ReleasedAt == nil {
		t.Fatalf("upload v1 = %+v, %v; want released", v1, err)
	}
	e.clock.Advance(time.Hour)
	v2, err := e.svc.UploadFirmware(ctx, m.ID, image(esp32image.ChipESP32C3, "2.0.0"), model.UploadOptions{Store: true})
	if err != nil || v2.Released || v2.ReleasedAt != nil || v2.Unchanged || len(v2.Warnings) != 0 {
		t.Fatalf("stored upload v2 = %+v, %v; want stored, not released, no warnings", v2, err)
	}
	e.wantModelVersion(t, m, "1.0.0")
	if n := e.firmwareNotes(); len(n) != 1 {
		t.Errorf("notifications %v, want v1's alone (a stored upload tells no device)", n)
	}
	if up := e.auditOf(model.AuditFirmwareUploaded); len(up) != 2 || !strings.Contains(up[1].Detail, "stored (not released)") {
		t.Errorf("firmware_uploaded entries %+v, want two, the second saying stored", up)
	}
	hist, _ := e.svc.ListFirmware(ctx, m.ID)
	if rel, ok := model.ReleasedIn(hist); !ok || rel.ID != v1.ID || len(hist) != 2 {
		t.Errorf("history %+v: released %+v, want v1 among two", hist, rel)
	}
	// Storing the newest image again changes nothing.
	again, err := e.svc.UploadFirmware(ctx, m.ID, image(esp32image.ChipESP32C3, "2.0.0"), model.UploadOptions{Store: true})
	if err != nil || !again.Unchanged || again.ID != v2.ID || again.Released {
		t.Errorf("storing v2 again = %+v, %v; want unchanged v2", again, err)
	}

	e.clock.Advance(time.Hour)
	f, changed, err := e.svc.ReleaseFirmware(ctx, m.ID, v2.SHA256)
	if err != nil || !changed || f.ID != v2.ID || f.ReleasedAt == nil {
		t.Fatalf("ReleaseFirmware v2 = %+v, %v, %v", f, changed, err)
	}
	e.wantModelVersion(t, m, "2.0.0")
	if n := e.firmwareNotes(); len(n) != 2 || n[1].Version != "2.0.0" || n[1].ModelCode != "m" {
		t.Errorf("notifications %v, want v2's release", n)
	}
	rel := e.auditOf(model.AuditFirmwareReleased)
	if len(rel) != 1 || rel[0].Actor != admin || rel[0].ModelID != m.ID || !strings.Contains(rel[0].Detail, `"2.0.0"`) ||
		!strings.Contains(rel[0].Detail, `replacing "1.0.0"`) {
		t.Errorf("firmware_released entries %+v", rel)
	}

	// The released one again: unchanged, no audit, no notification.
	f, changed, err = e.svc.ReleaseFirmware(ctx, m.ID, v2.SHA256)
	if err != nil || changed || f.ID != v2.ID {
		t.Errorf("ReleaseFirmware of the released one = %+v, %v, %v; want unchanged", f, changed, err)
	}
	if len(e.auditOf(model.AuditFirmwareReleased)) != 1 || len(e.firmwareNotes()) != 2 {
		t.Errorf("releasing the released one audited or notified")
	}

	// Rolling back: v1 released again, at the same fake time as nothing.
	f, changed, err = e.svc.ReleaseFirmware(ctx, m.ID, v1.SHA256)
	if err != nil || !changed || f.ID != v1.ID {
		t.Fatalf("rollback to v1 = %+v, %v, %v", f, changed, err)
	}
	e.wantModelVersion(t, m, "1.0.0")
	if got, _, err := e.svc.OpenFirmware(ctx, m.ID); err != nil || got.ID != v1.ID {
		t.Errorf("OpenFirmware after the rollback = %+v, %v; want v1", got, err)
	}

	_, _, err = e.svc.ReleaseFirmware(ctx, m.ID, strings.Repeat("ab", 32))
	wantIs(t, err, model.ErrNotFound)
	_, _, err = e.svc.ReleaseFirmware(ctx, m.ID+100, v1.SHA256)
	wantIs(t, err, model.ErrNotFound)
	_, _, err = e.svc.ReleaseFirmware(ctx, m.ID, "ABC")
	wantValidation(t, err, "sha256")
}

func TestUploadChecksAgainstTheReleasedFirmware(t *testing.T) {
	t.Run("secure_version and version against the released one, not a newer stored one", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		if _, err := e.svc.UploadFirmware(t.Context(), m.ID, imageSecure(esp32image.ChipESP32C3, "1.0.0", 1), model.UploadOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.UploadFirmware(t.Context(), m.ID, imageSecure(esp32image.ChipESP32C3, "3.0.0", 5),
			model.UploadOptions{Store: true}); err != nil {
			t.Fatal(err)
		}
		up, err := e.svc.UploadFirmware(t.Context(), m.ID, imageSecure(esp32image.ChipESP32C3, "2.0.0", 2), model.UploadOptions{})
		if err != nil || !up.Released || len(up.Warnings) != 0 {
			t.Errorf("2.0.0 (secure 2) over released 1.0.0 (secure 1), stored 3.0.0 (secure 5) = %+v, %v; want released, no warnings", up, err)
		}
		_, err = e.svc.UploadFirmware(t.Context(), m.ID, imageSecure(esp32image.ChipESP32C3, "2.1.0", 1), model.UploadOptions{Store: true})
		var ce *model.ConflictError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "released firmware 2.0.0") {
			t.Errorf("a stored upload with a lower secure_version than the released = %v; want a conflict naming 2.0.0", err)
		}
	})
	t.Run("the chip against the newest upload while none is released", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		if _, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32C3, "1.0.0"), model.UploadOptions{Store: true}); err != nil {
			t.Fatal(err)
		}
		_, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32S3, "1.0.1"), model.UploadOptions{})
		wantValidation(t, err, "firmware", "esp32s3", "esp32c3")
		if _, _, err := e.svc.OpenFirmware(t.Context(), m.ID); !errors.Is(err, model.ErrNotFound) {
			t.Errorf("OpenFirmware with only a stored upload = %v, want not found", err)
		}
		e.wantModelVersion(t, m, "")
	})
}

// gate is a ReleaseGate that holds every release of the models it names.
type gate struct{ held map[int64]string }

func (g gate) HoldRelease(_ context.Context, modelID int64) (string, error) {
	if r, ok := g.held[modelID]; ok && r == "boom" {
		return "", errors.New("gate down")
	}
	return g.held[modelID], nil
}

func TestReleaseGateStoresAnUpload(t *testing.T) {
	g := gate{held: map[int64]string{}}
	e := newEnv(t, func(d *mdm.Deps, _ *mdm.Config) { d.ReleaseGate = g })
	m := e.model(t, "m", "")
	other := e.model(t, "o", "")
	g.held[m.ID] = "campaign 7 is running"
	up, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32, "1.0.0"), model.UploadOptions{})
	if err != nil || up.Released || up.ReleasedAt != nil || len(up.Warnings) != 1 ||
		up.Warnings[0] != "stored, not released: campaign 7 is running" {
		t.Fatalf("held upload = %+v, %v; want stored with the gate's warning", up, err)
	}
	if len(e.firmwareNotes()) != 0 {
		t.Errorf("a held upload told devices")
	}
	e.wantModelVersion(t, m, "")
	if up, err := e.svc.UploadFirmware(t.Context(), other.ID, image(esp32image.ChipESP32, "1.0.0"), model.UploadOptions{}); err != nil || !up.Released {
		t.Errorf("another model's upload = %+v, %v; want released", up, err)
	}
	g.held[m.ID] = "boom"
	_, err = e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32, "1.0.1"), model.UploadOptions{})
	if err == nil || !strings.Contains(err.Error(), "gate down") {
		t.Errorf("a failing gate = %v, want its error", err)
	}
	if hist, _ := e.svc.ListFirmware(t.Context(), m.ID); len(hist) != 1 {
		t.Errorf("history has %d rows after a failing gate, want 1", len(hist))
	}
}

func TestEffectiveFirmware(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	v1, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32C6, "1.0.0"), model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32C6, "2.0.0"), model.UploadOptions{Store: true})
	if err != nil {
		t.Fatal(err)
	}
	offered := func(what string, want model.Firmware) {
		t.Helper()
		cur, err := e.svc.GetDevice(t.Context(), d.ID)
		if err != nil {
			t.Fatal(err)
		}
		f, err := e.svc.OfferedFirmware(t.Context(), cur)
		if err != nil || f.ID != want.ID {
			t.Errorf("%s: OfferedFirmware = %+v, %v; want %s", what, f, err, want.Version)
		}
		f, blob, err := e.svc.DeviceFirmware(t.Context(), cur)
		if err != nil || f.ID != want.ID || blob.Size() != want.Size {
			t.Errorf("%s: DeviceFirmware = %+v, %v; want %s", what, f, err, want.Version)
		}
		if blob != nil {
			_ = blob.Close()
		}
	}
	offered("released", v1.Firmware)
	if n, err := e.store.AssignFirmware(t.Context(), []int64{d.ID}, &v2.ID); err != nil || n != 1 {
		t.Fatalf("AssignFirmware = %d, %v", n, err)
	}
	offered("assigned the stored upload", v2.Firmware)
	// A copy of the device from before the assignment (a replica's cache
	// may hold one for a few ms after a campaign assigned it) is offered
	// what is assigned now.
	if f, err := e.svc.OfferedFirmware(t.Context(), d); err != nil || f.ID != v2.ID {
		t.Errorf("OfferedFirmware(a copy from before the assignment) = %+v, %v; want %s", f, err, v2.Version)
	}
	if _, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Tags: &[]string{"x"}}); err != nil {
		t.Fatal(err)
	}
	offered("assigned, after an admin's update", v2.Firmware)
	if _, err := e.store.AssignFirmware(t.Context(), []int64{d.ID}, nil); err != nil {
		t.Fatal(err)
	}
	offered("assignment cleared", v1.Firmware)
}

func TestDeviceTags(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: []byte(`{}`),
		Tags: []string{"site:berlin", "floor-2", "site:berlin"}})
	if err != nil || !slices.Equal(d.Tags, []string{"floor-2", "site:berlin"}) {
		t.Fatalf("CreateDevice with tags = %v, %v; want them sorted without the duplicate", d.Tags, err)
	}
	plain := e.device(t, m, `{}`)
	if plain.Tags == nil || len(plain.Tags) != 0 {
		t.Errorf("a device without tags has %#v", plain.Tags)
	}
	many := make([]string, model.MaxTags+1)
	for i := range many {
		many[i] = "t" + strings.Repeat("x", i%3)
	}
	for _, c := range []struct {
		name   string
		tags   []string
		reason string
	}{
		{"upper case", []string{"Hall"}, "must match"},
		{"empty", []string{""}, "must match"},
		{"space", []string{"a b"}, "must match"},
		{"too long", []string{strings.Repeat("a", 65)}, "must match"},
		{"too many, even with duplicates", many, "at most 32"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: []byte(`{}`), Tags: c.tags})
			wantValidation(t, err, "tags", c.reason)
			_, err = e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Tags: &c.tags})
			wantValidation(t, err, "tags", c.reason)
		})
	}
	if ok := strings.Repeat("a", 64); !model.TagPattern.MatchString(ok) {
		t.Errorf("a 64-character tag is refused")
	}

	// An update without tags leaves them; with tags replaces them.
	got, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Active: ptr(true)})
	if err != nil || !slices.Equal(got.Tags, []string{"floor-2", "site:berlin"}) {
		t.Errorf("update without tags = %v, %v; want them unchanged", got.Tags, err)
	}
	got, err = e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Tags: &[]string{"site:paris", "canary"}})
	if err != nil || !slices.Equal(got.Tags, []string{"canary", "site:paris"}) {
		t.Errorf("update with tags = %v, %v", got.Tags, err)
	}
	list := func(tags ...string) []int64 {
		t.Helper()
		p, err := e.svc.ListDevices(t.Context(), ports.DeviceFilter{Tags: tags})
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, d := range p.Devices {
			ids = append(ids, d.ID)
		}
		return ids
	}
	if got := list("canary"); !slices.Equal(got, []int64{d.ID}) {
		t.Errorf("tag=canary lists %v", got)
	}
	if got := list("canary", "site:berlin"); len(got) != 0 {
		t.Errorf("tag=canary&tag=site:berlin lists %v, want none", got)
	}
	if got := list(); len(got) != 2 {
		t.Errorf("no tag filter lists %v", got)
	}
	_, err = e.svc.ListDevices(t.Context(), ports.DeviceFilter{Tags: []string{"Bad"}})
	wantValidation(t, err, "tag", "must match")
	got, err = e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Tags: &[]string{}})
	if err != nil || len(got.Tags) != 0 {
		t.Errorf("clearing tags = %v, %v", got.Tags, err)
	}
}

func TestDeviceBatchTags(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	in := batchOf(m.ID, 2, `{}`, mdm.DefaultNVSSize)
	in.Devices[0].Tags = []string{"site:x", "canary", "canary"}
	res, err := runBatch(t, e, in)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]string{{"canary", "site:x"}, {}} {
		r := res[i]
		if r.Err != nil {
			t.Fatalf("device %d: %v", i, r.Err)
		}
		d, err := e.svc.GetDevice(t.Context(), r.Device.ID)
		if err != nil || !slices.Equal(d.Tags, want) {
			t.Errorf("device %d tags = %v, %v; want %v", i, d.Tags, err, want)
		}
	}
}
