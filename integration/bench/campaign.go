package bench

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/integration/bench/launch"
	"github.com/espmdm/espmdm/integration/devicesim"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// The campaign scenario (SPEC §16): a campaign over a devicesim fleet that
// reports at once, timed from its creation to its completion, and the
// progression's database cost per tick at two fleet sizes.

const (
	campaignDevices = 1000
	campaignWorkers = 32
	// campaignTickRows are the fleet sizes the per-tick cost is measured
	// at, each with a current wave of about campaignTickWave members.
	campaignTickWave  = 100
	campaignTickTicks = 50
)

var campaignTickRows = []int{1000, 10000}

// Campaign is the campaign scenario.
func Campaign() Scenario {
	return Scenario{
		Name: "campaign",
		Doc: fmt.Sprintf("Two firmware campaigns, each over %d devicesim devices of a model of their own (made by `POST /api/devices/batch`, booted: each has a token and "+
			"has reported 1.0.0), waves 10/50/100, `wave_soak_seconds` 0, `CAMPAIGN_TICK_SECONDS` at its default (2: the worker is woken when a wave finishes, not ticked), timed from the campaign's `created_at` "+
			"to its `finished_at` (espmdm's timestamps; the driver polls `GET /api/campaigns/{id}` every 50 ms only to notice the end). "+
			"The devices follow the campaign's nudge on `iotsupport/<client_id>/firmware` (one shared MQTT connection, %d workers) and ask "+
			"`GET /iot/firmware-version`. In the first campaign they report at once (devicesim's InstantFirmware: the offered version "+
			"reported running and `valid`, no download): its time is espmdm's own work, `seconds` and `assigned_per_s` = devices / seconds "+
			"(goal ≥ 200). In the second they update as the component does: download the effective firmware, install it, reboot (a new "+
			"token), report `pending_verify`, confirm and report `valid`: `ota_seconds`, `ota_per_s`. Then the progression's cost per worker tick, measured on the "+
			"repository and core directly (`mdm.Service.RunCampaignTick` on PostgreSQL, the median of %d ticks of a running "+
			"campaign whose current wave of about %d members is assigned and pending): at %v member rows (waves 10/100 and 1/100), "+
			"so the current wave is the same size and only the fleet grows; a flat `tick_ms` is the O(current wave) claim.",
			campaignDevices, campaignWorkers, campaignTickTicks, campaignTickWave, campaignTickRows),
		Run: runCampaign,
	}
}

func runCampaign(ctx context.Context, env *Env) (res Result, err error) {
	st := env.Stack
	srv, err := env.startInProcess(ctx, nil)
	if err != nil {
		return res, err
	}
	defer func() {
		if serr := srv.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stop espmdm: %w", serr)
		}
	}()
	opTok, err := env.token(ctx, st.OperatorClientID, st.OperatorClientSecret)
	if err != nil {
		return res, err
	}
	adm := admin{base: srv.Base, tok: opTok, c: newClient(campaignWorkers)}
	adm.c.Timeout = 10 * time.Minute
	var ids []int64
	defer func() {
		var n atomic.Int64
		_, _, _ = parallel(context.WithoutCancel(ctx), len(ids), provWorkers, func(ctx context.Context, i int) error {
			if adm.deleteDevice(ctx, ids[i]) != nil {
				n.Add(1)
			}
			return nil
		})
		if n.Load() > 0 {
			err = errors.Join(err, fmt.Errorf("could not delete %d bench devices", n.Load()))
		}
	}()
	instantS, _, err := oneCampaign(ctx, env, srv, adm, opTok, true, &ids)
	if err != nil {
		return res, err
	}
	seconds, installs, err := oneCampaign(ctx, env, srv, adm, opTok, false, &ids)
	if err != nil {
		return res, err
	}
	res.Add("devices", campaignDevices, "members of each campaign")
	res.Add("waves", 3, "waves (10 %, 50 %, 100 %)")
	res.Add("seconds", instantS, "devices that report at once: from the campaign's created_at to its finished_at (espmdm's own timestamps)")
	res.Add("assigned_per_s", float64(campaignDevices)/instantS, "devices that report at once: members assigned, nudged, reported and counted per second (goal ≥ 200)")
	res.Add("ota_seconds", seconds, "devices that update as the component does (download, install, reboot with a new token, confirm): created_at to finished_at")
	res.Add("ota_per_s", float64(campaignDevices)/seconds, "those members per second")
	res.Add("installs", installs, "images the updating devices installed (one per member when none failed)")
	for _, rows := range campaignTickRows {
		ms, wave, err := campaignTickCost(ctx, env, rows)
		if err != nil {
			return res, err
		}
		res.Add("tick_ms_"+strconv.Itoa(rows), ms, fmt.Sprintf("median worker tick with %d member rows (current wave: %d members)", rows, wave))
	}
	return res, nil
}

