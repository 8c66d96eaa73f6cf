package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/integration"
)

// server is the whole espmdm application (app.New) running against the
// stack's real PostgreSQL, Keycloak and Mosquitto, with a database of its
// own, driven over HTTP the way an admin script and a device drive it.
type server struct {
	t      *testing.T
	st     *integration.Stack
	cfg    app.Config
	base   string
	logs   *observer.ObservedLogs
	client *http.Client
	// admin and viewer are tokens of the operator (mdm-admin) and viewer
	// (mdm-viewer) service accounts.
	admin, viewer string

	mu sync.Mutex
	// secrets are values that must never appear in a log line.
	secrets []string
	// stop stops the application (once; the test's cleanup also calls it).
	stop func()
	// pid and out are the process of an espmdm started by startProcess
	// and its output (0 and nil in process).
	pid int
	out *syncBuffer
}

// startServer starts espmdm on a free loopback port with the stack's
// services and waits until it is ready; env overrides single variables and
// opts are added to app.New. The application is stopped, and its logs are
// checked for leaked secrets, when the test ends.
func startServer(t *testing.T, env map[string]string, opts ...fx.Option) *server {
	t.Helper()
	s := startServerUnready(t, env, opts...)
	s.waitReady(time.Minute)
	return s
}

// startServerUnready is startServer without waiting for readiness.
func startServerUnready(t *testing.T, env map[string]string, opts ...fx.Option) *server {
	t.Helper()
	st := integration.Shared(t)
	vars := serverVars(t, st, env)
	cfg, err := app.LoadConfig(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	// A top-level fx.Decorate reaches into app's module: the embedding
	// path SPEC promises (app.New(cfg, extra...)).
	a := app.New(cfg, append([]fx.Option{fx.Decorate(func(*zap.Logger) *zap.Logger { return zap.New(core) })}, opts...)...)
	if err := a.Err(); err != nil {
		t.Fatalf("app.New: %v", err)
	}
	s := &server{
		t: t, st: st, cfg: cfg, base: cfg.BaseURL, logs: logs,
		client:  &http.Client{Timeout: 30 * time.Second},
		secrets: []string{vars["SECRET_KEY"], vars["WIFI_PASSWORD"], st.AdminClientSecret, st.OperatorClientSecret, st.ViewerClientSecret, st.MQTTAdminPassword, st.S3SecretAccessKey},
	}
	startCtx, cancel := context.WithTimeout(context.Background(), a.StartTimeout())
	defer cancel()
	if err := a.Start(startCtx); err != nil {
		t.Fatalf("start espmdm: %v", err)
	}
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			stopCtx, cancel := context.WithTimeout(context.Background(), a.StopTimeout())
			defer cancel()
			if err := a.Stop(stopCtx); err != nil {
				t.Errorf("stop espmdm: %v", err)
				logServingGoroutines(t)
			}
			s.checkLogs()
			if t.Failed() {
				s.dumpWarnings()
			}
		})
	}
	t.Cleanup(s.stop)
	s.admin = s.token(st.OperatorClientID, st.OperatorClientSecret)
	s.viewer = s.token(st.ViewerClientID, st.ViewerClientSecret)
	return s
}

// serverVars is the environment of an espmdm on a free loopback port with
// the stack's services and a database of its own; env overrides single
// variables.
func serverVars(t *testing.T, st *integration.Stack, env map[string]string) map[string]string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	vars := map[string]string{
		"DATABASE_URL":     "",
		"HTTP_ADDR":        addr,
		"BASE_URL":         "http://" + addr,
		"MQTT_CLIENT_ID":   "e2e-" + randHex(4),
		"WIFI_SSID":        "lab-net",
		"WIFI_PASSWORD":    "wifi-" + randHex(8),
		"FIRMWARE_DIR":     t.TempDir(),
		"SECRET_KEY":       randHex(32),
		"LOG_LEVEL":        "debug",
		"SHUTDOWN_TIMEOUT": "5s",
	}
	for k, v := range st.ServeEnv() {
		vars[k] = v
	}
	for k, v := range env {
		vars[k] = v
	}
	if vars["DATABASE_URL"] == "" {
		vars["DATABASE_URL"] = st.NewDatabase(t)
	}
	return vars
}

// keep records values that must never be logged.
func (s *server) keep(secret ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets = append(s.secrets, secret...)
}

// checkLogs fails the test when a recorded secret appears in any log entry,
// its message or its fields.
func (s *server) checkLogs() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		for _, secret := range s.secrets {
			if secret != "" && strings.Contains(line, secret) {
				s.t.Errorf("a secret appears in the log entry %q", e.Message)
			}
		}
	}
}

