package integration_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
)

// Credential rotation (SPEC §4) end to end: espmdm against the stack's real
// Keycloak (with its secret-rotation policy), PostgreSQL and Mosquitto, and
// devices that follow the protocol, never answer, go silent after the
// fetch, or follow only the reviewed design's steps.

// behaviour is how a simulated device answers a rotation.
type behaviour int

const (
	follows    behaviour = iota // fetch, token with the new secret, ack, promote
	silent                      // never answers
	fetchQuiet                  // fetches, then goes silent (never persists)
	legacy                      // the reviewed design: fetch, write, reboot, token, /iot/config
)

func (b behaviour) String() string {
	return [...]string{"follows", "silent", "fetch-then-silent", "legacy"}[b]
}

// simDevice is a device as the test drives it: the secrets it holds and
// what it saw.
type simDevice struct {
	deviceDTO
	b       behaviour
	current string
	next    string
	// fetched are the distinct secrets fetches returned; attempts the
	// attempt start times acted on.
	fetched  []string
	attempts map[string]bool
	done     time.Time // when the device completed (follows, legacy)
}

// rotationDeviceDTO is the part of a device the driver needs.
type rotationDeviceDTO struct {
	ID                    int64   `json:"id"`
	RotationState         string  `json:"rotation_state"`
	LastRotationAttemptAt *string `json:"last_rotation_attempt_at"`
	SecretCreatedAt       *string `json:"secret_created_at"`
}

type rotationStatusDTO struct {
	Mode          string         `json:"mode"`
	CountsByState map[string]int `json:"counts_by_state"`
	Inactive      int            `json:"inactive"`
	InFlight      []int64        `json:"in_flight"`
	LastCompleted *string        `json:"last_rotation_completed_at"`
	NextScheduled *string        `json:"next_scheduled_rotation"`
	LeaseHolder   *string        `json:"lease_holder"`
}

// tokenStatus asks Keycloak for a client-credentials token and returns it
// with the status (no failure: a refused secret is an answer; token is the
// failing form).
func tokenStatus(t *testing.T, st *integration.Stack, clientID, secret string) (string, int) {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}}
	resp, err := http.PostForm(st.TokenURL, form)
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return body.AccessToken, resp.StatusCode
}

// accepted reports whether Keycloak accepts secret for the device now.
func accepted(t *testing.T, st *integration.Stack, clientID, secret string) bool {
	t.Helper()
	_, code := tokenStatus(t, st, clientID, secret)
	return code == http.StatusOK
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// newSimDevices creates one device per behaviour and reads its secret from
// the provisioning data.
func newSimDevices(t *testing.T, s *server, modelID int64, bs ...behaviour) []*simDevice {
	t.Helper()
	var out []*simDevice
	for _, b := range bs {
		d := newDevice(t, s, modelID, `{}`)
		var p provisioningDTO
		s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), s.admin, nil).want(t, http.StatusOK, &p)
		s.keep(p.ClientSecret)
		out = append(out, &simDevice{deviceDTO: d, b: b, current: p.ClientSecret, attempts: map[string]bool{}})
	}
	return out
}

// deviceToken gets a token with the first secret that works, current then
// next, as SPEC §4 says a device does at boot (promoting next when only it
// works); "" when none does.
func (d *simDevice) deviceToken(t *testing.T, s *server) string {
	t.Helper()
	for i, secret := range []string{d.current, d.next} {
		if secret == "" {
			continue
		}
		if tok, code := tokenStatus(t, s.st, d.ClientID, secret); code == http.StatusOK {
			s.keep(tok)
			if i == 1 {
				d.current, d.next = secret, ""
			}
			return tok
		}
	}
	return ""
}

// act answers the device's rotation attempt started at attempt, once.
func (d *simDevice) act(t *testing.T, s *server, attempt string) {
	t.Helper()
	if d.attempts[attempt] || d.b == silent {
		return
	}
	d.attempts[attempt] = true
	tok := d.deviceToken(t, s)
	if tok == "" {
		t.Fatalf("device %s (%s) is locked out: no secret it holds is accepted", d.ClientID, d.b)
	}
	var p provisioningDTO
	s.do(http.MethodGet, "/iot/provisioning", tok, nil).want(t, http.StatusOK, &p)
	s.keep(p.ClientSecret)
	if p.ClientID != d.ClientID || p.DeviceKey != d.Key || p.ClientSecret == "" {
		t.Fatalf("fetch of %s returned %s/%s", d.ClientID, p.ClientID, p.DeviceKey)
	}
	if len(d.fetched) == 0 || d.fetched[len(d.fetched)-1] != p.ClientSecret {
		d.fetched = append(d.fetched, p.ClientSecret)
	}
	switch d.b {
	case fetchQuiet:
		return // crashed before persisting
	case follows:
		d.next = p.ClientSecret
		newTok, code := tokenStatus(t, s.st, d.ClientID, d.next)
		if code != http.StatusOK {
			t.Fatalf("the fetched secret of %s is refused: %d", d.ClientID, code)
		}
		s.keep(newTok)
		s.do(http.MethodPost, "/iot/provisioning/ack", newTok, map[string]string{"client_secret_sha256": sha256Hex(d.next)}).
			want(t, http.StatusNoContent, nil)
		d.current, d.next = d.next, ""
		d.done = time.Now()
	case legacy:
		d.current = p.ClientSecret          // the reviewed design overwrites its only secret
		time.Sleep(1100 * time.Millisecond) // the reboot: the token is issued in a later second
		newTok, code := tokenStatus(t, s.st, d.ClientID, d.current)
		if code != http.StatusOK {
			t.Fatalf("the fetched secret of legacy device %s is refused: %d", d.ClientID, code)
		}
		s.keep(newTok)
		s.do(http.MethodGet, "/iot/config", newTok, nil).want(t, http.StatusOK, nil)
		d.done = time.Now()
	}
}

