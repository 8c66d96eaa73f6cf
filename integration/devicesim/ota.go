package devicesim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// The firmware update as the component runs it on a firmware notice and at
// start (SPEC §14, §16): ask for the effective firmware, download it,
// verify, install, reboot, report.

// failedImage is an image that failed here (rolled back or refused), not
// fetched again while espmdm offers that same image: the component's
// ota_bad_ver and ota_bad_sha.
type failedImage struct {
	version, sha256 string
}

// FirmwareOffer is GET /iot/firmware-version: the version and hex SHA-256
// of the device's effective firmware (a campaign's target, else its
// model's released firmware); both "" while there is none.
func (d *Device) FirmwareOffer(ctx context.Context) (version, sha256 string, err error) {
	if d.offline() {
		return "", "", ErrOffline
	}
	var v struct {
		FirmwareVersion *string `json:"firmware_version"`
		SHA256          *string `json:"sha256"`
	}
	if err := d.getJSON(ctx, "/iot/firmware-version", &v); err != nil {
		return "", "", err
	}
	if v.FirmwareVersion != nil {
		version = *v.FirmwareVersion
	}
	if v.SHA256 != nil {
		sha256 = strings.ToLower(*v.SHA256)
	}
	return version, sha256, nil
}

// UpdateOutcome is what Update did.
type UpdateOutcome string

// The outcomes of Update.
const (
	// UpdateNone: nothing offered, or the version the device runs.
	UpdateNone UpdateOutcome = "none"
	// UpdateSkipped: the offered image failed here before (rolled back or
	// refused); the device does not fetch it again.
	UpdateSkipped UpdateOutcome = "skipped"
	// UpdateInstalled: installed, rebooted into, confirmed and reported.
	UpdateInstalled UpdateOutcome = "installed"
	// UpdateRolledBack: installed, then rolled back (BadFirmware), reported.
	UpdateRolledBack UpdateOutcome = "rolled_back"
	// UpdateVerifyFailed: the download did not verify (its SHA-256 is not
	// the offered one or its ETag, or it is no app image), reported.
	UpdateVerifyFailed UpdateOutcome = "verify_failed"
)

// UpdateResult is what one Update did.
type UpdateResult struct {
	Offered string // the offered version ("" when none)
	SHA256  string // its SHA-256 as offered ("" when not said)
	Outcome UpdateOutcome
	Running string // the version the device runs afterwards
}

// maxDownloadAttempts bounds the resumed downloads of one Update (a cut
// download, Behaviour.InterruptFirmwareAfter, resumes once).
const maxDownloadAttempts = 3

// Update is the component's firmware job: GET /iot/firmware-version; when
// it names another version than the device runs (and not an image that
// failed here), the download (resumed after a cut), the check of its
// SHA-256 against the offered one, and InstallFirmware, which reboots into
// the image and reports its state — or, for a BadFirmware version, rolls
// back and reports that. A failure the device reports (verify_failed,
// rolled_back) is an outcome, not an error; errors are those of the
// requests. Updates of one device never overlap.
func (d *Device) Update(ctx context.Context) (UpdateResult, error) {
	if d.offline() {
		return UpdateResult{}, ErrOffline
	}
	d.otaMu.Lock()
	defer d.otaMu.Unlock()
	version, sum, err := d.FirmwareOffer(ctx)
	if err != nil {
		return UpdateResult{}, err
	}
	d.mu.Lock()
	d.stats.FirmwareChecks++
	running, failed := d.app.version, d.failed
	d.mu.Unlock()
	res := UpdateResult{Offered: version, SHA256: sum, Outcome: UpdateNone, Running: running}
	if version == "" || version == running {
		return res, nil
	}
	if failed.version == version && (failed.sha256 == "" || sum == "" || failed.sha256 == sum) {
		res.Outcome = UpdateSkipped
		return res, nil
	}
	if d.f.cfg.InstantFirmware {
		d.mu.Lock()
		d.app.version, d.app.pending = version, false
		d.app.ota = &otaReport{Target: version, Result: "installed"}
		d.stats.FirmwareInstalls++
		d.mu.Unlock()
		d.event(EventOTAInstalled, nil)
		res.Outcome, res.Running = UpdateInstalled, version
		return res, d.ReportState(ctx)
	}
	var got FirmwareResult
	for attempt := 1; ; attempt++ {
		if got, err = d.FetchFirmware(ctx); err != nil {
			return res, err
		}
		if got.Complete {
			break
		}
		if attempt == maxDownloadAttempts {
			return res, fmt.Errorf("devicesim: firmware %s: download incomplete after %d attempts (%d bytes)", version, attempt, got.Size)
		}
	}
	if sum != "" && got.SHA256 != sum {
		// The component's give_up: recorded, reported, not fetched again.
		d.mu.Lock()
		d.app.ota = &otaReport{Target: version, Result: "verify_failed"}
		d.failed = failedImage{version: version, sha256: sum}
		d.stats.FirmwareFailures++
		d.mu.Unlock()
		d.event(EventOTAFailed, nil)
		res.Outcome = UpdateVerifyFailed
		return res, d.ReportState(ctx)
	}
	_, err = d.InstallFirmware(ctx)
	res.Running = d.Running()
	switch {
	case err == nil:
		res.Outcome = UpdateInstalled
	case errors.Is(err, ErrRolledBack):
		res.Outcome = UpdateRolledBack
		err = nil
	case errors.Is(err, ErrVerifyFailed):
		res.Outcome = UpdateVerifyFailed
		err = nil
	}
	return res, err
}

// badFirmware reports whether version fails on this device.
func (d *Device) badFirmware(version string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Contains(d.beh.BadFirmware, version) || slices.Contains(d.f.cfg.BadFirmware, version)
}

// rollBack is an installed image that never checks in: it boots pending
// verification, fails before its check-in (a panic), and the bootloader
// boots the previous image again, which reports ota rolled_back (as the
// component's mdm_ota_boot finds it), valid. The image is not fetched
// again (failedImage).
func (d *Device) rollBack(ctx context.Context, version, sum string) error {
	d.mu.Lock()
	d.app.ota = &otaReport{Target: version, Result: "rolled_back"}
	d.failed = failedImage{version: version, sha256: sum}
	d.app.pending = false
	d.stats.FirmwareRollbacks++
	d.stats.Boots++ // the boot into the image that never checked in
	d.mu.Unlock()
	d.event(EventOTARolledBack, nil)
	if err := d.boot(ctx, "panic"); err != nil {
		return err
	}
	return fmt.Errorf("%w: %s", ErrRolledBack, version)
}
