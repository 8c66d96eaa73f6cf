package mdm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// withAudit gives the service the store's audit log and the schedule
// repository the same log.
func withAudit() option {
	return func(d *mdm.Deps, _ *mdm.Config) { d.Audit = d.Devices.(ports.AuditLog) }
}

func newAuditEnv(t *testing.T, mode model.RotationMode) *renv {
	t.Helper()
	e := newRotationEnv(t, mode, withAudit())
	e.sched.Audit = e.store.Audit()
	return e
}

var admin = model.Actor{Type: model.ActorAdmin, Subject: "3f1c-admin-subject", ClientID: "espmdm-console"}

func adminCtx(t *testing.T) context.Context {
	return model.WithActor(t.Context(), admin)
}

// entriesOf returns the log's entries of kind.
func entriesOf(e *renv, kind model.AuditKind) []model.AuditEntry {
	var out []model.AuditEntry
	for _, x := range e.store.Audit().Entries() {
		if x.Kind == kind {
			out = append(out, x)
		}
	}
	return out
}

// wantEntry checks that exactly one entry of kind exists and returns it.
func wantEntry(t *testing.T, e *renv, kind model.AuditKind, actor model.Actor, deviceID int64, outcome model.AuditOutcome) model.AuditEntry {
	t.Helper()
	got := entriesOf(e, kind)
	if len(got) != 1 {
		t.Fatalf("%d %s entries, want 1: %+v", len(got), kind, got)
	}
	x := got[0]
	if x.Actor != actor {
		t.Errorf("%s actor = %+v, want %+v", kind, x.Actor, actor)
	}
	if x.DeviceID != deviceID {
		t.Errorf("%s device = %d, want %d", kind, x.DeviceID, deviceID)
	}
	if x.Outcome != outcome {
		t.Errorf("%s outcome = %s, want %s", kind, x.Outcome, outcome)
	}
	if x.At.IsZero() || x.ID == 0 {
		t.Errorf("%s entry has no time or id: %+v", kind, x)
	}
	return x
}

