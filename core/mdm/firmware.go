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

// UploadFirmware validates data as an ESP32 application image and records
// it in the model's history, released (SPEC §16: the model's released
// firmware, offered to its devices, who are told) unless opts.Store or
// Deps.ReleaseGate holds it back, in which case it is only stored (history
// and binary; no device is told, its warnings say why when the gate held
// it). The image must be valid (magic, segments, checksum, appended
// SHA-256), carry an app descriptor with a version, be for the same chip
// as the model's firmware, and not have a lower secure_version than the
// released firmware unless opts.Force (anti-rollback devices would refuse
// it; a conflict names both values).
//
// What an upload is compared with, now that the newest upload need not be
// the released one: the chip with the released firmware, or the newest
// upload when none is released (a model's uploads are all for one chip);
// secure_version and the version going backwards with the released
// firmware (what devices run or are offered), nothing when none is
// released (a stored upload is checked again when it is released: see
// ReleaseFirmware).
//
// The binary is put in the blob store under its SHA-256 before the upload
// is recorded (a store that fails leaves nothing recorded). Uploading the
// released image again records nothing and returns its record (Unchanged):
// no history row, no notification; so does storing the released or newest
// image again. Its blob is put again, the same content under the same
// name, which restores a blob the store lost.
func (s *Service) UploadFirmware(ctx context.Context, modelID int64, data []byte, opts model.UploadOptions) (model.FirmwareUpload, error) {
	return s.uploadFirmware(ctx, modelID, data, opts)
}

// imageCheck is what an upload is checked for against a model's uploads
// (UploadFirmware says which); against returns the warnings it earns.
type imageCheck struct {
	m      model.DeviceModel
	chip   esp32image.ChipID
	secure uint32
	ver    string
	force  bool
}

func (c imageCheck) against(cur ports.FirmwareHeads) ([]string, error) {
	chipOf := cur.Released
	if chipOf == nil {
		chipOf = cur.Newest
	}
	if chipOf != nil && chipOf.ChipID != int(c.chip) {
		return nil, model.Invalid("firmware",
			"the image is for %s (chip id %d) but device model %s runs %s firmware (chip id %d)",
			c.chip, int(c.chip), c.m.Code, chipOf.Chip, chipOf.ChipID)
	}
	rel := cur.Released
	if rel == nil {
		return nil, nil
	}
	var warnings []string
	if c.secure < rel.SecureVersion {
		if !c.force {
			return nil, model.Conflict("the image's secure_version %d is lower than %d of device model %s's released firmware %s: "+
				"devices with anti-rollback would refuse it; upload with force to replace it anyway",
				c.secure, rel.SecureVersion, c.m.Code, rel.Version)
		}
		warnings = append(warnings, fmt.Sprintf("secure_version goes backwards from %d (firmware %s) to %d: "+
			"devices with anti-rollback will refuse this image", rel.SecureVersion, rel.Version, c.secure))
	}
	if versionBefore(c.ver, rel.Version) {
		warnings = append(warnings, fmt.Sprintf("version goes backwards from %s to %s", rel.Version, c.ver))
	}
	return warnings, nil
}

// sameImage returns the upload that makes an upload of digest change
// nothing: the released one, or when only storing also the newest.
func sameImage(cur ports.FirmwareHeads, digest string, store bool) *model.Firmware {
	if cur.Released != nil && cur.Released.SHA256 == digest {
		return cur.Released
	}
	if store && cur.Newest != nil && cur.Newest.SHA256 == digest {
		return cur.Newest
	}
	return nil
}

// heads reads the model's released and newest uploads outside the
// recording's transaction, for the checks made before the blob is stored.
func (s *Service) heads(ctx context.Context, modelID int64) (ports.FirmwareHeads, error) {
	var h ports.FirmwareHeads
	hist, err := s.d.Firmware.ListFirmware(ctx, modelID)
	if err != nil {
		return h, err
	}
	if len(hist) > 0 {
		h.Newest = &hist[0]
	}
	if r, ok := model.ReleasedIn(hist); ok {
		h.Released = &r
	}
	return h, nil
}

