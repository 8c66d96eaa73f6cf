package integration

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"
)

// EnvStackFile names the env file of a running stack that test binaries
// attach to instead of starting their own (see the withstack command).
const EnvStackFile = "ESPMDM_STACK_ENV"

var (
	sharedMu  sync.Mutex
	shared    *Stack
	sharedErr error
)

// EnvStackS3 set to 1 makes the stacks that withstack and RunTests start
// run the S3-compatible server too (Options.S3).
const EnvStackS3 = "ESPMDM_STACK_S3"

// RunTests runs a package's tests with a stack: the one named by
// $ESPMDM_STACK_ENV when set, else a new one (launcher from
// $ESPMDM_LAUNCHER, S3 with $ESPMDM_STACK_S3=1) that is stopped when the
// tests end or the run is interrupted. Use it from TestMain:
// os.Exit(integration.RunTests(m)). If the stack cannot be had, the tests
// still run and every test that asks for it with Shared fails with the
// reason.
func RunTests(m *testing.M) int { return RunTestsWith(m, Options{}) }

// RunTestsWith is RunTests with the options of a stack of its own (an
// attached stack is used as it is): a package whose tests need the S3
// server passes Options{S3: true}. An empty Launcher is $ESPMDM_LAUNCHER's.
func RunTestsWith(m *testing.M, opts Options) int {
	var own *Stack
	if path := os.Getenv(EnvStackFile); path != "" {
		shared, sharedErr = Attach(path)
	} else {
		if opts.Launcher == "" {
			opts.Launcher = os.Getenv("ESPMDM_LAUNCHER")
		}
		if opts.Log == nil {
			if l := stackLog(); l != nil {
				opts.Log = l
			}
		}
		opts.S3 = opts.S3 || os.Getenv(EnvStackS3) == "1"
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		own, sharedErr = Start(ctx, opts)
		cancel()
		shared = own
		if sharedErr != nil {
			sharedErr = fmt.Errorf("start the integration stack: %w", sharedErr)
		}
	}
	if own != nil {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			select {
			case <-sigs:
				_ = own.Stop(context.Background())
				os.Exit(130)
			case <-done: // the tests ended: not a goroutine for VerifyNoLeaks to find
			}
		}()
		defer func() {
			signal.Stop(sigs)
			close(done)
			if err := own.Stop(context.Background()); err != nil {
				fmt.Fprintln(os.Stderr, "integration: stop the stack:", err)
			}
		}()
	}
	return m.Run()
}

// stackLog sends service output to stderr when ESPMDM_STACK_LOG=1.
func stackLog() *os.File {
	if os.Getenv("ESPMDM_STACK_LOG") == "1" {
		return os.Stderr
	}
	return nil
}

// Shared returns the stack of this test binary (see RunTests). It fails the
// test when there is none: an integration test never silently skips.
func Shared(t testing.TB) *Stack {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedErr != nil {
		t.Fatalf("integration stack unavailable: %v", sharedErr)
	}
	if shared == nil {
		t.Fatal("integration stack unavailable: call integration.RunTests from TestMain")
	}
	return shared
}

// RequireS3 fails the test unless the stack runs the S3-compatible server
// (an integration test never silently skips).
func (s *Stack) RequireS3(t testing.TB) {
	t.Helper()
	if s.S3Endpoint == "" {
		t.Fatalf("the integration stack has no S3 server: start it with `withstack -s3` (or %s=1), as make test does", EnvStackS3)
	}
}

// adminExec runs one statement on the stack's postgres database over a
// connection of its own.
func (s *Stack) adminExec(stmt string) error {
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(s.DatabaseURL)))
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := db.ExecContext(ctx, stmt)
	return err
}

// NewDatabase creates an empty database on the stack's PostgreSQL and
// returns its URL; it is dropped when the test ends.
func (s *Stack) NewDatabase(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "t_" + hex.EncodeToString(b)
	if err := s.adminExec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		// A fresh connection: a test may have restarted PostgreSQL.
		if err := s.adminExec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(s.DatabaseURL)
	if err != nil {
		t.Fatalf("stack database URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
