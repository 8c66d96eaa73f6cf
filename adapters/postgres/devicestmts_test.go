package postgres_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// UpdateDevice's prepared statement stores every column it writes as the
// device has it (times to the microsecond, bytes, a text array whose
// elements need quoting, JSON), returns what it stored, and inserts the
// audit entries (a NUL dropped, as bun drops it; a missing time is the
// database's now()).
func TestUpdateDeviceStoresEveryColumn(t *testing.T) {
	db := migratedDB(t)
	r := newRepos(db)
	m := r.model(t, "stmts")
	d := r.device(t, m, `{}`)
	ctx := t.Context()
	at := func(s int) *time.Time {
		v := time.Date(2026, 12, 8, 1, 2, s, 123456000, time.UTC)
		return &v
	}
	want := model.Device{}
	got, err := r.devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
		cur.Config = json.RawMessage(`{"name":"Küche \"2\"","n":[1,2]}`)
		cur.Active = false
		cur.RotationState = model.RotationPending
		cur.SecretCreatedAt, cur.LastRotationAttemptAt, cur.LastRotationFetchAt = at(1), at(2), at(3)
		cur.LastRotationRenudgeAt, cur.LastRotationCompletedAt, cur.LastSeenAt = at(4), at(5), at(6)
		cur.NewSecretAt, cur.IATAfter, cur.GenerationIntentAt = at(7), at(8), at(9)
		cur.PreviousSecret = []byte{0, 1, 2, 0xff}
		cur.MQTTPassword = []byte("sealed")
		cur.SecretSHA256 = "4a5ad1a2b0bb9da5e6c39f3a2c3e0b7b27cb4b8f8e2a1d7c2f0e9c6b5a4d3c2b"
		cur.ClientCovered = true
		cur.Tags = []string{"plain", `quo"te`, `back\slash`, "com,ma", "{brace}", ""}
		want = *cur
		return []model.AuditEntry{
			{Kind: model.AuditSecretFetched, Actor: model.DeviceActor(cur.ClientID()), ClientID: cur.ClientID(),
				Outcome: model.OutcomeSuccess, Detail: "first\x00 entry ✓"},
			{Kind: model.AuditSecretGenerated, Actor: model.DeviceActor(cur.ClientID()), ClientID: cur.ClientID(),
				Outcome: model.OutcomeSuccess, Detail: "second", At: *at(10)},
		}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	read, err := r.devices.GetDevice(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	for name, dev := range map[string]model.Device{"returned": got, "read back": read} {
		if !bytes.Equal(dev.Config, []byte(`{"n": [1, 2], "name": "Küche \"2\""}`)) {
			t.Errorf("%s config %s", name, dev.Config)
		}
		dev.Config, dev.UpdatedAt = want.Config, want.UpdatedAt
		if !reflect.DeepEqual(dev, want) {
			t.Errorf("%s device\n%+v\nwant\n%+v", name, dev, want)
		}
	}
	if !got.UpdatedAt.After(d.UpdatedAt) {
		t.Errorf("updated_at %v, not after %v", got.UpdatedAt, d.UpdatedAt)
	}
	page, err := postgres.NewAuditLog(db).ListAudit(ctx, ports.AuditFilter{DeviceID: d.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 2 {
		t.Fatalf("%d audit entries, want 2", len(page.Entries))
	}
	first, second := page.Entries[0], page.Entries[1]
	if first.Detail != "first entry ✓" || first.DeviceID != d.ID || first.ModelID != m.ID || first.Kind != model.AuditSecretFetched ||
		first.Actor != model.DeviceActor(d.ClientID()) || first.At.IsZero() {
		t.Errorf("first entry %+v", first)
	}
	if second.Detail != "second" || !second.At.Equal(*at(10)) {
		t.Errorf("second entry %+v", second)
	}

	// Nothing else changes without entries, and a missing device is
	// model.ErrNotFound.
	if _, err := r.devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
		cur.Tags = nil
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if read, err = r.devices.GetDevice(ctx, d.ID); err != nil || len(read.Tags) != 0 || read.Active {
		t.Errorf("after clearing the tags: %+v, %v", read, err)
	}
	_, err = r.devices.UpdateDevice(ctx, d.ID+1_000_000, func(*model.Device) ([]model.AuditEntry, error) { return nil, nil })
	wantErrIs(t, "UpdateDevice of a missing device", err, model.ErrNotFound)
}
