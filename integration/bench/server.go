package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/espmdm/espmdm/integration/bench/launch"
)

// serverEnv is what a bench server runs with beyond the launcher's
// defaults: logs at info level as in production, and no rate limits (the
// benchmarks measure what a request costs, many from one device or
// address: the rate limits would measure themselves); extra overrides it.
func (e *Env) serverEnv(extra map[string]string) map[string]string {
	vars := map[string]string{
		"LOG_LEVEL":         "info",
		"DEVICE_RATE_LIMIT": "0",
		"UNAUTH_RATE_LIMIT": "0",
	}
	maps.Copy(vars, extra)
	return vars
}

// startInProcess runs espmdm with app.New in this process, with a database
// of its own that Stop drops. Its logs are encoded at info level as in
// production, then discarded.
func (e *Env) startInProcess(ctx context.Context, extra map[string]string) (*launch.Server, error) {
	discard := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zapcore.InfoLevel)
	return launch.InProcess(ctx, e.Stack, launch.Options{Env: e.serverEnv(extra), Dir: e.TempDir, Logger: zap.New(discard)})
}

// startProcess runs `espmdm serve` as a subprocess (so its memory can be
// read from /proc/<pid>/status), with a database of its own that Stop
// drops. Its log goes to a file in TempDir.
func (e *Env) startProcess(ctx context.Context, extra map[string]string) (*launch.Server, error) {
	if e.binary == "" {
		bin, err := launch.Build(ctx, e.TempDir)
		if err != nil {
			return nil, err
		}
		e.binary = bin
	}
	return launch.Process(ctx, e.Stack, e.binary, launch.Options{Env: e.serverEnv(extra), Dir: e.TempDir})
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
