package mqtt_test

import (
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/integration"
)

// TestAnonymousDeviceReads is MQTT_AUTH_GRACE on a broker whose listener
// lets clients without an account in: with the grace on, such a client
// subscribes to the three device topic filters a device uses, not to
// iotsupport/# or #, and publishes nothing; with it off, it may read
// nothing at all.
func TestAnonymousDeviceReads(t *testing.T) {
	b := integration.NewBroker(t, true)
	ctx := ctxT(t, 2*time.Minute)
	accounts := startDynSec(t, mqtt.DynSecConfig{BrokerURL: b.AdminURL()})
	code := modelCode()
	me, other := "iotdevice-"+code+"-"+randHex(4), "iotdevice-"+code+"-"+randHex(4)

	if err := accounts.SetAnonymousDeviceReads(ctx, true); err != nil {
		t.Fatalf("SetAnonymousDeviceReads(true): %v", err)
	}
	if err := accounts.SetAnonymousDeviceReads(ctx, true); err != nil {
		t.Fatalf("SetAnonymousDeviceReads(true) again: %v", err)
	}
	legacy, rc, err := dialMQTT(t, ctx, b.URL, me, "", "")
	if err != nil {
		t.Fatalf("a client without an account under the grace: %#x %v", rc, err)
	}
	got := legacy.subscribeEach(t, ctx, "iotsupport/"+me+"/rotation", "iotsupport/"+me+"/config", "iotsupport/"+code+"/firmware",
		"iotsupport/"+me+"/#", "iotsupport/#", "#", "elsewhere/#")
	for f, want := range map[string]bool{
		"iotsupport/" + me + "/rotation": true, "iotsupport/" + me + "/config": true, "iotsupport/" + code + "/firmware": true,
		"iotsupport/" + me + "/#": false, "iotsupport/#": false, "#": false, "elsewhere/#": false,
	} {
		if granted := got[f] < 0x80; granted != want {
			t.Errorf("subscription to %s: reason %#x, want granted %t", f, got[f], want)
		}
	}
	// espmdm's publishes reach it; its own reach nobody.
	admin, rc, err := dialMQTT(t, ctx, b.URL, "espmdm-"+randHex(4), b.AdminUser, b.AdminPassword)
	if err != nil {
		t.Fatalf("espmdm's account: %#x %v", rc, err)
	}
	admin.subscribeEach(t, ctx, "watch/#")
	for _, topic := range []string{"iotsupport/" + me + "/config", "iotsupport/" + other + "/config"} {
		if _, err := admin.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{}`)}); err != nil {
			t.Fatalf("espmdm publishes %s: %v", topic, err)
		}
	}
	_, _ = legacy.cli.Publish(ctx, &paho.Publish{Topic: "watch/x", QoS: 1, Payload: []byte(`{}`)})
	msgs := legacy.drain(time.Second)
	if len(msgs) != 1 || msgs[0].Topic != "iotsupport/"+me+"/config" {
		var topics []string
		for _, m := range msgs {
			topics = append(topics, m.Topic)
		}
		t.Errorf("the client without an account received %v, want its own config nudge only", topics)
	}
	if n := len(admin.drain(500 * time.Millisecond)); n != 0 {
		t.Errorf("%d publishes of a client without an account arrived", n)
	}

	// The grace over: nothing.
	if err := accounts.SetAnonymousDeviceReads(ctx, false); err != nil {
		t.Fatalf("SetAnonymousDeviceReads(false): %v", err)
	}
	after, rc, err := dialMQTT(t, ctx, b.URL, me+"-2", "", "")
	if err != nil {
		t.Fatalf("connect: %#x %v", rc, err)
	}
	if got := after.subscribeEach(t, ctx, "iotsupport/"+me+"-2/config", "iotsupport/"+code+"/firmware"); got["iotsupport/"+me+"-2/config"] < 0x80 || got["iotsupport/"+code+"/firmware"] < 0x80 {
		t.Errorf("after the grace, subscriptions %v granted", got)
	}
}
