package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/fx"

	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
)

// waitFor polls cond until it holds, failing after timeout with what.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// inbox collects what an MQTT client receives.
type inbox struct {
	mu     sync.Mutex
	topics []string
}

func (b *inbox) on(pr paho.PublishReceived) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.topics = append(b.topics, pr.Packet.Topic)
	return true, nil
}

func (b *inbox) has(prefix string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range b.topics {
		if strings.HasPrefix(t, prefix) {
			return true
		}
	}
	return false
}

func (b *inbox) all() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.topics...)
}

// accountDevice is a device made through espmdm and its broker password
// from the provisioning data.
func accountDevice(t *testing.T, s *server, modelID int64) (deviceDTO, string) {
	t.Helper()
	d := newDevice(t, s, modelID, `{"n":1}`)
	var p struct {
		MQTTPassword string `json:"mqtt_password"`
	}
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), s.admin, nil).want(t, http.StatusOK, &p)
	if len(p.MQTTPassword) < 22 {
		t.Fatalf("device %d: mqtt_password of %d characters in its provisioning data", d.ID, len(p.MQTTPassword))
	}
	s.keep(p.MQTTPassword)
	return d, p.MQTTPassword
}

// subscribeAs subscribes c to filter and returns the reason code.
func subscribeAs(t *testing.T, ctx context.Context, c *paho.Client, filter string) byte {
	t.Helper()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa != nil && len(sa.Reasons) == 1 {
		return sa.Reasons[0]
	}
	if err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	t.Fatalf("subscribe %s: no reason code", filter)
	return 0
}