func TestAuditAdminChanges(t *testing.T) {
	e := newAuditEnv(t, model.RotationGrace)
	ctx := adminCtx(t)

	m, err := e.svc.CreateModel(ctx, ports.NewModel{Code: "au1", Name: "Audit 1"})
	if err != nil {
		t.Fatal(err)
	}
	if x := wantEntry(t, e, model.AuditModelCreated, admin, 0, model.OutcomeSuccess); x.ModelID != m.ID {
		t.Errorf("model_created model = %d, want %d", x.ModelID, m.ID)
	}
	name := "Audit one"
	if _, err := e.svc.UpdateModel(ctx, m.ID, ports.ModelUpdate{Name: &name, SetSchema: true, ConfigSchema: json.RawMessage(`{"type":"object"}`)}); err != nil {
		t.Fatal(err)
	}
	if x := wantEntry(t, e, model.AuditModelUpdated, admin, 0, model.OutcomeSuccess); x.Detail != "changed name, config_schema" || x.ModelID != m.ID {
		t.Errorf("model_updated = %+v", x)
	}
	if _, err := e.svc.UploadFirmware(ctx, m.ID, image(esp32image.ChipESP32, "1.2.3"), model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if x := wantEntry(t, e, model.AuditFirmwareUploaded, admin, 0, model.OutcomeSuccess); !strings.Contains(x.Detail, `"1.2.3"`) || x.ModelID != m.ID {
		t.Errorf("firmware_uploaded = %+v", x)
	}
	// The same image again records nothing: nothing changed.
	if _, err := e.svc.UploadFirmware(ctx, m.ID, image(esp32image.ChipESP32, "1.2.3"), model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, e, model.AuditFirmwareUploaded, admin, 0, model.OutcomeSuccess)
	// A forced downgrade says so, and what goes backwards; a refused one
	// records nothing.
	if _, err := e.svc.UploadFirmware(ctx, m.ID, imageSecure(esp32image.ChipESP32, "1.3.0", 3), model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.UploadFirmware(ctx, m.ID, imageSecure(esp32image.ChipESP32, "1.1.0", 1), model.UploadOptions{}); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("downgrade without force = %v", err)
	}
	if _, err := e.svc.UploadFirmware(ctx, m.ID, imageSecure(esp32image.ChipESP32, "1.1.0", 1), model.UploadOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if got := entriesOf(e, model.AuditFirmwareUploaded); len(got) != 3 || !strings.HasSuffix(got[2].Detail, "(forced)") ||
		!strings.Contains(got[2].Detail, "secure_version goes backwards from 3") {
		t.Errorf("firmware entries after a refused and a forced downgrade: %+v", got)
	}

	d, err := e.svc.CreateDevice(ctx, ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if x := wantEntry(t, e, model.AuditDeviceCreated, admin, d.ID, model.OutcomeSuccess); x.ClientID != d.ClientID() || x.ModelID != m.ID {
		t.Errorf("device_created = %+v", x)
	}
	off := false
	if _, err := e.svc.UpdateDevice(ctx, d.ID, ports.DeviceUpdate{Config: json.RawMessage(`{"a":1}`), Active: &off}); err != nil {
		t.Fatal(err)
	}
	if x := wantEntry(t, e, model.AuditDeviceUpdated, admin, d.ID, model.OutcomeSuccess); x.Detail != "changed config, deactivated" {
		t.Errorf("device_updated detail = %q", x.Detail)
	}
	if err := e.svc.DeleteDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, e, model.AuditDeviceDeleted, admin, d.ID, model.OutcomeSuccess)
	if err := e.svc.DeleteModel(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, e, model.AuditModelDeleted, admin, 0, model.OutcomeSuccess)
}

// A change that fails records nothing: the entry goes with its change.
func TestAuditFailedChangeRecordsNothing(t *testing.T) {
	e := newAuditEnv(t, model.RotationGrace)
	ctx := adminCtx(t)
	m := e.model(t, "au2", `{"type":"object","required":["x"]}`)
	before := len(e.store.Audit().Entries())
	if _, err := e.svc.CreateDevice(ctx, ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)}); err == nil {
		t.Fatal("CreateDevice with an invalid config succeeded")
	}
	if _, err := e.svc.CreateModel(ctx, ports.NewModel{Code: "au2", Name: "again"}); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("duplicate CreateModel = %v", err)
	}
	d := e.device(t, m, `{"x":1}`)
	e.store.Hook = func(op string) error {
		if op == "UpdateDevice.commit" {
			return errors.New("commit lost")
		}
		return nil
	}
	if _, err := e.svc.UpdateDevice(ctx, d.ID, ports.DeviceUpdate{Config: json.RawMessage(`{"x":2}`)}); err == nil {
		t.Fatal("UpdateDevice with a failing commit succeeded")
	}
	e.store.Hook = nil
	if n := len(e.store.Audit().Entries()) - before; n != 1 { // the device_created of e.device
		t.Fatalf("%d entries after failed changes and one creation, want 1: %+v", n, e.store.Audit().Entries()[before:])
	}
	if len(entriesOf(e, model.AuditDeviceUpdated)) != 0 {
		t.Fatal("a device_updated entry for an update that was not committed")
	}
}

