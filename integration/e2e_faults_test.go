package integration_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
)

// Fault tests: espmdm while one of its services is down. Each stops a
// service of the shared stack and starts it again before it ends.

// restart stops name, runs fn, and starts name again even when fn fails.
func restart(t *testing.T, st *integration.Stack, name integration.ServiceName, fn func()) {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	if err := st.StopService(ctx, name); err != nil {
		t.Fatalf("stop %s: %v", name, err)
	}
	defer func() {
		began := time.Now()
		if err := st.StartService(ctx, name); err != nil {
			t.Fatalf("start %s again: %v", name, err)
		}
		t.Logf("%s back in %s", name, time.Since(began).Round(100*time.Millisecond))
	}()
	fn()
}

func TestE2EBrokerDownNeverFailsTheAPI(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, nil)
	d := newDevice(t, s, m.ID, `{"interval":5}`)
	restart(t, s.st, integration.Mosquitto, func() {
		s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, `{"config":{"interval":6}}`).want(t, http.StatusOK, nil)
		s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
			bytes.NewReader(firmwareImage(esp32image.ChipESP32, "3.0.0")), "Content-Type", "application/octet-stream").
			want(t, http.StatusCreated, nil)
		// A device cannot be made without its broker account (SPEC §19):
		// 502, and nothing is left behind, as with Keycloak down.
		s.do(http.MethodPost, "/api/devices", s.admin, fmt.Sprintf(`{"device_model_id":%d,"config":{}}`, m.ID)).
			wantProblem(t, http.StatusBadGateway)
		var list struct {
			Devices []deviceDTO `json:"devices"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/devices?device_model_id=%d", m.ID), s.viewer, nil).want(t, http.StatusOK, &list)
		if len(list.Devices) != 1 {
			t.Errorf("%d devices of the model after a creation with the broker down, want 1", len(list.Devices))
		}
		tok := token(t, s.st, s.st.AdminClientID, s.st.AdminClientSecret)
		resp, body := adminCall(t, s.st, tok, http.MethodGet, "/clients?search=true&clientId="+url.QueryEscape("iotdevice-"+m.Code+"-"), nil)
		var clients []map[string]any
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &clients) != nil || len(clients) != 1 {
			t.Errorf("clients of the model after a creation with the broker down: %s %d, want 1", resp.Status, len(clients))
		}
		// Readiness does not depend on the broker: devices still poll.
		s.do(http.MethodGet, "/health/ready", "", nil).want(t, http.StatusOK, nil)
	})
}

func TestE2EDatabaseDown(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, nil)
	// A device that has used the device API: its lookup is a statement
	// prepared on connections the restart ends.
	d := newDevice(t, s, m.ID, `{"interval":7}`)
	var prov provisioningDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), s.admin, nil).want(t, http.StatusOK, &prov)
	s.keep(prov.ClientSecret)
	deviceTok := s.token(prov.ClientID, prov.ClientSecret)
	for range 3 {
		s.do(http.MethodGet, "/iot/config", deviceTok, nil).want(t, http.StatusOK, nil)
	}
	restart(t, s.st, integration.Postgres, func() {
		s.do(http.MethodGet, "/iot/config", deviceTok, nil).wantProblem(t, http.StatusServiceUnavailable)
		s.do(http.MethodGet, "/health/ready", "", nil).wantProblem(t, http.StatusServiceUnavailable)
		s.do(http.MethodGet, "/health/live", "", nil).want(t, http.StatusOK, nil)
		// espmdm's own store is down: 503, as readiness says, not 502.
		s.do(http.MethodGet, "/api/device-models", s.viewer, nil).wantProblem(t, http.StatusServiceUnavailable)
		s.do(http.MethodPost, "/api/devices", s.admin, fmt.Sprintf(`{"device_model_id":%d,"config":{}}`, m.ID)).
			wantProblem(t, http.StatusServiceUnavailable)
	})
	s.waitReady(time.Minute)
	var list struct {
		Devices []deviceDTO `json:"devices"`
	}
	s.do(http.MethodGet, "/api/devices", s.viewer, nil).want(t, http.StatusOK, &list)
	if len(list.Devices) != 1 {
		t.Errorf("%d devices after a creation refused while the database was down, want the 1 made before", len(list.Devices))
	}
	newDevice(t, s, m.ID, `{}`)
	var cfg map[string]any
	s.do(http.MethodGet, "/iot/config", deviceTok, nil).want(t, http.StatusOK, &cfg)
	if cfg["interval"] != float64(7) {
		t.Errorf("config after the database came back: %v", cfg)
	}
}

// shiftedClock runs ahead of the system clock, so that the reconciler's
// grace period for young orphaned clients has passed.
type shiftedClock struct {
	ports.Clock
	by time.Duration
}

func (c shiftedClock) Now() time.Time { return c.Clock.Now().Add(c.by) }

func TestE2EIdentityProviderDown(t *testing.T) {
	s := startServer(t, map[string]string{"RECONCILE_INTERVAL": "1s"},
		fx.Decorate(func(c ports.Clock) ports.Clock { return shiftedClock{c, 5 * time.Minute} }))
	m := newModel(t, s, nil)
	kept := newDevice(t, s, m.ID, `{}`)
	doomed := newDevice(t, s, m.ID, `{}`)
	sim := newSimDevices(t, s, m.ID, follows)[0]
	devTok := sim.deviceToken(t, s) // taken before the outage, checked against the cached JWKS
	restart(t, s.st, integration.Keycloak, func() {
		s.do(http.MethodGet, "/health/ready", "", nil).wantProblem(t, http.StatusServiceUnavailable)
		// The device API keeps serving: token keys cached, config from the database.
		s.do(http.MethodGet, "/iot/config", devTok, nil).want(t, http.StatusOK, nil)
		// Creation needs Keycloak: 502, and nothing is left behind.
		s.do(http.MethodPost, "/api/devices", s.admin, fmt.Sprintf(`{"device_model_id":%d,"config":{}}`, m.ID)).
			wantProblem(t, http.StatusBadGateway)
		// Reads need only the database (the token keys are cached).
		s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", kept.ID), s.viewer, nil).want(t, http.StatusOK, nil)
		// Deletion removes the row now; the client is the reconciler's.
		del := s.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", doomed.ID), s.admin, nil).want(t, http.StatusNoContent, nil)
		// The failed client deletion is logged with the request's id.
		reqID := del.header.Get("X-Request-ID")
		logged := false
		for _, e := range s.logs.FilterMessage("handled error").All() {
			if e.ContextMap()["request_id"] == reqID && strings.Contains(fmt.Sprint(e.ContextMap()["op"]), "delete client") {
				logged = true
			}
		}
		if reqID == "" || !logged {
			t.Errorf("no handled-error log line for the failed client deletion with request id %q", reqID)
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", doomed.ID), s.viewer, nil).wantProblem(t, http.StatusNotFound)
	})
	s.waitReady(2 * time.Minute)
	var list struct {
		Devices []deviceDTO `json:"devices"`
	}
	s.do(http.MethodGet, "/api/devices", s.viewer, nil).want(t, http.StatusOK, &list)
	if len(list.Devices) != 2 || list.Devices[0].ID != kept.ID || list.Devices[1].ID != sim.ID {
		t.Errorf("devices after the outage: %+v, want only %d and %d", list.Devices, kept.ID, sim.ID)
	}
	newDevice(t, s, m.ID, `{}`)
	// The reconciler removes the client the deletion could not.
	waitClientGone(t, s.st, doomed.ClientID, time.Minute)
	if len(keycloakClients(t, s.st, kept.ClientID)) != 1 {
		t.Errorf("the reconciler removed the client of device %d, which exists", kept.ID)
	}
}

// gate is a TCP proxy to target that lets connections through only while
// open: closing it cuts every connection and refuses new ones.
type gate struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	open   bool
	conns  []net.Conn
}

func newGate(t *testing.T, target string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: target, open: true}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go g.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); g.set(false) })
	return g
}

func (g *gate) serve(c net.Conn) {
	g.mu.Lock()
	if !g.open {
		g.mu.Unlock()
		c.Close()
		return
	}
	g.conns = append(g.conns, c)
	g.mu.Unlock()
	up, err := net.DialTimeout("tcp", g.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	g.mu.Lock()
	g.conns = append(g.conns, up)
	g.mu.Unlock()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
	c.Close()
}

// set opens or closes the gate; closing cuts what is connected.
func (g *gate) set(open bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = open
	if !open {
		for _, c := range g.conns {
			c.Close()
		}
		g.conns = nil
	}
}

// TestE2EBrokerDownQueuedNotificationsArrive: what espmdm tells devices
// while the broker is down — a config change, a firmware release and a
// rotation nudge — is queued and delivered once it can reach the broker
// again. espmdm reaches Mosquitto through a gate that stays closed until
// the test's subscriber is back (Mosquitto keeps no sessions across its
// restart, so a message before that would reach no one).
func TestE2EBrokerDownQueuedNotificationsArrive(t *testing.T) {
	st := integration.Shared(t)
	u, err := url.Parse(st.MQTTAdminURL())
	if err != nil {
		t.Fatal(err)
	}
	g := newGate(t, u.Host)
	viaGate := *u
	viaGate.Host = g.ln.Addr().String()
	env := rotationEnv("grace", 2)
	env["ROTATION_TIMEOUT_SECONDS"] = "600" // the nudged device stays PENDING throughout
	env["MQTT_URL"] = viaGate.String()
	s := startServer(t, env)
	m := newModel(t, s, nil)
	d := newDevice(t, s, m.ID, `{"interval":5}`)

	restart(t, st, integration.Mosquitto, func() {
		g.set(false)
		s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, `{"config":{"interval":6}}`).want(t, http.StatusOK, nil)
		s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
			bytes.NewReader(firmwareImage(esp32image.ChipESP32, "3.1.0")), "Content-Type", "application/octet-stream").
			want(t, http.StatusCreated, nil)
		s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	})
	msgs := subscribe(t, st, "iotsupport/#")
	g.set(true)
	want := map[string]string{
		"iotsupport/" + d.ClientID + "/config":   "",
		"iotsupport/" + m.Code + "/firmware":     `{"firmware_version":"3.1.0"}`,
		"iotsupport/" + d.ClientID + "/rotation": "",
	}
	timeout := time.After(60 * time.Second)
	for len(want) > 0 {
		select {
		case p := <-msgs:
			payload, ok := want[p.Topic]
			if !ok {
				continue
			}
			if payload != "" && string(compact(t, p.Payload)) != payload {
				t.Errorf("%s after the outage: payload %q, want %q", p.Topic, p.Payload, payload)
			}
			delete(want, p.Topic)
		case <-timeout:
			t.Fatalf("after the broker came back, still not delivered: %v", slices.Sorted(maps.Keys(want)))
		}
	}
}
