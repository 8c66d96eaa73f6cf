package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/espmdm/espmdm/integration"
)

// TestMain attaches the package to the shared stack ($ESPMDM_STACK_ENV), or
// starts one of its own when run alone.
func TestMain(m *testing.M) { os.Exit(integration.RunTests(m)) }

// runCLIContext is runCLI under ctx, for commands that would run until
// cancelled if they did not fail.
func runCLIContext(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// testContext is a context cancelled after d or when the test ends.
func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// randHex returns 2n random lower-case hex characters.
func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
