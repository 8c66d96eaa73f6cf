package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/integration"
)

// TestMain attaches the package to the shared stack ($ESPMDM_STACK_ENV), or
// starts one of its own when run alone (with the S3 server: blobs migrate).
func TestMain(m *testing.M) { os.Exit(integration.RunTestsWith(m, integration.Options{S3: true})) }

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

// operatorToken gets a token with the env file's operator credentials
// (client-credentials grant at OIDC_TOKEN_URL).
func operatorToken(t *testing.T, client *http.Client, env map[string]string) string {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}}
	req, err := http.NewRequest(http.MethodPost, env["OIDC_TOKEN_URL"], strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(env["OPERATOR_CLIENT_ID"]), url.QueryEscape(env["OPERATOR_CLIENT_SECRET"]))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("operator token: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("operator token response: %v", err)
	}
	if resp.StatusCode != http.StatusOK || body.AccessToken == "" {
		t.Fatalf("operator token for %s: %s %s", env["OPERATOR_CLIENT_ID"], resp.Status, body.Error)
	}
	return body.AccessToken
}