// oneCampaign makes a model with two uploads and campaignDevices devices of
// it, boots them in a devicesim fleet that follows its firmware (instant:
// reporting an offered version at once instead of updating) and times one
// campaign over them; ids collects the devices made, for the caller to
// delete.
func oneCampaign(ctx context.Context, env *Env, srv *launch.Server, adm admin, opTok string, instant bool, ids *[]int64) (float64, int64, error) {
	st := env.Stack
	modelID, err := adm.createModel(ctx)
	if err != nil {
		return 0, 0, err
	}
	upload := func(version, query string) (string, error) {
		desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
		desc.Version = version
		img := esp32imagetest.New(esp32image.ChipESP32, 4, true, &desc).Bytes()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/api/device-models/%d/firmware%s", srv.Base, modelID, query), bytes.NewReader(img))
		if err != nil {
			return "", err
		}
		req.Header.Set("Authorization", "Bearer "+opTok)
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := adm.c.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var f struct {
			SHA256 string `json:"sha256"`
		}
		if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &f) != nil {
			return "", fmt.Errorf("upload %s: status %d: %.200s", version, resp.StatusCode, b)
		}
		return f.SHA256, nil
	}
	if _, err := upload("1.0.0", ""); err != nil {
		return 0, 0, err
	}
	target, err := upload("2.0.0", "?release=false")
	if err != nil {
		return 0, 0, err
	}

	// The devices follow their firmware as the component does: a
	// campaign's nudge on iotsupport/<client_id>/firmware starts the
	// update (GET /iot/firmware-version, download, install, reboot with a
	// new token, pending_verify, confirm, valid). One shared connection as
	// espmdm's own account (which may read iotsupport/#): a thousand
	// device connections would measure the broker.
	var installs atomic.Int64
	var failMu sync.Mutex
	var firstFail error
	fleet, err := devicesim.NewFleet(ctx, devicesim.Config{
		BrokerURL: st.MQTTAdminURL(), Concurrency: campaignWorkers, FirmwareVersion: "1.0.0", FollowFirmware: true, InstantFirmware: instant,
		OnEvent: func(e devicesim.Event) {
			switch e.Kind {
			case devicesim.EventOTAInstalled:
				installs.Add(1)
			case devicesim.EventError:
				failMu.Lock()
				if firstFail == nil {
					firstFail = fmt.Errorf("device %s: %w", e.ClientID, e.Err)
				}
				failMu.Unlock()
			}
		},
	})
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = fleet.Close(context.WithoutCancel(ctx)) }()
	env.logf("campaign: %d devices by batch", campaignDevices)
	for made := 0; made < campaignDevices; {
		n := min(500, campaignDevices-made)
		body, err := postBatch(ctx, adm.c, srv.Base, opTok, modelID, n, map[string]any{}, "0x6000")
		if err != nil {
			return 0, 0, err
		}
		made2, failed, err := batchIDs(body)
		*ids = append(*ids, made2...)
		if err != nil {
			return 0, 0, err
		}
		if failed > 0 {
			return 0, 0, fmt.Errorf("batch: %d devices failed", failed)
		}
		parts, err := batchPartitions(body)
		if err != nil {
			return 0, 0, err
		}
		for _, p := range parts {
			if _, err := fleet.Add(p); err != nil {
				return 0, 0, err
			}
		}
		made += n
	}
	devs := fleet.Devices()
	env.logf("campaign: booting %d devices (a token each, a first report, a firmware check)", len(devs))
	booting := time.Now()
	if _, _, err := parallel(ctx, len(devs), campaignWorkers, func(ctx context.Context, i int) error {
		return devs[i].Boot(ctx)
	}); err != nil {
		return 0, 0, fmt.Errorf("boot: %w", err)
	}
	// The firmware checks Boot queued (each finds 1.0.0, what it runs)
	// are done before the clock starts.
	for fleet.Pending() > 0 {
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	// What a reboot costs the fleet without any campaign: the floor of
	// the campaign's time (every member reboots once, with a new token).
	booted := time.Since(booting).Seconds()
	env.logf("campaign: %d boots (token, report, firmware check) in %.2f s: %.1f/s", len(devs), booted, float64(len(devs))/booted)

	env.logf("campaign: running (devices that %s)", map[bool]string{true: "report at once", false: "update as the component does"}[instant])
	var created struct {
		ID int64 `json:"id"`
	}
	if err := callJSON(ctx, adm.c, http.MethodPost, srv.Base+"/api/campaigns", opTok, map[string]any{
		"device_model_id": modelID, "firmware_sha256": target, "waves": []int{10, 50, 100},
		"wave_soak_seconds": 0, "device_timeout_seconds": 600, "max_failure_ratio": 0.1,
	}, http.StatusCreated, &created); err != nil {
		return 0, 0, err
	}
	seconds, err := awaitCampaign(ctx, env, adm, created.ID, func() error {
		failMu.Lock()
		defer failMu.Unlock()
		return firstFail
	})
	return seconds, installs.Load(), err
}

