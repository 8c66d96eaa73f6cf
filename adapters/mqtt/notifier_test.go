package mqtt_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
)

// want describes one expected message.
type want struct {
	topic       string
	payload     string
	contentType string
}

// notifyAll sends one of each notification and returns what the subscriber
// should receive.
func notifyAll(t *testing.T, ctx context.Context, n *mqtt.Notifier, clientID, code, version string) []want {
	t.Helper()
	if err := n.RotationNudge(ctx, clientID); err != nil {
		t.Fatalf("RotationNudge: %v", err)
	}
	if err := n.ConfigChanged(ctx, clientID); err != nil {
		t.Fatalf("ConfigChanged: %v", err)
	}
	if err := n.FirmwareReleased(ctx, code, version); err != nil {
		t.Fatalf("FirmwareReleased: %v", err)
	}
	return []want{
		{topic: "iotsupport/" + clientID + "/rotation"},
		{topic: "iotsupport/" + clientID + "/config"},
		{topic: "iotsupport/" + code + "/firmware", payload: `{"firmware_version":"` + version + `"}`, contentType: "application/json"},
	}
}

// checkMessages compares received messages with the expected ones.
func checkMessages(t *testing.T, got map[string]*paho.Publish, wants []want) {
	t.Helper()
	for _, w := range wants {
		p, ok := got[w.topic]
		if !ok {
			t.Errorf("no message on %s; got %v", w.topic, topicsOf(got))
			continue
		}
		if p.QoS != 1 {
			t.Errorf("%s: QoS = %d, want 1", w.topic, p.QoS)
		}
		if p.Retain {
			t.Errorf("%s: retained, want not retained", w.topic)
		}
		if !bytes.Equal(p.Payload, []byte(w.payload)) {
			t.Errorf("%s: payload = %q, want %q", w.topic, p.Payload, w.payload)
		}
		var ct string
		if p.Properties != nil {
			ct = p.Properties.ContentType
		}
		if ct != w.contentType {
			t.Errorf("%s: content type = %q, want %q", w.topic, ct, w.contentType)
		}
		if w.contentType == "application/json" && (p.Properties == nil || p.Properties.PayloadFormat == nil || *p.Properties.PayloadFormat != 1) {
			t.Errorf("%s: payload format indicator not set to 1 (UTF-8)", w.topic)
		}
	}
	if len(got) != len(wants) {
		t.Errorf("got messages on %v, want %d", topicsOf(got), len(wants))
	}
}

func TestNotificationsArrive(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 60*time.Second)
	clientID, code := deviceClientID(), modelCode()
	sub := subscribe(t, ctx, st.MQTTAdminURL(), "iotsupport/"+clientID+"/+", "iotsupport/"+code+"/firmware")

	var obs observations
	n := startNotifier(t, mqtt.Config{BrokerURL: st.MQTTAdminURL(), Observe: obs.observe})
	if err := n.AwaitConnection(ctx); err != nil {
		t.Fatalf("AwaitConnection: %v", err)
	}
	if !n.Connected() {
		t.Error("Connected() = false after AwaitConnection")
	}
	wants := notifyAll(t, ctx, n, clientID, code, "1.4.2-rc1+g3ab")
	checkMessages(t, sub.receive(t, ctx, len(wants)), wants)

	for _, op := range []string{mqtt.OpConnect, mqtt.OpRotationNudge, mqtt.OpConfigChanged, mqtt.OpFirmwareReleased} {
		if ok, failed := obs.count(op); ok != 1 || failed != 0 {
			t.Errorf("Observe(%s): %d ok, %d failed; want 1 ok", op, ok, failed)
		}
	}
}

func TestFirmwarePayloadEscapesVersion(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 60*time.Second)
	code := modelCode()
	sub := subscribe(t, ctx, st.MQTTAdminURL(), "iotsupport/"+code+"/firmware")
	n := startNotifier(t, mqtt.Config{BrokerURL: st.MQTTAdminURL()})
	version := `v2 "quoted" \ ünïcode`
	if err := n.FirmwareReleased(ctx, code, version); err != nil {
		t.Fatalf("FirmwareReleased: %v", err)
	}
	p := sub.receive(t, ctx, 1)["iotsupport/"+code+"/firmware"]
	wantPayload := `{"firmware_version":"v2 \"quoted\" \\ ünïcode"}`
	if string(p.Payload) != wantPayload {
		t.Errorf("payload = %s, want %s", p.Payload, wantPayload)
	}
}

