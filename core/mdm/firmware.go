package mdm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
)

// UploadFirmware validates data as an ESP32 application image and makes it
// the model's current firmware: the image must be valid (magic, segments,
// checksum, appended SHA-256), carry an app descriptor with a version, be
// for the same chip as the model's current firmware, and not have a lower
// secure_version than it unless opts.Force (anti-rollback devices would
// refuse it; a conflict names both values). The binary is put in the blob
// store under its SHA-256 before the upload is recorded in the model's
// history (a store that fails leaves nothing recorded), then devices are
// told (a notification failure goes to OnError). Uploading the model's
// current image again records nothing and returns its record (Unchanged):
// no history row, no notification; its blob is put again, the same
// content under the same name, which restores a blob the store lost.
// Warnings say where the upload goes backwards against the firmware it
// replaces.
func (s *Service) UploadFirmware(ctx context.Context, modelID int64, data []byte, opts model.UploadOptions) (model.FirmwareUpload, error) {
	f, warnings, unchanged, err := s.uploadFirmware(ctx, modelID, data, opts)
	if err != nil {
		return model.FirmwareUpload{}, err
	}
	return model.FirmwareUpload{Firmware: f, Unchanged: unchanged, Warnings: warnings}, nil
}

func (s *Service) uploadFirmware(ctx context.Context, modelID int64, data []byte, opts model.UploadOptions) (_ model.Firmware, warnings []string, unchanged bool, _ error) {
	if int64(len(data)) > s.cfg.FirmwareMaxBytes {
		return model.Firmware{}, nil, false, fmt.Errorf("firmware of %d bytes exceeds the limit of %d bytes: %w",
			len(data), s.cfg.FirmwareMaxBytes, model.ErrTooLarge)
	}
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return model.Firmware{}, nil, false, fmt.Errorf("upload firmware: get device model %d: %w", modelID, err)
	}
	if len(data) == 0 {
		return model.Firmware{}, nil, false, model.Invalid("firmware", "empty upload: expected an ESP32 application image")
	}
	img, err := esp32image.Parse(data)
	if err != nil {
		return model.Firmware{}, nil, false, model.Invalid("firmware", "%s", err.Error())
	}
	if img.AppDesc == nil {
		return model.Firmware{}, nil, false, model.Invalid("firmware",
			"the image has no application descriptor (esp_app_desc_t): not an ESP-IDF application image")
	}
	if img.AppDesc.Version == "" {
		return model.Firmware{}, nil, false, model.Invalid("firmware", "the application descriptor has an empty version")
	}
	// The descriptor's strings are recorded, shown and sent to devices:
	// text only.
	for _, f := range []struct{ name, v string }{
		{"version", img.AppDesc.Version}, {"project name", img.AppDesc.ProjectName}, {"IDF version", img.AppDesc.IDFVersion},
	} {
		if !printable(f.v) {
			return model.Firmware{}, nil, false, model.Invalid("firmware",
				"the application descriptor's %s is not printable UTF-8 text", f.name)
		}
	}
	chip := img.Header.ChipID
	// The first upload sets the model's chip; later ones must match it.
	secure := img.AppDesc.SecureVersion
	// against checks the image against the current firmware: the same
	// chip, and no lower secure_version unless forced.
	against := func(cur *model.Firmware) error {
		warnings = nil
		if cur == nil {
			return nil
		}
		if cur.ChipID != int(chip) {
			return model.Invalid("firmware",
				"the image is for %s (chip id %d) but device model %s runs %s firmware (chip id %d)",
				chip, int(chip), m.Code, cur.Chip, cur.ChipID)
		}
		if secure < cur.SecureVersion {
			if !opts.Force {
				return model.Conflict("the image's secure_version %d is lower than %d of device model %s's current firmware %s: "+
					"devices with anti-rollback would refuse it; upload with force to replace it anyway",
					secure, cur.SecureVersion, m.Code, cur.Version)
			}
			warnings = append(warnings, fmt.Sprintf("secure_version goes backwards from %d (firmware %s) to %d: "+
				"devices with anti-rollback will refuse this image", cur.SecureVersion, cur.Version, secure))
		}
		if versionBefore(img.AppDesc.Version, cur.Version) {
			warnings = append(warnings, fmt.Sprintf("version goes backwards from %s to %s", cur.Version, img.AppDesc.Version))
		}
		return nil
	}
	// Checked here so a wrong image is refused before it is stored, and
	// again when recording, under the model's lock, against a concurrent
	// upload for another chip.
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	key := firmwareBlob(m.Code, digest)
	cur, err := s.d.Firmware.CurrentFirmware(ctx, m.ID)
	switch {
	case err == nil && cur.SHA256 == digest: // the current image again
		if err := s.putFirmware(ctx, key, data); err != nil {
			return model.Firmware{}, nil, false, err
		}
		return cur, nil, true, nil
	case err == nil:
		if err := against(&cur); err != nil {
			return model.Firmware{}, nil, false, err
		}
	case !errors.Is(err, model.ErrNotFound):
		return model.Firmware{}, nil, false, fmt.Errorf("upload firmware: current firmware of %s: %w", m.Code, err)
	}

	// Content-addressed and written before it is recorded: a failure
	// here records nothing, and a recorded firmware always had its blob.
	if err := s.putFirmware(ctx, key, data); err != nil {
		return model.Firmware{}, nil, false, err
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
		SecureVersion: secure,
		ELFSHA256:     elfDigest(img.AppDesc.ELFSHA256),
		UploadedAt:    s.now(),
	}
	f.HasELF = s.elfStored(ctx, m.Code, f.ELFSHA256)
	var again *model.Firmware
	err = s.d.Firmware.RecordFirmware(ctx, &f, func(cur *model.Firmware) ([]model.AuditEntry, error) {
		if cur != nil && cur.SHA256 == digest {
			again = cur // a concurrent upload of the same image won
			return nil, errSameImage
		}
		if err := against(cur); err != nil {
			return nil, err
		}
		detail := fmt.Sprintf("model %s, version %q, %s, secure_version %d, %d bytes, sha256 %s", m.Code, f.Version, f.Chip, secure, f.Size, digest)
		if len(warnings) > 0 {
			detail += "; " + strings.Join(warnings, "; ")
		}
		if opts.Force {
			detail += " (forced)"
		}
		e := s.entry(ctx, model.AuditFirmwareUploaded, detail)
		e.ModelID = m.ID
		return s.audited(e), nil
	})
	switch {
	case errors.Is(err, errSameImage):
		return *again, nil, true, nil
	case err != nil:
		return model.Firmware{}, nil, false, fmt.Errorf("upload firmware: record: %w", err)
	}
	if err := s.d.Notifier.FirmwareReleased(ctx, m.Code, f.Version); err != nil {
		s.report(ctx, "upload firmware: notify release", fmt.Errorf("device model %s: %w", m.Code, err))
	}
	return f, warnings, false, nil
}

