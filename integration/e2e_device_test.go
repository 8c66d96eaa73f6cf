package integration_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/integration"
)

// End to end with the real device component (SPEC §14): espmdm-device
// processes — the espmdm ESP-IDF component with ESP-IDF's own nvs_flash,
// esp_http_client and esp-mqtt — each booted from the partition espmdm
// produced, against a real espmdm, Keycloak and Mosquitto.

const deviceFleetSize = 6

// rotationCrashes are the --crash-at sequences of the rotation tests: device
// i crashes at the first step of its sequence, and when it is started again,
// at the next one (boot_after_promote is reached at the reboot that promotes).
var rotationCrashes = [deviceFleetSize][]string{
	{"after_fetch"},
	{"after_write_next"},
	{"after_token_next"},
	{"after_ack"},
	{"after_promote"},
	{"after_ack", "boot_after_promote"},
}

// componentFleet is a model with n component devices, each with a config
// of its own, started and checked in: boot (slot current, the factory
// version), token, MQTT subscriptions, and its own config.
func componentFleet(t *testing.T, s *server, n int) (modelDTO, []deviceDTO, []*hostDevice) {
	t.Helper()
	m := newModel(t, s, nil)
	var devs []deviceDTO
	var hosts []*hostDevice
	for i := range n {
		d := newDevice(t, s, m.ID, fmt.Sprintf(`{"n":%d,"label":"device-%d"}`, i, i))
		h := newHostDevice(t, s, d, "1.0.0")
		h.autoReboot = true
		devs = append(devs, d)
		hosts = append(hosts, h)
		h.start()
	}
	for i, h := range hosts {
		b := h.waitEvent(0, 60*time.Second, "boot")
		if b.Slot != "current" || b.FirmwareVersion != "1.0.0" || b.ClientID != devs[i].ClientID || b.OTAState != "valid" {
			t.Fatalf("%s: boot %+v", h.name, b)
		}
		h.waitEvent(0, 30*time.Second, "token")
		h.waitEvent(0, 30*time.Second, "connected")
		if sub := h.waitEvent(0, 30*time.Second, "subscribed"); sub.Topics != 4 {
			t.Fatalf("%s: subscribed to %d topic filters, want 4 (rotation, config and firmware of its own, its model's firmware)", h.name, sub.Topics)
		}
		c := h.waitEvent(0, 30*time.Second, "config")
		if !sameJSON(t, c.Config, devs[i].Config) {
			t.Fatalf("%s: config %s, want its own %s", h.name, c.Config, devs[i].Config)
		}
	}
	// Each reported its state (SPEC §15), and espmdm shows what the
	// component sent: the two halves agree on the report.
	for i, h := range hosts {
		h.waitEvent(0, 30*time.Second, "state_reported")
		r := waitReported(t, s, devs[i].ID, 10*time.Second, "of 1.0.0", func(r reportedDTO) bool { return r.FirmwareVersion == "1.0.0" })
		if r.Partition != "factory" || r.OTAState != "valid" || r.OTA != nil || r.IDFVersion == "" || r.UptimeS == nil || r.FreeHeap == nil {
			t.Errorf("%s: reported %+v, want 1.0.0 valid in factory, no OTA yet, with idf_version, uptime_s and free_heap", h.name, r)
		}
	}
	return m, devs, hosts
}

// checkOwnConfigs fails when a device saw a config that is not its own.
func checkOwnConfigs(t *testing.T, devs []deviceDTO, hosts []*hostDevice, own func(i int) []json.RawMessage) {
	t.Helper()
	for i, h := range hosts {
		for _, e := range h.since(0) {
			if e.Event != "config" {
				continue
			}
			ok := false
			for _, c := range own(i) {
				ok = ok || sameJSON(t, e.Config, c)
			}
			if !ok {
				t.Errorf("%s saw the config %s, not one of its own", devs[i].ClientID, e.Config)
			}
		}
	}
}

// bigFirmware is a valid app image of about size bytes (a large extra
// segment), so that a download spans several of the device's checkpoints.
func bigFirmware(version string, size int) []byte {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
	desc.Version = version
	im := esp32imagetest.New(esp32image.ChipESP32, 4, true, &desc)
	im.Segments = append(im.Segments, esp32imagetest.Segment{Addr: 0x3FFB0000, Data: esp32imagetest.Filler(99, size)})
	return im.Bytes()
}