func TestAuditProvisioningAndIdentity(t *testing.T) {
	e := newAuditEnv(t, model.RotationGrace)
	ctx := adminCtx(t)
	d := e.device(t, e.model(t, "au3", ""), `{}`)

	if _, err := e.svc.Provisioning(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ProvisioningNVS(ctx, d.ID, 0x6000); err != nil {
		t.Fatal(err)
	}
	got := entriesOf(e, model.AuditProvisioningDownloaded)
	if len(got) != 2 || got[0].Detail != "plain fields (JSON)" || got[1].Detail != "NVS partition of 0x6000 bytes" || got[0].Actor != admin || got[1].DeviceID != d.ID {
		t.Fatalf("provisioning entries = %+v", got)
	}

	// A download whose audit entry cannot be written is refused: the
	// secret is never handed out unrecorded.
	e.store.Audit().Hook = func(op string) error { return errors.New("audit log down") }
	if _, err := e.svc.Provisioning(ctx, d.ID); err == nil {
		t.Fatal("provisioning download without an audit entry succeeded")
	}
	e.store.Audit().Hook = nil

	// Reading the secret fails: a failure entry.
	e.idp.Hook = func(op, _ string) error {
		if op == "ClientSecret" {
			return &model.UnavailableError{Service: "keycloak", Err: errors.New("down")}
		}
		return nil
	}
	if _, err := e.svc.ProvisioningNVS(ctx, d.ID, 0x6000); err == nil {
		t.Fatal("download while Keycloak is down succeeded")
	}
	e.idp.Hook = nil
	got = entriesOf(e, model.AuditProvisioningDownloaded)
	if last := got[len(got)-1]; last.Outcome != model.OutcomeFailure || last.Detail != "a dependency was unavailable" {
		t.Fatalf("failed download entry = %+v", last)
	}

	e.idp.Break(d.ClientID(), "no role mapper")
	if _, err := e.svc.SyncIdentity(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	x := wantEntry(t, e, model.AuditIdentityRepaired, admin, d.ID, model.OutcomeSuccess)
	if x.Detail != "client exists true, enabled true, 0 problem(s) left" {
		t.Errorf("identity_repaired detail = %q", x.Detail)
	}
}

func TestAuditReconcileOrphan(t *testing.T) {
	e := newAuditEnv(t, model.RotationGrace)
	orphan := model.ClientID("au4", "zzzzzzzz")
	e.idp.Put(orphan, "orphan-secret-value", t0.Add(-time.Hour))
	rep, err := e.svc.Reconcile(model.WithActor(t.Context(), model.SystemActor("reconciler")))
	if err != nil || len(rep.DeletedOrphans) != 1 {
		t.Fatalf("Reconcile = %+v, %v", rep, err)
	}
	x := wantEntry(t, e, model.AuditOrphanClientDeleted, model.SystemActor("reconciler"), 0, model.OutcomeSuccess)
	if x.ClientID != orphan {
		t.Errorf("orphan entry client = %q, want %q", x.ClientID, orphan)
	}
}

// Every step of a rotation, in both modes, by the actor that caused it.
func TestAuditRotationSteps(t *testing.T) {
	for _, mode := range []model.RotationMode{model.RotationGrace, model.RotationRestore} {
		t.Run(string(mode), func(t *testing.T) {
			e := newAuditEnv(t, mode)
			ctx := adminCtx(t)
			d := e.device(t, e.model(t, "au5", ""), `{}`)
			dev := model.DeviceActor(d.ClientID())

			if res, err := e.svc.RotateDevice(ctx, d.ID); err != nil || res != ports.RotateQueued {
				t.Fatalf("RotateDevice = %s, %v", res, err)
			}
			if x := wantEntry(t, e, model.AuditRotationQueued, admin, d.ID, model.OutcomeSuccess); x.Detail != "from OK" {
				t.Errorf("rotation_queued detail = %q", x.Detail)
			}
			// The admin's request started it (a free slot).
			wantEntry(t, e, model.AuditRotationStarted, admin, d.ID, model.OutcomeSuccess)

			secret := e.fetch(t, d)
			x := wantEntry(t, e, model.AuditSecretGenerated, dev, d.ID, model.OutcomeSuccess)
			if !strings.Contains(x.Detail, string(mode)) {
				t.Errorf("secret_generated detail = %q, want the mode", x.Detail)
			}
			e.fetch(t, d)
			if n := len(entriesOf(e, model.AuditSecretFetched)); n != 2 {
				t.Errorf("%d secret_fetched entries after two fetches, want 2", n)
			}
			if err := e.ack(t, d, "not the secret"); !errors.Is(err, model.ErrConflict) {
				t.Fatalf("wrong ack = %v", err)
			}
			if x := wantEntry(t, e, model.AuditSecretAckRefused, dev, d.ID, model.OutcomeFailure); !strings.Contains(x.Detail, "does not match") {
				t.Errorf("secret_ack_refused detail = %q", x.Detail)
			}
			if err := e.ack(t, d, secret); err != nil {
				t.Fatal(err)
			}
			if x := wantEntry(t, e, model.AuditSecretConfirmed, dev, d.ID, model.OutcomeSuccess); !strings.Contains(x.Detail, "ack") {
				t.Errorf("secret_confirmed detail = %q", x.Detail)
			}
			if mode == model.RotationGrace {
				wantEntry(t, e, model.AuditRotatedInvalidated, dev, d.ID, model.OutcomeSuccess)
			} else if n := len(entriesOf(e, model.AuditRotatedInvalidated)); n != 0 {
				t.Errorf("restore mode: %d rotated_secret_invalidated entries, want 0", n)
			}
			// A repeated ack (idempotent) records nothing more.
			if err := e.ack(t, d, secret); err != nil {
				t.Fatal(err)
			}
			wantEntry(t, e, model.AuditSecretConfirmed, dev, d.ID, model.OutcomeSuccess)
			wantEntry(t, e, model.AuditSecretAckRefused, dev, d.ID, model.OutcomeFailure)
		})
	}
}

func TestAuditRestoreConfirmByToken(t *testing.T) {
	e := newAuditEnv(t, model.RotationRestore)
	d := e.device(t, e.model(t, "au6", ""), `{}`)
	e.rotate(t, d)
	e.fetch(t, d)
	e.clock.Advance(2 * time.Second)
	claims := model.DeviceClaims{ClientID: d.ClientID(), ModelCode: d.ModelCode, Key: d.Key, IssuedAt: e.clock.Now()}
	if _, err := e.svc.DeviceConfig(t.Context(), e.get(t, d.ID), claims); err != nil {
		t.Fatal(err)
	}
	if x := wantEntry(t, e, model.AuditSecretConfirmed, model.DeviceActor(d.ClientID()), d.ID, model.OutcomeSuccess); !strings.Contains(x.Detail, "iat") {
		t.Errorf("secret_confirmed detail = %q", x.Detail)
	}
}

func TestAuditTimeoutAndRestore(t *testing.T) {
	for _, mode := range []model.RotationMode{model.RotationGrace, model.RotationRestore} {
		t.Run(string(mode), func(t *testing.T) {
			e := newAuditEnv(t, mode)
			d := e.device(t, e.model(t, "au7", ""), `{}`)
			e.rotate(t, d)
			e.fetch(t, d)
			e.clock.Advance(6 * time.Minute)
			worker := model.SystemActor("rotation worker")
			if _, err := e.svc.RunRotationCycle(model.WithActor(t.Context(), worker)); err != nil {
				t.Fatal(err)
			}
			x := wantEntry(t, e, model.AuditRotationTimeout, worker, d.ID, model.OutcomeSuccess)
			if mode == model.RotationGrace {
				if x.Detail != "both secrets stay valid (grace)" || len(entriesOf(e, model.AuditSecretRestored)) != 0 {
					t.Errorf("grace timeout: detail %q, %d secret_restored", x.Detail, len(entriesOf(e, model.AuditSecretRestored)))
				}
				return
			}
			if x.Detail != "old secret restored" {
				t.Errorf("restore timeout detail = %q", x.Detail)
			}
			wantEntry(t, e, model.AuditSecretRestored, worker, d.ID, model.OutcomeSuccess)
		})
	}
}

func TestAuditGenerationFailure(t *testing.T) {
	e := newAuditEnv(t, model.RotationGrace)
	d := e.device(t, e.model(t, "au8", ""), `{}`)
	e.rotate(t, d)
	e.idp.Hook = func(op, _ string) error {
		if op == "RegenerateSecret" {
			return &model.UnavailableError{Service: "keycloak", Err: errors.New("connection refused")}
		}
		return nil
	}
	if _, err := e.svc.FetchCredentials(t.Context(), e.get(t, d.ID)); err == nil {
		t.Fatal("fetch with a failing generation succeeded")
	}
	e.idp.Hook = nil
	x := wantEntry(t, e, model.AuditSecretGenerated, model.DeviceActor(d.ClientID()), d.ID, model.OutcomeFailure)
	if x.Detail != "a dependency was unavailable" {
		t.Errorf("failed generation detail = %q (an error's text must not be copied)", x.Detail)
	}
}

func TestAuditTriggerAndSchedule(t *testing.T) {
	e := newAuditEnv(t, model.RotationGrace)
	m := e.model(t, "au9", "")
	for range 2 {
		e.device(t, m, `{}`)
	}
	if n, err := e.svc.TriggerRotation(adminCtx(t), 0); err != nil || n != 2 {
		t.Fatalf("TriggerRotation = %d, %v", n, err)
	}
	if x := wantEntry(t, e, model.AuditRotationTriggered, admin, 0, model.OutcomeSuccess); x.Detail != "2 device(s) queued" {
		t.Errorf("rotation_triggered detail = %q", x.Detail)
	}
	if n := len(entriesOf(e, model.AuditRotationStarted)); n != 2 {
		t.Errorf("%d rotation_started entries, want 2", n)
	}

	e.cycle(t) // the first cycle records the schedule and does not fire
	if n := len(entriesOf(e, model.AuditScheduleFired)); n != 0 {
		t.Fatalf("%d schedule entries after the first cycle, want 0", n)
	}
	e.clock.Advance(3 * time.Hour) // three missed fires collapse into one
	e.cycle(t)
	e.cycle(t)
	x := wantEntry(t, e, model.AuditScheduleFired, model.SystemActor("espmdm"), 0, model.OutcomeSuccess)
	if !strings.Contains(x.Detail, "0 * * * *") {
		t.Errorf("schedule entry detail = %q", x.Detail)
	}
}

// No entry of a whole scenario holds a secret the scenario handled (the
// current, new and restored secrets of every device, the Wi-Fi password),
// nor a digest of one.
func TestAuditNeverHoldsASecret(t *testing.T) {
	for _, mode := range []model.RotationMode{model.RotationGrace, model.RotationRestore} {
		t.Run(string(mode), func(t *testing.T) {
			e := newRotationEnv(t, mode, withAudit(), withConfig(func(c *mdm.Config) {
				c.WiFiSSID, c.WiFiPassword = "lab", "wifi-pass-never-logged"
			}))
			e.sched.Audit = e.store.Audit()
			ctx := adminCtx(t)
			secrets := []string{"wifi-pass-never-logged"}
			m := e.model(t, "au10", "")
			var ds []model.Device
			for range 3 {
				d := e.device(t, m, `{}`)
				ds = append(ds, d)
				secrets = append(secrets, e.secret(t, d))
				p, err := e.svc.Provisioning(ctx, d.ID)
				if err != nil {
					t.Fatal(err)
				}
				secrets = append(secrets, p.ClientSecret)
			}
			if _, err := e.svc.TriggerRotation(ctx, 0); err != nil {
				t.Fatal(err)
			}
			for i, d := range ds {
				s := e.fetch(t, d)
				secrets = append(secrets, s)
				switch i {
				case 0:
					if err := e.ack(t, d, s); err != nil {
						t.Fatal(err)
					}
				case 1:
					_ = e.ack(t, d, s+"x")
				}
			}
			e.clock.Advance(10 * time.Minute)
			e.cycle(t)
			if _, err := e.svc.SyncIdentity(ctx, ds[2].ID); err != nil {
				t.Fatal(err)
			}
			entries := e.store.Audit().Entries()
			if len(entries) < 15 {
				t.Fatalf("only %d entries: the scenario did not run", len(entries))
			}
			for _, x := range entries {
				row := fmt.Sprintf("%+v", x)
				for _, s := range secrets {
					if s == "" {
						t.Fatal("an empty secret in the list")
					}
					if strings.Contains(row, s) || strings.Contains(row, digest(s)) {
						t.Errorf("audit entry %d (%s) holds a secret or its digest: %s", x.ID, x.Kind, row)
					}
				}
			}
		})
	}
}

func TestListAuditFilters(t *testing.T) {
	e := newAuditEnv(t, model.RotationGrace)
	ctx := adminCtx(t)
	m := e.model(t, "au11", "")
	d1, d2 := e.device(t, m, `{}`), e.device(t, m, `{}`)
	e.clock.Advance(time.Hour)
	since := e.clock.Now()
	if _, err := e.svc.Provisioning(ctx, d1.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Provisioning(ctx, d2.ID); err != nil {
		t.Fatal(err)
	}
	list := func(f ports.AuditFilter) []model.AuditEntry {
		t.Helper()
		var all []model.AuditEntry
		for {
			p, err := e.svc.ListAudit(t.Context(), f)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, p.Entries...)
			if p.NextAfterID == 0 {
				return all
			}
			f.AfterID = p.NextAfterID
		}
	}
	if got := list(ports.AuditFilter{Limit: 1}); len(got) != 5 { // model, 2 devices, 2 downloads
		t.Errorf("paged through %d entries, want 5", len(got))
	}
	if got := list(ports.AuditFilter{DeviceID: d1.ID}); len(got) != 2 {
		t.Errorf("device filter: %d entries, want 2", len(got))
	}
	if got := list(ports.AuditFilter{Kind: model.AuditProvisioningDownloaded, Actor: admin.Subject}); len(got) != 2 {
		t.Errorf("kind+actor filter: %d entries, want 2", len(got))
	}
	if got := list(ports.AuditFilter{Since: since, Actor: admin.ClientID}); len(got) != 2 {
		t.Errorf("since+actor client filter: %d entries, want 2", len(got))
	}
	for _, bad := range []ports.AuditFilter{{Limit: -1}, {Limit: ports.MaxPageSize + 1}, {AfterID: -1}, {DeviceID: -2}, {Kind: "nope"}} {
		if _, err := e.svc.ListAudit(t.Context(), bad); err == nil {
			t.Errorf("ListAudit(%+v) succeeded, want a validation error", bad)
		}
	}
}

// daily is another schedule, in a zone.
type daily struct{}

func (daily) Next(after time.Time) (time.Time, error) {
	return after.Truncate(24 * time.Hour).Add(24 * time.Hour), nil
}
func (daily) String() string           { return "0 0 * * *" }
func (daily) Location() *time.Location { return time.UTC }

// A start with another rotation schedule than the last one is audited
// once; starting again with the same records nothing.
func TestAuditScheduleChange(t *testing.T) {
	e := newAuditEnv(t, model.RotationGrace)
	e.sched.Audit = nil
	e.cycle(t) // the first cycle with hourly{}: recorded, not audited here
	e.sched.Audit = e.store.Audit()
	start := func(sch ports.Schedule) {
		t.Helper()
		deps := mdm.Deps{
			Models: e.store, Devices: e.store, Firmware: e.store, Blobs: e.fw, Notifier: e.notifier,
			Clock: e.clock, SecretBox: portstest.NewSecretBox(), Schedule: sch, ScheduleRepo: e.sched, Audit: e.store,
		}
		setIdentity(&deps, e.idp)
		svc := mdm.New(deps, mdm.Config{RotationMode: model.RotationGrace})
		if _, _, err := svc.InitRotation(t.Context()); err != nil {
			t.Fatal(err)
		}
		for range 2 { // recorded once per process
			if _, err := svc.RunRotationCycle(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
	}
	start(hourly{})
	if n := len(entriesOf(e, model.AuditScheduleChanged)); n != 0 {
		t.Fatalf("%d schedule changes after a start with the same schedule, want 0", n)
	}
	start(daily{})
	start(daily{})
	x := wantEntry(t, e, model.AuditScheduleChanged, model.SystemActor("espmdm"), 0, model.OutcomeSuccess)
	if x.Detail != "the rotation schedule is now 0 0 * * * (UTC)" {
		t.Errorf("schedule change detail = %q", x.Detail)
	}
}
