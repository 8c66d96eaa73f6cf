package integration_test

import (
	"context"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/espmdm/espmdm/integration"
)

// mqttLogin opens an MQTT v5 session as user (anonymous when empty) and
// returns the CONNACK's reason code when the broker refuses it.
func mqttLogin(t *testing.T, ctx context.Context, brokerURL, clientID, user, password string, onMsg func(paho.PublishReceived) (bool, error)) (*paho.Client, byte, error) {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		t.Fatalf("dial broker: %v", err)
	}
	cfg := paho.ClientConfig{ClientID: clientID, Conn: conn}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){onMsg}
	}
	c := paho.NewClient(cfg)
	cp := &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30}
	if user != "" {
		cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = user, true, []byte(password), true
	}
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		if ack != nil {
			return nil, ack.ReasonCode, err
		}
		return nil, 0, err
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return c, 0, nil
}

// TestStackBroker: the stack's broker runs the dynamic security plugin.
// espmdm's account gets in and may publish on iotsupport/#; an unknown
// account is refused; clients without one get in only while the stack lets
// them (MQTTAnonymous), and then may read but not publish on iotsupport/#,
// nor change the accounts.
func TestStackBroker(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, time.Minute)
	if _, rc, err := mqttLogin(t, ctx, st.MQTTURL, "unknown-"+randHex(4), "iotdevice-nobody-abcdefgh", "x", nil); err == nil || (rc != 0x86 && rc != 0x87) {
		t.Errorf("an unknown account: reason %#x, %v; want refused", rc, err)
	}
	admin, rc, err := mqttLogin(t, ctx, st.MQTTURL, "espmdm-"+randHex(4), st.MQTTAdminUser, st.MQTTAdminPassword, nil)
	if err != nil {
		t.Fatalf("espmdm's account is refused: %#x %v", rc, err)
	}

	got := make(chan *paho.Publish, 10)
	anon, rc, err := mqttLogin(t, ctx, st.MQTTURL, "anon-"+randHex(4), "", "", func(pr paho.PublishReceived) (bool, error) {
		got <- pr.Packet
		return true, nil
	})
	if !st.MQTTAnonymous {
		if err == nil || (rc != 0x86 && rc != 0x87) {
			t.Errorf("anonymous access is off, yet: reason %#x, %v", rc, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("anonymous access is on, yet: %#x %v", rc, err)
	}
	topic := "iotsupport/iotdevice-brk_" + randHex(3) + "-abcdefgh/config"
	if sa, err := anon.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "iotsupport/#", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("anonymous subscription to iotsupport/#: %v %v", sa, err)
	}
	if _, err := admin.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1}); err != nil {
		t.Fatalf("espmdm's publish on %s: %v", topic, err)
	}
	select {
	case p := <-got:
		if p.Topic != topic {
			t.Errorf("got %s, want %s", p.Topic, topic)
		}
	case <-ctx.Done():
		t.Fatal("espmdm's publish did not arrive")
	}
	for _, tp := range []string{topic, "iotsupport/m/firmware", "$CONTROL/dynamic-security/v1"} {
		resp, err := anon.Publish(ctx, &paho.Publish{Topic: tp, QoS: 1,
			Payload: []byte(`{"commands":[{"command":"createClient","username":"iotdevice-evil-abcdefgh","password":"x"}]}`)})
		if err == nil || resp == nil || resp.ReasonCode != 0x87 {
			t.Errorf("anonymous publish on %s: %+v %v, want refused (0x87)", tp, resp, err)
		}
	}
	if _, rc, err := mqttLogin(t, ctx, st.MQTTURL, "evil-"+randHex(4), "iotdevice-evil-abcdefgh", "x", nil); err == nil {
		t.Errorf("an account made by an anonymous publish on $CONTROL logs in (%#x)", rc)
	}
	select {
	case p := <-got:
		t.Errorf("an anonymous publish reached a subscriber: %s", p.Topic)
	case <-time.After(500 * time.Millisecond):
	}
	// Elsewhere anonymous clients publish as before.
	if _, err := anon.Publish(ctx, &paho.Publish{Topic: "smoke/" + randHex(4), QoS: 1}); err != nil {
		t.Errorf("anonymous publish outside iotsupport/: %v", err)
	}
}

// TestBrokerWithoutAnonymousAccess: a broker started with anonymous access
// off (what the stack becomes with MQTTAnonymous false) refuses clients
// without an account and lets espmdm's in.
func TestBrokerWithoutAnonymousAccess(t *testing.T) {
	b := integration.NewBroker(t, false)
	ctx := ctxT(t, time.Minute)
	if _, rc, err := mqttLogin(t, ctx, b.URL, "anon-"+randHex(4), "", "", nil); err == nil || (rc != 0x86 && rc != 0x87) {
		t.Errorf("anonymous: reason %#x, %v; want refused", rc, err)
	}
	if _, rc, err := mqttLogin(t, ctx, b.URL, "espmdm-"+randHex(4), b.AdminUser, b.AdminPassword, nil); err != nil {
		t.Errorf("espmdm's account: %#x %v", rc, err)
	}
}
