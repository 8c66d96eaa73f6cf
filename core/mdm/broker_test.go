package mdm_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/nvs"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// withBroker gives the service device accounts on b (MQTT_AUTH=dynsec).
func withBroker(b *portstest.BrokerAccounts) option {
	return func(d *mdm.Deps, _ *mdm.Config) {
		d.Broker = b
		d.SecretBox = portstest.NewSecretBox()
	}
}

func brokerEnv(t *testing.T) (*env, *portstest.BrokerAccounts) {
	t.Helper()
	b := portstest.NewBrokerAccounts(nil)
	e := newEnv(t, withBroker(b), withAudit())
	b = e.deps.Broker.(*portstest.BrokerAccounts)
	return e, b
}

var brokerDown = &model.UnavailableError{Service: model.ServiceBroker, Err: errors.New("connection refused")}

// failOn makes the fake broker fail op.
func failOn(b *portstest.BrokerAccounts, op string) {
	b.Hook = func(o, _ string) error {
		if o == op {
			return brokerDown
		}
		return nil
	}
}

func TestCreateDeviceMakesItsBrokerAccount(t *testing.T) {
	e, b := brokerEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	p, err := e.svc.Provisioning(t.Context(), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.MQTTPassword) < model.BrokerAccountMinPassword {
		t.Fatalf("mqtt password of %d characters, want at least %d", len(p.MQTTPassword), model.BrokerAccountMinPassword)
	}
	if !b.Authenticates(d.ClientID(), p.MQTTPassword) {
		t.Errorf("the account does not take the provisioning data's password")
	}
	if strings.Contains(string(d.MQTTPassword), p.MQTTPassword) {
		t.Errorf("the row holds the password in the clear")
	}
	// A second device gets another password.
	d2 := e.device(t, m, `{}`)
	p2, _ := e.svc.Provisioning(t.Context(), d2.ID)
	if p2.MQTTPassword == p.MQTTPassword {
		t.Errorf("two devices share a password")
	}

	// In the NVS partition: mqtt_password right after mqtt_url.
	img, err := e.svc.ProvisioningNVS(t.Context(), d.ID, mdm.DefaultNVSSize)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := nvs.Decode(img)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, en := range entries {
		keys = append(keys, en.Key)
		if v, _ := en.Value.(string); en.Key == "mqtt_password" && v != p.MQTTPassword {
			t.Errorf("NVS mqtt_password differs from the account's")
		}
	}
	i := slices.Index(keys, "mqtt_url")
	if i < 0 || i+1 >= len(keys) || keys[i+1] != "mqtt_password" {
		t.Errorf("NVS keys %v: want mqtt_password right after mqtt_url", keys)
	}

	// An inactive device's account is made disabled.
	off := false
	d3, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: &off})
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := b.Account(d3.ClientID()); !ok || !a.Disabled {
		t.Errorf("inactive device's account %+v (found %v), want disabled", a, ok)
	}
}

func TestCreateDeviceWithTheBrokerDownLeavesNothing(t *testing.T) {
	e, b := brokerEnv(t)
	m := e.model(t, "m", "")
	failOn(b, "EnsureDeviceAccount")
	_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
	var ue *model.UnavailableError
	if !errors.As(err, &ue) || ue.Service != model.ServiceBroker {
		t.Fatalf("got %v, want the broker's *model.UnavailableError (a 502)", err)
	}
	if n := e.deviceCount(t); n != 0 {
		t.Errorf("%d devices stored", n)
	}
	created, deleted := e.idpCalls("CreateClient"), e.idpCalls("DeleteClient")
	if len(created) != 1 || !slices.Equal(created, deleted) || e.idp.Has(created[0]) {
		t.Errorf("clients created %v, deleted %v: want the client undone", created, deleted)
	}
	if b.Len() != 0 {
		t.Errorf("%d accounts left", b.Len())
	}
}

