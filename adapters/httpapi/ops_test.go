package httpapi_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zapcore"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

func TestInternalErrorIsGeneric(t *testing.T) {
	e := newEnv(t)
	e.cat.setFail("ListModels", errors.New(`pq: relation "device_models" does not exist at 10.9.8.7`))
	r := e.get("/api/device-models", tokAdmin)
	p := wantProblem(t, r, http.StatusInternalServerError)
	if strings.Contains(string(r.body), "device_models") || strings.Contains(string(r.body), "10.9.8.7") {
		t.Errorf("500 body leaks the internal error: %s", r.body)
	}
	if p.Type != "urn:espmdm:problem:internal" || p.RequestID == "" {
		t.Errorf("problem = %+v", p)
	}
	// The cause is in the log, with the request id.
	logged := e.logs.FilterMessage("request failed").FilterLevelExact(zapcore.ErrorLevel).All()
	if len(logged) != 1 || !strings.Contains(logged[0].ContextMap()["error"].(string), "10.9.8.7") ||
		logged[0].ContextMap()["request_id"] != p.RequestID {
		t.Errorf("logged = %+v", logged)
	}
}

func TestPanicRecovered(t *testing.T) {
	e := newEnv(t)
	e.cat.mu.Lock()
	e.cat.panicIn = "ListModels"
	e.cat.mu.Unlock()
	r := e.get("/api/device-models", tokAdmin)
	wantProblem(t, r, http.StatusInternalServerError)
	if strings.Contains(string(r.body), "boom") {
		t.Errorf("panic value leaked: %s", r.body)
	}
	if n := e.logs.FilterMessage("panic in handler").Len(); n != 1 {
		t.Errorf("%d panic log entries, want 1", n)
	}
	// The server is still serving.
	e.cat.mu.Lock()
	e.cat.panicIn = ""
	e.cat.mu.Unlock()
	wantStatus(t, e.get("/api/device-models", tokAdmin), http.StatusOK)
}

func TestRequestTimeoutContext(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.RequestTimeout = 1500 * time.Millisecond }))
	wantStatus(t, e.get("/api/device-models", tokAdmin), http.StatusOK)
	e.cat.mu.Lock()
	ctx := e.cat.lastCtx
	e.cat.mu.Unlock()
	dl, ok := ctx.Deadline()
	if !ok || time.Until(dl) > 1500*time.Millisecond {
		t.Errorf("handler context deadline = %v (%v), want one within the request timeout", dl, ok)
	}
	if ctx.Err() == nil {
		t.Errorf("handler context still live after the request ended")
	}
	// A core call that runs out of time is a 504, not a 500.
	e.cat.setFail("GetModel", context.DeadlineExceeded)
	wantProblem(t, e.get("/api/device-models/1", tokAdmin), http.StatusGatewayTimeout)
}

func TestRequestID(t *testing.T) {
	e := newEnv(t)
	r := e.do(request{method: http.MethodGet, path: "/api/device-models", token: tokAdmin,
		header: map[string]string{"X-Request-ID": "trace-42.abc"}})
	wantStatus(t, r, http.StatusOK)
	if got := r.header.Get("X-Request-ID"); got != "trace-42.abc" {
		t.Errorf("echoed X-Request-ID = %q", got)
	}
	e.cat.mu.Lock()
	ctxID := httpapi.RequestID(e.cat.lastCtx)
	e.cat.mu.Unlock()
	if ctxID != "trace-42.abc" {
		t.Errorf("RequestID(handler ctx) = %q", ctxID)
	}
	access := e.logs.FilterMessage("http request").FilterField(zapcoreString("request_id", "trace-42.abc")).All()
	if len(access) != 1 || access[0].ContextMap()["route"] != "/api/device-models" || access[0].ContextMap()["status"] != int64(200) {
		t.Errorf("access log = %+v", access)
	}

	// Absent or unusable ids are replaced by a generated one.
	seen := map[string]bool{}
	for _, in := range []string{"", "has space", strings.Repeat("x", 200), "quote\"d"} {
		r := e.do(request{method: http.MethodGet, path: "/health/live", header: map[string]string{"X-Request-ID": in}})
		id := r.header.Get("X-Request-ID")
		if id == "" || id == in || seen[id] {
			t.Errorf("in %q: got id %q", in, id)
		}
		seen[id] = true
	}
	// Error bodies carry the id too.
	r = e.do(request{method: http.MethodGet, path: "/api/devices/0", token: tokAdmin, header: map[string]string{"X-Request-ID": "req-7"}})
	if p := wantProblem(t, r, http.StatusBadRequest); p.RequestID != "req-7" {
		t.Errorf("problem request_id = %q", p.RequestID)
	}
}

func zapcoreString(k, v string) zapcore.Field {
	return zapcore.Field{Key: k, Type: zapcore.StringType, String: v}
}

