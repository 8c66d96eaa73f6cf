package mdm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

const (
	// keyAlphabet is what device keys are made of.
	keyAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	// keyLen is the length of a device key.
	keyLen = 8
	// keyAttempts is how many keys CreateDevice tries before giving up on
	// collisions. With 36^8 keys, needing more than one is already rare.
	keyAttempts = 5
)

// newKey draws a device key from s.d.Rand. Bytes at or above the largest
// multiple of len(keyAlphabet) are rejected, so every character is equally
// likely (no modulo bias).
func (s *Service) newKey() (string, error) {
	const limit = 256 - 256%len(keyAlphabet) // 252
	key := make([]byte, 0, keyLen)
	buf := make([]byte, 2*keyLen)
	for len(key) < keyLen {
		if _, err := io.ReadFull(s.d.Rand, buf); err != nil {
			return "", fmt.Errorf("generate device key: %w", err)
		}
		for _, b := range buf {
			if int(b) < limit && len(key) < keyLen {
				key = append(key, keyAlphabet[int(b)%len(keyAlphabet)])
			}
		}
	}
	return string(key), nil
}

// CreateDevice creates a device, its identity-provider client and (with
// Deps.Broker) its broker account, all or nothing: it validates the input,
// draws a key, creates the client, makes the account, then inserts the row.
// When the account or the insert fails, what was made is undone (if that
// fails too, OnError hears of it and the reconciler removes the orphan
// later). A key that collides with an existing client or device is
// replaced by a new one, a few times.
func (s *Service) CreateDevice(ctx context.Context, in ports.NewDevice) (model.Device, error) {
	config, err := normalizeConfig(in.Config)
	if err != nil {
		return model.Device{}, err
	}
	tags, err := model.CheckTags("tags", in.Tags)
	if err != nil {
		return model.Device{}, err
	}
	m, err := s.d.Models.GetModel(ctx, in.DeviceModelID)
	if errors.Is(err, model.ErrNotFound) {
		// A well-formed reference to a model that does not exist (now):
		// a conflict with the state, as everywhere a body names another
		// resource.
		return model.Device{}, model.ConflictOn("device_model_id", "device model %d does not exist", in.DeviceModelID)
	}
	if err != nil {
		return model.Device{}, fmt.Errorf("create device: get device model %d: %w", in.DeviceModelID, err)
	}
	if err := validateConfig(m, config); err != nil {
		return model.Device{}, err
	}
	active := true
	if in.Active != nil {
		active = *in.Active
	}
	d, _, err := s.createDevice(ctx, m, newDevice{config: config, active: active, tags: tags}, nil)
	return d, err
}

// newDevice is what a device is created with, checked.
type newDevice struct {
	config []byte
	active bool
	tags   []string // sorted, no duplicates
}

