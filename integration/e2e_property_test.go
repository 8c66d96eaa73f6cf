package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
)

// Property-based testing of the API against its own OpenAPI document with
// Schemathesis (https://schemathesis.readthedocs.io), run on a real espmdm
// on the stack with an admin token: generated requests, valid and invalid,
// and sequences that follow the document's links, must get no server
// error, no undocumented status, content type or header, no body that
// breaks its schema, no valid request refused (but for a firmware body,
// testdata/schemathesis.toml) and no invalid one accepted, with every
// check but unsupported_method.

// SchemathesisVersion is the version .ci/deps installs.
const SchemathesisVersion = "4.32.5"

// schemathesisBinary finds Schemathesis's st: $ESPMDM_SCHEMATHESIS, the
// virtualenv .ci/deps makes in the cache directory, or st on the PATH.
func schemathesisBinary() (string, error) {
	if p := os.Getenv("ESPMDM_SCHEMATHESIS"); p != "" {
		return p, nil
	}
	p := filepath.Join(integration.DefaultCacheDir(), "schemathesis-"+SchemathesisVersion, "bin", "st")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if p, err := exec.LookPath("st"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("schemathesis %s is not installed (run make deps, or set ESPMDM_SCHEMATHESIS to its st)", SchemathesisVersion)
}

// propertyExamples is the number of generated cases per operation and
// phase: $ESPMDM_PROPERTY_EXAMPLES, default 100 (about 35 s).
func propertyExamples(t *testing.T) int {
	if v := os.Getenv("ESPMDM_PROPERTY_EXAMPLES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("ESPMDM_PROPERTY_EXAMPLES=%q: want a positive integer", v)
		}
		return n
	}
	return 100
}

// propertySeed is Schemathesis's seed: $ESPMDM_PROPERTY_SEED, default a
// fixed one (the same cases every run).
func propertySeed() string {
	if v := os.Getenv("ESPMDM_PROPERTY_SEED"); v != "" {
		return v
	}
	return "20251202"
}

func TestE2EOpenAPIPropertyBased(t *testing.T) {
	st, err := schemathesisBinary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(st, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), SchemathesisVersion) {
		t.Fatalf("%s --version: %s %v; want %s", st, out, err, SchemathesisVersion)
	}

	s := startServer(t, map[string]string{"ROTATION_MODE": "grace"})
	// Something to find: ids 1 exist (a fresh database), with firmware.
	m := newModel(t, s, map[string]any{"type": "object"})
	s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
		bytes.NewReader(firmwareImage(esp32image.ChipESP32, "1.0.0")), "Content-Type", "application/octet-stream").
		want(t, http.StatusCreated, nil)
	d := newDevice(t, s, m.ID, `{}`)
	if m.ID != 1 {
		t.Fatalf("the fixture model has id %d; testdata/schemathesis.toml expects 1", m.ID)
	}
	t.Logf("fixtures: model %d, device %d", m.ID, d.ID)

	// The device API with a device's own token (the admin token is refused
	// there, as the document says).
	var p provisioningDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), s.admin, nil).want(t, http.StatusOK, &p)
	s.keep(p.ClientSecret)
	deviceToken := s.token(p.ClientID, p.ClientSecret)
	s.keep(deviceToken)

	// Remove the devices the run creates (and their Keycloak clients).
	t.Cleanup(func() { deleteAllDevices(t, s) })

	examples := propertyExamples(t)
	runs := []struct {
		name, token string
		filter      []string
	}{
		// The device API first: the admin run deletes devices, the one
		// whose token this is among them.
		{"device API", deviceToken, []string{"--include-tag", "device API"}},
		{"admin API", s.admin, []string{"--exclude-tag", "device API"}},
	}
	for _, run := range runs {
		dir := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		args := []string{
			"--config-file", filepath.Join("testdata", "schemathesis.toml"),
			"run", s.base + "/api/openapi.json",
			// Every check but unsupported_method, in every phase (the
			// stateful one follows the document's links); the config file
			// excludes only the firmware body's positive acceptance.
			"--checks", "all", "--exclude-checks", "unsupported_method",
			"--max-examples", strconv.Itoa(examples),
			"--seed", propertySeed(),
			// One worker: with two, the Python 3.11 of the virtualenv
			// can fail in ast.parse (a SystemError about the AST
			// constructor's recursion depth, CPython gh-106905) while
			// Hypothesis describes a strategy in another thread.
			"--workers", "1",
			"--request-timeout", "20",
			"--max-failures", "100",
			"--continue-on-failure",
			"--suppress-health-check", "all",
			"--report", "junit", "--report-dir", dir,
			// A header Schemathesis sanitizes in its output.
			"-H", "Authorization: Bearer " + run.token,
		}
		args = append(args, run.filter...)
		cmd := exec.CommandContext(ctx, st, args...)
		cmd.Env = append(os.Environ(), "NO_COLOR=1", "SCHEMATHESIS_TELEMETRY=false")
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		began := time.Now()
		err := cmd.Run()
		cancel()
		output := buf.String()
		for _, tok := range []string{s.admin, deviceToken, p.ClientSecret} {
			if strings.Contains(output, tok) {
				t.Errorf("%s: schemathesis printed a token or secret", run.name)
				output = strings.ReplaceAll(output, tok, "[redacted]")
			}
		}
		t.Logf("%s: schemathesis %s, %d examples per operation, %s:\n%s", run.name, SchemathesisVersion, examples,
			time.Since(began).Round(time.Second), tail(output, 600))
		if err != nil {
			t.Errorf("%s: schemathesis found problems (%v); see its output above", run.name, err)
		}
	}
}

// deleteAllDevices deletes every device of s (their clients with them).
func deleteAllDevices(t *testing.T, s *server) {
	var page struct {
		Devices []deviceDTO `json:"devices"`
	}
	for range 100 {
		r := s.do(http.MethodGet, "/api/devices?limit=1000", s.admin, nil)
		if r.status != http.StatusOK || json.Unmarshal(r.body, &page) != nil || len(page.Devices) == 0 {
			return
		}
		for _, d := range page.Devices {
			s.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, nil)
		}
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[… %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
