package devicesim

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/espmdm/espmdm/esp32image"
)

// State reports (SPEC §15) as the device component sends them: at every
// boot, and after an OTA (the new image boots pending verification,
// reports, confirms itself once it has checked in, and reports again).

// DefaultFirmwareVersion is what a simulated device runs until an OTA
// installs another (Config.FirmwareVersion overrides it).
const DefaultFirmwareVersion = "0.0.0"

// The simulated platform's fixed readings.
const (
	simIDFVersion = "v5.3.1"
	simFreeHeap   = 200_000
	simRSSI       = -60
)

// appState is the image the device runs, as its bootloader and OTA data
// would say.
type appState struct {
	version   string
	secure    uint32
	elfSHA256 string // hex; "" when unknown (the version given by Config)
	idf       string
	partition string // "ota_0" or "ota_1"
	pending   bool   // booted from an OTA, not confirmed yet
	ota       *otaReport
	reset     string // why the device last started
	bootAt    time.Time
}

// otaReport is the last OTA attempt.
type otaReport struct {
	Target string `json:"target"`
	Result string `json:"result"`
}

// stateReport is the body of POST /iot/state: exactly the members of SPEC
// §15 that the device knows.
type stateReport struct {
	FirmwareVersion string     `json:"firmware_version"`
	SecureVersion   uint32     `json:"secure_version"`
	AppELFSHA256    string     `json:"app_elf_sha256,omitempty"`
	Partition       string     `json:"partition"`
	OTAState        string     `json:"ota_state"`
	OTA             *otaReport `json:"ota,omitempty"`
	ResetReason     string     `json:"reset_reason"`
	UptimeS         int64      `json:"uptime_s"`
	FreeHeap        int64      `json:"free_heap"`
	RSSI            int        `json:"rssi"`
	IDFVersion      string     `json:"idf_version"`
}

// Running is the version of the image the device runs now.
func (d *Device) Running() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.app.version
}

func (d *Device) report() stateReport {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.app
	r := stateReport{
		FirmwareVersion: a.version, SecureVersion: a.secure, AppELFSHA256: a.elfSHA256,
		Partition: a.partition, OTAState: "valid", ResetReason: a.reset,
		UptimeS: int64(time.Since(a.bootAt) / time.Second), FreeHeap: simFreeHeap, RSSI: simRSSI, IDFVersion: a.idf,
	}
	if a.pending {
		r.OTAState = "pending_verify"
	}
	if a.ota != nil {
		o := *a.ota
		r.OTA = &o
	}
	return r
}

// ReportState is POST /iot/state with what the device runs; espmdm answers
// 204.
func (d *Device) ReportState(ctx context.Context) error {
	if d.offline() {
		return ErrOffline
	}
	body, err := json.Marshal(d.report())
	if err != nil {
		return fmt.Errorf("devicesim: state report: %w", err)
	}
	resp, err := d.do(ctx, http.MethodPost, "/iot/state", body, nil)
	if err != nil {
		return err
	}
	drain(resp)
	if resp.StatusCode != http.StatusNoContent {
		return &StatusError{Op: "POST /iot/state", Status: resp.StatusCode}
	}
	d.mu.Lock()
	d.stats.StateReports++
	d.mu.Unlock()
	d.event(EventStateReport, nil)
	return nil
}

// reportBoot reports the state after a boot and, when the image runs on
// probation, confirms it (the device has checked in) and reports again.
func (d *Device) reportBoot(ctx context.Context) error {
	if err := d.ReportState(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	pending := d.app.pending
	d.app.pending = false
	d.mu.Unlock()
	if !pending {
		return nil
	}
	return d.ReportState(ctx)
}

// Errors of InstallFirmware.
var (
	// ErrNoImage means InstallFirmware found no complete download to install.
	ErrNoImage = errors.New("devicesim: no complete firmware download to install")
	// ErrVerifyFailed means the downloaded image did not verify: it was
	// reported as verify_failed and not installed.
	ErrVerifyFailed = errors.New("devicesim: the downloaded image does not verify")
	// ErrRolledBack means the image was installed and rolled back
	// (Behaviour.BadFirmware): the device runs its previous image.
	ErrRolledBack = errors.New("devicesim: the installed image was rolled back")
)

// InstallFirmware installs the image the last FetchFirmware completed, as
// the component's OTA does: it checks the image's SHA-256 against its ETag
// and reads its app descriptor (an image that fails either is refused,
// reported as verify_failed and not installed: ErrVerifyFailed), writes it
// to the other OTA slot and reboots into it; Boot then reports it pending
// verification, confirms it and reports it valid. It returns the installed
// version. A version in BadFirmware never checks in: the device reboots
// into its previous image, reports ota rolled_back (ErrRolledBack) and
// does not fetch that image again.
func (d *Device) InstallFirmware(ctx context.Context) (string, error) {
	if d.offline() {
		return "", ErrOffline
	}
	d.mu.Lock()
	fw := d.fw
	d.mu.Unlock()
	if !fw.complete {
		return "", ErrNoImage
	}
	img, perr := esp32image.Parse(fw.data)
	sum := sha256Hex(fw.data)
	if perr != nil || img.AppDesc == nil || strings.Trim(fw.etag, `"`) != sum {
		target := "unknown"
		if perr == nil && img.AppDesc != nil && img.AppDesc.Version != "" {
			target = img.AppDesc.Version
		}
		d.mu.Lock()
		d.app.ota = &otaReport{Target: target, Result: "verify_failed"}
		d.failed = failedImage{version: target, sha256: sum}
		d.stats.FirmwareFailures++
		d.mu.Unlock()
		d.event(EventOTAFailed, nil)
		if err := d.ReportState(ctx); err != nil {
			return "", err
		}
		if perr != nil {
			return "", fmt.Errorf("%w: %w", ErrVerifyFailed, perr)
		}
		return "", fmt.Errorf("%w (sha256 %s, ETag %s)", ErrVerifyFailed, sum, fw.etag)
	}
	desc := img.AppDesc
	if d.badFirmware(desc.Version) {
		return "", d.rollBack(ctx, desc.Version, sum)
	}
	d.mu.Lock()
	next := "ota_1"
	if d.app.partition == "ota_1" {
		next = "ota_0"
	}
	d.app = appState{
		version: desc.Version, secure: desc.SecureVersion, elfSHA256: hex.EncodeToString(desc.ELFSHA256[:]),
		idf: desc.IDFVersion, partition: next, pending: true,
		ota: &otaReport{Target: desc.Version, Result: "installed"},
	}
	if d.app.idf == "" {
		d.app.idf = simIDFVersion
	}
	d.stats.FirmwareInstalls++
	d.mu.Unlock()
	d.event(EventOTAInstalled, nil)
	if err := d.boot(ctx, "sw"); err != nil {
		return "", err
	}
	return desc.Version, nil
}