// createDevice makes a device of model m with a checked config: its
// client, its broker account and its row, all or nothing. also, when set,
// runs before the insert with the device (without its ID) and its secret:
// the audit entries it returns are recorded in the insert's transaction,
// and its error undoes the device. It returns the device and its client's
// secret.
func (s *Service) createDevice(ctx context.Context, m model.DeviceModel, in newDevice,
	also func(d model.Device, secret string) ([]model.AuditEntry, error)) (model.Device, string, error) {
	for range keyAttempts {
		key, err := s.newKey()
		if err != nil {
			return model.Device{}, "", err
		}
		clientID := model.ClientID(m.Code, key)
		secret, err := s.d.Clients.CreateClient(ctx, clientID)
		if err != nil {
			if errors.Is(err, model.ErrConflict) {
				continue // key collision with an existing client
			}
			return model.Device{}, "", fmt.Errorf("create device: create client: %w", err)
		}
		sealed, err := s.makeAccount(ctx, clientID, in.active)
		if err != nil {
			s.deleteClient(ctx, "create device: delete client after a failed broker account", clientID)
			return model.Device{}, "", fmt.Errorf("create device: broker account: %w", err)
		}
		now := s.now()
		d := model.Device{
			Key:             key,
			DeviceModelID:   m.ID,
			ModelCode:       m.Code,
			Config:          in.config,
			Active:          in.active,
			Tags:            in.tags,
			RotationState:   model.RotationOK,
			SecretCreatedAt: &now,
			MQTTPassword:    sealed,
		}
		entries := []model.AuditEntry{s.deviceEntry(ctx, model.AuditDeviceCreated, d, activeWord(in.active))} // DeviceID set by the repository
		if also != nil {
			more, err := also(d, secret)
			if err != nil {
				s.deleteClient(ctx, "create device: delete client after a failed step", clientID)
				s.deleteAccount(ctx, "create device: delete broker account after a failed step", clientID)
				return model.Device{}, "", err
			}
			entries = append(entries, more...)
		}
		err = s.d.Devices.CreateDevice(ctx, &d, s.audited(entries...))
		if err == nil {
			d.ModelCode = m.Code
			return d, secret, nil
		}
		// Undo the client and the account even when the caller has gone
		// away: a left-over is an orphan until the reconciler finds it.
		s.deleteClient(ctx, "create device: delete client after failed insert", clientID)
		s.deleteAccount(ctx, "create device: delete broker account after failed insert", clientID)
		if errors.Is(err, model.ErrConflict) {
			continue // key collision with an existing device
		}
		return model.Device{}, "", fmt.Errorf("create device: insert: %w", err)
	}
	return model.Device{}, "", fmt.Errorf("create device: no free key after %d attempts: %w", keyAttempts, model.ErrConflict)
}

// GetDevice returns one device.
func (s *Service) GetDevice(ctx context.Context, id int64) (model.Device, error) {
	d, err := s.d.Devices.GetDevice(ctx, id)
	if err != nil {
		return model.Device{}, fmt.Errorf("get device %d: %w", id, err)
	}
	return d, nil
}

// ListDevices returns one page of devices (checkPage).
func (s *Service) ListDevices(ctx context.Context, f ports.DeviceFilter) (ports.DevicePage, error) {
	var err error
	if f.Limit, err = checkPage(f.Limit, f.AfterID); err != nil {
		return ports.DevicePage{}, err
	}
	if f.RotationState != nil && !f.RotationState.Valid() {
		return ports.DevicePage{}, model.Invalid("rotation_state", "must be one of OK, QUEUED, PENDING, TIMEOUT")
	}
	if f.FirmwareVersion != nil {
		if err := model.CheckReportedVersion("firmware_version", *f.FirmwareVersion); err != nil {
			return ports.DevicePage{}, err
		}
	}
	if len(f.Tags) > 0 {
		if f.Tags, err = model.CheckTags("tag", f.Tags); err != nil {
			return ports.DevicePage{}, err
		}
	}
	p, err := s.d.Devices.ListDevices(ctx, f)
	if err != nil {
		return ports.DevicePage{}, fmt.Errorf("list devices: %w", err)
	}
	return p, nil
}

