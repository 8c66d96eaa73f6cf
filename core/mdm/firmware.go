package mdm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
)

// UploadFirmware validates data as an ESP32 application image and makes it
// the model's current firmware: the image must be valid (magic, segments,
// checksum, appended SHA-256), carry an app descriptor with a version, and
// be for the same chip as the model's current firmware. The binary is
// stored under its SHA-256, the upload is recorded in the model's history
// and devices are told (a notification failure goes to OnError). Uploading
// the model's current image again changes nothing and returns its record:
// no history row, no notification.
func (s *Service) UploadFirmware(ctx context.Context, modelID int64, data []byte) (model.Firmware, error) {
	if int64(len(data)) > s.cfg.FirmwareMaxBytes {
		return model.Firmware{}, fmt.Errorf("firmware of %d bytes exceeds the limit of %d bytes: %w",
			len(data), s.cfg.FirmwareMaxBytes, model.ErrTooLarge)
	}
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return model.Firmware{}, fmt.Errorf("upload firmware: get device model %d: %w", modelID, err)
	}
	if len(data) == 0 {
		return model.Firmware{}, model.Invalid("firmware", "empty upload: expected an ESP32 application image")
	}
	img, err := esp32image.Parse(data)
	if err != nil {
		return model.Firmware{}, model.Invalid("firmware", "%s", err.Error())
	}
	if img.AppDesc == nil {
		return model.Firmware{}, model.Invalid("firmware",
			"the image has no application descriptor (esp_app_desc_t): not an ESP-IDF application image")
	}
	if img.AppDesc.Version == "" {
		return model.Firmware{}, model.Invalid("firmware", "the application descriptor has an empty version")
	}
	chip := img.Header.ChipID
	// The first upload sets the model's chip; later ones must match it.
	sameChip := func(cur *model.Firmware) error {
		if cur != nil && cur.ChipID != int(chip) {
			return model.Invalid("firmware",
				"the image is for %s (chip id %d) but device model %s runs %s firmware (chip id %d)",
				chip, int(chip), m.Code, cur.Chip, cur.ChipID)
		}
		return nil
	}
	// Checked here so a wrong image is refused before it is stored, and
	// again when recording, under the model's lock, against a concurrent
	// upload for another chip.
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	cur, err := s.d.Firmware.CurrentFirmware(ctx, m.ID)
	switch {
	case err == nil && cur.SHA256 == digest:
		return cur, nil // the current image again
	case err == nil:
		if err := sameChip(&cur); err != nil {
			return model.Firmware{}, err
		}
	case !errors.Is(err, model.ErrNotFound):
		return model.Firmware{}, fmt.Errorf("upload firmware: current firmware of %s: %w", m.Code, err)
	}

	if err := s.d.Store.Put(ctx, m.Code, digest, data); err != nil {
		return model.Firmware{}, fmt.Errorf("upload firmware: store binary: %w", err)
	}
	f := model.Firmware{
		DeviceModelID: m.ID,
		Version:       img.AppDesc.Version,
		ProjectName:   img.AppDesc.ProjectName,
		IDFVersion:    img.AppDesc.IDFVersion,
		Chip:          chip.String(),
		ChipID:        int(chip),
		SHA256:        digest,
		Size:          int64(len(data)),
		UploadedAt:    s.now(),
	}
	var again *model.Firmware
	err = s.d.Firmware.RecordFirmware(ctx, &f, func(cur *model.Firmware) error {
		if cur != nil && cur.SHA256 == digest {
			again = cur // a concurrent upload of the same image won
			return errSameImage
		}
		return sameChip(cur)
	})
	switch {
	case errors.Is(err, errSameImage):
		return *again, nil
	case err != nil:
		return model.Firmware{}, fmt.Errorf("upload firmware: record: %w", err)
	}
	if err := s.d.Notifier.FirmwareReleased(ctx, m.Code, f.Version); err != nil {
		s.report(ctx, "upload firmware: notify release", fmt.Errorf("device model %s: %w", m.Code, err))
	}
	return f, nil
}

// errSameImage stops a recording whose image is already current.
var errSameImage = errors.New("the image is the current firmware already")

// OpenFirmware returns the model's current firmware and its binary; the
// caller closes the blob. No firmware yet is model.ErrNotFound.
func (s *Service) OpenFirmware(ctx context.Context, modelID int64) (model.Firmware, ports.Blob, error) {
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return model.Firmware{}, nil, fmt.Errorf("open firmware: get device model %d: %w", modelID, err)
	}
	return s.openCurrent(ctx, m.ID, m.Code)
}

func (s *Service) openCurrent(ctx context.Context, modelID int64, code string) (model.Firmware, ports.Blob, error) {
	f, err := s.d.Firmware.CurrentFirmware(ctx, modelID)
	if err != nil {
		return model.Firmware{}, nil, fmt.Errorf("firmware of device model %s: %w", code, err)
	}
	b, err := s.d.Store.Open(ctx, code, f.SHA256)
	if err != nil {
		return model.Firmware{}, nil, fmt.Errorf("open firmware %s of device model %s: %w", f.Version, code, err)
	}
	return f, b, nil
}

// ListFirmware returns the model's upload history, newest first.
func (s *Service) ListFirmware(ctx context.Context, modelID int64) ([]model.Firmware, error) {
	if _, err := s.d.Models.GetModel(ctx, modelID); err != nil {
		return nil, fmt.Errorf("list firmware: get device model %d: %w", modelID, err)
	}
	fs, err := s.d.Firmware.ListFirmware(ctx, modelID)
	if err != nil {
		return nil, fmt.Errorf("list firmware of device model %d: %w", modelID, err)
	}
	return fs, nil
}
