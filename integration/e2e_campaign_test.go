package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/integration/devicesim"
)

// Firmware campaigns (SPEC §16) against the real stack: a devicesim fleet
// made by one batch, driven the way the device component behaves (a member
// whose effective firmware changed downloads it, installs it, boots it
// pending verification, confirms it and reports), or, for a bad image,
// reports the OTA rolled back.

// campaignEnv is the server environment of the campaign tests: a fast
// worker.
func campaignEnv() map[string]string {
	return map[string]string{"CAMPAIGN_TICK_SECONDS": "1"}
}

type campaignWaveDTO struct {
	Index     int     `json:"index"`
	Percent   int     `json:"percent"`
	Members   int     `json:"members"`
	Pending   int     `json:"pending"`
	Succeeded int     `json:"succeeded"`
	Failed    int     `json:"failed"`
	TimedOut  int     `json:"timed_out"`
	StartedAt *string `json:"started_at"`
}

type campaignDTO struct {
	ID              int64             `json:"id"`
	State           string            `json:"state"`
	CurrentWave     *int              `json:"current_wave"`
	AbortReason     *string           `json:"abort_reason"`
	Members         int               `json:"members"`
	FirmwareVersion string            `json:"firmware_version"`
	Progress        []campaignWaveDTO `json:"progress"`
}

type campaignMemberDTO struct {
	DeviceID   int64   `json:"device_id"`
	Key        string  `json:"key"`
	Wave       int     `json:"wave"`
	State      string  `json:"state"`
	AssignedAt *string `json:"assigned_at"`
}

// campaignFleet is a model with a released 1.0.0 and a stored 2.0.0, and
// n simulated devices of it, made by one batch.
type campaignFleet struct {
	s       *server
	model   modelDTO
	old     firmwareDTO
	target  firmwareDTO
	fleet   *devicesim.Fleet
	byKey   map[string]*devicesim.Device
	ids     map[string]int64
	devices []*devicesim.Device
	// retry marks a member whose action failed, for the driver's next
	// poll.
	retry func(key string)
}

func newCampaignFleet(t *testing.T, s *server, n int) *campaignFleet {
	t.Helper()
	f := &campaignFleet{s: s, byKey: map[string]*devicesim.Device{}, ids: map[string]int64{}}
	f.model = newModel(t, s, nil)
	upload := func(version, query string) firmwareDTO {
		var fw firmwareDTO
		s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware%s", f.model.ID, query), s.admin,
			bytes.NewReader(firmwareImage(esp32image.ChipESP32, version)), "Content-Type", "application/octet-stream").
			want(t, http.StatusCreated, &fw)
		return fw
	}
	f.old = upload("1.0.0", "")
	f.target = upload("2.0.0", "?release=false")

	fleet, err := devicesim.NewFleet(ctxT(t, 30*time.Second), devicesim.Config{
		Concurrency: 16, FirmwareVersion: "1.0.0", Logf: func(format string, args ...any) { t.Logf(format, args...) },
	})
	if err != nil {
		t.Fatalf("NewFleet: %v", err)
	}
	f.fleet = fleet
	t.Cleanup(func() {
		for _, d := range f.devices {
			s.keep(d.Secrets()...)
		}
		_ = fleet.Close(context.Background())
	})
	for made := 0; made < n; {
		count := min(n-made, 500)
		r := s.do(http.MethodPost, "/api/devices/batch", s.admin,
			fmt.Sprintf(`{"device_model_id":%d,"count":%d,"config":{},"size":"0x6000"}`, f.model.ID, count)).want(t, http.StatusOK, nil)
		z := readBatchZip(t, r.body)
		if len(z.devices) != count {
			t.Fatalf("batch made %d devices, want %d (errors %v)", len(z.devices), count, z.errors)
		}
		for _, row := range z.devices {
			id, _ := strconv.ParseInt(row[0], 10, 64)
			sim, err := fleet.Add(z.files[row[3]])
			if err != nil {
				t.Fatalf("boot %s: %v", row[1], err)
			}
			s.keep(sim.Secrets()...)
			f.byKey[sim.Key()], f.ids[sim.Key()] = sim, id
			f.devices = append(f.devices, sim)
		}
		made += count
	}
	return f
}

// start creates the campaign (body members beyond the model and target).
func (f *campaignFleet) start(t *testing.T, extra string) campaignDTO {
	t.Helper()
	body := fmt.Sprintf(`{"device_model_id":%d,"firmware_sha256":%q%s}`, f.model.ID, f.target.SHA256, extra)
	var c campaignDTO
	f.s.do(http.MethodPost, "/api/campaigns", f.s.admin, body).want(t, http.StatusCreated, &c)
	return c
}

