// Package launch starts espmdm for the benchmarks: in this process
// (app.New) or as an `espmdm serve` subprocess, on a free loopback port,
// with an integration stack's services and a database of its own. The
// bench scenarios and the fleet rotation benchmark both start their
// servers here.
package launch

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
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

	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/integration"
)

// Options say how a server is started. The zero value is a server with
// the application's own logger and a temporary directory of its own.
type Options struct {
	// Env overrides single variables of the server's environment: the
	// launcher sets DATABASE_URL, HTTP_ADDR, BASE_URL, MQTT_CLIENT_ID,
	// FIRMWARE_DIR, SECRET_KEY, RECONCILE_INTERVAL=24h (the reconciler
	// runs once, at start: it deletes iotdevice-* clients older than two
	// minutes that the server's database does not know, which on a shared
	// stack no running test still uses), SHUTDOWN_TIMEOUT=5s, the stack's
	// ServeEnv and its ROTATION_GRACE.
	Env map[string]string
	// Dir holds the firmware directory and a subprocess's log; it is the
	// caller's to remove. Empty: a temporary directory that Stop removes.
	Dir string
	// Logger replaces the application's logger (in process only); nil:
	// the application's own, by LOG_LEVEL.
	Logger *zap.Logger
}

// Server is a running espmdm.
type Server struct {
	// Base is its URL, http://127.0.0.1:PORT.
	Base string
	// DatabaseURL is its database, created for it and dropped by Stop.
	DatabaseURL string
	// Pid is the subprocess; 0 in process.
	Pid int
	// cleanup runs in reverse order on Stop.
	cleanup []func() error
}

// Stop stops espmdm, then removes its database and temporary directory.
// It returns the first error.
func (s *Server) Stop() error {
	if s == nil {
		return nil
	}
	var first error
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		if err := s.cleanup[i](); err != nil && first == nil {
			first = err
		}
	}
	s.cleanup = nil
	return first
}

func (s *Server) onStop(f func() error) { s.cleanup = append(s.cleanup, f) }

// InProcess starts espmdm with app.New in this process and returns once it
// is ready.
func InProcess(ctx context.Context, st *integration.Stack, o Options) (*Server, error) {
	s, vars, _, err := prepare(ctx, st, o)
	if err != nil {
		return nil, err
	}
	cfg, err := app.LoadConfig(func(k string) string { return vars[k] })
	if err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("espmdm config: %w", err)
	}
	var opts []fx.Option
	if o.Logger != nil {
		opts = append(opts, fx.Decorate(func(*zap.Logger) *zap.Logger { return o.Logger }))
	}
	a := app.New(cfg, opts...)
	if err := a.Err(); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("app.New: %w", err)
	}
	startCtx, cancel := context.WithTimeout(ctx, a.StartTimeout())
	defer cancel()
	if err := a.Start(startCtx); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("start espmdm: %w", err)
	}
	s.onStop(func() error {
		stopCtx, cancel := context.WithTimeout(context.Background(), a.StopTimeout())
		defer cancel()
		if err := a.Stop(stopCtx); err != nil {
			return fmt.Errorf("stop espmdm: %w", err)
		}
		return nil
	})
	if err := waitReady(ctx, s.Base, time.Minute); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// Process runs `bin serve` (see Build) as a subprocess, so that its memory
// can be read from /proc/<pid>/status, and returns once it is ready. Its
// log goes to a file in o.Dir (or in the temporary directory that Stop
// removes).
func Process(ctx context.Context, st *integration.Stack, bin string, o Options) (*Server, error) {
	s, vars, dir, err := prepare(ctx, st, o)
	if err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp(dir, "espmdm-*.log")
	if err != nil {
		_ = s.Stop()
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
		_ = s.Stop()
		return nil, fmt.Errorf("start espmdm serve: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	s.Pid = cmd.Process.Pid
	s.onStop(func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("stop espmdm: %w", err)
			}
			return nil
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			return errors.New("stop espmdm: it did not stop within 30s; killed")
		}
	})
	if err := waitReady(ctx, s.Base, 2*time.Minute); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, logf.Name())
	}
	return s, nil
}

// Build compiles ./app/cmd/espmdm of the module in the working directory
// into dir and returns the binary's path.
func Build(ctx context.Context, dir string) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	bin := filepath.Join(dir, "espmdm")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./app/cmd/espmdm")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./app/cmd/espmdm: %w\n%s", err, out)
	}
	return bin, nil
}

// prepare creates the server's database and directories and returns its
// environment (see Options.Env) and directory (o.Dir or a temporary one).
// What it made is undone by the Server's Stop, also when it fails.
func prepare(ctx context.Context, st *integration.Stack, o Options) (s *Server, vars map[string]string, dir string, err error) {
	if st == nil {
		return nil, nil, "", errors.New("launch: no stack")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, "", fmt.Errorf("free port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s = &Server{Base: "http://" + addr}
	dir = o.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "espmdm-bench-"); err != nil {
			return nil, nil, "", err
		}
		s.onStop(func() error { return os.RemoveAll(dir) })
	}
	fwDir, err := os.MkdirTemp(dir, "firmware-")
	if err != nil {
		_ = s.Stop()
		return nil, nil, "", err
	}
	if s.DatabaseURL, err = newDatabase(ctx, st, s); err != nil {
		_ = s.Stop()
		return nil, nil, "", err
	}
	vars = map[string]string{
		"DATABASE_URL":       s.DatabaseURL,
		"HTTP_ADDR":          addr,
		"BASE_URL":           s.Base,
		"MQTT_CLIENT_ID":     "bench-" + RandHex(4),
		"FIRMWARE_DIR":       fwDir,
		"SECRET_KEY":         RandHex(32),
		"RECONCILE_INTERVAL": "24h",
		"SHUTDOWN_TIMEOUT":   "5s",
	}
	maps.Copy(vars, st.ServeEnv())
	if st.RotationGrace > 0 {
		vars["ROTATION_GRACE"] = st.RotationGrace.String()
	}
	maps.Copy(vars, o.Env)
	return s, vars, dir, nil
}

// newDatabase creates an empty database on the stack's PostgreSQL, which
// s's Stop drops, and returns its URL.
func newDatabase(ctx context.Context, st *integration.Stack, s *Server) (string, error) {
	u, err := url.Parse(st.DatabaseURL)
	if err != nil {
		return "", fmt.Errorf("stack database URL: %w", err)
	}
	name := "bench_" + RandHex(6)
	if err := execSQL(ctx, st.DatabaseURL, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database: %w", err)
	}
	s.onStop(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := execSQL(ctx, st.DatabaseURL, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	})
	u.Path = "/" + name
	return u.String(), nil
}

// execSQL runs one statement on dsn over a connection of its own.
func execSQL(ctx context.Context, dsn, stmt string) error {
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
	defer db.Close()
	_, err := db.ExecContext(ctx, stmt)
	return err
}

func waitReady(ctx context.Context, base string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &http.Client{Timeout: 5 * time.Second}
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/health/ready", nil)
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

// RandHex is n random bytes in hex: names that do not collide on a shared
// stack.
func RandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
