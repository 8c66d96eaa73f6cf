package mdm

import (
	"context"
	"fmt"

	"github.com/espmdm/espmdm/core/model"
)

// Device state reports (SPEC §15): what a device says it runs, kept per
// device (the latest one), audited when its firmware version changes.

// ReportState records a device's state report (POST /iot/state): it checks r, stamps it with the
// time of receipt and stores it as d's latest report, moving last_seen_at
// with it. A report whose firmware version differs from the previous
// report's (or the device's first report) is audited, by the device, in
// the same transaction; the repository hands the previous report to the
// closure with the row locked, so two reports racing each other audit a
// change once.
func (s *Service) ReportState(ctx context.Context, d model.Device, r model.StateReport) error {
	if err := r.Validate(); err != nil {
		return err
	}
	r.At = s.now()
	ctx = model.WithActor(ctx, model.DeviceActor(d.ClientID()))
	err := s.d.Devices.ReportState(ctx, d.ID, r, func(prev *model.StateReport) []model.AuditEntry {
		if prev != nil && prev.FirmwareVersion == r.FirmwareVersion {
			return nil
		}
		return s.audited(s.deviceEntry(ctx, model.AuditFirmwareReported, d, versionChange(prev, r.FirmwareVersion)))
	})
	if err != nil {
		return fmt.Errorf("report state of device %d: %w", d.ID, err)
	}
	// The member of the device's latest campaign is resolved in a
	// transaction of its own, after the report is stored: a failure here
	// answers an error, so the device reports again.
	if err := s.observeCampaignReport(ctx, d, r); err != nil {
		return fmt.Errorf("report state of device %d: campaign: %w", d.ID, err)
	}
	return nil
}

// versionChange is the audit detail of a reported firmware version. The
// versions are printable ASCII of at most 31 characters (Validate), and
// quoted.
func versionChange(prev *model.StateReport, version string) string {
	if prev == nil {
		return fmt.Sprintf("first report: %q", version)
	}
	return fmt.Sprintf("from %q to %q", prev.FirmwareVersion, version)
}

// OfferedFirmware is the firmware the device is offered, without its
// binary: its effective firmware (SPEC §16: the one a campaign assigned to
// it, else its model's released firmware; what GET /iot/firmware serves),
// read in one lookup; model.ErrNotFound when none.
func (s *Service) OfferedFirmware(ctx context.Context, d model.Device) (model.Firmware, error) {
	f, err := s.d.Firmware.EffectiveFirmware(ctx, d.ID)
	if err != nil {
		return model.Firmware{}, fmt.Errorf("effective firmware of device %d (model %s): %w", d.ID, d.ModelCode, err)
	}
	return f, nil
}

// FirmwareCounts is the fleet by reported firmware version: the active
// devices of each model per version (SPEC §15), for the console's fleet
// view.
func (s *Service) FirmwareCounts(ctx context.Context) ([]model.FirmwareCount, error) {
	c, err := s.d.Devices.FirmwareCounts(ctx)
	if err != nil {
		return nil, fmt.Errorf("count devices by firmware version: %w", err)
	}
	return c, nil
}