func (f *campaignFleet) get(t *testing.T, s *server, id int64) campaignDTO {
	t.Helper()
	var c campaignDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/campaigns/%d", id), s.viewer, nil).want(t, http.StatusOK, &c)
	return c
}

// members lists every member of campaign id (in state st, "" all).
func (f *campaignFleet) members(t *testing.T, s *server, id int64, st string) []campaignMemberDTO {
	t.Helper()
	var out []campaignMemberDTO
	cursor := ""
	for {
		q := fmt.Sprintf("/api/campaigns/%d/devices?limit=1000", id)
		if st != "" {
			q += "&state=" + st
		}
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		var page struct {
			Devices    []campaignMemberDTO `json:"devices"`
			NextCursor *string             `json:"next_cursor"`
		}
		r := s.do(http.MethodGet, q, s.viewer, nil)
		if r.status != http.StatusOK {
			return nil // a server being restarted: the caller polls again
		}
		if err := json.Unmarshal(r.body, &page); err != nil {
			t.Fatalf("members page: %v", err)
		}
		out = append(out, page.Devices...)
		if page.NextCursor == nil {
			return out
		}
		cursor = *page.NextCursor
	}
}

// drive acts for the fleet as its devices would until ctx ends: every
// assigned pending member installs its effective firmware (a good one) or
// reports the OTA rolled back (bad says which). It returns a wait function
// and how many members it acted for.
func (f *campaignFleet) drive(ctx context.Context, t *testing.T, s func() *server, id int64, bad func(key string) bool) (wait func(), acted *atomic.Int64) {
	acted = &atomic.Int64{}
	handled := map[string]bool{}
	jobs := make(chan campaignMemberDTO, 10000)
	var wg sync.WaitGroup
	var retryMu sync.Mutex
	retries := map[string]bool{}
	f.retry = func(key string) { retryMu.Lock(); retries[key] = true; retryMu.Unlock() }
	for range 16 {
		wg.Go(func() {
			for m := range jobs {
				sim := f.byKey[m.Key]
				var err error
				if bad != nil && bad(m.Key) {
					err = f.reportRolledBack(ctx, t, s(), sim)
				} else {
					err = f.install(ctx, sim)
				}
				if err != nil && ctx.Err() == nil {
					t.Logf("device %s: %v (tried again at the next poll)", m.Key, err)
					f.retry(m.Key)
				}
				acted.Add(1)
			}
		})
	}
	wg.Go(func() {
		defer close(jobs)
		for ctx.Err() == nil {
			for _, m := range f.members(t, s(), id, "pending") {
				retryMu.Lock()
				again := retries[m.Key]
				delete(retries, m.Key)
				retryMu.Unlock()
				if m.AssignedAt != nil && (!handled[m.Key] || again) {
					handled[m.Key] = true
					jobs <- m
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
	})
	return wg.Wait, acted
}

// install downloads the device's effective firmware and installs it (the
// device boots it pending verification, confirms it and reports valid).
func (f *campaignFleet) install(ctx context.Context, d *devicesim.Device) error {
	if _, err := d.FetchFirmware(ctx); err != nil {
		return err
	}
	_, err := d.InstallFirmware(ctx)
	return err
}

// reportRolledBack reports what a device that installed a bad image says
// after its bootloader rolled it back: still the old version, the OTA of
// the target rolled back.
func (f *campaignFleet) reportRolledBack(ctx context.Context, t *testing.T, s *server, d *devicesim.Device) error {
	if _, err := d.FetchFirmware(ctx); err != nil {
		return err
	}
	tok := s.token(d.ClientID(), d.Secrets()[0])
	s.keep(tok)
	body := fmt.Sprintf(`{"firmware_version":%q,"ota_state":"valid","ota":{"target":%q,"result":"rolled_back"}}`, f.old.Version, f.target.Version)
	r := s.request(http.MethodPost, "/iot/state", tok, strings.NewReader(body), "Content-Type", "application/json")
	if r.status != http.StatusNoContent {
		return fmt.Errorf("rolled-back report: %d %s", r.status, r.body)
	}
	return nil
}

// waitCampaign polls until the campaign is in state want.
func (f *campaignFleet) waitCampaign(t *testing.T, s func() *server, id int64, want string, within time.Duration) campaignDTO {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var c campaignDTO
		r := s().do(http.MethodGet, fmt.Sprintf("/api/campaigns/%d", id), s().viewer, nil)
		if r.status == http.StatusOK {
			if err := json.Unmarshal(r.body, &c); err != nil {
				t.Fatal(err)
			}
			if c.State == want {
				return c
			}
			if c.State == "aborted" || c.State == "completed" {
				t.Fatalf("campaign %s (%v), want %s: %+v", c.State, c.AbortReason, want, c.Progress)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("campaign not %s after %s: %+v", want, within, c)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// auditCount counts the audit entries of kind.
func auditCount(t *testing.T, s *server, kind string) int {
	t.Helper()
	var page struct {
		Entries []json.RawMessage `json:"entries"`
	}
	s.do(http.MethodGet, "/api/audit?limit=1000&kind="+kind, s.viewer, nil).want(t, http.StatusOK, &page)
	return len(page.Entries)
}

// TestE2ECampaignCompletes: 300 devices in three waves, soak 0: every
// member succeeds, each wave starts once, in order, and the campaign
// completes; a viewer reads it, an admin's pause of the completed
// campaign is a 409.
func TestE2ECampaignCompletes(t *testing.T) {
	s := startServer(t, campaignEnv())
	f := newCampaignFleet(t, s, 300)
	began := time.Now()
	c := f.start(t, `,"waves":[10,50,100],"wave_soak_seconds":0,"device_timeout_seconds":120`)
	if c.Members != 300 || len(c.Progress) != 3 {
		t.Fatalf("created %+v, want 300 members in 3 waves", c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wait, acted := f.drive(ctx, t, func() *server { return s }, c.ID, nil)
	done := f.waitCampaign(t, func() *server { return s }, c.ID, "completed", 3*time.Minute)
	cancel()
	wait()
	t.Logf("300 devices in 3 waves: completed in %s (%d installs driven)", time.Since(began).Round(time.Millisecond), acted.Load())
	total := 0
	for i, w := range done.Progress {
		if w.Succeeded != w.Members || w.Pending+w.Failed+w.TimedOut != 0 || w.StartedAt == nil {
			t.Errorf("wave %d: %+v, want every member succeeded", i, w)
		}
		total += w.Members
	}
	if total != 300 {
		t.Errorf("the waves hold %d members, want 300", total)
	}
	if n := auditCount(t, s, "campaign_wave_started"); n != 3 {
		t.Errorf("%d campaign_wave_started entries, want 3", n)
	}
	if n := auditCount(t, s, "campaign_completed"); n != 1 {
		t.Errorf("%d campaign_completed entries, want 1", n)
	}
	for _, d := range f.devices[:20] {
		if v, err := d.FirmwareVersion(ctxT(t, 10*time.Second)); err != nil || v != "2.0.0" {
			t.Errorf("device %s is offered %q (%v) after the campaign, want 2.0.0 (assignments outlive it)", d.Key(), v, err)
		}
	}
	s.do(http.MethodPost, fmt.Sprintf("/api/campaigns/%d/pause", c.ID), s.admin, nil).wantProblem(t, http.StatusConflict)
	s.do(http.MethodPost, fmt.Sprintf("/api/campaigns/%d/pause", c.ID), s.viewer, nil).wantProblem(t, http.StatusForbidden)
}

// TestE2ECampaignAborts: a bad image rolls back on every device of the
// first wave; the campaign aborts in that wave, no member of a later wave
// is ever offered the target (checked on every later member's
// /iot/firmware-version throughout), and the failed members are offered
// the released firmware again.
func TestE2ECampaignAborts(t *testing.T) {
	s := startServer(t, campaignEnv())
	f := newCampaignFleet(t, s, 120)
	c := f.start(t, `,"waves":[25,100],"wave_soak_seconds":0,"max_failure_ratio":0.1,"device_timeout_seconds":120`)
	first := map[string]bool{}
	for _, m := range f.members(t, s, c.ID, "") {
		if m.Wave == 0 {
			first[m.Key] = true
		}
	}
	if len(first) < 10 {
		t.Fatalf("wave 0 has %d members", len(first))
	}

	// Every later member asks for its firmware, over and over, until the
	// abort has settled.
	ctx, cancel := context.WithCancel(context.Background())
	var leaked atomic.Int64
	var checks atomic.Int64
	var watch sync.WaitGroup
	for _, d := range f.devices {
		if first[d.Key()] {
			continue
		}
		watch.Go(func() {
			for ctx.Err() == nil {
				v, err := d.FirmwareVersion(ctx)
				if err == nil {
					checks.Add(1)
					if v == f.target.Version {
						leaked.Add(1)
					}
				}
				select {
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
		})
	}
	wait, _ := f.drive(ctx, t, func() *server { return s }, c.ID, func(string) bool { return true })
	aborted := f.waitCampaign(t, func() *server { return s }, c.ID, "aborted", 2*time.Minute)
	// A few more ticks: nothing may start after the abort.
	time.Sleep(3 * time.Second)
	cancel()
	wait()
	watch.Wait()
	t.Logf("aborted: %s; wave 0 %+v; %d firmware-version checks by later members", *aborted.AbortReason, aborted.Progress[0], checks.Load())
	if leaked.Load() != 0 {
		t.Errorf("later members were offered the target %d times", leaked.Load())
	}
	if aborted.Progress[1].StartedAt != nil || aborted.Progress[1].Pending != aborted.Progress[1].Members {
		t.Errorf("wave 1 after the abort: %+v, want never started", aborted.Progress[1])
	}
	if w := aborted.Progress[0]; w.Failed*10 <= w.Members {
		t.Errorf("wave 0 %+v: aborted at or under the ratio", w)
	}
	if aborted.AbortReason == nil || !strings.Contains(*aborted.AbortReason, "max_failure_ratio") {
		t.Errorf("abort reason %v", aborted.AbortReason)
	}
	// The failed (and still-pending) members of wave 0 are back on the
	// released firmware.
	for key := range first {
		v, err := f.byKey[key].FirmwareVersion(ctxT(t, 10*time.Second))
		if err != nil || v != f.old.Version {
			t.Errorf("wave-0 device %s is offered %q (%v) after the rollback, want %s", key, v, err, f.old.Version)
		}
	}
	if n := auditCount(t, s, "campaign_aborted"); n != 1 {
		t.Errorf("%d campaign_aborted entries, want 1", n)
	}
	s.do(http.MethodPost, fmt.Sprintf("/api/campaigns/%d/resume", c.ID), s.admin, nil).wantProblem(t, http.StatusConflict)
}

// TestE2ECampaignRestartAndTwoReplicas: two espmdm processes on one
// database; the campaign worker's lease holder is killed (SIGKILL) in the
// middle of a campaign, the other replica carries it on, the killed one
// restarts, and the campaign completes with each wave started exactly
// once and every member succeeded once.
func TestE2ECampaignRestartAndTwoReplicas(t *testing.T) {
	st := integration.Shared(t)
	dbURL := st.NewDatabase(t)
	envFor := func(name string) map[string]string {
		env := campaignEnv()
		env["DATABASE_URL"] = dbURL
		env["INSTANCE_NAME"] = name
		env["SECRET_KEY"] = strings.Repeat("cd", 32)
		return env
	}
	varsA := serverVars(t, st, envFor("espmdm-a"))
	a, killA := startProcess(t, varsA)
	a.waitReady(time.Minute)
	holds := func(s *server, name string) bool {
		r := s.do(http.MethodGet, "/metrics", "", nil)
		return r.status == http.StatusOK && strings.Contains(string(r.body), `espmdm_campaign_lease_held{holder="`+name+`"} 1`)
	}
	for deadline := time.Now().Add(20 * time.Second); !holds(a, "espmdm-a"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("espmdm-a never took the campaign lease")
		}
	}
	b, _ := startProcess(t, envFor("espmdm-b"))
	b.waitReady(time.Minute)
	if holds(b, "espmdm-b") {
		t.Fatal("both replicas hold the campaign lease")
	}

	f := newCampaignFleet(t, b, 150)
	var cur atomic.Pointer[server]
	cur.Store(b)
	srv := cur.Load
	c := f.start(t, `,"waves":[10,40,100],"wave_soak_seconds":2,"device_timeout_seconds":120`)
	ctx, cancel := context.WithCancel(context.Background())
	wait, _ := f.drive(ctx, t, srv, c.ID, nil)

	// Kill the holder once wave 1 runs.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if g := f.get(t, b, c.ID); g.CurrentWave != nil && *g.CurrentWave >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("wave 1 never started")
		}
	}
	killA()
	t.Log("espmdm-a (the lease holder) killed in wave 1")
	for deadline := time.Now().Add(30 * time.Second); !holds(b, "espmdm-b"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("espmdm-b never took the campaign lease over")
		}
	}
	a2, _ := startProcess(t, varsA)
	a2.waitReady(time.Minute)
	t.Log("espmdm-a restarted")

	done := f.waitCampaign(t, srv, c.ID, "completed", 3*time.Minute)
	cancel()
	wait()
	if holds(a2, "espmdm-a") && holds(b, "espmdm-b") {
		t.Error("both replicas hold the campaign lease")
	}
	for i, w := range done.Progress {
		if w.Succeeded != w.Members {
			t.Errorf("wave %d: %+v, want every member succeeded", i, w)
		}
	}
	if n := auditCount(t, b, "campaign_wave_started"); n != 3 {
		t.Errorf("%d campaign_wave_started entries across the two replicas and the restart, want exactly 3", n)
	}
}