// UpdateDevice changes a device's config, active flag and tags (a new set
// replaces the old one; nil leaves them). A new config is
// validated against the model's schema; when it differs from the stored one
// the device is told (a notification failure goes to OnError and does not
// fail the call).
func (s *Service) UpdateDevice(ctx context.Context, id int64, in ports.DeviceUpdate) (model.Device, error) {
	var tags []string
	if in.Tags != nil {
		var err error
		if tags, err = model.CheckTags("tags", *in.Tags); err != nil {
			return model.Device{}, err
		}
	}
	var config []byte
	if in.Config != nil {
		var err error
		if config, err = normalizeConfig(in.Config); err != nil {
			return model.Device{}, err
		}
		cur, err := s.d.Devices.GetDevice(ctx, id)
		if err != nil {
			return model.Device{}, fmt.Errorf("update device %d: %w", id, err)
		}
		m, err := s.d.Models.GetModel(ctx, cur.DeviceModelID)
		if err != nil {
			return model.Device{}, fmt.Errorf("update device %d: get device model: %w", id, err)
		}
		if err := validateConfig(m, config); err != nil {
			return model.Device{}, err
		}
	}
	// A change of the active flag reaches the broker account first: a
	// broker that cannot disable it fails the call with nothing changed
	// (a device deactivated on paper must not stay connectable).
	var accountSet *bool
	var accountID string
	if in.Active != nil && s.d.Broker != nil {
		cur, err := s.d.Devices.GetDevice(ctx, id)
		if err != nil {
			return model.Device{}, fmt.Errorf("update device %d: %w", id, err)
		}
		if cur.Active != *in.Active {
			if err := s.setAccountActive(ctx, cur.ClientID(), *in.Active); err != nil {
				return model.Device{}, fmt.Errorf("update device %d: broker account: %w", id, err)
			}
			accountSet, accountID = in.Active, cur.ClientID()
		}
	}
	changed := false
	var before model.Device
	d, err := s.d.Devices.UpdateDevice(ctx, id, func(d *model.Device) ([]model.AuditEntry, error) {
		before = *d
		var what []string
		if config != nil {
			changed = !jsonEqual(d.Config, config)
			d.Config = config
			if changed {
				what = append(what, "config")
			}
		}
		if in.Active != nil {
			d.Active = *in.Active
			switch {
			case d.Active && !before.Active:
				what = append(what, "activated")
			case !d.Active && before.Active:
				what = append(what, "deactivated")
			}
		}
		if in.Tags != nil {
			if !slices.Equal(d.Tags, tags) {
				what = append(what, fmt.Sprintf("tags [%s]", strings.Join(tags, " ")))
			}
			d.Tags = tags
		}
		return s.audited(s.deviceEntry(ctx, model.AuditDeviceUpdated, *d, changedWords(what))), nil
	})
	if err != nil {
		if accountSet != nil {
			// Put the account back as the row still says.
			s.report(ctx, "update device: restore broker account", s.setAccountActive(context.WithoutCancel(ctx), accountID, !*accountSet))
		}
		return model.Device{}, fmt.Errorf("update device %d: %w", id, err)
	}
	if accountSet != nil && *accountSet != d.Active {
		// Another change won the row meanwhile: the account follows it.
		s.report(ctx, "update device: broker account follows the row", s.setAccountActive(context.WithoutCancel(ctx), d.ClientID(), d.Active))
	}
	if before.Active && !d.Active {
		s.leaveRotation(ctx, before)
		if fresh, err := s.d.Devices.GetDevice(ctx, id); err == nil {
			d = fresh
		}
	}
	if changed {
		if err := s.d.Notifier.ConfigChanged(ctx, d.ClientID()); err != nil {
			s.report(ctx, "update device: notify config change", fmt.Errorf("device %d: %w", id, err))
		}
	}
	return d, nil
}

// DeleteDevice removes the device row, then its client and broker account.
// A failed deletion of either goes to OnError and the call still succeeds:
// the reconciler removes the orphan later, and no device row is left
// behind.
func (s *Service) DeleteDevice(ctx context.Context, id int64) error {
	d, err := s.d.Devices.GetDevice(ctx, id)
	if err != nil {
		return fmt.Errorf("delete device %d: %w", id, err)
	}
	dumps := s.deviceCoredumps(ctx, id)
	if err := s.d.Devices.DeleteDevice(ctx, id, s.audited(s.deviceEntry(ctx, model.AuditDeviceDeleted, d, ""))); err != nil {
		return fmt.Errorf("delete device %d: %w", id, err)
	}
	for _, c := range dumps { // their records went with the device
		s.deleteCoredumpBlob(ctx, "delete device: delete a core dump's bytes", c)
	}
	s.deleteClient(ctx, "delete device: delete client", d.ClientID())
	s.deleteAccount(ctx, "delete device: delete broker account", d.ClientID())
	return nil
}

// deleteClient deletes a device's client even when the caller has gone
// away; a failure goes to OnError and the reconciler removes the orphan.
func (s *Service) deleteClient(ctx context.Context, op, clientID string) {
	if err := s.d.Clients.DeleteClient(context.WithoutCancel(ctx), clientID); err != nil {
		s.report(ctx, op, fmt.Errorf("client %s: %w", clientID, err))
	}
}

// activeWord is the audit detail of a new device.
func activeWord(active bool) string {
	if active {
		return "active"
	}
	return "inactive"
}
