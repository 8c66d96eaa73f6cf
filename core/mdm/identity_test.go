package mdm_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

func TestIdentityStatusAndSync(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	secret, _ := e.idp.ClientSecret(t.Context(), d.ClientID())

	st, err := e.svc.IdentityStatus(t.Context(), d.ID)
	if err != nil || !st.Exists || len(st.Problems) != 0 || st.ClientID != d.ClientID() {
		t.Errorf("healthy: got %+v, %v", st, err)
	}
	e.idp.Break(d.ClientID(), "role mapper missing")
	st, _ = e.svc.IdentityStatus(t.Context(), d.ID)
	if !slices.Equal(st.Problems, []string{"role mapper missing"}) {
		t.Errorf("broken: got %+v", st)
	}
	st, err = e.svc.SyncIdentity(t.Context(), d.ID)
	if err != nil || !st.Exists || len(st.Problems) != 0 {
		t.Errorf("after sync: got %+v, %v", st, err)
	}
	if s, _ := e.idp.ClientSecret(t.Context(), d.ClientID()); s != secret {
		t.Errorf("sync changed the secret")
	}

	if err := e.idp.DeleteClient(t.Context(), d.ClientID()); err != nil {
		t.Fatal(err)
	}
	st, _ = e.svc.IdentityStatus(t.Context(), d.ID)
	if st.Exists {
		t.Errorf("deleted client reported as existing")
	}
	if st, err = e.svc.SyncIdentity(t.Context(), d.ID); err != nil || !st.Exists || !e.idp.Has(d.ClientID()) {
		t.Errorf("sync did not recreate the client: %+v, %v", st, err)
	}

	_, err = e.svc.IdentityStatus(t.Context(), 999)
	wantIs(t, err, model.ErrNotFound)
	_, err = e.svc.SyncIdentity(t.Context(), 999)
	wantIs(t, err, model.ErrNotFound)
}

func TestReconcile(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	other := e.model(t, "other", "")
	healthy := e.device(t, m, `{}`)
	lost := e.device(t, m, `{}`)
	if err := e.idp.DeleteClient(t.Context(), lost.ClientID()); err != nil {
		t.Fatal(err)
	}

	now := e.clock.Advance(time.Hour)
	old := now.Add(-mdm.DefaultOrphanGrace - time.Second)
	young := now.Add(-mdm.DefaultOrphanGrace + time.Second)
	e.idp.Put("iotdevice-m-0ld0rph4", "s", old)         // no row, old: deleted
	e.idp.Put("iotdevice-m-y0ungg00", "s", young)       // no row, young: kept
	e.idp.Put("iotdevice-m-unkn0wn0", "s", time.Time{}) // no row, age unknown: deleted
	e.idp.Put("iotdevice-Bad-Id", "s", old)             // does not parse: deleted
	e.idp.Put("iotdevice-other-"+healthy.Key, "s", old) // key belongs to a device of model m: deleted
	e.idp.Put("iotdevice-m-f41l1ng0", "s", old)         // deletion fails
	e.idp.Put("iotdevice-other-y0ungbad", "s", young)   // young: kept
	_ = other

	failing := errors.New("keycloak says no")
	e.idp.Hook = func(op, id string) error {
		if op == "DeleteClient" && id == "iotdevice-m-f41l1ng0" {
			return failing
		}
		return nil
	}
	rep, err := e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := ports.ReconcileReport{
		DeletedOrphans: []string{"iotdevice-Bad-Id", "iotdevice-m-0ld0rph4", "iotdevice-m-unkn0wn0", "iotdevice-other-" + healthy.Key},
		MissingClients: []string{lost.ClientID()},
		Failed:         []string{"iotdevice-m-f41l1ng0"},
	}
	if !slices.Equal(rep.DeletedOrphans, want.DeletedOrphans) || !slices.Equal(rep.MissingClients, want.MissingClients) ||
		!slices.Equal(rep.Failed, want.Failed) {
		t.Errorf("got %+v\nwant %+v", rep, want)
	}
	for id, wantExists := range map[string]bool{
		healthy.ClientID(): true, "iotdevice-m-y0ungg00": true, "iotdevice-other-y0ungbad": true,
		"iotdevice-m-f41l1ng0": true, "iotdevice-m-0ld0rph4": false, "iotdevice-Bad-Id": false,
	} {
		if e.idp.Has(id) != wantExists {
			t.Errorf("client %s exists %v, want %v", id, !wantExists, wantExists)
		}
	}
	if r := e.reported(); len(r) != 1 || !errors.Is(r[0].err, failing) {
		t.Errorf("OnError got %v", r)
	}

	// Once the young orphan is old enough, the next run removes it.
	e.clock.Advance(mdm.DefaultOrphanGrace)
	e.idp.Hook = nil
	rep, err = e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"iotdevice-m-f41l1ng0", "iotdevice-m-y0ungg00", "iotdevice-other-y0ungbad"}; !slices.Equal(rep.DeletedOrphans, want) {
		t.Errorf("second run deleted %v, want %v", rep.DeletedOrphans, want)
	}
}