// TestFirmwareAssigned: a campaign's nudge goes to the device's own
// firmware topic with the version and the image's SHA-256.
func TestFirmwareAssigned(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 60*time.Second)
	client := "iotdevice-" + modelCode() + "-abcd1234"
	sub := subscribe(t, ctx, st.MQTTAdminURL(), "iotsupport/"+client+"/firmware")
	n := startNotifier(t, mqtt.Config{BrokerURL: st.MQTTAdminURL()})
	sha := strings.Repeat("0a", 32)
	if err := n.FirmwareAssigned(ctx, client, "2.0.0", sha); err != nil {
		t.Fatalf("FirmwareAssigned: %v", err)
	}
	p := sub.receive(t, ctx, 1)["iotsupport/"+client+"/firmware"]
	if want := `{"firmware_version":"2.0.0","sha256":"` + sha + `"}`; string(p.Payload) != want {
		t.Errorf("payload = %s, want %s", p.Payload, want)
	}
	if p.QoS != 1 || p.Retain {
		t.Errorf("QoS %d retain %v, want 1 and not retained", p.QoS, p.Retain)
	}
}

// TestBrokerOutage stops the shared Mosquitto: notifications made while it
// is down succeed and arrive once it is back. A gate in front of the
// notifier's dialer keeps it away from the restarted broker until the test
// subscriber is subscribed (Mosquitto runs without persistence, so nothing
// sent before that could reach the subscriber).
func TestBrokerOutage(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 3*time.Minute)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := st.StartService(ctx, integration.Mosquitto); err != nil {
			t.Errorf("restart mosquitto: %v", err)
		}
	})

	gate := &gateDialer{}
	var obs observations
	n := startNotifier(t, mqtt.Config{BrokerURL: st.MQTTAdminURL(), Dialer: gate, Observe: obs.observe,
		ReconnectDelay: 50 * time.Millisecond, MaxReconnectDelay: 200 * time.Millisecond})
	if err := n.AwaitConnection(ctx); err != nil {
		t.Fatalf("AwaitConnection: %v", err)
	}

	gate.set(true)
	if err := st.StopService(ctx, integration.Mosquitto); err != nil {
		t.Fatalf("stop mosquitto: %v", err)
	}
	waitFor(t, ctx, "Connected() still true after the broker stopped", func() bool { return !n.Connected() })
	// Reconnect attempts fail against the stopped broker.
	waitFor(t, ctx, "no failed connection attempt observed", func() bool { _, failed := obs.count(mqtt.OpConnect); return failed > 0 })

	clientID, code := deviceClientID(), modelCode()
	wants := notifyAll(t, ctx, n, clientID, code, "3.0.0") // fails the test on any error
	if n.Connected() {
		t.Fatal("Connected() = true while the broker is stopped")
	}

	if err := st.StartService(ctx, integration.Mosquitto); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	sub := subscribe(t, ctx, st.MQTTAdminURL(), "iotsupport/"+clientID+"/+", "iotsupport/"+code+"/firmware")
	gate.set(false)
	checkMessages(t, sub.receive(t, ctx, len(wants)), wants)
	// The queue is flushed as soon as the connection is up, which can be
	// before OnConnectionUp has run.
	if err := n.AwaitConnection(ctx); err != nil || !n.Connected() {
		t.Errorf("after delivery: AwaitConnection = %v, Connected() = %v; want nil, true", err, n.Connected())
	}
	if ok, _ := obs.count(mqtt.OpConnectionLost); ok == 0 {
		t.Error("Observe(connection_lost) not called")
	}
	if ok, _ := obs.count(mqtt.OpConnect); ok < 2 {
		t.Errorf("Observe(connect) succeeded %d times, want 2 (start and reconnect)", ok)
	}
}

