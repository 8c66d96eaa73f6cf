package fleetrotation

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"
	"go.uber.org/fx"

	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/integration"
)

// server is espmdm (app.New) running in this process against the stack's
// services, with a database of its own.
type server struct {
	app    *fx.App
	base   string
	dbName string
	st     *integration.Stack
	// afterStop removes what start-up left on disk.
	afterStop func()
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// adminExec runs one statement on the stack's postgres database.
func adminExec(ctx context.Context, st *integration.Stack, stmt string) error {
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(st.DatabaseURL)))
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := db.ExecContext(ctx, stmt)
	return err
}

// startServer creates a database and starts espmdm on a free loopback port
// with env overriding single variables; it returns once espmdm is ready.
func startServer(ctx context.Context, st *integration.Stack, env map[string]string) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("free port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	fwDir, err := os.MkdirTemp("", "espmdm-bench-fw-")
	if err != nil {
		return nil, err
	}
	s := &server{base: "http://" + addr, dbName: "bench_" + randHex(6), st: st}
	if err := adminExec(ctx, st, "CREATE DATABASE "+s.dbName); err != nil {
		os.RemoveAll(fwDir)
		return nil, fmt.Errorf("create database: %w", err)
	}
	dbURL, err := url.Parse(st.DatabaseURL)
	if err != nil {
		_ = s.dropDB()
		os.RemoveAll(fwDir)
		return nil, fmt.Errorf("stack database URL: %w", err)
	}
	dbURL.Path = "/" + s.dbName
	vars := map[string]string{
		"DATABASE_URL":          dbURL.String(),
		"HTTP_ADDR":             addr,
		"BASE_URL":              s.base,
		"MQTT_CLIENT_ID":        "bench-" + randHex(4),
		"WIFI_SSID":             "bench-net",
		"WIFI_PASSWORD":         "wifi-" + randHex(8),
		"FIRMWARE_DIR":          fwDir,
		"SECRET_KEY":            randHex(32),
		"LOG_LEVEL":             "warn",
		"SHUTDOWN_TIMEOUT":      "5s",
		"RECONCILE_INTERVAL":    "24h",
		"ROTATION_TICK_SECONDS": "1",
		"INSTANCE_NAME":         "bench-" + randHex(3),
	}
	for k, v := range st.ServeEnv() {
		vars[k] = v
	}
	if st.RotationGrace > 0 {
		vars["ROTATION_GRACE"] = st.RotationGrace.String()
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := app.LoadConfig(func(k string) string { return vars[k] })
	if err != nil {
		_ = s.dropDB()
		os.RemoveAll(fwDir)
		return nil, fmt.Errorf("espmdm config: %w", err)
	}
	a := app.New(cfg)
	if err := a.Err(); err != nil {
		_ = s.dropDB()
		os.RemoveAll(fwDir)
		return nil, fmt.Errorf("app.New: %w", err)
	}
	startCtx, cancel := context.WithTimeout(ctx, a.StartTimeout())
	defer cancel()
	if err := a.Start(startCtx); err != nil {
		_ = s.dropDB()
		os.RemoveAll(fwDir)
		return nil, fmt.Errorf("start espmdm: %w", err)
	}
	s.app = a
	s.afterStop = func() { os.RemoveAll(fwDir) }
	if err := s.waitReady(ctx, time.Minute); err != nil {
		_ = s.stop()
		return nil, err
	}
	return s, nil
}

func (s *server) stopApp() error {
	if s.app == nil {
		return nil
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), s.app.StopTimeout())
	defer cancel()
	err := s.app.Stop(stopCtx)
	s.app = nil
	return err
}

func (s *server) dropDB() error {
	return adminExec(context.Background(), s.st, "DROP DATABASE IF EXISTS "+s.dbName+" WITH (FORCE)")
}

// stop stops espmdm and drops its database.
func (s *server) stop() error {
	err1 := s.stopApp()
	if s.afterStop != nil {
		s.afterStop()
	}
	err2 := s.dropDB()
	if err1 != nil {
		return fmt.Errorf("stop espmdm: %w", err1)
	}
	if err2 != nil {
		return fmt.Errorf("drop database %s: %w", s.dbName, err2)
	}
	return nil
}

func (s *server) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 5 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/health/ready", nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("espmdm not ready after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tokenSource gets and renews a client-credentials access token. Neither
// the secret nor the token ever appears in an error.
type tokenSource struct {
	http             *http.Client
	tokenURL         string
	clientID, secret string

	mu  sync.Mutex
	tok string
	exp time.Time
}

func newTokenSource(hc *http.Client, tokenURL, clientID, secret string) *tokenSource {
	return &tokenSource{http: hc, tokenURL: tokenURL, clientID: clientID, secret: secret}
}

func (ts *tokenSource) Token(ctx context.Context) (string, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.tok != "" && time.Until(ts.exp) > 30*time.Second {
		return ts.tok, nil
	}
	tok, expiresIn, status, err := grant(ctx, ts.http, ts.tokenURL, ts.clientID, ts.secret)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK || tok == "" {
		return "", fmt.Errorf("token for %s: status %d", ts.clientID, status)
	}
	ts.tok, ts.exp = tok, time.Now().Add(time.Duration(expiresIn)*time.Second)
	return tok, nil
}

// grant is one client-credentials request; it returns the access token,
// its lifetime in seconds and the HTTP status.
func grant(ctx context.Context, hc *http.Client, tokenURL, clientID, secret string) (string, int, int, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, 0, fmt.Errorf("token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := hc.Do(req)
	if err != nil {
		return "", 0, 0, fmt.Errorf("token request for %s: %w", clientID, stripURL(err))
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return "", 0, resp.StatusCode, fmt.Errorf("token answer for %s: not JSON", clientID)
		}
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	if body.ExpiresIn <= 0 {
		body.ExpiresIn = 60
	}
	return body.AccessToken, body.ExpiresIn, resp.StatusCode, nil
}

// stripURL drops the request URL from a *url.Error (it never holds a
// secret here, but keeps errors short).
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// api is an HTTP JSON client with a bearer token.
type api struct {
	http *http.Client
	base string
	tok  *tokenSource
}

// statusError is an unexpected answer; body is a problem document or an
// error answer, never a successful answer (which may hold secrets).
type statusError struct {
	op     string
	status int
	body   string
}

func (e *statusError) Error() string {
	if e.body == "" {
		return fmt.Sprintf("%s: status %d", e.op, e.status)
	}
	return fmt.Sprintf("%s: status %d: %s", e.op, e.status, e.body)
}

// call sends in as JSON (nil: no body), expects one of want (default any
// 2xx) and decodes the answer into out when set. It returns the answer's
// headers.
func (c *api) call(ctx context.Context, method, path string, in, out any, want ...int) (http.Header, error) {
	op := method + " " + path
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	tok, err := c.tok.Token(ctx)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, stripURL(err))
	}
	defer resp.Body.Close()
	ok := false
	if len(want) == 0 {
		ok = resp.StatusCode/100 == 2
	}
	for _, w := range want {
		ok = ok || resp.StatusCode == w
	}
	if !ok {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return resp.Header, &statusError{op: op, status: resp.StatusCode, body: strings.TrimSpace(string(b))}
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Header, nil
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.Header, fmt.Errorf("%s: read answer: %w", op, err)
	}
	if raw, isRaw := out.(*[]byte); isRaw {
		*raw = b
		return resp.Header, nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return resp.Header, fmt.Errorf("%s: answer is not the expected JSON", op)
	}
	return resp.Header, nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