// logServingGoroutines logs the stacks of the goroutines serving an HTTP
// connection (every in-process espmdm of the test binary), for a stop that
// timed out: a request still in a handler, or a response still being
// written, is what keeps the server's shutdown waiting.
func logServingGoroutines(t *testing.T) {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "fasthttp.(*Server).serveConn") {
			t.Logf("serving goroutine at the stop:\n%s", g)
			n++
		}
	}
	t.Logf("%d goroutines were serving a connection when the stop timed out", n)
}

// dumpWarnings logs espmdm's warnings and errors, for a failed test.
func (s *server) dumpWarnings() {
	for _, e := range s.logs.FilterLevelExact(zapcore.WarnLevel).All() {
		s.t.Logf("espmdm warn: %s %v", e.Message, e.ContextMap())
	}
	for _, e := range s.logs.FilterLevelExact(zapcore.ErrorLevel).All() {
		s.t.Logf("espmdm error: %s %v", e.Message, e.ContextMap())
	}
}

func (s *server) waitReady(timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := s.request(http.MethodGet, "/health/ready", "", nil)
		if r.status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("espmdm not ready after %s: %d %s", timeout, r.status, r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// token gets an access token with the client-credentials grant and
// remembers it as a secret.
func (s *server) token(clientID, secret string) string {
	s.t.Helper()
	tok := token(s.t, s.st, clientID, secret)
	s.keep(tok, secret)
	return tok
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// request is one HTTP call; headers are name, value pairs.
func (s *server) request(method, path, tok string, body io.Reader, headers ...string) response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.base+path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// do sends in as a JSON body (a string or []byte is sent as it is).
func (s *server) do(method, path, tok string, in any) response {
	s.t.Helper()
	var body io.Reader
	switch v := in.(type) {
	case nil:
	case string:
		body = strings.NewReader(v)
	case []byte:
		body = bytes.NewReader(v)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			s.t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	if body == nil {
		return s.request(method, path, tok, nil)
	}
	return s.request(method, path, tok, body, "Content-Type", "application/json")
}

// want fails unless the response has the status; out, when set, receives
// the JSON body.
func (r response) want(t *testing.T, status int, out any) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			t.Fatalf("decode %s: %v", r.body, err)
		}
	}
	return r
}

// wantProblem fails unless the response is a problem+json document of the
// status, and returns its detail.
func (r response) wantProblem(t *testing.T, status int) string {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("problem body %s: %v", r.body, err)
	}
	if p.Status != status || p.Type == "" || p.Title == "" {
		t.Fatalf("problem %+v, want status %d with a type and a title", p, status)
	}
	return p.Detail
}

// multipartBody wraps data as the multipart form field "file".
func multipartBody(t *testing.T, data []byte) (io.Reader, string) {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	part, err := w.CreateFormFile("file", "app.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := part.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf, w.FormDataContentType()
}

// subscribe collects the messages published on filter, as a device would
// receive them.
func subscribe(t *testing.T, st *integration.Stack, filter string) <-chan *paho.Publish {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	got := make(chan *paho.Publish, 16)
	c := mqttConnect(t, ctx, st.MQTTAdminURL(), "e2e-sub-"+randHex(4), func(pr paho.PublishReceived) (bool, error) {
		select {
		case got <- pr.Packet:
		default:
		}
		return true, nil
	})
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return got
}

// nextMessage waits for a message on topic.
func nextMessage(t *testing.T, msgs <-chan *paho.Publish, topic string) *paho.Publish {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case p := <-msgs:
			if p.Topic == topic {
				return p
			}
		case <-timeout:
			t.Fatalf("no message on %s", topic)
		}
	}
}

// keycloakClients returns the realm's clients with exactly this clientId.
func keycloakClients(t *testing.T, st *integration.Stack, clientID string) []map[string]any {
	t.Helper()
	tok := token(t, st, st.AdminClientID, st.AdminClientSecret)
	resp, body := adminCall(t, st, tok, http.MethodGet, "/clients?clientId="+url.QueryEscape(clientID), nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("list clients: %s %s", resp.Status, body)
	}
	var out []map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("list clients: %v", err)
	}
	return out
}

// waitClientGone waits until Keycloak no longer has the client.
func waitClientGone(t *testing.T, st *integration.Stack, clientID string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(keycloakClients(t, st, clientID)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("client %s still in Keycloak after %s", clientID, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deleteKeycloakClient removes a client behind espmdm's back.
func deleteKeycloakClient(t *testing.T, st *integration.Stack, clientID string) {
	t.Helper()
	found := keycloakClients(t, st, clientID)
	if len(found) != 1 {
		t.Fatalf("client %s: found %d", clientID, len(found))
	}
	tok := token(t, st, st.AdminClientID, st.AdminClientSecret)
	resp, body := adminCall(t, st, tok, http.MethodDelete, "/clients/"+found[0]["id"].(string), nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete client %s: %s %s", clientID, resp.Status, body)
	}
}