// rotationRun drives devices through a rotation until until says it is
// done, and returns the largest number of PENDING devices it saw.
func rotationRun(t *testing.T, s *server, modelID int64, devs []*simDevice, timeout time.Duration, until func() bool) int {
	t.Helper()
	byID := map[int64]*simDevice{}
	for _, d := range devs {
		byID[d.ID] = d
	}
	maxPending := 0
	deadline := time.Now().Add(timeout)
	for !until() {
		if time.Now().After(deadline) {
			var states []string
			for _, d := range devs {
				ds := deviceState(t, s, d.ID)
				states = append(states, fmt.Sprintf("%s:%s(attempt %v, %d acted on)", d.b, ds.RotationState, deref(ds.LastRotationAttemptAt), len(d.attempts)))
			}
			st := s.do(http.MethodGet, "/api/rotation/status", s.viewer, nil)
			t.Fatalf("rotation not done after %s: %v; status %s", timeout, states, st.body)
		}
		var page struct {
			Devices []rotationDeviceDTO `json:"devices"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/devices?model_id=%d&rotation_state=PENDING&limit=1000", modelID), s.admin, nil).
			want(t, http.StatusOK, &page)
		var st rotationStatusDTO
		s.do(http.MethodGet, "/api/rotation/status", s.viewer, nil).want(t, http.StatusOK, &st)
		maxPending = max(maxPending, len(page.Devices), st.CountsByState["PENDING"])
		for _, p := range page.Devices {
			if d := byID[p.ID]; d != nil && p.LastRotationAttemptAt != nil {
				d.act(t, s, *p.LastRotationAttemptAt)
			}
		}
		time.Sleep(150 * time.Millisecond)
	}
	return maxPending
}

func deviceState(t *testing.T, s *server, id int64) rotationDeviceDTO {
	t.Helper()
	var d rotationDeviceDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", id), s.admin, nil).want(t, http.StatusOK, &d)
	return d
}

// rotationEnv is the environment of a fast rotation: short timeout, retry
// and tick.
func rotationEnv(mode string, concurrency int) map[string]string {
	return map[string]string{
		"ROTATION_MODE":            mode,
		"ROTATION_CONCURRENCY":     fmt.Sprint(concurrency),
		"ROTATION_TIMEOUT_SECONDS": "4",
		"ROTATION_RETRY_SECONDS":   "3",
		"ROTATION_TICK_SECONDS":    "1",
	}
}

func TestE2ERotationGrace(t *testing.T) {
	s := startServer(t, rotationEnv("grace", 2))
	var st rotationStatusDTO
	// The worker takes the lease in its first cycle, just after start.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		s.do(http.MethodGet, "/api/rotation/status", s.viewer, nil).want(t, http.StatusOK, &st)
		if st.LeaseHolder != nil || time.Now().After(deadline) {
			break
		}
	}
	if st.Mode != "grace" || st.NextScheduled == nil || st.LeaseHolder == nil {
		t.Fatalf("status = %+v, want grace with a schedule and a lease holder", st)
	}
	m := newModel(t, s, nil)
	devs := newSimDevices(t, s, m.ID, follows, follows, follows, follows, silent, fetchQuiet, legacy)
	old := map[int64]string{}
	for _, d := range devs {
		old[d.ID] = d.current
	}
	nudges := subscribe(t, s.st, "iotsupport/+/rotation")

	began := time.Now()
	var trig struct {
		QueuedCount int `json:"queued_count"`
	}
	s.do(http.MethodPost, "/api/rotation/trigger", s.admin, nil).want(t, http.StatusAccepted, &trig)
	if trig.QueuedCount != len(devs) {
		t.Fatalf("queued %d, want %d", trig.QueuedCount, len(devs))
	}
	nudge := nextMessage(t, nudges, "iotsupport/"+devs[0].ClientID+"/rotation")
	if len(nudge.Payload) != 0 || nudge.Retain || nudge.QoS != 1 {
		t.Fatalf("nudge: payload %q retain %t qos %d, want empty, not retained, QoS 1", nudge.Payload, nudge.Retain, nudge.QoS)
	}

	followers, quiet, leg := devs[:4], devs[5], devs[6]
	maxPending := rotationRun(t, s, m.ID, devs, 90*time.Second, func() bool {
		for _, d := range followers {
			if d.done.IsZero() {
				return false
			}
		}
		// The silent fetcher was retried (a second attempt) and the legacy
		// device has answered at least twice.
		return len(quiet.attempts) >= 2 && len(leg.attempts) >= 2
	})
	var last time.Time
	for _, d := range followers {
		last = maxTime(last, d.done)
	}
	t.Logf("grace: %d following devices rotated in %s (concurrency 2, %d PENDING at most)", len(followers), last.Sub(began).Round(time.Millisecond), maxPending)
	if maxPending > 2 {
		t.Errorf("%d devices PENDING at once, ROTATION_CONCURRENCY is 2", maxPending)
	}
	for _, d := range followers {
		if got := deviceState(t, s, d.ID); got.RotationState != "OK" {
			t.Errorf("follower %s: state %s, want OK", d.ClientID, got.RotationState)
		}
		if accepted(t, s.st, d.ClientID, old[d.ID]) {
			t.Errorf("follower %s: the old secret still works after the ack", d.ClientID)
		}
		if !accepted(t, s.st, d.ClientID, d.current) {
			t.Errorf("follower %s: the new secret is refused", d.ClientID)
		}
		// A repeated ack is idempotent.
		tok := d.deviceToken(t, s)
		s.do(http.MethodPost, "/iot/provisioning/ack", tok, map[string]string{"client_secret_sha256": sha256Hex(d.current)}).
			want(t, http.StatusNoContent, nil)
		s.do(http.MethodPost, "/iot/provisioning/ack", tok, map[string]string{"client_secret_sha256": sha256Hex(old[d.ID])}).
			wantProblem(t, http.StatusConflict)
	}
	// The silent device never lost its secret.
	if !accepted(t, s.st, devs[4].ClientID, old[devs[4].ID]) {
		t.Error("the silent device's secret stopped working")
	}
	// The device that fetched and went silent: both secrets work, and its
	// retry handed out the same secret.
	if len(quiet.fetched) != 1 {
		t.Errorf("the retry of the silent fetcher handed out %d different secrets, want 1", len(quiet.fetched))
	}
	if !accepted(t, s.st, quiet.ClientID, old[quiet.ID]) || !accepted(t, s.st, quiet.ClientID, quiet.fetched[0]) {
		t.Error("grace: after the timeout the silent fetcher's old and new secrets must both work")
	}
	// The legacy device never completes in grace mode, but is never locked
	// out: what it holds (the fetched secret) works, and so does the old one.
	if got := deviceState(t, s, leg.ID); got.RotationState == "OK" {
		t.Error("grace: the legacy device completed without an ack")
	}
	if !accepted(t, s.st, leg.ClientID, leg.current) || !accepted(t, s.st, leg.ClientID, old[leg.ID]) {
		t.Error("grace: the legacy device lost a secret")
	}
	// The metrics tell the same story.
	metrics := string(s.request(http.MethodGet, "/metrics", "", nil).want(t, http.StatusOK, nil).body)
	for _, want := range []string{
		`espmdm_rotation_events_total{event="confirmed_ack",mode="grace"} 4`,
		`espmdm_rotation_events_total{event="rotated_secret_invalidated",mode="grace"} 4`,
		`espmdm_rotation_devices{state="OK"} 4`,
		`espmdm_rotation_phase_seconds_count{phase="fetch_to_confirm"} 4`,
		`espmdm_rotation_secret_age_seconds_count 4`,
		`espmdm_rotation_lease_held{holder=`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Deactivating a device takes it out of the queue.
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", quiet.ID), s.admin, `{"active":false}`).want(t, http.StatusOK, nil)
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", quiet.ID), s.admin, nil).wantProblem(t, http.StatusConflict)
	s.do(http.MethodGet, "/api/rotation/status", s.viewer, nil).want(t, http.StatusOK, &st)
	if st.LastCompleted == nil || st.Inactive != 1 {
		t.Errorf("status after the run = %+v", st)
	}
}

func TestE2ERotationRestore(t *testing.T) {
	env := rotationEnv("restore", 3)
	// The retry waits longer than the timeout, so the test sees the device
	// in TIMEOUT with its old secret restored.
	env["ROTATION_RETRY_SECONDS"] = "8"
	s := startServer(t, env)
	m := newModel(t, s, nil)
	devs := newSimDevices(t, s, m.ID, follows, legacy, fetchQuiet)
	old := map[int64]string{}
	for _, d := range devs {
		old[d.ID] = d.current
	}
	began := time.Now()
	s.do(http.MethodPost, "/api/rotation/trigger", s.admin, nil).want(t, http.StatusAccepted, nil)
	fol, leg, quiet := devs[0], devs[1], devs[2]
	var timedOut bool
	rotationRun(t, s, m.ID, devs, 60*time.Second, func() bool {
		if !timedOut && deviceState(t, s, quiet.ID).RotationState == "TIMEOUT" {
			timedOut = true
			// restore: the unconfirmed secret is gone, the old one back.
			if accepted(t, s.st, quiet.ClientID, quiet.fetched[0]) {
				t.Error("restore: the unconfirmed secret still works after the timeout")
			}
			if !accepted(t, s.st, quiet.ClientID, old[quiet.ID]) {
				t.Error("restore: the old secret was not restored")
			}
		}
		return !fol.done.IsZero() && !leg.done.IsZero() && timedOut && len(quiet.attempts) >= 2
	})
	t.Logf("restore: ack and iat devices rotated in %s", maxTime(fol.done, leg.done).Sub(began).Round(time.Millisecond))
	for _, d := range []*simDevice{fol, leg} {
		if got := deviceState(t, s, d.ID); got.RotationState != "OK" {
			t.Errorf("%s device: state %s, want OK (the ack and the iat rule both complete in restore mode)", d.b, got.RotationState)
		}
		if accepted(t, s.st, d.ClientID, old[d.ID]) {
			t.Errorf("%s device: the old secret still works", d.b)
		}
		if !accepted(t, s.st, d.ClientID, d.current) {
			t.Errorf("%s device: the new secret is refused", d.b)
		}
	}
	// In restore mode the retry generates afresh.
	if len(quiet.fetched) < 2 {
		t.Errorf("restore: the retry handed out the same secret again (%d distinct)", len(quiet.fetched))
	}
}

// espmdmBinary builds espmdm once per test binary.
var espmdmBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "espmdm-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "espmdm")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/espmdm/espmdm/app/cmd/espmdm").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

// startProcess runs `espmdm serve` as a process of its own, so that a test
// can kill it with SIGKILL; kill does that. Its output is checked for
// secrets when the test ends.
func startProcess(t *testing.T, env map[string]string) (s *server, kill func()) {
	t.Helper()
	bin, err := espmdmBinary()
	if err != nil {
		t.Fatal(err)
	}
	st := integration.Shared(t)
	vars := serverVars(t, st, env)
	vars["LOG_FORMAT"] = "json"
	cmd := exec.Command(bin, "serve")
	cmd.Env = os.Environ()
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start espmdm serve: %v", err)
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	kill = func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-waited
	}
	_, logs := observer.New(zapcore.DebugLevel)
	s = &server{
		t: t, st: st, base: vars["BASE_URL"], logs: logs, client: &http.Client{Timeout: 30 * time.Second},
		secrets: []string{vars["SECRET_KEY"], vars["WIFI_PASSWORD"], st.AdminClientSecret, st.OperatorClientSecret, st.ViewerClientSecret, st.S3SecretAccessKey},
		stop:    kill, pid: cmd.Process.Pid, out: out,
	}
	t.Cleanup(func() {
		kill()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, secret := range s.secrets {
			if secret != "" && strings.Contains(out.String(), secret) {
				t.Errorf("a secret appears in the output of espmdm serve")
			}
		}
		if t.Failed() {
			t.Logf("espmdm serve output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(s.base + "/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("espmdm serve not ready after a minute:\n%s", out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.admin = s.token(st.OperatorClientID, st.OperatorClientSecret)
	s.viewer = s.token(st.ViewerClientID, st.ViewerClientSecret)
	return s, kill
}

// syncBuffer is a bytes.Buffer safe for a process's two output pipes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestE2ERotationTwoInstances runs two espmdm instances on one database, one
// of them a process of its own: one works the queue, the slot bound holds
// across both, and when the holder is killed (SIGKILL) the other takes the
// lease over within seconds.
func TestE2ERotationTwoInstances(t *testing.T) {
	st := integration.Shared(t)
	dbURL := st.NewDatabase(t)
	envFor := func(name string) map[string]string {
		env := rotationEnv("grace", 2)
		env["DATABASE_URL"] = dbURL
		env["INSTANCE_NAME"] = name
		env["SECRET_KEY"] = strings.Repeat("ab", 32) // both open what the other sealed
		return env
	}
	a, killA := startProcess(t, envFor("espmdm-a"))
	holder := func(s *server) string {
		var rs rotationStatusDTO
		s.do(http.MethodGet, "/api/rotation/status", s.viewer, nil).want(t, http.StatusOK, &rs)
		if rs.LeaseHolder == nil {
			return ""
		}
		return *rs.LeaseHolder
	}
	waitHolder := func(s *server, want string, within time.Duration) time.Duration {
		t.Helper()
		began := time.Now()
		for {
			h := holder(s)
			if h == want {
				return time.Since(began)
			}
			if time.Since(began) > within {
				t.Fatalf("lease holder %q after %s, want %q", h, within, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitHolder(a, "espmdm-a", 20*time.Second)
	b := startServer(t, envFor("espmdm-b"))
	if h := holder(b); h != "espmdm-a" {
		t.Fatalf("instance b sees lease holder %q, want espmdm-a", h)
	}

	m := newModel(t, a, nil)
	devs := newSimDevices(t, a, m.ID, follows, follows, follows, follows, follows, follows)
	// Rotations start from both instances: a trigger on b (not the lease
	// holder), single rotations on a; completions on both.
	b.do(http.MethodPost, "/api/rotation/trigger", b.admin, nil).want(t, http.StatusAccepted, nil)
	for _, d := range devs[:3] {
		// Queued by the trigger (202 queued) or started already (200 already_pending).
		r := a.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), a.admin, nil)
		if r.status != http.StatusAccepted && r.status != http.StatusOK {
			t.Fatalf("rotate: %d %s", r.status, r.body)
		}
	}
	maxPending := 0
	for i, s := range []*server{a, b} {
		var mine []*simDevice
		for j, d := range devs {
			if j%2 == i {
				mine = append(mine, d)
			}
		}
		maxPending = max(maxPending, rotationRun(t, s, m.ID, mine, 60*time.Second, func() bool {
			for _, d := range mine {
				if d.done.IsZero() {
					return false
				}
			}
			return true
		}))
	}
	if maxPending > 2 {
		t.Fatalf("two instances: %d PENDING at once (bound 2)", maxPending)
	}
	for _, d := range devs {
		if len(d.fetched) != 1 {
			t.Errorf("device %s was handed %d secrets in one rotation", d.ClientID, len(d.fetched))
		}
		if got := deviceState(t, b, d.ID); got.RotationState != "OK" {
			t.Errorf("device %s: %s", d.ClientID, got.RotationState)
		}
	}

	// The holder is killed: Postgres ends its session and with it the
	// lease; b takes it on its next tick.
	killA()
	took := waitHolder(b, "espmdm-b", 15*time.Second)
	t.Logf("lease taken over by espmdm-b %s after espmdm-a was killed", took.Round(time.Millisecond))
	// The survivor works the queue alone.
	d := devs[0]
	b.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), b.admin, nil).want(t, http.StatusAccepted, nil)
	d.done = time.Time{}
	rotationRun(t, b, m.ID, []*simDevice{d}, 30*time.Second, func() bool { return !d.done.IsZero() })
	if got := deviceState(t, b, d.ID); got.RotationState != "OK" {
		t.Fatalf("after the takeover: %s", got.RotationState)
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// TestE2ERotationKeycloakDown stops Keycloak in the middle of rotations in
// both modes: every step that needs it fails cleanly and leaves the device
// where the next tick or request resumes, no secret is generated twice, and
// all of it completes once Keycloak is back.
func TestE2ERotationKeycloakDown(t *testing.T) {
	st := integration.Shared(t)
	slow := func(mode string) map[string]string {
		env := rotationEnv(mode, 5)
		// Attempts expire during the outage; retries wait until after it.
		env["ROTATION_TIMEOUT_SECONDS"], env["ROTATION_RETRY_SECONDS"] = "8", "600"
		return env
	}
	g := startServer(t, slow("grace"))
	r := startServer(t, slow("restore"))
	gm, rm := newModel(t, g, nil), newModel(t, r, nil)
	gd := newSimDevices(t, g, gm.ID, follows)[0]
	rd := newSimDevices(t, r, rm.ID, fetchQuiet, follows)
	quiet, late := rd[0], rd[1]
	oldG, oldQuiet, oldLate := gd.current, quiet.current, late.current

	// Before the outage: g's device has fetched its new secret, r's quiet
	// device too; r's late device is PENDING but has not fetched. Tokens
	// are taken now (they outlive the outage; espmdm checks them against
	// its cached JWKS).
	for _, x := range []struct {
		s *server
		d *simDevice
	}{{g, gd}, {r, quiet}, {r, late}} {
		x.s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", x.d.ID), x.s.admin, nil).want(t, http.StatusAccepted, nil)
	}
	fetch := func(s *server, d *simDevice, tok string) string {
		t.Helper()
		var p provisioningDTO
		s.do(http.MethodGet, "/iot/provisioning", tok, nil).want(t, http.StatusOK, &p)
		s.keep(p.ClientSecret)
		return p.ClientSecret
	}
	gTok := gd.deviceToken(t, g)
	gNew := fetch(g, gd, gTok)
	gNewTok, _ := tokenStatus(t, st, gd.ClientID, gNew)
	g.keep(gNewTok)
	quietNew := fetch(r, quiet, quiet.deviceToken(t, r))
	lateTok := late.deviceToken(t, r)

	restart(t, st, integration.Keycloak, func() {
		// grace: the ack needs Keycloak (it invalidates the old secret).
		g.do(http.MethodPost, "/iot/provisioning/ack", gNewTok, map[string]string{"client_secret_sha256": sha256Hex(gNew)}).
			wantProblem(t, http.StatusBadGateway)
		// restore: the fetch cannot generate; the device stays PENDING.
		r.do(http.MethodGet, "/iot/provisioning", lateTok, nil).wantProblem(t, http.StatusBadGateway)
		if got := deviceState(t, r, late.ID); got.RotationState != "PENDING" {
			t.Errorf("restore: after a failed generation the device is %s, want PENDING", got.RotationState)
		}
		// restore: the quiet device's attempt expires but its old secret
		// cannot be restored: it stays PENDING for the next tick.
		time.Sleep(10 * time.Second)
		if got := deviceState(t, r, quiet.ID); got.RotationState != "PENDING" {
			t.Errorf("restore: with Keycloak down a timed-out device is %s, want PENDING until its secret is restored", got.RotationState)
		}
		// grace: the timeout needs nothing of Keycloak.
		if got := deviceState(t, g, gd.ID); got.RotationState != "TIMEOUT" {
			t.Errorf("grace: with Keycloak down the expired attempt is %s, want TIMEOUT", got.RotationState)
		}
	})

	// Back: the restore timeout resumes.
	deadline := time.Now().Add(30 * time.Second)
	for deviceState(t, r, quiet.ID).RotationState == "PENDING" {
		if time.Now().After(deadline) {
			t.Fatal("restore: the timeout did not resume after Keycloak came back")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !accepted(t, st, quiet.ClientID, oldQuiet) || accepted(t, st, quiet.ClientID, quietNew) {
		t.Error("restore: after the resumed timeout the old secret must work and the unconfirmed one not")
	}
	// The late device's attempt timed out without a generation; queued
	// again it rotates with one generation: two fetches, one secret.
	if got := deviceState(t, r, late.ID); got.RotationState != "TIMEOUT" {
		t.Errorf("restore: the attempt that never generated is %s, want TIMEOUT", got.RotationState)
	}
	r.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", late.ID), r.admin, nil).want(t, http.StatusAccepted, nil)
	lateTok = late.deviceToken(t, r)
	lateNew := fetch(r, late, lateTok)
	if again := fetch(r, late, lateTok); again != lateNew {
		t.Error("restore: a second fetch of the same attempt generated another secret")
	}
	lateNewTok, code := tokenStatus(t, st, late.ClientID, lateNew)
	if code != http.StatusOK || accepted(t, st, late.ClientID, oldLate) {
		t.Fatalf("restore: new secret %d, old still accepted %t", code, accepted(t, st, late.ClientID, oldLate))
	}
	r.keep(lateNewTok)
	r.do(http.MethodPost, "/iot/provisioning/ack", lateNewTok, map[string]string{"client_secret_sha256": sha256Hex(lateNew)}).
		want(t, http.StatusNoContent, nil)
	// grace: the late ack completes and ends the old secret; the secret
	// fetched before the outage is still the device's (never regenerated).
	gNewTok, _ = tokenStatus(t, st, gd.ClientID, gNew)
	g.keep(gNewTok)
	g.do(http.MethodPost, "/iot/provisioning/ack", gNewTok, map[string]string{"client_secret_sha256": sha256Hex(gNew)}).
		want(t, http.StatusNoContent, nil)
	if got := deviceState(t, g, gd.ID); got.RotationState != "OK" || accepted(t, st, gd.ClientID, oldG) || !accepted(t, st, gd.ClientID, gNew) {
		t.Errorf("grace after the outage: state %s, old accepted %t, new accepted %t", got.RotationState,
			accepted(t, st, gd.ClientID, oldG), accepted(t, st, gd.ClientID, gNew))
	}
}

// TestE2ERotationFleet rotates a small fleet of devices that follow the
// protocol in each mode, as fast as the slots allow, and reports how long
// it took (the fleet benchmark measures larger fleets).
func TestE2ERotationFleet(t *testing.T) {
	const n = 24
	for _, mode := range []string{"grace", "restore"} {
		t.Run(mode, func(t *testing.T) {
			s := startServer(t, rotationEnv(mode, 10))
			m := newModel(t, s, nil)
			bs := make([]behaviour, n)
			devs := newSimDevices(t, s, m.ID, bs...)
			old := map[int64]string{}
			for _, d := range devs {
				old[d.ID] = d.current
			}
			began := time.Now()
			s.do(http.MethodPost, "/api/rotation/trigger", s.admin, nil).want(t, http.StatusAccepted, nil)
			maxPending := rotationRun(t, s, m.ID, devs, 2*time.Minute, func() bool {
				for _, d := range devs {
					if d.done.IsZero() {
						return false
					}
				}
				return true
			})
			t.Logf("%s: %d devices rotated end to end in %s (concurrency 10, %d PENDING at most)",
				mode, n, time.Since(began).Round(time.Millisecond), maxPending)
			if maxPending > 10 {
				t.Errorf("%d PENDING at once, bound 10", maxPending)
			}
			var st rotationStatusDTO
			s.do(http.MethodGet, "/api/rotation/status", s.viewer, nil).want(t, http.StatusOK, &st)
			if st.CountsByState["OK"] != n || st.Mode != mode {
				t.Errorf("status after the fleet = %+v", st)
			}
			for _, d := range devs {
				if accepted(t, s.st, d.ClientID, old[d.ID]) || !accepted(t, s.st, d.ClientID, d.current) {
					t.Errorf("%s: old secret accepted or new one refused", d.ClientID)
				}
			}
		})
	}
}

// TestE2ERotationGraceRefusedWhenTheRealmDisagrees: grace asked for on a
// realm whose policy keeps rotated secrets for another time than
// ROTATION_GRACE stops start-up, saying what differs; auto falls back to
// restore on the same realm.
func TestE2ERotationGraceRefusedWhenTheRealmDisagrees(t *testing.T) {
	st := integration.Shared(t)
	vars := serverVars(t, st, map[string]string{"ROTATION_MODE": "grace", "ROTATION_GRACE": "48h", "LOG_LEVEL": "error"})
	cfg, err := app.LoadConfig(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	a := app.New(cfg, fx.Decorate(func(*zap.Logger) *zap.Logger { return zap.NewNop() }))
	err = a.Start(ctxT(t, time.Minute))
	if err == nil {
		_ = a.Stop(ctxT(t, time.Minute))
		t.Fatal("espmdm started in grace mode with ROTATION_GRACE different from the realm's policy")
	}
	for _, want := range []string{"ROTATION_MODE=grace", "ROTATION_GRACE is 48h0m0s", "rotated-expiration-period 604800"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("start error %q does not say %q", err, want)
		}
	}
	s := startServer(t, map[string]string{"ROTATION_GRACE": "48h"}) // auto
	var rs rotationStatusDTO
	s.do(http.MethodGet, "/api/rotation/status", s.viewer, nil).want(t, http.StatusOK, &rs)
	if rs.Mode != "restore" {
		t.Errorf("auto on a realm whose grace differs: mode %q, want restore", rs.Mode)
	}
}

// An administrator's "Regenerate" in Keycloak before a grace-mode rotation
// is a generation espmdm did not make: Keycloak keeps the device's secret as
// the rotated one. The rotation hands out the administrator's secret
// rather than generating again (which would end the secret the device
// holds), and completes with it.
func TestE2ERotationGraceTakesAGenerationMadeInKeycloak(t *testing.T) {
	env := rotationEnv("grace", 2)
	env["RECONCILE_INTERVAL"] = "1s"
	s := startServer(t, env)
	m := newModel(t, s, nil)
	d := newDevice(t, s, m.ID, `{}`)
	var prov provisioningDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), s.admin, nil).want(t, http.StatusOK, &prov)
	old := prov.ClientSecret
	s.keep(old)

	found := keycloakClients(t, s.st, d.ClientID)
	if len(found) != 1 {
		t.Fatalf("client %s: found %d", d.ClientID, len(found))
	}
	resp, body := adminCall(t, s.st, token(t, s.st, s.st.AdminClientID, s.st.AdminClientSecret),
		http.MethodPost, "/clients/"+found[0]["id"].(string)+"/client-secret", nil)
	var regenerated struct {
		Value string `json:"value"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &regenerated) != nil || regenerated.Value == "" {
		t.Fatalf("regenerate in Keycloak: %s", resp.Status)
	}
	byAdmin := regenerated.Value
	s.keep(byAdmin)
	if !accepted(t, s.st, d.ClientID, old) || !accepted(t, s.st, d.ClientID, byAdmin) {
		t.Fatal("after Keycloak's regenerate, the old and the new secret should both authenticate")
	}
	// A generation espmdm did not make is noticed by the reconciler (a
	// rotated secret while no rotation has one), which has the next
	// generation read the client instead of trusting its own intent.
	db, err := postgres.Open(ctxT(t, 30*time.Second), s.cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	waitFor(t, 30*time.Second, "the reconciler to notice the generation made in Keycloak", func() bool {
		var covered bool
		if err := db.Bun().NewRaw("SELECT client_covered FROM devices WHERE id = ?", d.ID).Scan(ctxT(t, 10*time.Second), &covered); err != nil {
			t.Fatal(err)
		}
		return !covered
	})

	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	oldTok := s.token(d.ClientID, old)
	var fetched provisioningDTO
	s.do(http.MethodGet, "/iot/provisioning", oldTok, nil).want(t, http.StatusOK, &fetched)
	if fetched.ClientSecret != byAdmin {
		t.Fatal("the rotation's fetch did not hand out the secret generated in Keycloak")
	}
	if !accepted(t, s.st, d.ClientID, old) {
		t.Fatal("the fetch ended the secret the device holds")
	}
	sum := sha256.Sum256([]byte(byAdmin))
	s.do(http.MethodPost, "/iot/provisioning/ack", s.token(d.ClientID, byAdmin),
		map[string]string{"client_secret_sha256": hex.EncodeToString(sum[:])}).want(t, http.StatusNoContent, nil)
	if accepted(t, s.st, d.ClientID, old) || !accepted(t, s.st, d.ClientID, byAdmin) {
		t.Error("after the ack only the handed-out secret should authenticate")
	}
	var got deviceDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", d.ID), s.viewer, nil).want(t, http.StatusOK, &got)
	if got.RotationState != "OK" {
		t.Errorf("rotation state %s, want OK", got.RotationState)
	}
}

// skewedClock is espmdm's clock set off from the machine's (and so from
// Keycloak's) by off.
type skewedClock struct {
	base ports.Clock
	off  time.Duration
}

func (c skewedClock) Now() time.Time { return c.base.Now().Add(c.off) }

// withClockSkew runs espmdm with its clock off from Keycloak's by off.
func withClockSkew(off time.Duration) fx.Option {
	return fx.Decorate(func(c ports.Clock) ports.Clock { return skewedClock{base: c, off: off} })
}

// TestE2ERotationRestoreIATUnderClockSkew runs the iat rule of restore mode
// with espmdm's clock 2 s behind and 2 s ahead of Keycloak's (review
// finding F3): a token of the old secret, taken just before a fetch whose
// answer the device never got, must not confirm the rotation; a device that
// follows the reviewed design (fetch, overwrite, reboot, token,
// /iot/config) must still complete within its attempt.
func TestE2ERotationRestoreIATUnderClockSkew(t *testing.T) {
	env := rotationEnv("restore", 2)
	env["ROTATION_TIMEOUT_SECONDS"], env["ROTATION_FETCH_TIMEOUT_SECONDS"] = "120", "120"
	start := func(t *testing.T, off time.Duration) (*server, deviceDTO, string) {
		t.Helper()
		s := startServer(t, env, withClockSkew(off))
		d := newDevice(t, s, newModel(t, s, nil).ID, `{}`)
		var p provisioningDTO
		s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), s.admin, nil).want(t, http.StatusOK, &p)
		s.keep(p.ClientSecret)
		s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
		return s, d, p.ClientSecret
	}
	fetch := func(t *testing.T, s *server, tok string) string {
		t.Helper()
		var p provisioningDTO
		s.do(http.MethodGet, "/iot/provisioning", tok, nil).want(t, http.StatusOK, &p)
		s.keep(p.ClientSecret)
		return p.ClientSecret
	}

	t.Run("espmdm 2 s behind Keycloak: a token of the old secret proves nothing", func(t *testing.T) {
		s, d, old := start(t, -2*time.Second)
		oldTok := s.token(d.ClientID, old)
		fresh := fetch(t, s, oldTok) // the answer is lost: the device holds the old secret only
		if accepted(t, s.st, d.ClientID, old) {
			t.Fatal("restore: the old secret still works after the generation")
		}
		s.do(http.MethodGet, "/iot/config", oldTok, nil).want(t, http.StatusOK, nil)
		if got := deviceState(t, s, d.ID); got.RotationState != "PENDING" {
			t.Fatalf("a token taken with the old secret before the fetch confirmed the rotation: state %s, want PENDING", got.RotationState)
		}
		// A token of the new secret, in a later second, completes it.
		time.Sleep(1100 * time.Millisecond)
		s.do(http.MethodGet, "/iot/config", s.token(d.ClientID, fresh), nil).want(t, http.StatusOK, nil)
		if got := deviceState(t, s, d.ID); got.RotationState != "OK" {
			t.Fatalf("a token of the new secret issued a second later: state %s, want OK", got.RotationState)
		}
	})
	t.Run("espmdm 2 s ahead of Keycloak: the reviewed design's steps complete", func(t *testing.T) {
		s, d, old := start(t, 2*time.Second)
		fresh := fetch(t, s, s.token(d.ClientID, old))                                                   // fetch, overwrite the only secret,
		time.Sleep(1100 * time.Millisecond)                                                              // reboot,
		s.do(http.MethodGet, "/iot/config", s.token(d.ClientID, fresh), nil).want(t, http.StatusOK, nil) // token, config
		if got := deviceState(t, s, d.ID); got.RotationState != "OK" {
			t.Fatalf("legacy steps with espmdm's clock 2 s ahead: state %s, want OK within the attempt", got.RotationState)
		}
		if accepted(t, s.st, d.ClientID, old) || !accepted(t, s.st, d.ClientID, fresh) {
			t.Error("after the completion only the new secret may work")
		}
	})
}

// TestE2ERotationGraceGenerationAfterASwitchToRestore: a rotation generated
// in grace mode, still unconfirmed when espmdm restarts with auto resolving
// to restore (here: a ROTATION_GRACE that no longer matches the realm's
// policy), keeps grace's rules (review finding F5): the start warns with the
// count of unconfirmed rotations, a token of the old secret issued after
// the generation does not complete it, the ack does, and the completion
// ends the old secret in Keycloak.
func TestE2ERotationGraceGenerationAfterASwitchToRestore(t *testing.T) {
	st := integration.Shared(t)
	env := rotationEnv("grace", 2)
	env["ROTATION_TIMEOUT_SECONDS"], env["ROTATION_FETCH_TIMEOUT_SECONDS"] = "120", "120"
	env["DATABASE_URL"], env["SECRET_KEY"] = st.NewDatabase(t), randHex(32)
	g := startServer(t, env)
	d := newDevice(t, g, newModel(t, g, nil).ID, `{}`)
	var p provisioningDTO
	g.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), g.admin, nil).want(t, http.StatusOK, &p)
	old := p.ClientSecret
	g.keep(old)
	g.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), g.admin, nil).want(t, http.StatusAccepted, nil)
	g.do(http.MethodGet, "/iot/provisioning", g.token(d.ClientID, old), nil).want(t, http.StatusOK, &p)
	fresh := p.ClientSecret
	g.keep(fresh)
	g.stop()

	env["ROTATION_MODE"], env["ROTATION_GRACE"] = "auto", "48h"
	r := startServer(t, env)
	r.keep(old, fresh)
	var rs rotationStatusDTO
	r.do(http.MethodGet, "/api/rotation/status", r.viewer, nil).want(t, http.StatusOK, &rs)
	if rs.Mode != "restore" {
		t.Fatalf("mode after the restart %q, want restore", rs.Mode)
	}
	warned := r.logs.FilterMessageSnippet("rotation mode changed").All()
	if len(warned) != 1 || warned[0].ContextMap()["previous_mode"] != "grace" || warned[0].ContextMap()["unconfirmed_rotations"] != int64(1) {
		t.Errorf("start-up warnings about the mode change: %v, want one naming grace and 1 unconfirmed rotation", warned)
	}
	time.Sleep(1100 * time.Millisecond) // a token in a later second than the generation
	oldTok := r.token(d.ClientID, old)  // the old secret still works (grace)
	r.do(http.MethodGet, "/iot/config", oldTok, nil).want(t, http.StatusOK, nil)
	if got := deviceState(t, r, d.ID); got.RotationState != "PENDING" {
		t.Fatalf("a grace generation was completed by a token's iat (state %s) though the device may hold only the old secret", got.RotationState)
	}
	r.do(http.MethodPost, "/iot/provisioning/ack", r.token(d.ClientID, fresh), map[string]string{"client_secret_sha256": sha256Hex(fresh)}).
		want(t, http.StatusNoContent, nil)
	if got := deviceState(t, r, d.ID); got.RotationState != "OK" {
		t.Fatalf("after the ack: state %s, want OK", got.RotationState)
	}
	if accepted(t, st, d.ClientID, old) || !accepted(t, st, d.ClientID, fresh) {
		t.Error("after the completion under restore the old (rotated) secret must be refused and the new one accepted")
	}
}
