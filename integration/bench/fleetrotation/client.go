package fleetrotation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

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