func TestCreateDeviceInsertFailureRemovesTheAccount(t *testing.T) {
	e, b := brokerEnv(t)
	m := e.model(t, "m", "")
	dbDown := &model.UnavailableError{Service: "postgres", Err: errors.New("gone")}
	e.store.Hook = func(op string) error {
		if op == "CreateDevice" {
			return dbDown
		}
		return nil
	}
	_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
	wantIs(t, err, dbDown)
	if b.Len() != 0 || len(e.idp.Calls()) == 0 || e.idp.Has(e.idpCalls("CreateClient")[0]) {
		t.Errorf("accounts left %d, client left: want neither", b.Len())
	}
}

func TestDeviceActivationReachesItsAccount(t *testing.T) {
	e, b := brokerEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	p, _ := e.svc.Provisioning(t.Context(), d.ID)
	off, on := false, true

	if _, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Active: &off}); err != nil {
		t.Fatal(err)
	}
	if b.Authenticates(d.ClientID(), p.MQTTPassword) {
		t.Errorf("a deactivated device's account still connects")
	}
	if _, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Active: &on}); err != nil {
		t.Fatal(err)
	}
	if !b.Authenticates(d.ClientID(), p.MQTTPassword) {
		t.Errorf("a reactivated device's account does not connect")
	}

	// The broker down: the deactivation fails and changes nothing.
	failOn(b, "DisableDeviceAccount")
	_, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Active: &off})
	wantIs(t, err, model.ErrUnavailable)
	if cur, _ := e.svc.GetDevice(t.Context(), d.ID); !cur.Active {
		t.Errorf("the row says inactive while the account could not be disabled")
	}
	// A config-only change does not need the broker.
	if _, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Config: json.RawMessage(`{"a":1}`)}); err != nil {
		t.Errorf("config change with the broker down: %v", err)
	}

	// The row update fails after the account was disabled: put back.
	b.Hook = nil
	e.store.Hook = func(op string) error {
		if op == "UpdateDevice" {
			return errors.New("database gone")
		}
		return nil
	}
	if _, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Active: &off}); err == nil {
		t.Fatal("UpdateDevice succeeded with the database failing")
	}
	if !b.Authenticates(d.ClientID(), p.MQTTPassword) {
		t.Errorf("the account stayed disabled though the row still says active")
	}
}

