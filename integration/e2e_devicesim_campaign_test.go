package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/integration/devicesim"
)

// devicesim in a firmware campaign against a real espmdm and broker (SPEC
// §16): each device on its own broker account subscribed to its own
// firmware topic too, following its effective firmware (FollowFirmware),
// with a target that never checks in (BadFirmware). The first wave's
// rollbacks abort the campaign; the second wave is never assigned it.

// simCampaignMembersDTO is the part of GET /api/campaigns/{id}/devices this
// test reads.
type simCampaignMembersDTO struct {
	Devices []struct {
		DeviceID int64  `json:"device_id"`
		Wave     int    `json:"wave"`
		State    string `json:"state"`
	} `json:"devices"`
	NextCursor *string `json:"next_cursor"`
}

func TestE2EDevicesimCampaignRollsBackAndAborts(t *testing.T) {
	const n = 12
	s := startServer(t, map[string]string{"CAMPAIGN_TICK_SECONDS": "1"})
	m := newModel(t, s, nil)
	image := func(version string) []byte {
		desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
		desc.Version = version
		return esp32imagetest.New(esp32image.ChipESP32, 4, true, &desc).Bytes()
	}
	var released, target firmwareDTO
	s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
		bytes.NewReader(image("1.0.0")), "Content-Type", "application/octet-stream").want(t, http.StatusCreated, &released)
	s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware?release=false", m.ID), s.admin,
		bytes.NewReader(image("2.0.0")), "Content-Type", "application/octet-stream").want(t, http.StatusCreated, &target)

	fleet, err := devicesim.NewFleet(ctxT(t, 30*time.Second), devicesim.Config{
		BrokerURL: s.st.MQTTURL, DeviceAccounts: true, Concurrency: 8, FollowFirmware: true,
		FirmwareVersion: "1.0.0", BadFirmware: []string{"2.0.0"},
		Logf: func(format string, args ...any) { t.Logf(format, args...) },
	})
	if err != nil {
		t.Fatalf("NewFleet: %v", err)
	}
	byID := map[int64]*devicesim.Device{}
	t.Cleanup(func() {
		for _, d := range byID {
			s.keep(d.Secrets()...)
		}
	})
	t.Cleanup(func() {
		if err := fleet.Close(context.Background()); err != nil {
			t.Errorf("fleet.Close: %v", err)
		}
	})
	for range n {
		d := newDevice(t, s, m.ID, `{}`)
		r := s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning", d.ID), s.admin, nil).want(t, http.StatusOK, nil)
		part, err := devicesim.PartitionFromJSON(r.body)
		if err != nil {
			t.Fatal(err)
		}
		sim, err := fleet.Add(part)
		if err != nil {
			t.Fatal(err)
		}
		// Four filters with its own account: the broker allows its own firmware topic.
		if err := fleet.Connect(ctxT(t, 30*time.Second), sim); err != nil {
			t.Fatalf("device %d on the broker with its account: %v", d.ID, err)
		}
		s.keep(sim.Secrets()...)
		byID[d.ID] = sim
	}
	if err := fleet.BootAll(ctxT(t, 60*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, 30*time.Second, "boot reports and firmware checks", func() (bool, string) {
		st := fleet.Stats().Total
		return st.StateReports >= n && st.FirmwareChecks >= n, fmt.Sprintf("%+v", st)
	})
	for id := range byID {
		waitReported(t, s, id, 10*time.Second, "of 1.0.0", func(r reportedDTO) bool { return r.FirmwareVersion == "1.0.0" })
	}

	var c deviceCampaignDTO
	s.do(http.MethodPost, "/api/campaigns", s.admin, map[string]any{
		"device_model_id": m.ID, "firmware_sha256": target.SHA256, "waves": []int{50, 100}, "wave_soak_seconds": 0,
		"max_failure_ratio": 0.1, "device_timeout_seconds": 600, "rollback_on_abort": true,
	}).want(t, http.StatusCreated, &c)
	deadline := time.Now().Add(60 * time.Second)
	for c.State == "running" && time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
		s.do(http.MethodGet, fmt.Sprintf("/api/campaigns/%d", c.ID), s.viewer, nil).want(t, http.StatusOK, &c)
	}
	if c.State != "aborted" || c.AbortReason == nil || *c.AbortReason == "" || len(c.Progress) != 2 || c.Progress[0].Failed == 0 {
		t.Fatalf("campaign %+v, want aborted in its first wave on the rollbacks", c)
	}
	t.Logf("aborted: %s; wave 1 %+v", *c.AbortReason, c.Progress[0])

	var members simCampaignMembersDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/campaigns/%d/devices?limit=100", c.ID), s.viewer, nil).want(t, http.StatusOK, &members)
	if len(members.Devices) != n {
		t.Fatalf("%d members, want %d", len(members.Devices), n)
	}
	time.Sleep(2 * time.Second) // the rollback's nudges have been acted on
	ctx := ctxT(t, 30*time.Second)
	for _, mb := range members.Devices {
		sim := byID[mb.DeviceID]
		st := sim.Stats()
		offer, _, err := sim.FirmwareOffer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sim.Running() != "1.0.0" || offer != "1.0.0" || st.FirmwareInstalls != 0 || st.Errors != 0 {
			t.Errorf("%s (wave %d, %s): running %s, offered %s, %+v; want 1.0.0 offered and running, nothing installed",
				sim.ClientID(), mb.Wave, mb.State, sim.Running(), offer, st)
		}
		switch {
		case mb.Wave > 0 && (st.FirmwareDownloads != 0 || mb.State != "pending"):
			t.Errorf("%s of wave %d: %d downloads, %s: a later wave must never be assigned the target",
				sim.ClientID(), mb.Wave, st.FirmwareDownloads, mb.State)
		case mb.State == "failed" && st.FirmwareRollbacks != 1:
			t.Errorf("%s failed with %d rollbacks, want 1", sim.ClientID(), st.FirmwareRollbacks)
		}
	}
}