func counterValue(t *testing.T, e *env, labels map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "espmdm_http_requests_total" {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := labelMap(m)
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func labelMap(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func TestMetricsUseRouteTemplates(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	e.cat.addDevice(1, "abcd1234", true)
	e.get("/api/devices/2", tokAdmin)
	e.get("/api/devices/2", tokAdmin)
	e.get("/api/devices/31337", tokAdmin)
	e.get("/api/devices/2", "")
	e.get("/no/such/path/123", "")

	if got := counterValue(t, e, map[string]string{"method": "GET", "route": "/api/devices/{id}", "status": "200"}); got != 2 {
		t.Errorf("200 count = %v, want 2", got)
	}
	if got := counterValue(t, e, map[string]string{"route": "/api/devices/{id}", "status": "404"}); got != 1 {
		t.Errorf("404 count = %v, want 1", got)
	}
	if got := counterValue(t, e, map[string]string{"route": "/api/devices/{id}", "status": "401"}); got != 1 {
		t.Errorf("401 count = %v, want 1", got)
	}
	if got := counterValue(t, e, map[string]string{"route": "unmatched", "status": "404"}); got != 1 {
		t.Errorf("unmatched count = %v, want 1", got)
	}

	r := e.get("/metrics", "")
	wantStatus(t, r, http.StatusOK)
	text := string(r.body)
	for _, want := range []string{
		`espmdm_http_requests_total{method="GET",route="/api/devices/{id}",status="200"} 2`,
		`espmdm_http_request_duration_seconds_count{method="GET",route="/api/devices/{id}"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, raw := range []string{"/api/devices/2\"", "31337", "/no/such/path"} {
		if strings.Contains(text, raw) {
			t.Errorf("/metrics has a raw path label %q", raw)
		}
	}
}

func TestHealth(t *testing.T) {
	var mu sync.Mutex
	dbErr := error(nil)
	e := newEnv(t, withReadyChecks(
		httpapi.ReadyCheck{Name: "postgres", Check: func(context.Context) error { mu.Lock(); defer mu.Unlock(); return dbErr }},
		httpapi.ReadyCheck{Name: "keycloak", Check: func(context.Context) error { return nil }},
	), withConfig(func(c *httpapi.Config) { c.ReadyTimeout = 300 * time.Millisecond }))

	r := e.get("/health/live", "")
	wantStatus(t, r, http.StatusOK)
	r = e.get("/health/ready", "")
	wantStatus(t, r, http.StatusOK)
	if got := strings.TrimSpace(string(r.body)); got != `{"status":"ready"}` {
		t.Errorf("ready body = %s", got)
	}

	mu.Lock()
	dbErr = errors.New("dial tcp 10.2.2.2:5432: connection refused")
	mu.Unlock()
	r = e.get("/health/ready", "")
	p := wantProblem(t, r, http.StatusServiceUnavailable)
	if len(p.FailedChecks) != 1 || p.FailedChecks[0] != "postgres" || !strings.Contains(p.Detail, "postgres") {
		t.Errorf("problem = %+v", p)
	}
	if strings.Contains(string(r.body), "10.2.2.2") {
		t.Errorf("readiness leaks the check error: %s", r.body)
	}
	wantStatus(t, e.get("/health/live", ""), http.StatusOK)
}

func TestReadinessTimeoutAndPanic(t *testing.T) {
	// The stuck check ignores its context until the test ends (then it
	// returns, so that no goroutine outlives the test).
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	e := newEnv(t, withReadyChecks(
		httpapi.ReadyCheck{Name: "stuck", Check: func(context.Context) error { <-release; return nil }},
		httpapi.ReadyCheck{Name: "slow", Check: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }},
		httpapi.ReadyCheck{Name: "panicky", Check: func(context.Context) error { panic("oops") }},
		httpapi.ReadyCheck{Name: "fine", Check: func(context.Context) error { return nil }},
	), withConfig(func(c *httpapi.Config) { c.ReadyTimeout = 200 * time.Millisecond }))
	start := time.Now()
	p := wantProblem(t, e.get("/health/ready", ""), http.StatusServiceUnavailable)
	if time.Since(start) > 3*time.Second {
		t.Errorf("readiness took %v", time.Since(start))
	}
	if got := strings.Join(p.FailedChecks, ","); got != "panicky,slow,stuck" {
		t.Errorf("failed checks = %q", got)
	}
}

func TestShutdownDrainsInFlightRequests(t *testing.T) {
	e := newEnv(t)
	e.cat.mu.Lock()
	e.cat.delay = 400 * time.Millisecond
	e.cat.mu.Unlock()

	done := make(chan response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, e.base+"/api/device-models", nil)
		req.Header.Set("Authorization", "Bearer "+tokAdmin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- response{status: -1}
			return
		}
		resp.Body.Close()
		done <- response{status: resp.StatusCode}
	}()
	time.Sleep(100 * time.Millisecond) // the request is in the handler now

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if r := <-done; r.status != http.StatusOK {
		t.Errorf("in-flight request ended with %d, want 200", r.status)
	}
	if _, err := http.Get(e.base + "/health/live"); err == nil {
		t.Errorf("server still accepts connections after Shutdown")
	}
}

func TestNewValidatesDeps(t *testing.T) {
	cat := newFakeCatalog()
	good := catalogDeps(cat, httpapi.Deps{Devices: &fakeDeviceAPI{cat: cat}, Verifier: newFakeVerifier()})
	if _, err := httpapi.New(httpapi.Config{}, good); err != nil {
		t.Errorf("New with defaults: %v", err)
	}
	// Two servers on one registry share the collectors; a Gatherer that
	// is a registry also receives the metrics.
	shared := good
	shared.Gatherer = prometheus.NewRegistry()
	for i := 0; i < 2; i++ {
		if _, err := httpapi.New(httpapi.Config{}, shared); err != nil {
			t.Errorf("New #%d on a shared registry: %v", i+1, err)
		}
	}
	noFirmware := good
	noFirmware.Firmware = nil
	for name, d := range map[string]httpapi.Deps{
		"no catalog":  {Devices: good.Devices, Verifier: good.Verifier},
		"no firmware": noFirmware,
		"no verifier": catalogDeps(cat, httpapi.Deps{Devices: good.Devices}),
		"bad check":   catalogDeps(cat, httpapi.Deps{Devices: good.Devices, Verifier: good.Verifier, ReadyChecks: []httpapi.ReadyCheck{{Name: "x"}}}),
	} {
		if _, err := httpapi.New(httpapi.Config{}, d); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}
