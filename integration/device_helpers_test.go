package integration_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/espmdm/espmdm/nvs"
)

// Helpers for end-to-end tests with real component devices: espmdm-device
// processes (firmware/device, the espmdm ESP-IDF component built for the
// linux target by make firmware), each booted from the NVS partition espmdm
// produced, each with its emulated flash in a state directory of its own,
// each read through its JSON lines on stdout.

// Exit statuses of espmdm-device (firmware/device/main/main.c).
const (
	deviceExitCrash  = 70 // --crash-at reached
	deviceExitReboot = 75 // the component rebooted the device (after an OTA)
)

// deviceBinary builds bin/espmdm-device with make firmware (cached: make
// rebuilds only when firmware/ changed) once per test binary.
var deviceBinary = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	out, err := exec.Command("make", "-s", "-C", root, "firmware").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("make firmware: %w\n%s", err, out)
	}
	return filepath.Join(root, "bin", "espmdm-device"), nil
})

// devEvent is one JSON line of espmdm-device.
type devEvent struct {
	Event           string          `json:"event"`
	TMs             int64           `json:"t_ms"`
	Slot            string          `json:"slot"`
	FirmwareVersion string          `json:"firmware_version"`
	Partition       string          `json:"partition"`
	OTAState        string          `json:"ota_state"`
	ClientID        string          `json:"client_id"`
	Config          json.RawMessage `json:"config"`
	Topic           string          `json:"topic"`
	Kind            string          `json:"kind"`
	Changed         bool            `json:"changed"`
	Status          int             `json:"status"`
	At              string          `json:"at"`
	Version         string          `json:"version"`
	Offset          int64           `json:"offset"`
	Size            int64           `json:"size"`
	Result          string          `json:"result"`
	Op              string          `json:"op"`
	Message         string          `json:"message"`
	Attempt         int             `json:"attempt"`
	RetryInMs       int             `json:"retry_in_ms"`
	Reason          string          `json:"reason"`
	Topics          int             `json:"topics"`
	SessionPresent  bool            `json:"session_present"`

	run  int       // which start of the process wrote it (1 = the first)
	seen time.Time // when the test read it
}

// hostDevice is one espmdm-device: its partition, its state directory and
// the events of all its runs. With autoReboot a run that ends in a reboot
// (exit 75) is started again at once, as the device's hardware would.
type hostDevice struct {
	t       *testing.T
	name    string
	bin     string
	nvsFile string
	dir     string
	version string
	// env is added to the process's environment (ESPMDM_DEVICE_LOG=debug).
	env []string

	mu         sync.Mutex
	events     []devEvent
	out        bytes.Buffer // stdout and stderr of every run, for the secret check
	runs       int
	running    bool
	exits      []int
	cmd        *exec.Cmd
	autoReboot bool
	// crashes are --crash-at steps for the next starts, one per start, in order.
	crashes []string
	changed chan struct{}
}

// newHostDevice writes the device's partition as espmdm hands it out
// (?format=bin) and prepares its state directory; secrets it holds are
// checked against its output when the test ends.
func newHostDevice(t *testing.T, s *server, d deviceDTO, version string) *hostDevice {
	t.Helper()
	bin, err := deviceBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := s.request(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=bin", d.ID), s.admin, nil).
		want(t, http.StatusOK, nil)
	nvsFile := filepath.Join(dir, "prov.bin")
	if err := os.WriteFile(nvsFile, r.body, 0o600); err != nil {
		t.Fatal(err)
	}
	h := &hostDevice{t: t, name: d.ClientID, bin: bin, nvsFile: nvsFile, dir: filepath.Join(dir, "state"),
		version: version, changed: make(chan struct{}, 1)}
	s.keep(currentSecret(t, s, d.ID))
	t.Cleanup(func() {
		h.kill()
		secrets := h.nvsSecrets()
		// The secret espmdm holds now (none when the test deleted the
		// client or stopped the server).
		if sec, ok := currentSecretIfAny(s, d.ID); ok {
			secrets = append(secrets, sec)
		}
		s.mu.Lock()
		secrets = append(secrets, s.secrets...)
		s.mu.Unlock()
		h.mu.Lock()
		out := h.out.String()
		h.mu.Unlock()
		for _, secret := range secrets {
			if len(secret) >= 8 && strings.Contains(out, secret) {
				t.Errorf("%s: a secret appears in the output of espmdm-device", h.name)
			}
		}
		// Access tokens are JWTs: none in any line, at any log level.
		if strings.Contains(out, "Bearer ") || strings.Contains(out, "eyJhbGci") {
			t.Errorf("%s: an access token appears in the output of espmdm-device", h.name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", h.name, tail(out, 60))
		}
	})
	return h
}

// currentSecret is the secret espmdm's provisioning data holds for the
// device now.
func currentSecret(t *testing.T, s *server, id int64) string {
	t.Helper()
	var p provisioningDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", id), s.admin, nil).want(t, http.StatusOK, &p)
	return p.ClientSecret
}

// currentSecretIfAny is currentSecret without failing the test.
func currentSecretIfAny(s *server, id int64) (string, bool) {
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/api/devices/%d/provisioning?format=json", s.base, id), nil)
	if err != nil {
		return "", false
	}
	req.Header.Set("Authorization", "Bearer "+s.admin)
	resp, err := s.client.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	var p provisioningDTO
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&p) != nil {
		return "", false
	}
	return p.ClientSecret, true
}

// start runs the device once more (a power-on or a reboot); extra are
// further arguments. A crash step queued with crashNext is added.
func (h *hostDevice) start(extra ...string) {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running {
		h.t.Errorf("%s: started while running", h.name)
		return
	}
	h.startLocked(extra...)
}

func (h *hostDevice) startLocked(extra ...string) {
	args := []string{"--nvs", h.nvsFile, "--state-dir", h.dir, "--firmware-version", h.version}
	if len(h.crashes) > 0 {
		if h.crashes[0] != "" {
			args = append(args, "--crash-at", h.crashes[0])
		}
		h.crashes = h.crashes[1:]
	}
	args = append(args, extra...)
	cmd := exec.Command(h.bin, args...)
	cmd.Env = append(os.Environ(), h.env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		h.t.Errorf("%s: %v", h.name, err)
		return
	}
	cmd.Stderr = &lockedWriter{h: h}
	if err := cmd.Start(); err != nil {
		h.t.Errorf("%s: start: %v", h.name, err)
		return
	}
	h.runs++
	h.running = true
	h.cmd = cmd
	run := h.runs
	go h.read(cmd, stdout, run, extra)
}

type lockedWriter struct{ h *hostDevice }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.h.mu.Lock()
	defer w.h.mu.Unlock()
	return w.h.out.Write(p)
}