func (s *Service) uploadFirmware(ctx context.Context, modelID int64, data []byte, opts model.UploadOptions) (model.FirmwareUpload, error) {
	if int64(len(data)) > s.cfg.FirmwareMaxBytes {
		return model.FirmwareUpload{}, fmt.Errorf("firmware of %d bytes exceeds the limit of %d bytes: %w",
			len(data), s.cfg.FirmwareMaxBytes, model.ErrTooLarge)
	}
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return model.FirmwareUpload{}, fmt.Errorf("upload firmware: get device model %d: %w", modelID, err)
	}
	if len(data) == 0 {
		return model.FirmwareUpload{}, model.Invalid("firmware", "empty upload: expected an ESP32 application image")
	}
	img, err := esp32image.Parse(data)
	if err != nil {
		return model.FirmwareUpload{}, model.Invalid("firmware", "%s", err.Error())
	}
	if img.AppDesc == nil {
		return model.FirmwareUpload{}, model.Invalid("firmware",
			"the image has no application descriptor (esp_app_desc_t): not an ESP-IDF application image")
	}
	if img.AppDesc.Version == "" {
		return model.FirmwareUpload{}, model.Invalid("firmware", "the application descriptor has an empty version")
	}
	// The descriptor's strings are recorded, shown and sent to devices:
	// text only.
	for _, f := range []struct{ name, v string }{
		{"version", img.AppDesc.Version}, {"project name", img.AppDesc.ProjectName}, {"IDF version", img.AppDesc.IDFVersion},
	} {
		if !printable(f.v) {
			return model.FirmwareUpload{}, model.Invalid("firmware",
				"the application descriptor's %s is not printable UTF-8 text", f.name)
		}
	}
	chip := img.Header.ChipID
	secure := img.AppDesc.SecureVersion
	check := imageCheck{m: m, chip: chip, secure: secure, ver: img.AppDesc.Version, force: opts.Force}
	// Checked here so a wrong image is refused before it is stored, and
	// again when recording, under the model's lock, against a concurrent
	// upload or release.
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	key := firmwareBlob(m.Code, digest)
	cur, err := s.heads(ctx, m.ID)
	if err != nil {
		return model.FirmwareUpload{}, fmt.Errorf("upload firmware: firmware of %s: %w", m.Code, err)
	}
	if same := sameImage(cur, digest, opts.Store); same != nil {
		if err := s.putFirmware(ctx, key, data); err != nil {
			return model.FirmwareUpload{}, err
		}
		return s.unchanged(*same, cur), nil
	}
	if _, err := check.against(cur); err != nil {
		return model.FirmwareUpload{}, err
	}

	// Content-addressed and written before it is recorded: a failure
	// here records nothing, and a recorded firmware always had its blob.
	if err := s.putFirmware(ctx, key, data); err != nil {
		return model.FirmwareUpload{}, err
	}
	now := s.now()
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
		UploadedAt:    now,
	}
	f.HasELF = s.elfStored(ctx, m.Code, f.ELFSHA256)
	var again *model.FirmwareUpload
	var warnings []string
	err = s.d.Firmware.RecordFirmware(ctx, &f, func(cur ports.FirmwareHeads) ([]model.AuditEntry, error) {
		if same := sameImage(cur, digest, opts.Store); same != nil {
			up := s.unchanged(*same, cur) // a concurrent upload of the same image won
			again = &up
			return nil, errSameImage
		}
		var err error
		if warnings, err = check.against(cur); err != nil {
			return nil, err
		}
		f.ReleasedAt = nil
		if !opts.Store {
			held, err := s.holdRelease(ctx, m.ID)
			if err != nil {
				return nil, err
			}
			if held != "" {
				warnings = append(warnings, "stored, not released: "+held)
			} else {
				f.ReleasedAt = &now
			}
		}
		detail := fmt.Sprintf("model %s, version %q, %s, secure_version %d, %d bytes, sha256 %s", m.Code, f.Version, f.Chip, secure, f.Size, digest)
		if f.ReleasedAt == nil {
			detail += ", stored (not released)"
		}
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
		return *again, nil
	case err != nil:
		return model.FirmwareUpload{}, fmt.Errorf("upload firmware: record: %w", err)
	}
	if f.ReleasedAt != nil {
		s.notifyRelease(ctx, m.Code, f.Version)
	}
	return model.FirmwareUpload{Firmware: f, Released: f.ReleasedAt != nil, Warnings: warnings}, nil
}

// unchanged is the answer to an upload of an image that changes nothing.
func (s *Service) unchanged(f model.Firmware, cur ports.FirmwareHeads) model.FirmwareUpload {
	released := cur.Released != nil && cur.Released.ID == f.ID
	return model.FirmwareUpload{Firmware: f, Unchanged: true, Released: released}
}