// TestQueueDirSurvivesRestart queues notifications while the broker cannot
// be reached, stops the notifier, and checks that a new notifier on the same
// QueueDir delivers them.
func TestQueueDirSurvivesRestart(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 60*time.Second)
	dir := t.TempDir()
	id := "espmdm-test-" + randHex(4)
	clientID, code := deviceClientID(), modelCode()

	first, err := mqtt.New(mqtt.Config{BrokerURL: "mqtt://" + deadPort(t), ClientID: id, QueueDir: dir})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := first.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	wants := notifyAll(t, ctx, first, clientID, code, "0.9.1")
	if err := first.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := first.RotationNudge(ctx, clientID); !errors.Is(err, mqtt.ErrNotRunning) {
		t.Errorf("RotationNudge after Stop = %v, want ErrNotRunning", err)
	}

	sub := subscribe(t, ctx, st.MQTTAdminURL(), "iotsupport/"+clientID+"/+", "iotsupport/"+code+"/firmware")
	startNotifier(t, mqtt.Config{BrokerURL: st.MQTTAdminURL(), ClientID: id, QueueDir: dir})
	checkMessages(t, sub.receive(t, ctx, len(wants)), wants)
}

// TestStopDeliversQueued checks that Stop sends what is queued before it
// disconnects.
func TestStopDeliversQueued(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 60*time.Second)
	clientID := deviceClientID()
	sub := subscribe(t, ctx, st.MQTTAdminURL(), "iotsupport/"+clientID+"/+")
	n, err := mqtt.New(mqtt.Config{BrokerURL: st.MQTTAdminURL(), ClientID: "espmdm-test-" + randHex(4)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := n.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
	const count = 20
	for range count {
		if err := n.RotationNudge(ctx, clientID); err != nil {
			t.Fatalf("RotationNudge: %v", err)
		}
	}
	if err := n.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if n.Connected() {
		t.Error("Connected() = true after Stop")
	}
	for i := range count {
		select {
		case p := <-sub.msgs:
			if want := "iotsupport/" + clientID + "/rotation"; p.Topic != want {
				t.Fatalf("message %d on %s, want %s", i, p.Topic, want)
			}
		case <-ctx.Done():
			t.Fatalf("received %d of %d nudges queued before Stop", i, count)
		}
	}
}

// TestUnreachableBroker: Start does not wait for the broker, notifications
// are queued, AwaitConnection honours its context and Stop returns.
func TestUnreachableBroker(t *testing.T) {
	for _, tc := range []struct{ name, url string }{
		{"refused", "mqtt://" + deadPort(t)},
		{"silent", "tcp://" + silentBroker(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, 60*time.Second)
			n, err := mqtt.New(mqtt.Config{BrokerURL: tc.url, ClientID: "espmdm-test-" + randHex(4),
				ConnectTimeout: time.Minute, ReconnectDelay: 20 * time.Millisecond})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			appCtx, cancel := context.WithCancel(context.Background())
			defer cancel()
			started := make(chan error, 1)
			go func() { started <- n.Start(appCtx) }()
			select {
			case err := <-started:
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
			case <-ctx.Done():
				t.Fatal("Start blocked on an unreachable broker")
			}
			if n.Connected() {
				t.Error("Connected() = true with no broker")
			}
			if err := n.RotationNudge(ctx, deviceClientID()); err != nil {
				t.Errorf("RotationNudge while unreachable = %v, want nil (queued)", err)
			}
			short, stop := context.WithTimeout(ctx, 200*time.Millisecond)
			defer stop()
			if err := n.AwaitConnection(short); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("AwaitConnection = %v, want context.DeadlineExceeded", err)
			}
			// A connection attempt is in progress (silent) or between
			// retries (refused); Stop cancels it and waits for the manager.
			if err := n.Stop(ctx); err != nil {
				t.Errorf("Stop: %v", err)
			}
			if err := n.AwaitConnection(ctx); !errors.Is(err, mqtt.ErrNotRunning) {
				t.Errorf("AwaitConnection after Stop = %v, want ErrNotRunning", err)
			}
		})
	}
}

