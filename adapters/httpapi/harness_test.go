package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

// env is a running server on a loopback port with its test doubles.
type env struct {
	t        *testing.T
	srv      *httpapi.Server
	base     string
	cat      *fakeCatalog
	dev      *fakeDeviceAPI
	verifier *fakeVerifier
	reg      *prometheus.Registry
	logs     *observer.ObservedLogs
	client   *http.Client
}

type envOption func(*httpapi.Config, *httpapi.Deps)

func withConfig(fn func(*httpapi.Config)) envOption {
	return func(c *httpapi.Config, _ *httpapi.Deps) { fn(c) }
}

func withReadyChecks(rc ...httpapi.ReadyCheck) envOption {
	return func(_ *httpapi.Config, d *httpapi.Deps) { d.ReadyChecks = rc }
}

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	cat := newFakeCatalog()
	dev := &fakeDeviceAPI{cat: cat, fail: map[string]error{}}
	ver := newFakeVerifier()
	reg := prometheus.NewRegistry()
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := httpapi.Config{RequestTimeout: 5 * time.Second}
	deps := catalogDeps(cat, httpapi.Deps{
		Devices: dev, Verifier: ver,
		Logger: zap.New(core), Registerer: reg, Gatherer: reg,
	})
	for _, o := range opts {
		o(&cfg, &deps)
	}
	srv, err := httpapi.New(cfg, deps)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	e := &env{
		t: t, srv: srv, base: "http://" + ln.Addr().String(),
		cat: cat, dev: dev, verifier: ver, reg: reg, logs: logs,
		client: &http.Client{Timeout: 10 * time.Second},
	}
	t.Cleanup(e.assertNoSecretsLogged)
	return e
}

// assertNoSecretsLogged fails when a bearer token or a provisioning secret
// reached the logs.
func (e *env) assertNoSecretsLogged() {
	e.verifier.mu.Lock()
	secrets := append([]string{"s3cret-"}, e.verifier.seen...)
	e.verifier.mu.Unlock()
	for _, entry := range e.logs.All() {
		line := entry.Message
		for _, f := range entry.Context {
			b, _ := json.Marshal(f.Interface)
			line += " " + f.Key + "=" + f.String + string(b)
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				e.t.Errorf("log entry %q contains the secret %q", line, s)
			}
		}
		if strings.Contains(strings.ToLower(line), "authorization") {
			e.t.Errorf("log entry mentions Authorization: %q", line)
		}
	}
}

// request describes one call.
type request struct {
	method, path string
	token        string
	body         io.Reader
	contentType  string
	header       map[string]string
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func (r response) problem(t *testing.T) httpapi.Problem {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != httpapi.ContentTypeProblem {
		t.Fatalf("Content-Type = %q, want %q (body %s)", ct, httpapi.ContentTypeProblem, r.body)
	}
	var p httpapi.Problem
	r.json(t, &p)
	if p.Status != r.status {
		t.Errorf("problem status %d != response status %d", p.Status, r.status)
	}
	if p.Type == "" || p.Title == "" || p.Detail == "" {
		t.Errorf("problem lacks type/title/detail: %s", r.body)
	}
	return p
}

func (e *env) do(r request) response {
	e.t.Helper()
	req, err := http.NewRequest(r.method, e.base+r.path, r.body)
	if err != nil {
		e.t.Fatalf("request: %v", err)
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	if r.contentType != "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("reading body: %v", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body}
}

func (e *env) get(path, token string) response {
	e.t.Helper()
	return e.do(request{method: http.MethodGet, path: path, token: token})
}

func (e *env) sendJSON(method, path, token, body string) response {
	e.t.Helper()
	return e.do(request{method: method, path: path, token: token, body: strings.NewReader(body), contentType: "application/json"})
}

func wantStatus(t *testing.T, r response, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("status = %d, want %d; body %s", r.status, want, r.body)
	}
}

// wantProblem checks an error response and returns its problem.
func wantProblem(t *testing.T, r response, want int) httpapi.Problem {
	t.Helper()
	wantStatus(t, r, want)
	return r.problem(t)
}
