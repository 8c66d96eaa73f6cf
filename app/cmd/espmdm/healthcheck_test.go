package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHealthcheck(t *testing.T) {
	ready := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/health/live":
			w.WriteHeader(http.StatusOK)
		case r.URL.Path == "/health/ready" && ready:
			w.WriteHeader(http.StatusOK)
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name     string
		addr     string
		args     []string
		ready    bool
		wantCode int
		wantOut  string
	}{
		{"ready, HTTP_ADDR :port", ":" + port, nil, true, 0, "healthy: GET http://127.0.0.1:" + port + "/health/ready: 200"},
		{"ready, --url", "", []string{"--url", srv.URL + "/"}, true, 0, "healthy"},
		{"not ready", ":" + port, nil, false, 1, "503 Service Unavailable"},
		{"not ready but live", ":" + port, []string{"--path", "/health/live"}, false, 0, "/health/live: 200"},
		{"nothing listens", closed, []string{"--timeout", "2s"}, true, 1, "connection refused"},
		{"bad HTTP_ADDR", "8080", nil, true, 1, `HTTP_ADDR "8080" is not host:port`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("HTTP_ADDR", tt.addr)
			ready = tt.ready
			code, stdout, stderr := runCLIContext(t, testContext(t, 10*time.Second), append([]string{"healthcheck"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d (stdout %q, stderr %q)", code, tt.wantCode, stdout, stderr)
			}
			if got := stdout + stderr; !strings.Contains(got, tt.wantOut) {
				t.Errorf("output %q does not contain %q", got, tt.wantOut)
			}
		})
	}
}

func TestLocalURL(t *testing.T) {
	for addr, want := range map[string]string{
		"":               "http://127.0.0.1:8080",
		":8080":          "http://127.0.0.1:8080",
		"0.0.0.0:9000":   "http://127.0.0.1:9000",
		"[::]:80":        "http://127.0.0.1:80",
		"10.0.0.5:8080":  "http://10.0.0.5:8080",
		"[fd00::1]:8443": "http://[fd00::1]:8443",
	} {
		got, err := localURL(addr)
		if err != nil || got != want {
			t.Errorf("localURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
}