// errSameImage stops a recording whose image is already current.
var errSameImage = errors.New("the image is the current firmware already")

// firmwareBlob is the blob key of a model's firmware binary: the
// namespace is the model's code, so deleting the model deletes it.
func firmwareBlob(modelCode, digest string) ports.BlobKey {
	return ports.BlobKey{Kind: ports.BlobFirmware, Namespace: modelCode, SHA256: digest}
}

// putFirmware puts a validated image in the blob store. The store streams
// it from memory (one request of a known size on S3) and checks it
// against its key and the upload limit once more on the way.
func (s *Service) putFirmware(ctx context.Context, key ports.BlobKey, data []byte) error {
	if _, err := s.d.Blobs.PutBlob(ctx, key, bytes.NewReader(data), int64(len(data)), s.cfg.FirmwareMaxBytes); err != nil {
		return fmt.Errorf("upload firmware: store binary %s: %w", key, err)
	}
	return nil
}

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
	key := firmwareBlob(code, f.SHA256)
	b, err := s.d.Blobs.OpenBlob(ctx, key)
	switch {
	case errors.Is(err, model.ErrBlobNotFound):
		// Recorded, so it was stored: the store lost it (or serves
		// another bucket or directory than the one it was uploaded to).
		// A failure of the store, not a missing firmware: never a 404
		// that would tell a device there is no update. Not wrapped, so
		// it matches no ErrNotFound.
		return model.Firmware{}, nil, &model.UnavailableError{Service: model.ServiceBlobStore, Err: fmt.Errorf(
			"firmware %s of device model %s is recorded but the blob store does not hold its binary %s (%s)", f.Version, code, key, err.Error())}
	case err != nil:
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

// versionBefore reports whether version a is lower than b when both are
// dotted numbers ("1.2.3", "v5.1", a "-rc1" or "+build" suffix ignored);
// versions of any other shape are not compared.
func versionBefore(a, b string) bool {
	pa, okA := dottedVersion(a)
	pb, okB := dottedVersion(b)
	if !okA || !okB {
		return false
	}
	for i := range max(len(pa), len(pb)) {
		var x, y uint64
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		if x != y {
			return x < y
		}
	}
	return false
}

func dottedVersion(v string) ([]uint64, bool) {
	v = strings.TrimPrefix(v, "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	if v == "" {
		return nil, false
	}
	var out []uint64
	for _, part := range strings.Split(v, ".") {
		n, err := strconv.ParseUint(part, 10, 32)
		if err != nil {
			return nil, false
		}
		out = append(out, n)
	}
	return out, true
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// elfDigest is an app descriptor's app_elf_sha256 as hex, "" when the
// image does not carry one (all zero).
func elfDigest(d [32]byte) string {
	if d == [32]byte{} {
		return ""
	}
	return hex.EncodeToString(d[:])
}

// elfStored reports whether the ELF elfSHA256 of the model is in the blob
// store already (an earlier upload of an image built from it brought it).
func (s *Service) elfStored(ctx context.Context, modelCode, elfSHA256 string) bool {
	if elfSHA256 == "" || s.d.Blobs == nil {
		return false
	}
	_, err := s.d.Blobs.StatBlob(ctx, ports.BlobKey{Kind: ports.BlobELF, Namespace: modelCode, SHA256: elfSHA256})
	return err == nil
}