// holdRelease asks Deps.ReleaseGate whether an upload to the model must be
// stored instead of released ("" when there is no gate).
func (s *Service) holdRelease(ctx context.Context, modelID int64) (string, error) {
	if s.d.ReleaseGate == nil {
		return "", nil
	}
	reason, err := s.d.ReleaseGate.HoldRelease(ctx, modelID)
	if err != nil {
		return "", fmt.Errorf("release gate of device model %d: %w", modelID, err)
	}
	return reason, nil
}

// notifyRelease tells the model's devices of a released firmware; a
// failure goes to OnError.
func (s *Service) notifyRelease(ctx context.Context, code, version string) {
	if err := s.d.Notifier.FirmwareReleased(ctx, code, version); err != nil {
		s.report(ctx, "firmware: notify release", fmt.Errorf("device model %s: %w", code, err))
	}
}

// ReleaseFirmware makes the model's upload sha256 its released firmware
// (SPEC §16): a stored upload, or an earlier one released again (how an
// admin rolls a model back). The model's firmware_version follows it, the
// release is audited (firmware_released) and the model's devices are told.
// The upload already released changes nothing (changed false, no audit,
// no notification). An unknown sha256 of the model is model.ErrNotFound.
// The chip and secure_version were checked when the upload was recorded;
// releasing an upload with a lower secure_version than the released one is
// the admin's explicit choice (anti-rollback devices will refuse it) and
// the audit entry says so.
func (s *Service) ReleaseFirmware(ctx context.Context, modelID int64, digest string) (model.Firmware, bool, error) {
	if !model.SHA256Pattern.MatchString(digest) {
		return model.Firmware{}, false, model.Invalid("sha256", "must be 64 lower-case hex digits")
	}
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return model.Firmware{}, false, fmt.Errorf("release firmware: get device model %d: %w", modelID, err)
	}
	if err := s.refuseReleaseDuringCampaign(ctx, m); err != nil {
		return model.Firmware{}, false, err
	}
	prev, err := s.d.Firmware.ReleasedFirmware(ctx, m.ID)
	var before *model.Firmware
	switch {
	case err == nil:
		before = &prev
	case !errors.Is(err, model.ErrNotFound):
		return model.Firmware{}, false, fmt.Errorf("release firmware: released firmware of %s: %w", m.Code, err)
	}
	f, changed, err := s.d.Firmware.ReleaseFirmware(ctx, m.ID, digest, func(f model.Firmware, already bool) []model.AuditEntry {
		if already {
			return nil
		}
		detail := fmt.Sprintf("model %s, version %q, sha256 %s", m.Code, f.Version, f.SHA256)
		if before != nil && before.SHA256 != f.SHA256 {
			detail += fmt.Sprintf(", replacing %q (sha256 %s)", before.Version, before.SHA256)
			if f.SecureVersion < before.SecureVersion {
				detail += fmt.Sprintf("; secure_version goes backwards from %d to %d", before.SecureVersion, f.SecureVersion)
			}
		}
		e := s.entry(ctx, model.AuditFirmwareReleased, detail)
		e.ModelID = m.ID
		return s.audited(e)
	})
	if err != nil {
		return model.Firmware{}, false, fmt.Errorf("release firmware %s of device model %s: %w", digest, m.Code, err)
	}
	if changed {
		s.notifyRelease(ctx, m.Code, f.Version)
	}
	return f, changed, nil
}

// errSameImage stops a recording whose image changes nothing.
var errSameImage = errors.New("the image is the released (or newest stored) firmware already")

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

// OpenFirmware returns the model's released firmware and its binary (GET
// /api/device-models/{id}/firmware); the caller closes the blob. None
// released is model.ErrNotFound.
func (s *Service) OpenFirmware(ctx context.Context, modelID int64) (model.Firmware, ports.Blob, error) {
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return model.Firmware{}, nil, fmt.Errorf("open firmware: get device model %d: %w", modelID, err)
	}
	f, err := s.d.Firmware.ReleasedFirmware(ctx, m.ID)
	if err != nil {
		return model.Firmware{}, nil, fmt.Errorf("released firmware of device model %s: %w", m.Code, err)
	}
	return s.openBlob(ctx, m.Code, f)
}

// openBlob opens the binary of the model's upload f.
func (s *Service) openBlob(ctx context.Context, code string, f model.Firmware) (model.Firmware, ports.Blob, error) {
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

// ListFirmware returns the model's upload history, newest first
// (model.ReleasedIn tells the released one).
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