// read collects the run's events until it exits, then records the exit and
// reboots the device when it asked for it and autoReboot is set.
func (h *hostDevice) read(cmd *exec.Cmd, stdout io.Reader, run int, extra []string) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e devEvent
		err := json.Unmarshal(line, &e)
		h.mu.Lock()
		h.out.Write(line)
		h.out.WriteByte('\n')
		if err != nil || e.Event == "" {
			h.t.Errorf("%s: stdout line is not a JSON event: %q", h.name, line)
		} else {
			e.run, e.seen = run, time.Now()
			h.events = append(h.events, e)
		}
		h.mu.Unlock()
		h.notify()
	}
	err := cmd.Wait()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	h.mu.Lock()
	h.exits = append(h.exits, code)
	h.running = false
	if code == deviceExitReboot && h.autoReboot {
		h.startLocked(extra...)
	}
	h.mu.Unlock()
	h.notify()
}

func (h *hostDevice) notify() {
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// mark is the number of events so far, for since and waitFor.
func (h *hostDevice) mark() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.events)
}

func (h *hostDevice) since(from int) []devEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]devEvent(nil), h.events[from:]...)
}

// waitFor waits for an event from index from on that pred accepts.
func (h *hostDevice) waitFor(from int, timeout time.Duration, what string, pred func(devEvent) bool) devEvent {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range h.since(from) {
			if pred(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			h.mu.Lock()
			out := tail(h.out.String(), 40)
			h.mu.Unlock()
			h.t.Fatalf("%s: no %s within %s; output:\n%s", h.name, what, timeout, out)
		}
		select {
		case <-h.changed:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (h *hostDevice) waitEvent(from int, timeout time.Duration, name string) devEvent {
	h.t.Helper()
	return h.waitFor(from, timeout, name+" event", func(e devEvent) bool { return e.Event == name })
}

// waitExit waits until the current run has ended and returns its status.
func (h *hostDevice) waitExit(timeout time.Duration) int {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		h.mu.Lock()
		running, exits := h.running, append([]int(nil), h.exits...)
		h.mu.Unlock()
		if !running && len(exits) > 0 {
			return exits[len(exits)-1]
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: still running after %s", h.name, timeout)
		}
		select {
		case <-h.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (h *hostDevice) exitCodes() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.exits...)
}

func (h *hostDevice) isRunning() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.running
}

// stop sends SIGTERM and requires the clean stop's status 0.
func (h *hostDevice) stop() {
	h.t.Helper()
	h.mu.Lock()
	h.autoReboot = false
	cmd, running := h.cmd, h.running
	h.mu.Unlock()
	if !running {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if code := h.waitExit(30 * time.Second); code != 0 {
		h.t.Fatalf("%s: SIGTERM: exit status %d, want 0", h.name, code)
	}
}

// kill ends a run the test left behind.
func (h *hostDevice) kill() {
	h.mu.Lock()
	h.autoReboot = false
	cmd, running := h.cmd, h.running
	h.mu.Unlock()
	if running {
		_ = cmd.Process.Kill()
		deadline := time.Now().Add(10 * time.Second)
		for h.isRunning() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// nvsSlots reads the secret slots from the device's emulated flash (the
// provisioning partition at 0x9000, 64 KiB: firmware/device/partitions.csv).
func (h *hostDevice) nvsSlots() (current, next string, err error) {
	img, err := os.ReadFile(filepath.Join(h.dir, "flash.bin"))
	if err != nil {
		return "", "", err
	}
	if len(img) < 0x19000 {
		return "", "", fmt.Errorf("flash.bin is %d bytes", len(img))
	}
	entries, err := nvs.Decode(img[0x9000:0x19000])
	if err != nil {
		return "", "", err
	}
	for _, e := range entries {
		if e.Namespace != "prov" {
			continue
		}
		v, _ := e.Value.(string)
		switch e.Key {
		case "client_secret":
			current = v
		case "client_sec_next":
			next = v
		}
	}
	return current, next, nil
}

func (h *hostDevice) nvsSecrets() []string {
	c, n, err := h.nvsSlots()
	if err != nil {
		return nil
	}
	return []string{c, n}
}

// count is the number of events named name from index from on.
func (h *hostDevice) count(from int, name string) int {
	n := 0
	for _, e := range h.since(from) {
		if e.Event == name {
			n++
		}
	}
	return n
}
