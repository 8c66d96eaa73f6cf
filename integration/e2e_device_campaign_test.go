package integration_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// End to end with the real device component in a firmware campaign (SPEC
// §16, §14): the campaign nudges each member on its own firmware topic, the
// component asks GET /iot/firmware-version (its effective firmware: the
// campaign's target), installs it, reboots, confirms it after its check-in
// and reports it; one member's new image never checks in and the bootloader
// rolls it back, which the component reports. Those reports are what the
// campaign counts.

// deviceCampaignDTO is the part of GET /api/campaigns/{id} this test reads.
type deviceCampaignDTO struct {
	ID          int64   `json:"id"`
	State       string  `json:"state"`
	AbortReason *string `json:"abort_reason"`
	Members     int     `json:"members"`
	Progress    []struct {
		Members   int `json:"members"`
		Pending   int `json:"pending"`
		Succeeded int `json:"succeeded"`
		Failed    int `json:"failed"`
		TimedOut  int `json:"timed_out"`
	} `json:"progress"`
}

type deviceCampaignMemberDTO struct {
	Devices []struct {
		DeviceID int64  `json:"device_id"`
		State    string `json:"state"`
	} `json:"devices"`
}

func TestE2EDeviceCampaign(t *testing.T) {
	s := startServer(t, map[string]string{"CAMPAIGN_TICK_SECONDS": "1"})
	m, devs, hosts := componentFleet(t, s, 4)
	// Device 3's new image crashes before it checks in, at its first boot:
	// the next start runs the previous image again (the bootloader's
	// rollback, as the linux port does it).
	bad := hosts[3]
	bad.stop()
	bad.crashes = []string{"", "ota_before_confirm"}
	bad.autoReboot = true
	mk := bad.mark()
	bad.start()
	bad.waitEvent(mk, 30*time.Second, "subscribed")

	// The target, only stored: no device is offered it but through the campaign.
	img := bigFirmware("2.0.0", 64*1024)
	sum := sha256.Sum256(img)
	var fw firmwareDTO
	s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware?release=false", m.ID), s.admin,
		bytes.NewReader(img), "Content-Type", "application/octet-stream").want(t, http.StatusCreated, &fw)
	if fw.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("upload: sha256 %s", fw.SHA256)
	}
	time.Sleep(2 * time.Second) // a stray model-wide notice would have been acted on
	for _, h := range hosts {
		if n := h.count(0, "ota_started"); n != 0 {
			t.Fatalf("%s: %d downloads of a stored upload, want none before the campaign", h.name, n)
		}
	}
	marks := make([]int, len(hosts))
	for i, h := range hosts {
		marks[i] = h.mark()
	}
	// One wave of everyone; one failure in four is under the ratio.
	var c deviceCampaignDTO
	s.do(http.MethodPost, "/api/campaigns", s.admin, map[string]any{
		"device_model_id": m.ID, "firmware_sha256": fw.SHA256, "waves": []int{100}, "wave_soak_seconds": 0,
		"max_failure_ratio": 0.5, "device_timeout_seconds": 600,
	}).want(t, http.StatusCreated, &c)
	if c.Members != len(hosts) || c.State != "running" {
		t.Fatalf("campaign %+v, want %d members, running", c, len(hosts))
	}

	// Each member hears of it on its own topic and acts on it.
	for i, h := range hosts {
		n := h.waitFor(marks[i], 30*time.Second, "campaign nudge", func(e devEvent) bool { return e.Event == "nudge" && e.Kind == "firmware" })
		if want := "iotsupport/" + devs[i].ClientID + "/firmware"; n.Topic != want {
			t.Errorf("%s: firmware nudge on %s, want %s (the campaign's, to this device only)", h.name, n.Topic, want)
		}
		if inst := h.waitFor(marks[i], 60*time.Second, "ota_installed", func(e devEvent) bool { return e.Event == "ota_installed" }); inst.Version != "2.0.0" {
			t.Errorf("%s: installed %+v", h.name, inst)
		}
	}
	if code := bad.waitExit(90 * time.Second); code != deviceExitCrash {
		t.Fatalf("%s: exit status %d at ota_before_confirm, want %d", bad.name, code, deviceExitCrash)
	}
	mk = bad.mark()
	bad.start()
	if e := bad.waitEvent(mk, 30*time.Second, "ota_rolled_back"); e.Version != "2.0.0" {
		t.Fatalf("%s: rolled back %+v", bad.name, e)
	}
	for i := range hosts {
		want := func(r reportedDTO) bool { return r.FirmwareVersion == "2.0.0" && r.OTAState == "valid" }
		what := "of 2.0.0 confirmed"
		if hosts[i] == bad {
			want = func(r reportedDTO) bool { return r.OTA != nil && r.OTA.Result == "rolled_back" }
			what = "of the rollback"
		}
		r := waitReported(t, s, devs[i].ID, 60*time.Second, what, want)
		if hosts[i] == bad && (r.FirmwareVersion != "1.0.0" || r.OTAState != "valid" || r.OTA.Target != "2.0.0") {
			t.Errorf("%s: reported %+v, want 1.0.0 valid with ota {2.0.0, rolled_back}", bad.name, r)
		}
	}

	// The campaign counts the confirmed boots and the rollback, and completes.
	deadline := time.Now().Add(60 * time.Second)
	for {
		s.do(http.MethodGet, fmt.Sprintf("/api/campaigns/%d", c.ID), s.viewer, nil).want(t, http.StatusOK, &c)
		if c.State != "running" || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if c.State != "completed" || len(c.Progress) != 1 || c.Progress[0].Succeeded != 3 || c.Progress[0].Failed != 1 || c.Progress[0].Pending != 0 {
		t.Fatalf("campaign %+v, want completed with 3 succeeded and 1 failed", c)
	}
	var members deviceCampaignMemberDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/campaigns/%d/devices?state=failed", c.ID), s.viewer, nil).want(t, http.StatusOK, &members)
	if len(members.Devices) != 1 || members.Devices[0].DeviceID != devs[3].ID {
		t.Errorf("failed members %+v, want device %d only", members.Devices, devs[3].ID)
	}

	// Started again: the members that succeeded keep the target; the one
	// that rolled back does not fetch it again.
	for _, h := range hosts {
		h.stop()
		mk := h.mark()
		h.start()
		b := h.waitEvent(mk, 30*time.Second, "boot")
		want := "2.0.0"
		if h == bad {
			want = "1.0.0"
		}
		if b.FirmwareVersion != want || b.OTAState != "valid" {
			t.Errorf("%s: after a restart %+v, want %s valid", h.name, b, want)
		}
	}
	time.Sleep(3 * time.Second) // the firmware check at start has run
	for _, h := range hosts {
		if n := h.count(0, "ota_started"); n != 1 {
			t.Errorf("%s: %d downloads started, want one", h.name, n)
		}
	}
}
