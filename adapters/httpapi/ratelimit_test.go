package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

func TestDeviceRateLimit(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) {
		c.DeviceRate = httpapi.RateLimit{PerMinute: 6, Burst: 3}
	}))
	e.cat.addModel("sensor", "")
	e.verifier.addDevice("tok-busy", e.cat.addDevice(1, "busy0001", true))
	e.verifier.addDevice("tok-calm", e.cat.addDevice(1, "calm0001", true))

	for i := range 3 {
		if r := e.get("/iot/config", "tok-busy"); r.status != http.StatusOK {
			t.Fatalf("request %d within the burst: %d %s", i+1, r.status, r.body)
		}
	}
	r := e.get("/iot/config", "tok-busy")
	p := wantProblem(t, r, http.StatusTooManyRequests)
	if p.Type != "urn:espmdm:problem:rate-limited" {
		t.Errorf("type = %q", p.Type)
	}
	// 6 a minute: the next request is possible in 10 s.
	if got := r.header.Get("Retry-After"); got != "10" {
		t.Errorf("Retry-After = %q, want 10", got)
	}
	// Another device is not slowed by the busy one.
	for i := range 3 {
		if r := e.get("/iot/config", "tok-calm"); r.status != http.StatusOK {
			t.Fatalf("other device, request %d: %d %s", i+1, r.status, r.body)
		}
	}
	if got := metricValue(t, e, "espmdm_http_rate_limited_total", `limit="device"`); got != 1 {
		t.Errorf("espmdm_http_rate_limited_total{limit=device} = %v, want 1", got)
	}
}

// clientFrom is an HTTP client whose connections come from a loopback
// address of its own (Linux routes all of 127/8 to lo).
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}}
}

func TestUnauthenticatedAddressRateLimit(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) {
		c.UnauthRate = httpapi.RateLimit{PerMinute: 2, Burst: 4}
	}))
	e.cat.addModel("sensor", "")
	e.verifier.addDevice("tok-dev", e.cat.addDevice(1, "good0001", true))
	attacker, other := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")
	get := func(c *http.Client, path, token string) response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, e.base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return response{status: resp.StatusCode, header: resp.Header, body: b}
	}

	// Successful requests spend nothing of the address's budget.
	for range 6 {
		wantStatus(t, get(attacker, "/iot/config", "tok-dev"), http.StatusOK)
	}
	paths := []string{"/iot/config", "/api/devices", "/iot/provisioning", "/api/device-models"}
	for i := range 4 {
		wantProblem(t, get(attacker, paths[i], "forged-"+strconv.Itoa(i)), http.StatusUnauthorized)
	}
	for _, path := range paths {
		r := get(attacker, path, "forged-again")
		wantProblem(t, r, http.StatusTooManyRequests)
		if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 30 {
			t.Errorf("%s: Retry-After = %q, want 1..30 s", path, r.header.Get("Retry-After"))
		}
	}
	// The spent address is refused before its token is looked at.
	seen := len(e.verifier.seen)
	wantProblem(t, get(attacker, "/iot/config", "tok-dev"), http.StatusTooManyRequests)
	if len(e.verifier.seen) != seen {
		t.Errorf("the token of a rate-limited address was verified")
	}
	// Another address is not affected.
	wantProblem(t, get(other, "/api/devices", "forged"), http.StatusUnauthorized)
	wantStatus(t, get(other, "/iot/config", "tok-dev"), http.StatusOK)
	// Public routes are not limited.
	wantStatus(t, get(attacker, "/health/live", ""), http.StatusOK)
}

// metricValue reads one sample of the served /metrics.
func metricValue(t *testing.T, e *env, name, labels string) float64 {
	t.Helper()
	r := e.get("/metrics", "")
	for _, line := range strings.Split(string(r.body), "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, labels) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("no %s{%s} in /metrics", name, labels)
	return 0
}

// Behind a trusted reverse proxy the address limit applies to the client
// that X-Forwarded-For names (its rightmost untrusted entry: what the
// client wrote itself further left is not believed); from any other peer
// the header is ignored.
func TestAddressBehindATrustedProxy(t *testing.T) {
	proxies, err := httpapi.ParseTrustedProxies("127.0.0.2, 10.9.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, withConfig(func(c *httpapi.Config) {
		c.UnauthRate = httpapi.RateLimit{PerMinute: 1, Burst: 2}
		c.TrustedProxies = proxies
	}))
	proxy, direct := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")
	get := func(c *http.Client, xff string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, e.base+"/api/devices", nil)
		req.Header.Set("Authorization", "Bearer forged")
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i, want := range []int{401, 401, 429} {
		// The client forges a different first hop each time; the proxy
		// (10.9.0.5, trusted) appended the real one.
		if got := get(proxy, fmt.Sprintf("203.0.113.%d, 198.51.100.7, 10.9.0.5", i)); got != want {
			t.Fatalf("client 198.51.100.7, request %d: %d, want %d", i+1, got, want)
		}
	}
	if got := get(proxy, "198.51.100.8"); got != http.StatusUnauthorized {
		t.Errorf("another client behind the proxy: %d, want 401 (a budget of its own)", got)
	}
	// An untrusted peer's header is ignored: its own address is limited.
	for i, want := range []int{401, 401, 429} {
		if got := get(direct, fmt.Sprintf("198.51.100.%d", 50+i)); got != want {
			t.Fatalf("untrusted peer, request %d: %d, want %d", i+1, got, want)
		}
	}
	if _, err := httpapi.ParseTrustedProxies("10.0.0.1, not-an-address"); err == nil || strings.Contains(err.Error(), "not-an-address") {
		t.Errorf("ParseTrustedProxies error = %v, want one naming the entry's position only", err)
	}
}
