package integration_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
)

// procKiB reads a "Vm…" line (in KiB) of /proc/<pid>/status.
func procKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("%s: %q", field, line)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// zeroBody is size zero bytes, produced as they are sent.
type zeroBody struct{ left int64 }

func (z *zeroBody) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), z.left)
	clear(p[:n])
	z.left -= n
	return int(n), nil
}

// TestE2EUploadFloodUnauthenticated: many clients at once send a
// FIRMWARE_MAX_BYTES upload without a valid token, each the whole body
// without waiting for an answer (net/http, no Expect: 100-continue). Each
// receives its 401, and the espmdm process's memory stays flat: the body is
// never read before the token is checked. The figures are logged (the
// report quotes them); the assertion is on memory, never on time.
func TestE2EUploadFloodUnauthenticated(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Fatalf("this test reads /proc: %v", err)
	}
	const (
		concurrent = 64
		rounds     = 2
		size       = 16 << 20 // the default FIRMWARE_MAX_BYTES
	)
	s, _ := startProcess(t, map[string]string{"UNAUTH_RATE_LIMIT": "0"})
	m := newModel(t, s, nil)
	upload := s.base + fmt.Sprintf("/api/device-models/%d/firmware", m.ID)
	// Warm up: one real upload, so that the baseline includes what
	// serving one costs.
	s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
		bytes.NewReader(firmwareImage(esp32image.ChipESP32, "1.0.0")), "Content-Type", "application/octet-stream").
		want(t, http.StatusCreated, nil)
	time.Sleep(500 * time.Millisecond)
	baseRSS, baseHWM := procKiB(t, s.pid, "VmRSS"), procKiB(t, s.pid, "VmHWM")

	var peak atomic.Int64
	done := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			if rss := procKiB(t, s.pid, "VmRSS"); rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: concurrent}}
	defer client.CloseIdleConnections()
	kinds := []struct{ token, contentType string }{
		{"", "application/octet-stream"},
		{"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "application/octet-stream"},
		{"", "multipart/form-data; boundary=flood"},
		{s.viewer + "x", "application/octet-stream"}, // a real token, broken signature
	}
	var statuses sync.Map
	var failed atomic.Int64
	began := time.Now()
	for range rounds {
		var wg sync.WaitGroup
		for i := range concurrent {
			wg.Add(1)
			go func() {
				defer wg.Done()
				k := kinds[i%len(kinds)]
				req, _ := http.NewRequest(http.MethodPost, upload, &zeroBody{left: size})
				req.ContentLength = size
				req.Header.Set("Content-Type", k.contentType)
				if k.token != "" {
					req.Header.Set("Authorization", "Bearer "+k.token)
				}
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					t.Errorf("upload %d: %v", i, err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				n, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
					t.Errorf("upload %d: %d %s %.200s, want a 401 problem", i, resp.StatusCode, resp.Header.Get("Content-Type"), body)
				}
			}()
		}
		wg.Wait()
	}
	elapsed := time.Since(began)
	close(done)
	sampler.Wait()
	time.Sleep(200 * time.Millisecond)
	afterRSS, afterHWM := procKiB(t, s.pid, "VmRSS"), procKiB(t, s.pid, "VmHWM")
	statuses.Range(func(k, v any) bool {
		t.Logf("status %v: %d uploads", k, v.(*atomic.Int64).Load())
		return true
	})
	sent := int64(concurrent*rounds) * size
	t.Logf("%d unauthenticated uploads of %d MiB (%d at once, %d MiB in all) in %s: espmdm RSS %d MiB before, peak %d MiB "+
		"(sampled every 20 ms), %d MiB after; high-water mark %d MiB before, %d MiB after",
		concurrent*rounds, size>>20, concurrent, sent>>20, elapsed.Round(time.Millisecond),
		baseRSS>>10, peak.Load()>>10, afterRSS>>10, baseHWM>>10, afterHWM>>10)
	// Buffering even one body per connection would need concurrent×16 MiB
	// = 1 GiB; flat means within a few MiB of buffers per connection.
	const allowedKiB = 96 << 10
	if grew := max(afterHWM-baseHWM, peak.Load()-baseRSS); grew > allowedKiB {
		t.Errorf("espmdm's memory grew by %d MiB under the flood, want under %d MiB", grew>>10, allowedKiB>>10)
	}
	if failed.Load() > 0 {
		t.Errorf("%d uploads got no answer", failed.Load())
	}
	// And it still serves.
	s.do(http.MethodGet, "/api/device-models", s.viewer, nil).want(t, http.StatusOK, nil)
}

// TestE2EDeviceRateLimit: with real device tokens, a device over
// DEVICE_RATE_LIMIT gets 429 problems with Retry-After while another device
// is served as usual, and an address sending forged tokens is cut off
// before its tokens are verified without slowing the devices.
func TestE2EDeviceRateLimit(t *testing.T) {
	s := startServer(t, map[string]string{
		"DEVICE_RATE_LIMIT": "60", "DEVICE_RATE_BURST": "5",
		"UNAUTH_RATE_LIMIT": "60", "UNAUTH_RATE_BURST": "3",
	})
	m := newModel(t, s, nil)
	devs := newSimDevices(t, s, m.ID, follows, follows)
	busy, calm := devs[0].deviceToken(t, s), devs[1].deviceToken(t, s)
	limited := 0
	for i := range 20 {
		r := s.request(http.MethodGet, "/iot/config", busy, nil)
		switch r.status {
		case http.StatusOK:
			if limited > 0 {
				t.Errorf("request %d: served again right after a 429", i+1)
			}
		case http.StatusTooManyRequests:
			limited++
			r.wantProblem(t, http.StatusTooManyRequests)
			if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 2 {
				t.Errorf("Retry-After %q, want 1 s at 60 a minute", r.header.Get("Retry-After"))
			}
		default:
			t.Fatalf("request %d: %d %s", i+1, r.status, r.body)
		}
	}
	// Burst 5, then one a second: 15 refused, fewer if the loop was slow.
	if limited < 12 || limited > 15 {
		t.Errorf("%d of 20 requests limited, want about 15 (burst 5)", limited)
	}
	// The other device is not slowed: all of its burst passes.
	for range 5 {
		s.request(http.MethodGet, "/iot/config", calm, nil).want(t, http.StatusOK, nil)
	}
	// Forged tokens from this address: 3 refusals, then 429 before
	// verification.
	for range 3 {
		s.request(http.MethodGet, "/iot/config", "forged", nil).wantProblem(t, http.StatusUnauthorized)
	}
	s.request(http.MethodGet, "/iot/config", "forged", nil).wantProblem(t, http.StatusTooManyRequests)
	s.request(http.MethodGet, "/api/devices", "forged", nil).wantProblem(t, http.StatusTooManyRequests)
}