func TestReconcileDeviceCreatedDuringRun(t *testing.T) {
	// A device whose row lands between the device listing and the client
	// check is neither an orphan nor missing.
	e := newEnv(t)
	m := e.model(t, "m", "")
	var late model.Device
	e.idp.Hook = func(op, _ string) error {
		if op == "ListDeviceClients" && late.ID == 0 {
			e.idp.Hook = nil
			late = e.device(t, m, `{}`)
			e.idp.Put(late.ClientID(), "s", time.Time{}) // even with an unknown age
		}
		return nil
	}
	rep, err := e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeletedOrphans)+len(rep.MissingClients)+len(rep.Failed) != 0 || !e.idp.Has(late.ClientID()) {
		t.Errorf("got %+v", rep)
	}
}

func TestReconcileDeviceDeletedDuringRun(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	e.idp.Hook = func(op, _ string) error {
		if op == "ListDeviceClients" {
			e.idp.Hook = nil
			if err := e.svc.DeleteDevice(context.Background(), d.ID); err != nil {
				t.Error(err)
			}
		}
		return nil
	}
	rep, err := e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.MissingClients) != 0 {
		t.Errorf("a device deleted during the run was reported missing: %+v", rep)
	}
}

func TestReconcileManyDevicesAndClients(t *testing.T) {
	// More devices than one page and more orphans than one key batch.
	e := newEnv(t)
	m := e.model(t, "m", "")
	for i := range 1205 {
		d := model.Device{Key: fmt.Sprintf("d%07d", i), DeviceModelID: m.ID, Active: true}
		if err := e.store.CreateDevice(t.Context(), &d, nil); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			e.idp.Put(d.ClientID(), "s", t0) // odd devices miss their client
		}
	}
	for i := range 1100 {
		e.idp.Put(fmt.Sprintf("iotdevice-m-o%07d", i), "s", time.Time{})
	}
	var keyBatches []int
	e.store.Hook = func(op string) error {
		if op == "DeviceKeysExist" {
			keyBatches = append(keyBatches, 0)
		}
		return nil
	}
	rep, err := e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeletedOrphans) != 1100 || len(rep.MissingClients) != 602 || len(rep.Failed) != 0 {
		t.Errorf("deleted %d, missing %d, failed %d; want 1100, 602, 0", len(rep.DeletedOrphans), len(rep.MissingClients), len(rep.Failed))
	}
	if len(keyBatches) < 3 {
		t.Errorf("%d DeviceKeysExist calls for 1100 keys, want batches", len(keyBatches))
	}
	for _, id := range rep.MissingClients {
		if !strings.HasPrefix(id, "iotdevice-m-d") {
			t.Errorf("missing client %s", id)
		}
	}
}

func TestReconcileListingFails(t *testing.T) {
	down := &model.UnavailableError{Service: "keycloak", Err: errors.New("down")}
	e := newEnv(t)
	e.idp.Hook = func(op, _ string) error {
		if op == "ListDeviceClients" {
			return down
		}
		return nil
	}
	_, err := e.svc.Reconcile(t.Context())
	wantIs(t, err, model.ErrUnavailable)

	e = newEnv(t)
	e.store.Hook = func(op string) error {
		if op == "ListDevices" {
			return down
		}
		return nil
	}
	_, err = e.svc.Reconcile(t.Context())
	wantIs(t, err, model.ErrUnavailable)
	if calls := e.idpCalls("DeleteClient"); len(calls) != 0 {
		t.Errorf("deleted clients without knowing the devices: %v", calls)
	}
}
