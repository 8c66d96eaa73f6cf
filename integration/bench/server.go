package bench

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
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/espmdm/espmdm/app"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// exec runs one statement on dsn over a connection of its own.
func execSQL(ctx context.Context, dsn, stmt string, args ...any) error {
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
	defer db.Close()
	_, err := db.ExecContext(ctx, stmt, args...)
	return err
}

// newDatabase creates an empty database on the stack's PostgreSQL and
// returns its URL and a function dropping it.
func (e *Env) newDatabase(ctx context.Context) (string, func(), error) {
	name := "bench_" + randHex(6)
	if err := execSQL(ctx, e.Stack.DatabaseURL, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	drop := func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := execSQL(dctx, e.Stack.DatabaseURL, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			e.logf("drop database %s: %v", name, err)
		}
	}
	u, err := url.Parse(e.Stack.DatabaseURL)
	if err != nil {
		drop()
		return "", nil, err
	}
	u.Path = "/" + name
	return u.String(), drop, nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// serverVars is the environment of an espmdm on a free loopback port with
// the stack's services and the database dbURL. The reconciler runs once at
// start only (RECONCILE_INTERVAL=24h): it deletes iotdevice-* clients
// older than two minutes that this database does not know, which on a
// shared stack no running test still uses.
func (e *Env) serverVars(dbURL string, extra map[string]string) (map[string]string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(e.TempDir, "firmware-")
	if err != nil {
		return nil, err
	}
	st := e.Stack
	vars := map[string]string{
		"DATABASE_URL":       dbURL,
		"HTTP_ADDR":          addr,
		"BASE_URL":           "http://" + addr,
		"MQTT_CLIENT_ID":     "bench-" + randHex(4),
		"FIRMWARE_DIR":       dir,
		"SECRET_KEY":         randHex(32),
		"RECONCILE_INTERVAL": "24h",
		"SHUTDOWN_TIMEOUT":   "5s",
		"LOG_LEVEL":          "info",
		// The benchmarks measure what a request costs, many from one
		// device or address: the rate limits would measure themselves.
		"DEVICE_RATE_LIMIT": "0",
		"UNAUTH_RATE_LIMIT": "0",
	}
	for k, v := range st.ServeEnv() {
		vars[k] = v
	}
	for k, v := range extra {
		vars[k] = v
	}
	return vars, nil
}

// espmdm is a running espmdm server.
type espmdm struct {
	Base string
	Pid  int // the subprocess; 0 when in-process
	stop func() error
}

func (s *espmdm) Stop() error {
	if s == nil || s.stop == nil {
		return nil
	}
	return s.stop()
}

// startInProcess runs espmdm with app.New in this process. Its logs are
// encoded at info level as in production, then discarded.
func (e *Env) startInProcess(ctx context.Context, dbURL string, extra map[string]string) (*espmdm, error) {
	vars, err := e.serverVars(dbURL, extra)
	if err != nil {
		return nil, err
	}
	cfg, err := app.LoadConfig(func(k string) string { return vars[k] })
	if err != nil {
		return nil, fmt.Errorf("LoadConfig: %w", err)
	}
	discard := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zapcore.InfoLevel)
	a := app.New(cfg, fx.Decorate(func(*zap.Logger) *zap.Logger { return zap.New(discard) }))
	if err := a.Err(); err != nil {
		return nil, fmt.Errorf("app.New: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, a.StartTimeout())
	defer cancel()
	if err := a.Start(sctx); err != nil {
		return nil, fmt.Errorf("start espmdm: %w", err)
	}
	s := &espmdm{Base: cfg.BaseURL, stop: func() error {
		stopCtx, cancel := context.WithTimeout(context.Background(), a.StopTimeout())
		defer cancel()
		return a.Stop(stopCtx)
	}}
	if err := waitReady(ctx, s.Base, time.Minute); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// build compiles espmdm once into the temporary directory.
func (e *Env) build(ctx context.Context) (string, error) {
	if e.binary != "" {
		return e.binary, nil
	}
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	bin := filepath.Join(e.TempDir, "espmdm")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./app/cmd/espmdm")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./app/cmd/espmdm: %w\n%s", err, out)
	}
	e.binary = bin
	return bin, nil
}

// startProcess runs `espmdm serve` as a subprocess (so its memory can be
// read from /proc/<pid>/status). Its log goes to a file in TempDir.
func (e *Env) startProcess(ctx context.Context, dbURL string, extra map[string]string) (*espmdm, error) {
	bin, err := e.build(ctx)
	if err != nil {
		return nil, err
	}
	vars, err := e.serverVars(dbURL, extra)
	if err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp(e.TempDir, "espmdm-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start espmdm serve: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	s := &espmdm{Base: vars["BASE_URL"], Pid: cmd.Process.Pid, stop: func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			return errors.New("espmdm did not stop within 30s; killed")
		}
	}}
	if err := waitReady(ctx, s.Base, 2*time.Minute); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, logf.Name())
	}
	return s, nil
}

func waitReady(ctx context.Context, base string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/health/ready", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("espmdm at %s not ready after %s: %s", base, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// token gets an access token with the client-credentials grant.
func (e *Env) token(ctx context.Context, clientID, secret string) (string, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.Stack.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("token for %s: %w", clientID, err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusOK || body.AccessToken == "" {
		return "", fmt.Errorf("token for %s: %s", clientID, resp.Status)
	}
	return body.AccessToken, nil
}

// call is one HTTP request with a bearer token and an optional JSON body;
// it returns the status, the Location header and the body.
func call(ctx context.Context, c *http.Client, method, u, tok string, in any) (int, string, []byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, "", nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return 0, "", nil, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), b, err
}

// callJSON is call expecting status want, decoding the body into out.
func callJSON(ctx context.Context, c *http.Client, method, u, tok string, in any, want int, out any) error {
	status, _, b, err := call(ctx, c, method, u, tok, in)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	if status != want {
		return fmt.Errorf("%s %s: status %d, want %d: %.300s", method, u, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, u, err)
		}
	}
	return nil
}

// newClient is an HTTP client with keep-alive for n concurrent requests.
func newClient(n int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = n * 2
	tr.MaxIdleConnsPerHost = n * 2
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}
