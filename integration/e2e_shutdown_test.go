package integration_test

import (
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
)

// slowBody hands out b in chunks, pausing before each, and says when the
// first chunk has gone.
type slowBody struct {
	b       []byte
	chunk   int
	pause   time.Duration
	started chan struct{}
	sent    atomic.Int64
}

func (r *slowBody) Read(p []byte) (int, error) {
	sent := int(r.sent.Load())
	if sent >= len(r.b) {
		return 0, io.EOF
	}
	if sent > 0 {
		time.Sleep(r.pause)
	}
	n := copy(p[:min(len(p), r.chunk)], r.b[sent:])
	r.sent.Add(int64(n))
	if sent == 0 {
		close(r.started)
	}
	return n, nil
}

// TestE2EShutdownFinishesInFlightRequests: a firmware upload still
// streaming in when shutdown begins is read to the end and answered 201;
// new connections are refused from then on.
func TestE2EShutdownFinishesInFlightRequests(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, nil)
	img := firmwareImage(esp32image.ChipESP32, "4.0.0")
	body := &slowBody{b: img, chunk: max(len(img)/8, 1), pause: 200 * time.Millisecond, started: make(chan struct{})}
	req, _ := http.NewRequest(http.MethodPost, s.base+fmt.Sprintf("/api/device-models/%d/firmware", m.ID), body)
	req.ContentLength = int64(len(img))
	req.Header.Set("Authorization", "Bearer "+s.admin)
	req.Header.Set("Content-Type", "application/octet-stream")
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := s.client.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		resp.Body.Close()
		done <- result{status: resp.StatusCode}
	}()
	<-body.started
	// The first chunk has left the client, not yet necessarily reached the
	// handler: a connection whose request the server has not begun to read
	// is idle, and shutdown closes it. The second chunk is read a pause
	// later, by when the request is in the handler on loopback.
	for body.sent.Load() <= int64(body.chunk) {
		time.Sleep(10 * time.Millisecond)
	}
	if sent := body.sent.Load(); sent >= int64(len(img)) {
		t.Fatalf("the whole body went before shutdown began")
	}
	began := time.Now()
	s.stop()
	stopped := time.Since(began)
	r := <-done
	if r.err != nil || r.status != http.StatusCreated {
		t.Fatalf("the upload in flight at shutdown: %d, %v; want 201", r.status, r.err)
	}
	if _, err := http.Get(s.base + "/health/live"); err == nil {
		t.Errorf("a new request was served after shutdown")
	}
	t.Logf("shutdown waited %s for the upload streaming in", stopped.Round(time.Millisecond))
}

// TestE2EShutdownFinishesTheRotationStep: shutdown begins while a rotation
// cycle is restoring a timed-out device's secret in Keycloak (held up by a
// slow proxy). The step completes — the old secret works again and the row
// says TIMEOUT — before espmdm exits.
func TestE2EShutdownFinishesTheRotationStep(t *testing.T) {
	st := integration.Shared(t)
	target, err := url.Parse(st.KeycloakURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var armed atomic.Bool
	held := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if armed.Load() && r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/clients/") {
			select {
			case held <- struct{}{}:
			default:
			}
			time.Sleep(1500 * time.Millisecond)
		}
		proxy.ServeHTTP(w, r)
	}))
	defer slow.Close()

	env := rotationEnv("restore", 1)
	env["KEYCLOAK_URL"] = slow.URL // admin calls only: tokens are checked against the issuer directly
	env["ROTATION_TIMEOUT_SECONDS"] = "2"
	env["ROTATION_RETRY_SECONDS"] = "3600" // no retry in the same cycle
	s := startServer(t, env)
	m := newModel(t, s, nil)
	d := newSimDevices(t, s, m.ID, follows)[0]
	tok := d.deviceToken(t, s)
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	waitState(t, s, d.ID, "PENDING", 30*time.Second)
	var p provisioningDTO
	s.do(http.MethodGet, "/iot/provisioning", tok, nil).want(t, http.StatusOK, &p)
	s.keep(p.ClientSecret)
	armed.Store(true)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the timeout's restore never reached Keycloak")
	}
	began := time.Now()
	s.stop()
	stopped := time.Since(began)

	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(s.cfg.DatabaseURL)))
	defer db.Close()
	var state string
	if err := db.QueryRowContext(ctxT(t, 10*time.Second), `SELECT rotation_state FROM devices WHERE id = $1`, d.ID).Scan(&state); err != nil {
		t.Fatal(err)
	}
	if state != "TIMEOUT" {
		t.Errorf("after shutdown the device is %s, want TIMEOUT: the step was cut off", state)
		s.dumpWarnings()
	}
	if !accepted(t, st, d.ClientID, d.current) {
		t.Errorf("after shutdown the old secret does not work: the restore was cut off")
	}
	if accepted(t, st, d.ClientID, p.ClientSecret) {
		t.Errorf("after shutdown the unconfirmed secret still works")
	}
	t.Logf("shutdown waited %s for the rotation step", stopped.Round(time.Millisecond))
}