func TestDeleteDeviceRemovesItsAccount(t *testing.T) {
	e, b := brokerEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	if err := e.svc.DeleteDevice(t.Context(), d.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Account(d.ClientID()); ok {
		t.Errorf("a deleted device's account is left")
	}
	// The broker down: the deletion still succeeds, OnError hears of it.
	d2 := e.device(t, m, `{}`)
	failOn(b, "DeleteDeviceAccount")
	if err := e.svc.DeleteDevice(t.Context(), d2.ID); err != nil {
		t.Fatal(err)
	}
	r := e.reported()
	if len(r) != 1 || !errors.Is(r[0].err, model.ErrUnavailable) || !strings.Contains(r[0].err.Error(), d2.ClientID()) {
		t.Errorf("OnError got %v, want the failed account deletion", r)
	}
}

func TestReconcileBrokerAccounts(t *testing.T) {
	e, b := brokerEnv(t)
	m := e.model(t, "m", "")

	// A device made before accounts: no password, no account.
	legacy := e.device(t, m, `{}`)
	if _, err := e.store.UpdateDevice(t.Context(), legacy.ID, func(d *model.Device) ([]model.AuditEntry, error) {
		d.MQTTPassword = nil
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteDeviceAccount(t.Context(), legacy.ClientID()); err != nil {
		t.Fatal(err)
	}
	// A device whose account was changed by hand, and one disabled by hand.
	changed := e.device(t, m, `{}`)
	pc, _ := e.svc.Provisioning(t.Context(), changed.ID)
	b.Put(model.BrokerAccountInfo{ClientID: changed.ClientID(), Problems: []string{"role removed"}}, "someone-elses-password-123")
	disabled := e.device(t, m, `{}`)
	if err := b.DisableDeviceAccount(t.Context(), disabled.ClientID()); err != nil {
		t.Fatal(err)
	}
	// An inactive device whose account was enabled by hand.
	off := false
	inactive, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: &off})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.EnableDeviceAccount(t.Context(), inactive.ClientID()); err != nil {
		t.Fatal(err)
	}
	// An old orphan and a young one (its device row may be on its way).
	b.Put(model.BrokerAccountInfo{ClientID: model.ClientID("m", "zzzzzzzz"), CreatedAt: t0.Add(-time.Hour)}, "orphan-password-0123456789")
	e.clock.Advance(time.Hour)
	young := model.ClientID("m", "yyyyyyyy")
	b.Put(model.BrokerAccountInfo{ClientID: young, CreatedAt: e.clock.Now()}, "young-password-0123456789")

	rep, err := e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.AccountsMade, []string{legacy.ClientID()}) {
		t.Errorf("AccountsMade %v, want [%s]", rep.AccountsMade, legacy.ClientID())
	}
	wantRepaired := []string{changed.ClientID(), disabled.ClientID(), inactive.ClientID()}
	slices.Sort(wantRepaired)
	slices.Sort(rep.AccountsRepaired)
	if !slices.Equal(rep.AccountsRepaired, wantRepaired) {
		t.Errorf("AccountsRepaired %v, want %v", rep.AccountsRepaired, wantRepaired)
	}
	if !slices.Equal(rep.AccountsDeleted, []string{model.ClientID("m", "zzzzzzzz")}) {
		t.Errorf("AccountsDeleted %v, want the old orphan only", rep.AccountsDeleted)
	}
	if _, ok := b.Account(young); !ok {
		t.Errorf("the young orphan was removed")
	}

	// The legacy device now has a password, in its provisioning data and
	// on the broker; the changed one its own password back.
	pl, err := e.svc.Provisioning(t.Context(), legacy.ID)
	if err != nil {
		t.Fatal(err)
	}
	if pl.MQTTPassword == "" || !b.Authenticates(legacy.ClientID(), pl.MQTTPassword) {
		t.Errorf("the legacy device's new password does not connect")
	}
	if !b.Authenticates(changed.ClientID(), pc.MQTTPassword) {
		t.Errorf("the changed account was not given the device's password back")
	}
	if a, _ := b.Account(disabled.ClientID()); a.Disabled {
		t.Errorf("an active device's account stays disabled")
	}
	if a, _ := b.Account(inactive.ClientID()); !a.Disabled {
		t.Errorf("an inactive device's account stays enabled")
	}
	// Audited, with no password in the log.
	kinds := map[model.AuditKind]int{}
	for _, en := range e.store.Audit().Entries() {
		kinds[en.Kind]++
		for _, pw := range []string{pl.MQTTPassword, pc.MQTTPassword} {
			if strings.Contains(en.Detail, pw) {
				t.Errorf("a password in the audit log: %+v", en)
			}
		}
	}
	if kinds[model.AuditBrokerAccountReconciled] != 4 || kinds[model.AuditOrphanAccountDeleted] != 1 {
		t.Errorf("audit kinds %v, want 4 %s and 1 %s", kinds, model.AuditBrokerAccountReconciled, model.AuditOrphanAccountDeleted)
	}

	// A second pass finds nothing to do.
	rep, err = e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.AccountsMade)+len(rep.AccountsRepaired)+len(rep.AccountsDeleted)+len(rep.AccountsFailed) != 0 {
		t.Errorf("second pass %+v, want nothing done", rep)
	}
}

func TestNoBrokerAccountsWithoutABroker(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	p, err := e.svc.Provisioning(t.Context(), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p.MQTTPassword != "" || d.MQTTPassword != nil {
		t.Errorf("a device got a broker password without broker accounts")
	}
	rep, err := e.svc.Reconcile(t.Context())
	if err != nil || len(rep.AccountsMade) != 0 {
		t.Errorf("Reconcile = %+v, %v", rep, err)
	}
}