// awaitCampaign waits for campaign id to complete (a device error or an
// abort fails it) and returns the seconds from its created_at to its
// finished_at, both espmdm's: the 50 ms poll only notices the end.
func awaitCampaign(ctx context.Context, env *Env, adm admin, id int64, failed func() error) (float64, error) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for {
		var c struct {
			State      string  `json:"state"`
			CreatedAt  string  `json:"created_at"`
			FinishedAt *string `json:"finished_at"`
		}
		if err := callJSON(ctx, adm.c, http.MethodGet, fmt.Sprintf("%s/api/campaigns/%d", adm.base, id), adm.tok, nil, http.StatusOK, &c); err != nil {
			return 0, err
		}
		switch c.State {
		case "completed":
			if c.FinishedAt == nil {
				return 0, errors.New("campaign completed without finished_at")
			}
			from, err1 := time.Parse(time.RFC3339Nano, c.CreatedAt)
			to, err2 := time.Parse(time.RFC3339Nano, *c.FinishedAt)
			if err := errors.Join(err1, err2); err != nil {
				return 0, fmt.Errorf("campaign times: %w", err)
			}
			env.logf("campaign: completed in %.2f s (created_at to finished_at); seen by the driver after %.2f s",
				to.Sub(from).Seconds(), time.Since(began).Seconds())
			return to.Sub(from).Seconds(), nil
		case "aborted", "paused":
			return 0, fmt.Errorf("campaign %s", c.State)
		}
		if err := failed(); err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// campaignTickCost measures the worker's tick on a database of its own
// holding rows devices in one campaign whose current wave (about
// campaignTickWave members) is assigned and pending: the median of
// campaignTickTicks ticks, in milliseconds, and the wave's size.
func campaignTickCost(ctx context.Context, env *Env, rows int) (float64, int, error) {
	// An espmdm whose own worker never ticks twice: only its database
	// (migrated, dropped by Stop) is used.
	srv, err := env.startInProcess(ctx, map[string]string{"CAMPAIGN_TICK_SECONDS": "86400"})
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = srv.Stop() }()
	db, err := postgres.Open(ctx, srv.DatabaseURL)
	if err != nil {
		return 0, 0, err
	}
	defer db.Close()
	models, devices, firmware, campaigns := postgres.NewModelRepo(db), postgres.NewDeviceRepo(db), postgres.NewFirmwareRepo(db), postgres.NewCampaignRepo(db)
	m := model.DeviceModel{Code: "tick_" + strconv.Itoa(rows), Name: "tick"}
	if err := models.CreateModel(ctx, &m, nil); err != nil {
		return 0, 0, err
	}
	if _, err := db.Bun().ExecContext(ctx, `INSERT INTO devices (key, device_model_id, config)
		SELECT lpad(to_hex(g), 8, '0'), ?, '{}' FROM generate_series(1, ?) AS g`, m.ID, rows); err != nil {
		return 0, 0, fmt.Errorf("insert devices: %w", err)
	}
	f := model.Firmware{DeviceModelID: m.ID, Version: "2.0.0", Chip: "esp32", SHA256: fmt.Sprintf("%064x", rows), Size: 1}
	if err := firmware.RecordFirmware(ctx, &f, nil); err != nil {
		return 0, 0, err
	}
	first := max(1, campaignTickWave*100/rows)
	svc := mdm.New(mdm.Deps{Models: models, Devices: devices, Firmware: firmware, Campaigns: campaigns,
		Notifier: portstest.NewNotifier(), Clock: portstest.NewClock(time.Now())}, mdm.Config{})
	soak, timeout := int64(0), int64(86400)
	c, err := svc.CreateCampaign(ctx, ports.NewCampaign{DeviceModelID: m.ID, FirmwareSHA256: f.SHA256,
		Waves: []int{first, 100}, WaveSoakSeconds: &soak, DeviceTimeoutSeconds: &timeout})
	if err != nil {
		return 0, 0, err
	}
	// The first tick starts wave 0 (assigns and nudges it); the rest are
	// the steady state measured.
	if _, err := svc.RunCampaignTick(ctx); err != nil {
		return 0, 0, err
	}
	wave, err := campaigns.WaveCount(ctx, c.ID, 0)
	if err != nil {
		return 0, 0, err
	}
	times := make([]float64, 0, campaignTickTicks)
	for range campaignTickTicks {
		began := time.Now()
		if _, err := svc.RunCampaignTick(ctx); err != nil {
			return 0, 0, err
		}
		times = append(times, Millis(time.Since(began)))
	}
	slices.Sort(times)
	env.logf("campaign: tick at %d rows (wave 0: %d members): median %.2f ms", rows, wave.Members, times[len(times)/2])
	return times[len(times)/2], wave.Members, nil
}

// batchPartitions reads the NVS partitions (<key>.bin) of a batch ZIP.
func batchPartitions(body []byte) ([][]byte, error) {
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil {
		return nil, fmt.Errorf("batch: the answer is not a ZIP: %w", err)
	}
	var out [][]byte
	for _, f := range zr.File {
		if !strings.HasSuffix(f.Name, ".bin") {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}