func TestE2EDeviceFleet(t *testing.T) {
	s := startServer(t, rotationEnv("grace", 10))
	m, devs, hosts := componentFleet(t, s, deviceFleetSize)
	configs := make([][]json.RawMessage, len(devs))
	for i, d := range devs {
		configs[i] = []json.RawMessage{d.Config}
	}

	t.Run("config nudge", func(t *testing.T) {
		marks := make([]int, len(hosts))
		for i, h := range hosts {
			marks[i] = h.mark()
		}
		changed := json.RawMessage(`{"n":100,"label":"changed"}`)
		configs[0] = append(configs[0], changed)
		s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", devs[0].ID), s.admin, map[string]any{"config": changed}).
			want(t, http.StatusOK, nil)
		n := hosts[0].waitFor(marks[0], 20*time.Second, "config nudge", func(e devEvent) bool { return e.Event == "nudge" && e.Kind == "config" })
		if n.Topic != "iotsupport/"+devs[0].ClientID+"/config" {
			t.Errorf("nudge on %s", n.Topic)
		}
		c := hosts[0].waitFor(marks[0], 20*time.Second, "changed config", func(e devEvent) bool { return e.Event == "config" })
		if !sameJSON(t, c.Config, changed) {
			t.Fatalf("config after the nudge %s, want %s", c.Config, changed)
		}
		time.Sleep(1500 * time.Millisecond) // a stray nudge to another device would have arrived
		for i, h := range hosts[1:] {
			if n := h.count(marks[i+1], "nudge") + h.count(marks[i+1], "config"); n != 0 {
				t.Errorf("%s: %d config nudges or fetches, want none (only %s changed)", h.name, n, devs[0].ClientID)
			}
		}
	})

	t.Run("firmware nudge on the device's own topic", func(t *testing.T) {
		// What a firmware campaign sends one member (SPEC §16); the model
		// has no firmware yet, so the check finds nothing to install.
		marks := make([]int, len(hosts))
		for i, h := range hosts {
			marks[i] = h.mark()
		}
		ctx := ctxT(t, 30*time.Second)
		pub := mqttConnect(t, ctx, integration.Shared(t).MQTTAdminURL(), "e2e-campaign-"+randHex(4), nil)
		topic := "iotsupport/" + devs[0].ClientID + "/firmware"
		if _, err := pub.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"firmware_version":"9.9.9","sha256":null}`)}); err != nil {
			t.Fatalf("publish: %v", err)
		}
		n := hosts[0].waitFor(marks[0], 20*time.Second, "firmware nudge", func(e devEvent) bool { return e.Event == "nudge" && e.Kind == "firmware" })
		if n.Topic != topic {
			t.Errorf("firmware nudge on %s, want %s", n.Topic, topic)
		}
		time.Sleep(1500 * time.Millisecond) // a stray nudge to another device, or a download, would have come
		for i, h := range hosts {
			if c := h.count(marks[i], "ota_started") + h.count(marks[i], "error"); c != 0 {
				t.Errorf("%s: %d downloads or errors after the nudge, want none (no firmware to install)", h.name, c)
			}
			if c := h.count(marks[i], "nudge"); i > 0 && c != 0 {
				t.Errorf("%s: %d nudges, want none (only %s was nudged)", h.name, c, devs[0].ClientID)
			}
		}
	})

	t.Run("firmware", func(t *testing.T) {
		img := bigFirmware("2.0.0", 200*1024)
		sum := sha256.Sum256(img)
		// Device 1 is cut off mid-download (a crash once half the image is
		// committed) and resumes it after its restart.
		cut := hosts[1]
		cut.stop()
		cut.crashes = []string{"ota_mid_download"}
		cut.autoReboot = true
		cutMark := cut.mark()
		cut.start()
		cut.waitEvent(cutMark, 30*time.Second, "subscribed")
		// Device 2 installs it, reboots into it and crashes before confirming
		// it: the bootloader (the linux port) rolls it back at the next start.
		rb := hosts[2]
		rb.stop()
		rb.crashes = []string{"", "ota_before_confirm"}
		rb.autoReboot = true
		rbMark := rb.mark()
		rb.start()
		rb.waitEvent(rbMark, 30*time.Second, "subscribed")
		marks := make([]int, len(hosts))
		for i, h := range hosts {
			marks[i] = h.mark()
		}
		began := time.Now()
		var fw firmwareDTO
		s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
			bytes.NewReader(img), "Content-Type", "application/octet-stream").want(t, http.StatusCreated, &fw)
		if fw.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("upload: sha256 %s", fw.SHA256)
		}
		if code := cut.waitExit(60 * time.Second); code != deviceExitCrash {
			t.Fatalf("%s: exit status %d at ota_mid_download, want %d", cut.name, code, deviceExitCrash)
		}
		first := cut.waitEvent(marks[1], time.Second, "ota_started")
		if first.Offset != 0 || first.Size != int64(len(img)) || first.Version != "2.0.0" {
			t.Fatalf("first download %+v", first)
		}
		resumedMark := cut.mark()
		cut.start()
		resumed := cut.waitFor(resumedMark, 60*time.Second, "resumed download", func(e devEvent) bool { return e.Event == "ota_started" })
		if resumed.Offset < int64(len(img))/2 || resumed.Offset >= int64(len(img)) {
			t.Fatalf("resumed download from %d of %d, want from the checkpoint past half", resumed.Offset, len(img))
		}
		if code := rb.waitExit(90 * time.Second); code != deviceExitCrash {
			t.Fatalf("%s: exit status %d at ota_before_confirm, want %d", rb.name, code, deviceExitCrash)
		}
		rbBoot := rb.waitFor(marks[2], time.Second, "boot into 2.0.0", func(e devEvent) bool { return e.Event == "boot" && e.FirmwareVersion == "2.0.0" })
		if rbBoot.OTAState != "pending_verify" {
			t.Fatalf("%s: %+v, want 2.0.0 pending verification before the crash", rb.name, rbBoot)
		}
		rbMark = rb.mark()
		rb.start()
		back := rb.waitEvent(rbMark, 30*time.Second, "boot")
		if back.FirmwareVersion != "1.0.0" || back.OTAState != "valid" || back.Partition != "factory" {
			t.Fatalf("%s: after the unconfirmed boot %+v, want 1.0.0 again (rolled back)", rb.name, back)
		}
		if e := rb.waitEvent(rbMark, 10*time.Second, "ota_rolled_back"); e.Version != "2.0.0" {
			t.Fatalf("%s: rolled back %+v", rb.name, e)
		}
		if r := waitReported(t, s, devs[2].ID, 30*time.Second, "of the rollback", func(r reportedDTO) bool {
			return r.OTA != nil && r.OTA.Result == "rolled_back"
		}); r.FirmwareVersion != "1.0.0" || r.OTAState != "valid" || r.Partition != "factory" || r.OTA.Target != "2.0.0" {
			t.Errorf("%s: reported %+v after the rollback, want 1.0.0 valid in factory, ota {2.0.0, rolled_back}", rb.name, r)
		}
		for i, h := range hosts {
			if h == rb {
				continue
			}
			n := h.waitFor(marks[i], 30*time.Second, "firmware nudge", func(e devEvent) bool { return e.Event == "nudge" && e.Kind == "firmware" })
			if n.Topic != "iotsupport/"+m.Code+"/firmware" {
				t.Errorf("%s: firmware nudge on %s", h.name, n.Topic)
			}
			inst := h.waitFor(marks[i], 90*time.Second, "ota_installed", func(e devEvent) bool { return e.Event == "ota_installed" })
			if inst.Version != "2.0.0" || inst.Size != int64(len(img)) {
				t.Errorf("%s: installed %+v", h.name, inst)
			}
			h.waitFor(marks[i], 10*time.Second, "reboot", func(e devEvent) bool { return e.Event == "reboot" && e.Reason == "ota" })
			b := h.waitFor(marks[i], 60*time.Second, "boot into 2.0.0", func(e devEvent) bool {
				return e.Event == "boot" && e.FirmwareVersion == "2.0.0"
			})
			if b.OTAState != "pending_verify" || b.Partition != "ota_0" {
				t.Errorf("%s: first boot of 2.0.0: %+v, want pending_verify in ota_0", h.name, b)
			}
			h.waitFor(marks[i], 30*time.Second, "ota_confirmed", func(e devEvent) bool { return e.Event == "ota_confirmed" && e.Version == "2.0.0" })
			r := waitReported(t, s, devs[i].ID, 30*time.Second, "of 2.0.0 confirmed", func(r reportedDTO) bool {
				return r.FirmwareVersion == "2.0.0" && r.OTAState == "valid"
			})
			if r.Partition != "ota_0" || r.OTA == nil || r.OTA.Target != "2.0.0" || r.OTA.Result != "installed" {
				t.Errorf("%s: reported %+v after the OTA, want ota_0 with ota {2.0.0, installed}", h.name, r)
			}
			codes := h.exitCodes()
			if len(codes) == 0 || codes[len(codes)-1] != deviceExitReboot {
				t.Errorf("%s: exits %v, want the last to be the reboot (%d)", h.name, codes, deviceExitReboot)
			}
		}
		// The version change is audited, by the device.
		entries, _ := auditLog(t, s, fmt.Sprintf("kind=device_firmware_changed&device_id=%d", devs[0].ID), 100)
		var changes []string
		for _, e := range entries {
			changes = append(changes, e.Detail)
			if e.Actor.Type != "device" || e.Actor.ClientID != devs[0].ClientID {
				t.Errorf("%s: audit entry by %+v, want the device", hosts[0].name, e.Actor)
			}
		}
		if want := []string{`first report: "1.0.0"`, `from "1.0.0" to "2.0.0"`}; fmt.Sprint(changes) != fmt.Sprint(want) {
			t.Errorf("%s: device_firmware_changed %q, want %q", hosts[0].name, changes, want)
		}
		t.Logf("firmware: %d devices downloaded (one cut off and resumed), verified, installed and confirmed 2.0.0 (%d bytes), one rolled back, in %s",
			len(hosts)-1, len(img), time.Since(began).Round(time.Millisecond))
		// Started again, every device runs the installed version, confirmed.
		for _, h := range hosts {
			h.stop()
			mk := h.mark()
			h.autoReboot = true
			h.start()
			b := h.waitEvent(mk, 30*time.Second, "boot")
			want := "2.0.0"
			if h == rb {
				want = "1.0.0" // the rolled-back image is not fetched again
			}
			if b.FirmwareVersion != want || b.OTAState != "valid" {
				t.Errorf("%s: after a restart %+v, want %s valid", h.name, b, want)
			}
		}
		time.Sleep(3 * time.Second) // the firmware check at start has run
		for _, h := range hosts {
			if n := h.count(0, "ota_started"); (h == cut && n != 2) || (h != cut && n != 1) {
				t.Errorf("%s: %d downloads started, want one (two for the device cut off)", h.name, n)
			}
		}
	})

	t.Run("rotation with a crash at every step", func(t *testing.T) {
		deviceRotation(t, s, devs, hosts, "grace")
	})
	checkOwnConfigs(t, devs, hosts, func(i int) []json.RawMessage { return configs[i] })
}

func TestE2EDeviceRotationRestore(t *testing.T) {
	s := startServer(t, rotationEnv("restore", 10))
	var st rotationStatusDTO
	s.do(http.MethodGet, "/api/rotation/status", s.viewer, nil).want(t, http.StatusOK, &st)
	if st.Mode != "restore" {
		t.Fatalf("mode %q, want restore", st.Mode)
	}
	_, devs, hosts := componentFleet(t, s, deviceFleetSize)
	deviceRotation(t, s, devs, hosts, "restore")
	checkOwnConfigs(t, devs, hosts, func(i int) []json.RawMessage { return []json.RawMessage{devs[i].Config} })
}

// deviceRotation rotates the running fleet with device i crashing at the
// steps of rotationCrashes[i] (restarted after each crash, as a watchdog
// reset would), waits until every rotation is OK, and checks what each
// device holds: the secret Keycloak accepts in its current slot, nothing
// in next, the old secret dead; then a final reboot of every device gets a
// token (0 lockouts).
func deviceRotation(t *testing.T, s *server, devs []deviceDTO, hosts []*hostDevice, mode string) {
	t.Helper()
	old := make([]string, len(devs))
	// Crashes before this rotation (an OTA test's) do not count.
	base := make([]int, len(devs))
	for i, h := range hosts {
		old[i] = currentSecret(t, s, devs[i].ID)
		base[i] = countCode(h.exitCodes(), deviceExitCrash)
		h.stop()
		h.crashes = append([]string(nil), rotationCrashes[i]...)
		h.autoReboot = true
		mk := h.mark()
		h.start()
		h.waitEvent(mk, 30*time.Second, "subscribed")
	}
	began := time.Now()
	var trig struct {
		QueuedCount int `json:"queued_count"`
	}
	s.do(http.MethodPost, "/api/rotation/trigger", s.admin, nil).want(t, http.StatusAccepted, &trig)
	if trig.QueuedCount != len(devs) {
		t.Fatalf("queued %d, want %d", trig.QueuedCount, len(devs))
	}
	// A watchdog: a device that crashed is started again at once.
	var wg sync.WaitGroup
	done := make(chan struct{})
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := 1; c <= len(rotationCrashes[i]); c++ {
				if !waitCrashes(h, base[i]+c, done) {
					return
				}
				h.start()
			}
		}()
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		notOK := 0
		var states []string
		for i, d := range devs {
			st := deviceState(t, s, d.ID).RotationState
			if st != "OK" {
				notOK++
			}
			states = append(states, fmt.Sprintf("%s:%s crashes=%v", rotationCrashes[i], st, hosts[i].exitCodes()))
		}
		crashesDone := true
		for i, h := range hosts {
			crashesDone = crashesDone && countCode(h.exitCodes(), deviceExitCrash)-base[i] == len(rotationCrashes[i]) && h.isRunning()
		}
		if notOK == 0 && crashesDone {
			break
		}
		if time.Now().After(deadline) {
			close(done)
			wg.Wait()
			t.Fatalf("%s rotation not done after 3 minutes: %v", mode, states)
		}
		time.Sleep(250 * time.Millisecond)
	}
	took := time.Since(began)
	close(done)
	wg.Wait()
	t.Logf("%s: %d component devices rotated in %s, crashing at %v", mode, len(devs), took.Round(time.Millisecond), rotationCrashes)
	for i, h := range hosts {
		if n := countCode(h.exitCodes(), deviceExitCrash) - base[i]; n != len(rotationCrashes[i]) {
			t.Errorf("%s: %d crashes, want %d (%v)", h.name, n, len(rotationCrashes[i]), rotationCrashes[i])
		}
	}
	// Every device holds what Keycloak accepts, in its current slot.
	for i, h := range hosts {
		waitSlots(t, s, devs[i], h, old[i])
	}
	// A final reboot of every device: a token with its current secret.
	for _, h := range hosts {
		h.stop()
	}
	for _, h := range hosts {
		mk := h.mark()
		h.start()
		b := h.waitEvent(mk, 30*time.Second, "boot")
		if b.Slot != "current" {
			t.Errorf("%s: boot after the rotation in slot %s, want current", h.name, b.Slot)
		}
		if n := h.count(mk, "promoted"); n != 0 {
			t.Errorf("%s: promoted at the final boot", h.name)
		}
	}
}

// waitSlots waits until the device's flash holds the secret espmdm's
// provisioning data holds now as current and nothing in next (the
// promotion of a device that was just restarted may take a moment), and
// checks Keycloak: that secret accepted, the old one refused.
func waitSlots(t *testing.T, s *server, d deviceDTO, h *hostDevice, old string) {
	t.Helper()
	want := currentSecret(t, s, d.ID)
	s.keep(want)
	deadline := time.Now().Add(20 * time.Second)
	for {
		cur, next, err := h.nvsSlots()
		if err == nil && cur == want && next == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: slots current-is-espmdm's=%t next-empty=%t (%v)", h.name, cur == want, next == "", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if want == old {
		t.Errorf("%s: the secret did not change", h.name)
	}
	if !accepted(t, s.st, d.ClientID, want) {
		t.Errorf("%s: Keycloak refuses the secret the device holds", h.name)
	}
	if accepted(t, s.st, d.ClientID, old) {
		t.Errorf("%s: the old secret still works", h.name)
	}
}

func countCode(codes []int, want int) int {
	n := 0
	for _, c := range codes {
		if c == want {
			n++
		}
	}
	return n
}

// waitCrashes waits until the device has crashed n times and is not
// running; false when done closes first.
func waitCrashes(h *hostDevice, n int, done <-chan struct{}) bool {
	for {
		if !h.isRunning() && countCode(h.exitCodes(), deviceExitCrash) >= n {
			return true
		}
		select {
		case <-done:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Review finding F1 with the component in restore mode: a crash after
// writing next and a reboot (which promotes next at once), then a second
// rotation cut off past its timeout: the secret espmdm restores is the one
// the device holds as current, so it boots, and the retry completes.
func TestE2EDeviceF1RestoreOutagePastTheTimeout(t *testing.T) {
	env := rotationEnv("restore", 2)
	env["ROTATION_RETRY_SECONDS"] = "6"
	s := startServer(t, env)
	m := newModel(t, s, nil)
	d := newDevice(t, s, m.ID, `{"f1":true}`)
	h := newHostDevice(t, s, d, "1.0.0")
	// Logs at debug level, every component's: still no secret, no token.
	h.env = []string{"ESPMDM_DEVICE_LOG=debug"}
	first := currentSecret(t, s, d.ID)

	h.crashes = []string{"after_write_next"}
	h.start()
	h.waitEvent(0, 60*time.Second, "subscribed")
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	if code := h.waitExit(30 * time.Second); code != deviceExitCrash {
		t.Fatalf("exit %d, want the crash after writing next", code)
	}
	mk := h.mark()
	h.start()
	b := h.waitEvent(mk, 30*time.Second, "boot")
	if b.Slot != "next" {
		t.Fatalf("reboot after the crash: slot %s, want next (only the new secret works in restore mode)", b.Slot)
	}
	if p := h.waitEvent(mk, 10*time.Second, "promoted"); p.At != "boot" {
		t.Fatalf("promoted %+v, want at boot", p)
	}
	waitState(t, s, d.ID, "OK", 30*time.Second)
	second := currentSecret(t, s, d.ID)
	s.keep(second)
	if cur, next, err := h.nvsSlots(); err != nil || cur != second || next != "" {
		t.Fatalf("after the first rotation the device holds current=espmdm's:%t next-empty:%t (%v)", cur == second, next == "", err)
	}

	// The second rotation: cut off after writing next, and the device stays
	// away past the attempt's timeout: espmdm restores the secret it had.
	h.stop()
	h.crashes = []string{"after_write_next"}
	mk = h.mark()
	h.start()
	h.waitEvent(mk, 30*time.Second, "subscribed")
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	if code := h.waitExit(30 * time.Second); code != deviceExitCrash {
		t.Fatalf("exit %d, want the crash after writing next", code)
	}
	waitState(t, s, d.ID, "TIMEOUT", 30*time.Second)
	if !accepted(t, s.st, d.ClientID, second) {
		t.Fatal("after the timeout Keycloak does not accept the restored secret")
	}
	cur, _, err := h.nvsSlots()
	if err != nil || cur != second {
		t.Fatalf("the device's current slot is not the restored secret (%v)", err)
	}
	mk = h.mark()
	h.start()
	if b := h.waitEvent(mk, 30*time.Second, "boot"); b.Slot != "current" {
		t.Fatalf("boot after the outage: slot %s, want current", b.Slot)
	}
	// The retry attempt completes with the device's help.
	waitState(t, s, d.ID, "OK", 60*time.Second)
	third := currentSecret(t, s, d.ID)
	waitSlots(t, s, d, h, second)
	for _, sec := range []string{first, second} {
		if accepted(t, s.st, d.ClientID, sec) {
			t.Error("an earlier secret still works")
		}
	}
	if third == second {
		t.Error("the retry did not rotate")
	}
}

// errorsWithin runs the device for window and returns its error events of
// op; the device must neither exit nor spin.
func errorsWithin(t *testing.T, h *hostDevice, window time.Duration, op string) []devEvent {
	t.Helper()
	mk := h.mark()
	h.start()
	time.Sleep(window)
	if !h.isRunning() {
		t.Fatalf("%s: exited (%v) instead of retrying", h.name, h.exitCodes())
	}
	var out []devEvent
	for _, e := range h.since(mk) {
		if e.Event == "error" && e.Op == op {
			out = append(out, e)
		}
	}
	h.stop()
	return out
}

// checkBackoff: a clear message, a bounded number of attempts over the
// window, growing delays (min 0.5 s, max 4 s in the host device's build).
func checkBackoff(t *testing.T, name string, errs []devEvent, window time.Duration, wantIn string) {
	t.Helper()
	// 8 s: at most about 0.25+0.5+1+2+4 s of the shortest delays, so 3 to 12 attempts.
	if len(errs) < 3 || len(errs) > 12 {
		t.Errorf("%s: %d error events in %s, want a few retries with backoff (3..12)", name, len(errs), window)
		return
	}
	for i, e := range errs {
		if e.Attempt != i+1 {
			t.Errorf("%s: error %d is attempt %d", name, i, e.Attempt)
		}
		if e.RetryInMs < 250 || e.RetryInMs > 4000 {
			t.Errorf("%s: retry in %d ms, outside the backoff's bounds", name, e.RetryInMs)
		}
		if !bytes.Contains([]byte(e.Message), []byte(wantIn)) {
			t.Errorf("%s: message %q does not say %q", name, e.Message, wantIn)
		}
	}
	if last := errs[len(errs)-1]; last.RetryInMs < 1000 {
		t.Errorf("%s: the delay did not grow (last %d ms)", name, last.RetryInMs)
	}
}

func TestE2EDeviceErrors(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, nil)
	const window = 8 * time.Second

	t.Run("corrupt partition", func(t *testing.T) {
		d := newDevice(t, s, m.ID, `{}`)
		h := newHostDevice(t, s, d, "1.0.0")
		garbage := make([]byte, 0x6000)
		if _, err := rand.Read(garbage); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(h.nvsFile, garbage, 0o600); err != nil {
			t.Fatal(err)
		}
		errs := errorsWithin(t, h, window, "provisioning")
		checkBackoff(t, "corrupt partition", errs, window, "provisioning partition 'nvs'")
		if n := h.count(0, "boot"); n != 0 {
			t.Errorf("booted %d times from a corrupt partition", n)
		}
	})

	t.Run("deleted Keycloak client", func(t *testing.T) {
		d := newDevice(t, s, m.ID, `{}`)
		h := newHostDevice(t, s, d, "1.0.0")
		deleteKeycloakClient(t, s.st, d.ClientID)
		errs := errorsWithin(t, h, window, "token")
		checkBackoff(t, "deleted client", errs, window, "Keycloak refused")
		for _, e := range errs {
			if e.Status != http.StatusUnauthorized && e.Status != http.StatusBadRequest {
				t.Errorf("token error with status %d, want Keycloak's refusal", e.Status)
			}
		}
		if n := h.count(0, "boot"); n != 0 {
			t.Errorf("booted %d times without a Keycloak client", n)
		}
	})

	t.Run("espmdm unreachable", func(t *testing.T) {
		other := startServer(t, nil)
		om := newModel(t, other, nil)
		d := newDevice(t, other, om.ID, `{}`)
		h := newHostDevice(t, other, d, "1.0.0")
		other.stop()
		errs := errorsWithin(t, h, window, "config")
		checkBackoff(t, "espmdm unreachable", errs, window, "espmdm unreachable")
		if h.count(0, "boot") != 1 {
			t.Error("the device did not boot: Keycloak is up, only espmdm is away")
		}
	})
}

// The broker restarts: the device reconnects and subscribes again (its
// subscribed event comes again), and a nudge after that still arrives.
func TestE2EDeviceResubscribesAfterABrokerRestart(t *testing.T) {
	s := startServer(t, nil)
	_, devs, hosts := componentFleet(t, s, 1)
	h := hosts[0]
	mk := h.mark()
	restart(t, s.st, integration.Mosquitto, func() {
		h.waitFor(mk, 30*time.Second, "MQTT error", func(e devEvent) bool { return e.Event == "error" && e.Op == "mqtt" })
	})
	h.waitEvent(mk, 60*time.Second, "subscribed")
	mk = h.mark()
	changed := json.RawMessage(`{"after":"restart"}`)
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", devs[0].ID), s.admin, map[string]any{"config": changed}).
		want(t, http.StatusOK, nil)
	c := h.waitFor(mk, 30*time.Second, "config after the restart", func(e devEvent) bool { return e.Event == "config" })
	if !sameJSON(t, c.Config, changed) {
		t.Fatalf("config %s, want %s", c.Config, changed)
	}
}
