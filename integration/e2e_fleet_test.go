package integration_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration/devicesim"
)

// A simulated fleet (integration/devicesim: one HTTP client, one MQTT
// connection, a bounded worker pool) against a real espmdm: provisioned
// through the admin API, rotated in each mode with offline and crashing
// devices, then notified of new firmware and of a config change.

const (
	fleetSize        = 30
	fleetOffline     = 2 // devices 0, 1
	fleetCrashFetch  = 2 // devices 2, 3
	fleetCrashPersit = 2 // devices 4, 5
	fleetSlot        = 5 // ROTATION_CONCURRENCY
	// fleetTimeout is rotationEnv's ROTATION_TIMEOUT_SECONDS.
	fleetTimeout = 4 * time.Second
)

// fleetLegacy is the device that follows the reviewed design's steps in
// restore mode (where the iat rule completes it).
const fleetLegacy = fleetOffline + fleetCrashFetch + fleetCrashPersit + 2

// fleetBehaviour is the behaviour of device i of a test fleet in mode.
func fleetBehaviour(mode string, i int) devicesim.Behaviour {
	switch {
	case mode == "restore" && i == fleetLegacy:
		return devicesim.Behaviour{Legacy: true}
	case i < fleetOffline:
		return devicesim.Behaviour{Offline: true}
	case i < fleetOffline+fleetCrashFetch:
		return devicesim.Behaviour{Crash: devicesim.CrashAfterFetch}
	case i < fleetOffline+fleetCrashFetch+fleetCrashPersit:
		return devicesim.Behaviour{Crash: devicesim.CrashAfterPersist}
	case i == fleetOffline+fleetCrashFetch+fleetCrashPersit:
		return devicesim.Behaviour{Slow: 200 * time.Millisecond}
	}
	return devicesim.Behaviour{}
}

// fleetDevice is a device of the test fleet: its row and its simulator.
type fleetDevice struct {
	deviceDTO
	sim *devicesim.Device
}

// newFleet starts a simulator fleet on the stack's broker and provisions
// n devices of the model into it through the admin API: each boots from
// the NVS partition espmdm hands out and connects to the broker with the
// account the partition names (SPEC §19), as a real device does.
func newFleet(t *testing.T, s *server, mode string, modelID int64, n int) (*devicesim.Fleet, []fleetDevice) {
	t.Helper()
	fleet, err := devicesim.NewFleet(ctxT(t, 30*time.Second), devicesim.Config{
		BrokerURL: s.st.MQTTURL, DeviceAccounts: true, Concurrency: 8, LockoutRetry: 500 * time.Millisecond,
		Logf: func(format string, args ...any) { t.Logf(format, args...) },
	})
	if err != nil {
		t.Fatalf("NewFleet: %v", err)
	}
	var devs []fleetDevice
	// Cleanups run last first: the secrets are recorded before espmdm's
	// logs are checked, after the fleet has stopped.
	t.Cleanup(func() {
		for _, d := range devs {
			s.keep(d.sim.Secrets()...)
		}
	})
	t.Cleanup(func() {
		if err := fleet.Close(context.Background()); err != nil {
			t.Errorf("fleet.Close: %v", err)
		}
	})
	for i := range n {
		d := newDevice(t, s, modelID, `{}`)
		r := s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning", d.ID), s.admin, nil).want(t, http.StatusOK, nil)
		part, err := devicesim.PartitionFromJSON(r.body)
		if err != nil {
			t.Fatal(err)
		}
		sim, err := fleet.Add(part)
		if err != nil {
			t.Fatalf("boot device %d from its partition: %v", d.ID, err)
		}
		if sim.ClientID() != d.ClientID || sim.Key() != d.Key {
			t.Fatalf("partition of %s holds %s", d.ClientID, sim.ClientID())
		}
		if err := fleet.Connect(ctxT(t, 30*time.Second), sim); err != nil {
			t.Fatalf("device %d on the broker with its account: %v", d.ID, err)
		}
		sim.SetBehaviour(fleetBehaviour(mode, i))
		s.keep(sim.Secrets()...)
		devs = append(devs, fleetDevice{deviceDTO: d, sim: sim})
	}
	return fleet, devs
}

// waitFleet polls until done holds, failing after timeout with what.
func waitFleet(t *testing.T, timeout time.Duration, what string, done func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := done()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not done after %s: %s", what, timeout, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestE2EFleetRotation(t *testing.T) {
	for _, mode := range []string{"grace", "restore"} {
		t.Run(mode, func(t *testing.T) { fleetRotation(t, mode) })
	}
}