func TestInvalidTopicSegments(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 30*time.Second)
	n := startNotifier(t, mqtt.Config{BrokerURL: st.MQTTAdminURL()})
	bad := []struct{ name, seg string }{
		{"empty", ""},
		{"plus", "iotdevice-a+b-12345678"},
		{"hash", "iotdevice-ab-1234567#"},
		{"slash", "iotdevice-a/b-12345678"},
		{"nul", "iotdevice-ab-1234\x005678"},
		{"newline", "iotdevice-ab-1234\n5678"},
		{"invalid utf8", "iotdevice-ab-\xff\xfe"},
		{"too long", strings.Repeat("a", 2000)},
	}
	calls := []struct {
		name, field string
		call        func(seg string) error
	}{
		{"RotationNudge", "client_id", func(s string) error { return n.RotationNudge(ctx, s) }},
		{"ConfigChanged", "client_id", func(s string) error { return n.ConfigChanged(ctx, s) }},
		{"FirmwareReleased", "model_code", func(s string) error { return n.FirmwareReleased(ctx, s, "1.0.0") }},
		{"FirmwareAssigned", "client_id", func(s string) error { return n.FirmwareAssigned(ctx, s, "1.0.0", "") }},
	}
	for _, c := range calls {
		for _, b := range bad {
			t.Run(c.name+"/"+b.name, func(t *testing.T) {
				err := c.call(b.seg)
				var ve *model.ValidationError
				if !errors.As(err, &ve) {
					t.Fatalf("got %v, want a *model.ValidationError", err)
				}
				if ve.Field != c.field {
					t.Errorf("field = %q, want %q", ve.Field, c.field)
				}
			})
		}
	}
	for _, v := range []string{"", "\xff"} {
		var ve *model.ValidationError
		if err := n.FirmwareReleased(ctx, modelCode(), v); !errors.As(err, &ve) || ve.Field != "firmware_version" {
			t.Errorf("FirmwareReleased(version %q) = %v, want a firmware_version validation error", v, err)
		}
	}
}

func TestNotRunning(t *testing.T) {
	n, err := mqtt.New(mqtt.Config{BrokerURL: "mqtt://127.0.0.1:1", ClientID: "espmdm-test-" + randHex(4)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 10*time.Second)
	if err := n.ConfigChanged(ctx, deviceClientID()); !errors.Is(err, mqtt.ErrNotRunning) {
		t.Errorf("ConfigChanged before Start = %v, want ErrNotRunning", err)
	}
	// Before Start, AwaitConnection waits (for Start and then the broker).
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := n.AwaitConnection(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("AwaitConnection before Start = %v, want context.DeadlineExceeded", err)
	}
	if err := n.Stop(ctx); err != nil {
		t.Errorf("Stop before Start = %v, want nil", err)
	}
	if err := n.Stop(ctx); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
	if err := n.AwaitConnection(ctx); !errors.Is(err, mqtt.ErrNotRunning) {
		t.Errorf("AwaitConnection after Stop = %v, want ErrNotRunning", err)
	}
	if err := n.Start(context.Background()); err == nil {
		t.Error("Start after Stop succeeded, want an error")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  mqtt.Config
	}{
		{"no url", mqtt.Config{}},
		{"http scheme", mqtt.Config{BrokerURL: "http://broker:1883"}},
		{"websocket scheme", mqtt.Config{BrokerURL: "ws://broker/mqtt"}},
		{"no host", mqtt.Config{BrokerURL: "mqtt://:1883"}},
		{"path", mqtt.Config{BrokerURL: "mqtt://broker:1883/x"}},
		{"keepalive too long", mqtt.Config{BrokerURL: "mqtt://broker", KeepAlive: 20 * time.Hour}},
		{"keepalive negative", mqtt.Config{BrokerURL: "mqtt://broker", KeepAlive: -time.Second}},
		{"session expiry negative", mqtt.Config{BrokerURL: "mqtt://broker", SessionExpiry: -time.Second}},
		{"max delay below min", mqtt.Config{BrokerURL: "mqtt://broker", ReconnectDelay: time.Minute, MaxReconnectDelay: time.Second}},
		{"negative timeout", mqtt.Config{BrokerURL: "mqtt://broker", ConnectTimeout: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := mqtt.New(tc.cfg); err == nil {
				t.Error("New succeeded, want an error")
			}
		})
	}
	_, err := mqtt.New(mqtt.Config{BrokerURL: "ftp://user:s3cr3t@broker"})
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("New with a bad URL = %v, want an error that does not repeat the password", err)
	}
}
