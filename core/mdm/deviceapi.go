package mdm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// LastSeenInterval is how often at most a device's last_seen_at is written.
const LastSeenInterval = time.Minute

// AuthenticateDevice resolves verified token claims to the device. An
// unknown key or a model code that does not match the device's is
// model.ErrUnauthenticated; an inactive device is model.ErrForbidden. It
// records last_seen_at at most once per LastSeenInterval; failing to do so
// goes to OnError and does not fail the authentication.
func (s *Service) AuthenticateDevice(ctx context.Context, c model.DeviceClaims) (model.Device, error) {
	d, err := s.d.Devices.GetDeviceByKey(ctx, c.Key)
	if errors.Is(err, model.ErrNotFound) {
		return model.Device{}, fmt.Errorf("device token for an unknown device: %w", model.ErrUnauthenticated)
	}
	if err != nil {
		return model.Device{}, fmt.Errorf("authenticate device: %w", err)
	}
	if d.ModelCode != c.ModelCode {
		return model.Device{}, fmt.Errorf("device token names another device model: %w", model.ErrUnauthenticated)
	}
	if !d.Active {
		return model.Device{}, fmt.Errorf("device %d is inactive: %w", d.ID, model.ErrForbidden)
	}
	// The row just read says whether a write is due: a device polling
	// every second costs one UPDATE a minute, not one a call.
	now := s.now()
	if d.LastSeenAt == nil || now.Sub(*d.LastSeenAt) >= LastSeenInterval {
		if err := s.d.Devices.TouchLastSeen(ctx, d.ID, now, LastSeenInterval); err != nil {
			s.report(ctx, "authenticate device: record last seen", fmt.Errorf("device %d: %w", d.ID, err))
		}
	}
	return d, nil
}

// DeviceConfig returns the device's config.
//
// In restore mode a credential rotation (SPEC §4) completes here: a PENDING
// device presenting a token issued in a later second than its old secret
// stopped working (the generation, or the invalidation of a rotated secret
// a realm policy kept), both by Keycloak's clock, has proven it holds the
// new secret. A failure to record that is returned: the device
// asks again. A device that asks for its config while its rotation's new
// secret is fetched but not confirmed has rebooted in between: it is nudged
// again (renudge).
func (s *Service) DeviceConfig(ctx context.Context, d model.Device, c model.DeviceClaims) (json.RawMessage, error) {
	confirmed, err := s.confirmByToken(ctx, d, c)
	if err != nil {
		return nil, err
	}
	if !confirmed {
		s.renudge(ctx, d)
	}
	return append(json.RawMessage(nil), d.Config...), nil
}

// DeviceFirmware returns the device's effective firmware (OfferedFirmware)
// and its binary; model.ErrNotFound when it has none.
func (s *Service) DeviceFirmware(ctx context.Context, d model.Device) (model.Firmware, ports.Blob, error) {
	f, err := s.OfferedFirmware(ctx, d)
	if err != nil {
		return model.Firmware{}, nil, err
	}
	return s.openBlob(ctx, d.ModelCode, f)
}