// TestE2EBrokerAccounts: SPEC §19 with the real broker and its dynamic
// security plugin, through espmdm. Devices connect only with the account
// espmdm made for them and read only their own topics and their model's
// firmware topic; they publish nothing; deactivation, reactivation and
// deletion reach the account; the reconciler makes a missing account and
// removes an orphan; a broker restart keeps the accounts.
func TestE2EBrokerAccounts(t *testing.T) {
	// The clock runs ahead so that an orphan account made now is past the
	// reconciler's grace period.
	s := startServer(t, map[string]string{"RECONCILE_INTERVAL": "1s", "ROTATION_TICK_SECONDS": "1"},
		fx.Decorate(func(c ports.Clock) ports.Clock { return shiftedClock{c, 5 * time.Minute} }))
	st := s.st
	ctx := ctxT(t, 3*time.Minute)
	m := newModel(t, s, nil)
	a, aPass := accountDevice(t, s, m.ID)
	b, bPass := accountDevice(t, s, m.ID)

	// Without an account, or with another device's password: refused.
	if _, _, err := mqttLogin(t, ctx, st.MQTTURL, "anon-"+randHex(4), "", "", nil); err == nil {
		t.Error("a client without an account got in")
	}
	if _, _, err := mqttLogin(t, ctx, st.MQTTURL, a.ClientID, a.ClientID, bPass, nil); err == nil {
		t.Error("device A got in with device B's password")
	}

	// A reads its own topics and its model's firmware topic, nothing else.
	var got inbox
	ca, _, err := mqttLogin(t, ctx, st.MQTTURL, a.ClientID, a.ClientID, aPass, got.on)
	if err != nil {
		t.Fatalf("device A with its account: %v", err)
	}
	for _, f := range []string{"iotsupport/" + a.ClientID + "/#", "iotsupport/" + m.Code + "/firmware"} {
		if rc := subscribeAs(t, ctx, ca, f); rc >= 0x80 {
			t.Errorf("A's subscription to %s refused (%#x)", f, rc)
		}
	}
	for _, f := range []string{"iotsupport/" + b.ClientID + "/#", "iotsupport/#", "#"} {
		if rc := subscribeAs(t, ctx, ca, f); rc < 0x80 {
			t.Errorf("A's subscription to %s granted (%#x)", f, rc)
		}
	}
	// espmdm's own publishes arrive: config changes of A and B, A's
	// rotation, a release.
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", a.ID), s.admin, `{"config":{"n":2}}`).want(t, http.StatusOK, nil)
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", a.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", b.ID), s.admin, `{"config":{"n":2}}`).want(t, http.StatusOK, nil)
	s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
		bytes.NewReader(firmwareImage(esp32image.ChipESP32, "2.0.0")), "Content-Type", "application/octet-stream").
		want(t, http.StatusCreated, nil)
	waitFor(t, 20*time.Second, "A's config, rotation and firmware nudges", func() bool {
		return got.has("iotsupport/"+a.ClientID+"/config") && got.has("iotsupport/"+a.ClientID+"/rotation") &&
			got.has("iotsupport/"+m.Code+"/firmware")
	})
	// A's publishes reach nobody, on its own topics or another's.
	var watched inbox
	admin, _, err := mqttLogin(t, ctx, st.MQTTURL, "e2e-watch-"+randHex(4), st.MQTTAdminUser, st.MQTTAdminPassword, watched.on)
	if err != nil {
		t.Fatal(err)
	}
	subscribeAs(t, ctx, admin, "iotsupport/#")
	for _, topic := range []string{"iotsupport/" + b.ClientID + "/rotation", "iotsupport/" + m.Code + "/firmware", "elsewhere/x"} {
		_, _ = ca.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{}`)})
	}
	time.Sleep(time.Second) // what would arrive, arrives within this
	if got := watched.all(); len(got) != 0 {
		t.Errorf("A's publishes reached a subscriber: %v", got)
	}
	if got := got.all(); strings.Contains(strings.Join(got, " "), b.ClientID) {
		t.Errorf("A received B's messages: %v", got)
	}

	// Deactivated: cannot connect; reactivated: can again.
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", a.ID), s.admin, `{"active":false}`).want(t, http.StatusOK, nil)
	if _, _, err := mqttLogin(t, ctx, st.MQTTURL, a.ClientID+"-2", a.ClientID, aPass, nil); err == nil {
		t.Error("a deactivated device got in")
	}
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", a.ID), s.admin, `{"active":true}`).want(t, http.StatusOK, nil)
	if _, _, err := mqttLogin(t, ctx, st.MQTTURL, a.ClientID+"-3", a.ClientID, aPass, nil); err != nil {
		t.Errorf("a reactivated device: %v", err)
	}

	// Deleted: its account is gone.
	s.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", b.ID), s.admin, nil).want(t, http.StatusNoContent, nil)
	if _, _, err := mqttLogin(t, ctx, st.MQTTURL, b.ClientID, b.ClientID, bPass, nil); err == nil {
		t.Error("a deleted device got in")
	}

	// The reconciler makes a missing account (with the device's password)
	// and removes an orphan older than the grace period.
	ds, err := mqtt.NewDynSec(mqtt.DynSecConfig{BrokerURL: st.MQTTAdminURL()})
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ds.Stop(context.Background()) })
	if err := ds.DeleteDeviceAccount(ctx, a.ClientID); err != nil {
		t.Fatal(err)
	}
	orphan := "iotdevice-" + m.Code + "-" + randKey()
	if err := ds.EnsureDeviceAccount(ctx, model.BrokerAccount{ClientID: orphan, Password: "orphan-" + randHex(16)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the reconciler to remove the orphan account", func() bool {
		accts, err := ds.ListDeviceAccounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range accts {
			if x.ClientID == orphan {
				return false
			}
		}
		return true
	})
	waitFor(t, 30*time.Second, "the reconciler to make A's account again", func() bool {
		c, _, err := mqttLogin(t, ctx, st.MQTTURL, a.ClientID+"-4", a.ClientID, aPass, nil)
		if c != nil {
			_ = c.Disconnect(&paho.Disconnect{})
		}
		return err == nil
	})

	// A broker restart loses no account.
	restart(t, st, integration.Mosquitto, func() {})
	waitFor(t, 30*time.Second, "A to log in after the broker's restart", func() bool {
		c, _, err := mqttLogin(t, ctx, st.MQTTURL, a.ClientID+"-5", a.ClientID, aPass, nil)
		if c != nil {
			_ = c.Disconnect(&paho.Disconnect{})
		}
		return err == nil
	})
}