func fleetRotation(t *testing.T, mode string) {
	s := startServer(t, rotationEnv(mode, fleetSlot))
	m := newModel(t, s, nil)
	fleet, devs := newFleet(t, s, mode, m.ID, fleetSize)
	online := devs[fleetOffline:]

	began := time.Now()
	var trig struct {
		QueuedCount int `json:"queued_count"`
	}
	s.do(http.MethodPost, "/api/rotation/trigger", s.admin, nil).want(t, http.StatusAccepted, &trig)
	if trig.QueuedCount != fleetSize {
		t.Fatalf("queued %d, want %d", trig.QueuedCount, fleetSize)
	}
	// Every online device confirmed: state OK in the admin API (the
	// crashed ones on a retry attempt).
	waitFleet(t, 75*time.Second, mode+" rotation", func() (bool, string) {
		var page struct {
			Devices []rotationDeviceDTO `json:"devices"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/devices?model_id=%d&limit=1000", m.ID), s.admin, nil).want(t, http.StatusOK, &page)
		state := map[int64]string{}
		for _, d := range page.Devices {
			state[d.ID] = d.RotationState
		}
		notOK := 0
		for _, d := range online {
			if state[d.ID] != "OK" {
				notOK++
			}
		}
		fs := fleet.Stats()
		return notOK == 0, fmt.Sprintf("%d online devices not OK; fleet: %d nudges, %d fetches, %d acks, %d crashes, %d errors",
			notOK, fs.Total.Nudges, fs.Total.Fetches, fs.Total.Acks, fs.Total.Crashes, fs.Total.Errors)
	})
	took := time.Since(began)
	fs := fleet.Stats()
	lat := fs.ConfirmLatency
	t.Logf("%s: %d of %d devices rotated in %s (%.1f rotations/s, ROTATION_CONCURRENCY %d); confirm latency p50 %s p90 %s max %s; %d nudges, %d fetches, %d acks, %d crashes",
		mode, len(online), fleetSize, took.Round(time.Millisecond), float64(len(online))/took.Seconds(), fleetSlot,
		lat.P50.Round(time.Millisecond), lat.P90.Round(time.Millisecond), lat.Max.Round(time.Millisecond),
		fs.Total.Nudges, fs.Total.Fetches, fs.Total.Acks, fs.Total.Crashes)

	rep, err := fleet.CheckAll(ctxT(t, time.Minute))
	if err != nil || rep.Unchecked > 0 {
		t.Fatalf("CheckAll: %v (%d unchecked: %v)", err, rep.Unchecked, rep.Err)
	}
	t.Logf("%s: CheckAll of %d devices: %d locked out now, %d lockouts during the run, %.1f locked-out device-seconds",
		mode, rep.Devices, len(rep.LockedOut), rep.Lockouts, rep.LockedOutSeconds)
	if rep.Devices != fleetSize || len(rep.LockedOut) != 0 {
		t.Errorf("%s: %d of %d devices locked out at the end: %v", mode, len(rep.LockedOut), rep.Devices, rep.LockedOut)
	}
	if mode == "grace" && (rep.LockedOutSeconds != 0 || rep.Lockouts != 0) {
		t.Errorf("grace: %d lockouts, %.1f locked-out device-seconds, want none", rep.Lockouts, rep.LockedOutSeconds)
	}

	for i, d := range devs {
		st := d.sim.Stats()
		b := fleetBehaviour(mode, i)
		switch {
		case i < fleetOffline:
		case b.Legacy:
			if st.Acks != 0 || st.ConfigFetches < 1 || len(st.ConfirmLatencies) < 1 {
				t.Errorf("legacy %s: %d acks, %d config fetches, want none and one", d.ClientID, st.Acks, st.ConfigFetches)
			}
		case st.Acks < 1 || len(st.ConfirmLatencies) < 1:
			t.Errorf("%s (%+v): %d acks, want one", d.ClientID, b, st.Acks)
		}
		if b.Crash != devicesim.NoCrash && st.Crashes != 1 {
			t.Errorf("%s: %d crashes, want 1 (crash once)", d.ClientID, st.Crashes)
		}
		// Grace: the reboot's config request brings the second nudge, so a
		// crashed device confirms within its first attempt, before the
		// attempt could time out (then a retry would have been needed).
		if mode == "grace" && b.Crash != devicesim.NoCrash && len(st.ConfirmLatencies) > 0 {
			if lat := st.ConfirmLatencies[0]; st.Nudges != 2 || lat >= fleetTimeout {
				t.Errorf("%s (crash %v): %d nudges, confirmed %s after the first, want 2 and within the attempt timeout %s",
					d.ClientID, b.Crash, st.Nudges, lat.Round(time.Millisecond), fleetTimeout)
			}
		}
		chk, err := d.sim.CheckSecrets(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatalf("%s: CheckSecrets: %v", d.ClientID, err)
		}
		var want devicesim.SecretCheck
		if i < fleetOffline {
			// Offline: still the provisioned secret, still accepted.
			want = devicesim.SecretCheck{Provisioned: devicesim.Accepted, Current: devicesim.Accepted}
			if st.Nudges != 0 || st.Fetches != 0 || st.Ignored == 0 {
				t.Errorf("offline %s: %d nudges, %d fetches, %d ignored", d.ClientID, st.Nudges, st.Fetches, st.Ignored)
			}
		} else {
			// Online: the old secret refused, the new one accepted.
			want = devicesim.SecretCheck{Provisioned: devicesim.Refused, Current: devicesim.Accepted}
		}
		if chk != want {
			t.Errorf("%s %s: secrets %+v, want %+v", mode, d.ClientID, chk, want)
		}
	}
	if mode != "grace" {
		return
	}
	fleetNotifications(t, s, m, devs)
}

// fleetNotifications uploads firmware for the fleet's model and changes one
// device's config: every online device hears of the firmware and downloads
// it (ETag, then 304; one of them resumes a cut download with Range), and
// only the changed device hears of its config and fetches it.
func fleetNotifications(t *testing.T, s *server, m modelDTO, devs []fleetDevice) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	img := firmwareImage(esp32image.ChipESP32, "2.4.1")
	sum := sha256.Sum256(img)
	digest := hex.EncodeToString(sum[:])
	resumer := devs[fleetOffline+fleetCrashFetch+fleetCrashPersit+1]
	resumer.sim.SetBehaviour(devicesim.Behaviour{InterruptFirmwareAfter: int64(len(img) / 3)})

	s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
		bytes.NewReader(img), "Content-Type", "application/octet-stream").want(t, http.StatusCreated, nil)
	waitFleet(t, 20*time.Second, "firmware notices", func() (bool, string) {
		missing := 0
		for _, d := range devs[fleetOffline:] {
			if st := d.sim.Stats(); st.FirmwareNotices != 1 || st.NotifiedFirmwareVersion != "2.4.1" {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d online devices without the notice", missing)
	})
	for _, d := range devs[:fleetOffline] {
		if st := d.sim.Stats(); st.FirmwareNotices != 0 {
			t.Errorf("offline %s acted on a firmware notice", d.ClientID)
		}
	}
	for _, d := range devs[fleetOffline:] {
		if v, err := d.sim.FirmwareVersion(ctx); err != nil || v != "2.4.1" {
			t.Fatalf("%s: firmware version %q, %v", d.ClientID, v, err)
		}
		r, err := d.sim.FetchFirmware(ctx)
		if err != nil {
			t.Fatalf("%s: FetchFirmware: %v", d.ClientID, err)
		}
		if d.ID == resumer.ID {
			if !r.Interrupted || r.Complete || r.Status != http.StatusOK {
				t.Fatalf("cut download: %+v, want an interrupted 200", r)
			}
			if r, err = d.sim.FetchFirmware(ctx); err != nil || !r.Resumed || r.Status != http.StatusPartialContent {
				t.Fatalf("resumed download: %+v, %v, want a 206", r, err)
			}
		}
		if !r.Complete || r.SHA256 != digest || r.ETag != `"`+digest+`"` || r.Size != int64(len(img)) {
			t.Fatalf("%s: download %+v, want the whole image with ETag %q", d.ClientID, r, digest)
		}
		again, err := d.sim.FetchFirmware(ctx)
		if err != nil || !again.NotModified || again.Status != http.StatusNotModified {
			t.Fatalf("%s: second download %+v, %v, want 304", d.ClientID, again, err)
		}
	}

	target := devs[len(devs)-1]
	// Crashed devices fetched their config when they rebooted: count from here.
	before := make([]devicesim.Stats, len(devs))
	for i, d := range devs {
		before[i] = d.sim.Stats()
	}
	want := json.RawMessage(`{"interval":42,"label":"fleet"}`)
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", target.ID), s.admin, map[string]any{"config": want}).
		want(t, http.StatusOK, nil)
	waitFleet(t, 20*time.Second, "config notice", func() (bool, string) {
		st := target.sim.Stats()
		got := target.sim.Config()
		return st.ConfigNotices == 1 && got != nil && sameJSON(t, got, want),
			fmt.Sprintf("%d notices, config %s", st.ConfigNotices, got)
	})
	time.Sleep(time.Second) // a stray notice to another device would have arrived
	for i, d := range devs[:len(devs)-1] {
		st := d.sim.Stats()
		if notices, fetches := st.ConfigNotices-before[i].ConfigNotices, st.ConfigFetches-before[i].ConfigFetches; notices != 0 || fetches != 0 {
			t.Errorf("%s: %d config notices, %d fetches, want none (only %s changed)", d.ClientID, notices, fetches, target.ClientID)
		}
	}
}

// TestE2ERotationRestoreNeverLosesTheLastWorkingSecret is the scenario of
// review finding F1, in restore mode, with a devicesim device that follows
// the README's firmware steps to the letter. Rotation 1: the device fetches
// S1 (S0 stops working), writes it to its next slot and crashes before the
// ack; at boot S0 is refused and S1 works, so it promotes S1 at once and
// acks it. Rotation 2: it fetches S2 (S1 stops working), writes it to next
// and stays away past ROTATION_TIMEOUT_SECONDS; the timeout restores S1,
// which is its current secret. It ends with a working secret, and its retry
// completes. (With the earlier steps it kept S0 and S1, overwrote S1 with
// S2, and the restored S1 was a secret it no longer had.)
func TestE2ERotationRestoreNeverLosesTheLastWorkingSecret(t *testing.T) {
	env := rotationEnv("restore", 2)
	// The retry waits longer than the timeout, so the test sees the device
	// in TIMEOUT with its old secret restored.
	env["ROTATION_RETRY_SECONDS"] = "10"
	s := startServer(t, env)
	m := newModel(t, s, nil)
	fleet, devs := newFleet(t, s, "restore", m.ID, 1)
	d := devs[0]
	state := func() string { return deviceState(t, s, d.ID).RotationState }
	secrets := func() devicesim.SecretCheck {
		t.Helper()
		chk, err := d.sim.CheckSecrets(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatalf("CheckSecrets: %v", err)
		}
		return chk
	}
	waitState := func(want string, within time.Duration) {
		t.Helper()
		waitFleet(t, within, "state "+want, func() (bool, string) {
			st := state()
			return st == want, fmt.Sprintf("state %s, device %+v", st, d.sim.Stats())
		})
	}

	// Rotation 1: crash between persisting S1 and the ack; the reboot
	// takes long enough for the config request's token to be issued in a
	// later second than the generation (which completed the rotation by
	// its iat while the device kept S1 in its next slot).
	d.sim.SetBehaviour(devicesim.Behaviour{Crash: devicesim.CrashAfterPersist, RebootDelay: 1500 * time.Millisecond})
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	// espmdm commits OK before it answers the ack (or earlier, by the
	// promotion token's iat), and devicesim counts the ack (and promotes
	// its next secret) when the 204 arrives: wait for both.
	waitAcked := func(acks int, within time.Duration) {
		t.Helper()
		waitFleet(t, within, fmt.Sprintf("state OK and ack %d answered", acks), func() (bool, string) {
			st := state()
			return st == "OK" && d.sim.Stats().Acks >= acks, fmt.Sprintf("state %s, device %+v", st, d.sim.Stats())
		})
	}
	waitAcked(1, 20*time.Second)
	st := d.sim.Stats()
	if st.Crashes != 1 || st.Promotions != 1 || st.Acks != 1 {
		t.Fatalf("rotation 1: %d crashes, %d promotions at boot, %d acks; want 1, 1, 1", st.Crashes, st.Promotions, st.Acks)
	}
	if chk := secrets(); chk != (devicesim.SecretCheck{Provisioned: devicesim.Refused, Current: devicesim.Accepted}) {
		t.Fatalf("after rotation 1: %+v, want S1 promoted to current (S0 refused, next empty)", chk)
	}

	// Rotation 2: persist S2, then away past the timeout.
	d.sim.SetBehaviour(devicesim.Behaviour{Crash: devicesim.CrashAfterPersist, CrashAlways: true, StayDown: true})
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	waitState("TIMEOUT", 20*time.Second)
	if st := d.sim.Stats(); st.Crashes != 2 || st.Fetches != 2 {
		t.Fatalf("rotation 2: %d crashes, %d fetches; want 2 and 2", st.Crashes, st.Fetches)
	}
	if chk := secrets(); chk.Current != devicesim.Accepted || chk.Next != devicesim.Refused {
		t.Fatalf("after rotation 2's timeout: %+v, want the restored S1 current and accepted, S2 in next refused", chk)
	}

	// Back: it boots on S1; the retry rotates it.
	d.sim.SetBehaviour(devicesim.Behaviour{})
	if err := d.sim.Boot(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("boot after rotation 2: %v", err)
	}
	waitAcked(2, 30*time.Second)
	if chk := secrets(); chk != (devicesim.SecretCheck{Provisioned: devicesim.Refused, Current: devicesim.Accepted}) {
		t.Errorf("at the end: %+v, want a working current secret and nothing in next", chk)
	}
	rep, err := fleet.CheckAll(ctxT(t, time.Minute))
	if err != nil || len(rep.LockedOut) != 0 {
		t.Errorf("CheckAll: %+v, %v; want no device locked out", rep, err)
	}
}
