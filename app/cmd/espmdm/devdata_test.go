//go:build dev

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/integration"
)

// devRun is one `espmdm dev` process of TestDevDataDir.
type devRun struct {
	t      *testing.T
	cmd    *exec.Cmd
	exited chan struct{}
	env    map[string]string
	log    string
}

func startDevRun(t *testing.T, bin, dataDir, envFile string, extra ...string) *devRun {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "dev.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	r := &devRun{t: t, exited: make(chan struct{}), log: logPath}
	r.cmd = exec.Command(bin, append([]string{"dev", "--launcher", "processes", "--data-dir", dataDir, "--env-file", envFile}, extra...)...)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	go func() { _ = r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("espmdm dev output:\n%s", tailFile(logPath, 4096))
		}
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.exited
	})
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if _, err := os.Stat(envFile); err == nil {
			break
		}
		select {
		case <-r.exited:
			t.Fatalf("espmdm dev exited before it was ready:\n%s", tailFile(logPath, 4096))
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("espmdm dev not ready after 5 minutes")
		}
	}
	if r.env, err = integration.ReadEnvFile(envFile); err != nil {
		t.Fatal(err)
	}
	return r
}

// stop sends SIGTERM and waits for a clean exit.
func (r *devRun) stop() {
	r.t.Helper()
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(90 * time.Second):
		r.t.Fatal("espmdm dev did not stop within 90 s of SIGTERM")
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		r.t.Fatalf("espmdm dev exited %d:\n%s", code, tailFile(r.log, 4096))
	}
}

func (r *devRun) call(method, path, token, body string) (int, []byte) {
	r.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, r.env["ESPMDM_URL"]+path, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// upload sends a firmware image as the raw body.
func (r *devRun) upload(token string, modelID int64, image []byte) (int, []byte) {
	r.t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/api/device-models/%d/firmware", r.env["ESPMDM_URL"], modelID), bytes.NewReader(image))
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatalf("upload: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestDevDataDir: with --data-dir, a second `espmdm dev` comes back with
// the first one's URLs, credentials, devices and their Keycloak clients,
// and a device's secret from its partition still works. Both runs keep
// firmware in the stack's S3 bucket (--blob-store s3), which the data
// directory keeps too: the device downloads after the restart what was
// uploaded before it, and nothing went to the directory.
func TestDevDataDir(t *testing.T) {
	bin := buildEspmdm(t)
	clearServeEnv(t)
	// As root the database server runs as the postgres user, who must be
	// able to reach the directory: t.TempDir's parents are private.
	dataDir, err := os.MkdirTemp("", "espmdm-data-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dataDir) })
	if err := os.Chmod(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(t.TempDir(), "dev.env")
	client := &http.Client{Timeout: 30 * time.Second}

	first := startDevRun(t, bin, dataDir, envFile, "--blob-store", "s3")
	for _, k := range []string{"S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_REGION", "S3_FORCE_PATH_STYLE"} {
		if first.env[k] == "" {
			t.Errorf("--blob-store s3: the env file has no %s", k)
		}
	}
	tok := operatorToken(t, client, first.env)
	code, body := first.call(http.MethodPost, "/api/device-models", tok, `{"code":"keep_me","name":"kept"}`)
	if code != http.StatusCreated {
		t.Fatalf("create model: %d %s", code, body)
	}
	var m struct{ ID int64 }
	_ = json.Unmarshal(body, &m)
	code, body = first.call(http.MethodPost, "/api/devices", tok, fmt.Sprintf(`{"device_model_id":%d,"config":{"n":1}}`, m.ID))
	if code != http.StatusCreated {
		t.Fatalf("create device: %d %s", code, body)
	}
	var d struct {
		ID       int64  `json:"id"`
		ClientID string `json:"client_id"`
	}
	_ = json.Unmarshal(body, &d)
	code, body = first.call(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), tok, "")
	var prov struct {
		ClientSecret string `json:"client_secret"`
		BaseURL      string `json:"base_url"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &prov) != nil {
		t.Fatalf("provisioning: %d", code)
	}
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32C3)
	desc.Version = "7.0.0"
	image := esp32imagetest.New(esp32image.ChipESP32C3, 3, true, &desc).Bytes()
	if code, body := first.upload(tok, m.ID, image); code != http.StatusCreated {
		t.Fatalf("firmware upload: %d %s", code, body)
	}
	first.stop()
	if _, err := os.Stat(filepath.Join(dataDir, "stack.env")); err != nil {
		t.Fatalf("the data directory lost its stack: %v", err)
	}

	second := startDevRun(t, bin, dataDir, envFile, "--blob-store", "s3")
	defer second.stop()
	for _, k := range []string{"ESPMDM_URL", "OIDC_TOKEN_URL", "DATABASE_URL", "MQTT_URL", "OPERATOR_CLIENT_SECRET"} {
		if second.env[k] != first.env[k] {
			t.Errorf("%s changed between runs of the same data directory", k)
		}
	}
	if prov.BaseURL != second.env["ESPMDM_URL"] {
		t.Errorf("the partition's base_url %s is not where espmdm serves now (%s)", prov.BaseURL, second.env["ESPMDM_URL"])
	}
	tok = operatorToken(t, client, second.env)
	if code, body := second.call(http.MethodGet, fmt.Sprintf("/api/devices/%d", d.ID), tok, ""); code != http.StatusOK {
		t.Fatalf("the device is gone after the restart: %d %s", code, body)
	}
	// The device's secret (from its partition) still gets a token, and the
	// device API accepts it.
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {d.ClientID}, "client_secret": {prov.ClientSecret}}
	resp, err := client.PostForm(second.env["OIDC_TOKEN_URL"], form)
	if err != nil {
		t.Fatal(err)
	}
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the device's secret is refused after the restart: %d", resp.StatusCode)
	}
	if code, body := second.call(http.MethodGet, "/iot/config", tr.AccessToken, ""); code != http.StatusOK || !strings.Contains(strings.ReplaceAll(string(body), " ", ""), `"n":1`) {
		t.Fatalf("/iot/config after the restart: %d %s", code, body)
	}
	if code, body := second.call(http.MethodGet, "/iot/firmware", tr.AccessToken, ""); code != http.StatusOK || !bytes.Equal(body, image) {
		t.Fatalf("/iot/firmware after the restart: %d, %d bytes; want the %d uploaded before it", code, len(body), len(image))
	}
	_ = filepath.WalkDir(filepath.Join(dataDir, "firmware"), func(path string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			t.Errorf("with --blob-store s3 espmdm wrote to FIRMWARE_DIR: %s", path)
		}
		return nil
	})
}
