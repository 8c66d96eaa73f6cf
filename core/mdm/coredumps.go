package mdm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
)

// Core dumps (SPEC §17): a device uploads the raw dump, espmdm keeps the
// newest CoredumpKeep per device (the bytes in the blob store, the record
// in the repository) and analyses each in the background against the ELF
// it names, found among the model's firmware uploads.
//
// The analysis is claimed per dump (ports.CoredumpRepo.ClaimCoredumps):
// any number of workers on any number of replicas share the pending dumps,
// a dump whose worker died is claimed again when its claim ends, and a
// restart loses nothing (a pending dump stays pending in the database).

// Defaults of the core dump settings.
const (
	DefaultCoredumpMaxBytes int64         = 1 << 20
	DefaultCoredumpKeep                   = 20
	DefaultCoredumpTimeout  time.Duration = 2 * time.Minute
	DefaultELFMaxBytes      int64         = 512 << 20
	// DefaultCoredumpRetry is how long a dump waits after an analysis that
	// could not run (tools missing, the blob store down) before it is
	// claimed again.
	DefaultCoredumpRetry = time.Minute
	// CoredumpMaxAttempts bounds the analyses of one dump that end without
	// an outcome (a worker killed mid-analysis, the ELF unreadable): the
	// next one marks it failed. Missing tools do not count against it.
	CoredumpMaxAttempts = 5
)

// UploadCoredump stores a core dump device d uploaded (POST /iot/coredump):
// at most Config.CoredumpMaxBytes (more is model.ErrTooLarge, nothing
// stored), an empty body is invalid. Bytes that are not a core dump, or
// whose checksum does not match, are kept as failed with the reason (the
// partition's content is evidence too); every other dump is pending until
// a worker analyses it. The device's dumps beyond the newest
// Config.CoredumpKeep are deleted.
func (s *Service) UploadCoredump(ctx context.Context, d model.Device, r io.Reader) (model.Coredump, error) {
	if err := s.coredumpsOn(); err != nil {
		return model.Coredump{}, err
	}
	ctx = model.WithActor(ctx, model.DeviceActor(d.ClientID()))
	data, err := io.ReadAll(io.LimitReader(r, s.cfg.CoredumpMaxBytes+1))
	if err != nil {
		return model.Coredump{}, fmt.Errorf("upload core dump: read: %w", err)
	}
	if int64(len(data)) > s.cfg.CoredumpMaxBytes {
		return model.Coredump{}, fmt.Errorf("upload core dump: more than %d bytes: %w", s.cfg.CoredumpMaxBytes, model.ErrTooLarge)
	}
	if len(data) == 0 {
		return model.Coredump{}, model.Invalid("body", "the core dump is empty")
	}
	sum := sha256.Sum256(data)
	c := model.Coredump{
		DeviceID: d.ID, DeviceModelID: d.DeviceModelID, ModelCode: d.ModelCode, ClientID: d.ClientID(),
		SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)),
		ReceivedAt: s.now(), Status: model.CoredumpPending,
	}
	info, err := model.ReadCoredumpInfo(data)
	switch {
	case err != nil:
		c.Status, c.Reason = model.CoredumpFailed, "not a core dump: "+err.Error()
	case !info.ChecksumValid:
		c.Info = info
		c.Status, c.Reason = model.CoredumpFailed, "corrupt: the dump's checksum does not match its content"
	default:
		c.Info = info
	}
	key := coredumpKey(c)
	if _, err := s.d.Blobs.PutBlob(ctx, key, bytes.NewReader(data), c.Size, s.cfg.CoredumpMaxBytes); err != nil {
		return model.Coredump{}, fmt.Errorf("upload core dump: store: %w", err)
	}
	detail := fmt.Sprintf("%d bytes", c.Size)
	if c.Info.Chip != "" {
		detail += ", " + c.Info.Chip
	}
	detail += ", " + string(c.Status)
	evicted, err := s.d.Coredumps.CreateCoredump(ctx, &c, s.cfg.CoredumpKeep,
		s.audited(s.deviceEntry(ctx, model.AuditCoredumpUploaded, d, detail)))
	if err != nil {
		// The blob stays: it may be another record's (same bytes), and an
		// unreferenced one costs only space until the device's next upload
		// or its model's deletion.
		return model.Coredump{}, fmt.Errorf("upload core dump: record: %w", err)
	}
	for _, e := range evicted {
		s.deleteCoredumpBlob(ctx, "upload core dump: delete an evicted dump", e)
	}
	s.wakeCoredumps()
	return c, nil
}

// coredumpKey is the blob of c's bytes.
func coredumpKey(c model.Coredump) ports.BlobKey {
	return ports.BlobKey{Kind: ports.BlobCoreDump, Namespace: c.ModelCode, SHA256: c.SHA256}
}

// deleteCoredumpBlob deletes the blob of a deleted record unless another
// record has the same bytes; a failure goes to OnError (the blob then
// costs space until the model is deleted).
func (s *Service) deleteCoredumpBlob(ctx context.Context, op string, c model.Coredump) {
	ctx = context.WithoutCancel(ctx)
	inUse, err := s.d.Coredumps.CoredumpBlobInUse(ctx, c.ModelCode, c.SHA256)
	if err == nil && !inUse {
		err = s.d.Blobs.DeleteBlob(ctx, coredumpKey(c))
	}
	if err != nil {
		s.report(ctx, op, fmt.Errorf("core dump %d: %w", c.ID, err))
	}
}

// deviceCoredumps lists every dump of a device about to be deleted (at
// most CoredumpKeep and the ones an upload is adding), so their blobs can
// be deleted after it; a failure goes to OnError (the blobs then stay
// until the model is deleted).
func (s *Service) deviceCoredumps(ctx context.Context, deviceID int64) []model.Coredump {
	if s.coredumpsOn() != nil {
		return nil
	}
	var out []model.Coredump
	var before int64
	for {
		page, err := s.d.Coredumps.ListCoredumps(ctx, deviceID, ports.MaxPageSize, before)
		if err != nil {
			s.report(ctx, "delete device: list its core dumps", err)
			return out
		}
		out = append(out, page.Coredumps...)
		if page.NextBeforeID == 0 {
			return out
		}
		before = page.NextBeforeID
	}
}

// coredumpsOn refuses core dump work when the Service has no repository
// for it.
func (s *Service) coredumpsOn() error {
	if s.d.Coredumps == nil || s.d.Blobs == nil {
		return &model.UnavailableError{Service: "core dumps", Err: errors.New("not configured")}
	}
	return nil
}

// ListCoredumps is a page of device id's dumps, newest first (GET
// /api/devices/{id}/coredumps): limit as in ListDevices, beforeID the
// cursor (the last ID of the previous page).
func (s *Service) ListCoredumps(ctx context.Context, deviceID int64, limit int, beforeID int64) (ports.CoredumpPage, error) {
	if err := s.coredumpsOn(); err != nil {
		return ports.CoredumpPage{}, err
	}
	limit, err := checkPage(limit, beforeID)
	if err != nil {
		return ports.CoredumpPage{}, err
	}
	if _, err := s.d.Devices.GetDevice(ctx, deviceID); err != nil {
		return ports.CoredumpPage{}, fmt.Errorf("list core dumps: device %d: %w", deviceID, err)
	}
	return s.d.Coredumps.ListCoredumps(ctx, deviceID, limit, beforeID)
}

// GetCoredump is one dump with its analysis.
func (s *Service) GetCoredump(ctx context.Context, id int64) (model.Coredump, error) {
	if err := s.coredumpsOn(); err != nil {
		return model.Coredump{}, err
	}
	return s.d.Coredumps.GetCoredump(ctx, id)
}

// OpenCoredump opens a dump's bytes for download; the caller closes the
// blob. A record whose blob is gone is the blob store's UnavailableError
// (the record says the bytes exist).
func (s *Service) OpenCoredump(ctx context.Context, id int64) (model.Coredump, ports.Blob, error) {
	c, err := s.GetCoredump(ctx, id)
	if err != nil {
		return model.Coredump{}, nil, err
	}
	b, err := s.d.Blobs.OpenBlob(ctx, coredumpKey(c))
	if err != nil {
		return model.Coredump{}, nil, fmt.Errorf("core dump %d: %w", id, blobGone(err))
	}
	return c, b, nil
}

// blobGone makes a recorded blob that the store does not hold an
// UnavailableError: the record says it exists, so a 404 would be a lie.
func blobGone(err error) error {
	if errors.Is(err, model.ErrBlobNotFound) {
		return &model.UnavailableError{Service: model.ServiceBlobStore, Err: err}
	}
	return err
}

// DeleteCoredump deletes a dump (DELETE /api/coredumps/{id}), audited.
func (s *Service) DeleteCoredump(ctx context.Context, id int64) error {
	if err := s.coredumpsOn(); err != nil {
		return err
	}
	cur, err := s.d.Coredumps.GetCoredump(ctx, id)
	if err != nil {
		return fmt.Errorf("delete core dump %d: %w", id, err)
	}
	e := s.entry(ctx, model.AuditCoredumpDeleted, fmt.Sprintf("core dump %d (%d bytes, %s)", cur.ID, cur.Size, cur.Status))
	e.DeviceID, e.ClientID, e.ModelID = cur.DeviceID, cur.ClientID, cur.DeviceModelID
	c, err := s.d.Coredumps.DeleteCoredump(ctx, id, s.audited(e))
	if err != nil {
		return fmt.Errorf("delete core dump %d: %w", id, err)
	}
	s.deleteCoredumpBlob(ctx, "delete core dump: delete its bytes", c)
	return nil
}

// ModelCrashes groups model modelID's analysed dumps of the last days (1
// to 366) by crash function and firmware version (GET
// /api/device-models/{id}/crashes).
func (s *Service) ModelCrashes(ctx context.Context, modelID int64, days int) ([]model.CrashGroup, error) {
	if err := s.coredumpsOn(); err != nil {
		return nil, err
	}
	if days < 1 || days > 366 {
		return nil, model.Invalid("days", "must be from 1 to 366")
	}
	if _, err := s.d.Models.GetModel(ctx, modelID); err != nil {
		return nil, fmt.Errorf("model crashes: %w", err)
	}
	return s.d.Coredumps.CrashGroups(ctx, modelID, s.now().Add(-time.Duration(days)*24*time.Hour))
}

// CoredumpWake is closed-over by the workers: a value arrives on it when a
// dump became pending on this replica (an upload, an ELF), so a worker
// starts at once instead of at its next poll.
func (s *Service) CoredumpWake() <-chan struct{} { return s.coredumpWake }

func (s *Service) wakeCoredumps() {
	select {
	case s.coredumpWake <- struct{}{}:
	default:
	}
}

// AnalyseNextCoredump claims one pending dump and analyses it; false when
// there was none to claim. Errors are the repository's; an analysis that
// fails is the dump's status, not an error.
func (s *Service) AnalyseNextCoredump(ctx context.Context) (bool, error) {
	if err := s.coredumpsOn(); err != nil {
		return false, err
	}
	if s.d.Analyzer == nil || s.d.ELFs == nil {
		return false, &model.UnavailableError{Service: "core dump analysis", Err: errors.New("not configured")}
	}
	now := s.now()
	claimed, err := s.d.Coredumps.ClaimCoredumps(ctx, now, now.Add(s.cfg.CoredumpTimeout+s.cfg.CoredumpRetry), 1)
	if err != nil || len(claimed) == 0 {
		return false, err
	}
	c := claimed[0]
	fn := s.analyse(ctx, c)
	if _, err := s.d.Coredumps.UpdateCoredump(context.WithoutCancel(ctx), c.ID, func(cur *model.Coredump) error {
		if cur.Status != model.CoredumpPending {
			return errCoredumpMoved
		}
		fn(cur)
		return nil
	}); err != nil && !errors.Is(err, errCoredumpMoved) && !errors.Is(err, model.ErrNotFound) {
		return true, fmt.Errorf("core dump %d: record the analysis: %w", c.ID, err)
	}
	return true, nil
}

// errCoredumpMoved: the dump left pending while it was analysed (deleted,
// or analysed by a worker whose claim this one outlived).
var errCoredumpMoved = errors.New("core dump no longer pending")

// analyse runs the analysis of claimed dump c and returns what to record.
func (s *Service) analyse(ctx context.Context, c model.Coredump) func(*model.Coredump) {
	retry := func(reason string) func(*model.Coredump) {
		at := s.now().Add(s.cfg.CoredumpRetry)
		return func(cur *model.Coredump) { cur.Reason, cur.ClaimedUntil = reason, &at }
	}
	fail := func(reason string) func(*model.Coredump) {
		return func(cur *model.Coredump) {
			cur.Status, cur.Reason, cur.ClaimedUntil = model.CoredumpFailed, reason, nil
		}
	}
	if c.Attempts > CoredumpMaxAttempts {
		return fail(fmt.Sprintf("gave up after %d attempts (%s)", CoredumpMaxAttempts, c.Reason))
	}
	dump, err := s.readCoredump(ctx, c)
	switch {
	case errors.Is(err, model.ErrBlobNotFound):
		return fail("the dump's bytes are not in the blob store")
	case err != nil:
		return retry("the dump could not be read: " + err.Error())
	}
	f, err := s.d.ELFs.FirmwareByELF(ctx, c.DeviceModelID, c.Info.ELFSHA256Prefix)
	switch {
	case errors.Is(err, model.ErrNotFound):
		reason := fmt.Sprintf("no firmware upload of model %s has the ELF %s… the dump names: upload it to analyse the dump", c.ModelCode, c.Info.ELFSHA256Prefix)
		if c.Info.ELFSHA256Prefix == "" {
			reason = fmt.Sprintf("a %s-format dump names no ELF, and no firmware upload of model %s has one", c.Info.Format, c.ModelCode)
		}
		return func(cur *model.Coredump) {
			cur.Status, cur.Reason, cur.ClaimedUntil = model.CoredumpNoELF, reason, nil
		}
	case err != nil:
		return retry("the firmware history could not be read: " + err.Error())
	}
	elf, err := s.d.Blobs.OpenBlob(ctx, ports.BlobKey{Kind: ports.BlobELF, Namespace: c.ModelCode, SHA256: f.ELFSHA256})
	if err != nil {
		return retry("the ELF could not be opened: " + err.Error())
	}
	defer elf.Close()
	actx, cancel := context.WithTimeout(ctx, s.cfg.CoredumpTimeout)
	defer cancel()
	a, err := s.d.Analyzer.Analyze(actx, dump, elf)
	var failed *model.CoredumpFailedError
	switch {
	case errors.Is(err, model.ErrCoredumpToolMissing):
		return retry(err.Error())
	case errors.As(err, &failed):
		return fail(failed.Reason)
	case err != nil:
		return retry("the analysis did not finish: " + err.Error())
	}
	if c.Info.ELFSHA256Prefix == "" {
		a.Notes = append(a.Notes, fmt.Sprintf("A %s-format dump names no ELF: it was analysed against the newest upload with one (%s), which the dump cannot confirm.", c.Info.Format, f.Version))
	}
	at := s.now()
	return func(cur *model.Coredump) {
		cur.Status, cur.Reason, cur.ClaimedUntil = model.CoredumpAnalysed, "", nil
		cur.Analysis, cur.AnalysedAt = &a, &at
		cur.ELFSHA256, cur.FirmwareVersion = f.ELFSHA256, f.Version
	}
}

// readCoredump reads c's bytes from the blob store, at most
// CoredumpMaxBytes.
func (s *Service) readCoredump(ctx context.Context, c model.Coredump) ([]byte, error) {
	b, err := s.d.Blobs.OpenBlob(ctx, coredumpKey(c))
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return io.ReadAll(io.LimitReader(b, max(s.cfg.CoredumpMaxBytes, c.Size)))
}

// UploadELF stores the application ELF of model modelID's upload
// imageSHA256 (PUT /api/device-models/{id}/firmware/{sha256}/elf): kept
// only when its SHA-256 equals the image's app_elf_sha256, else a
// *model.ValidationError naming both. Every upload of the model built from
// that ELF then has it, and the dumps waiting for it are analysed again.
func (s *Service) UploadELF(ctx context.Context, modelID int64, imageSHA256 string, r io.Reader, size int64) (model.Firmware, error) {
	if err := s.coredumpsOn(); err != nil {
		return model.Firmware{}, err
	}
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return model.Firmware{}, fmt.Errorf("upload ELF: %w", err)
	}
	history, err := s.d.Firmware.ListFirmware(ctx, modelID)
	if err != nil {
		return model.Firmware{}, fmt.Errorf("upload ELF: %w", err)
	}
	var f *model.Firmware
	for i := range history {
		if history[i].SHA256 == imageSHA256 {
			f = &history[i]
			break
		}
	}
	if f == nil {
		return model.Firmware{}, fmt.Errorf("upload ELF: model %s has no firmware upload %s: %w", m.Code, imageSHA256, model.ErrNotFound)
	}
	if err := s.putELF(ctx, m.Code, f.ELFSHA256, r, size); err != nil {
		return model.Firmware{}, err
	}
	if err := s.elfArrived(ctx, modelID, f.ELFSHA256); err != nil {
		return model.Firmware{}, fmt.Errorf("upload ELF: record: %w", err)
	}
	f.HasELF = true
	return *f, nil
}

// UploadFirmwareWithELF uploads an image with the ELF it was built from
// (the upload's multipart "elf" field): the ELF is checked against the
// image's app_elf_sha256 and stored first, so a wrong one leaves nothing
// recorded; then the image is uploaded as UploadFirmware does, and has its
// ELF.
func (s *Service) UploadFirmwareWithELF(ctx context.Context, modelID int64, data []byte, opts model.UploadOptions, elf io.Reader) (model.FirmwareUpload, error) {
	if err := s.coredumpsOn(); err != nil {
		return model.FirmwareUpload{}, err
	}
	img, err := esp32image.Parse(data)
	if err != nil || img.AppDesc == nil || int64(len(data)) > s.cfg.FirmwareMaxBytes {
		return s.UploadFirmware(ctx, modelID, data, opts) // its error says what is wrong with the image
	}
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return model.FirmwareUpload{}, fmt.Errorf("upload firmware: get device model %d: %w", modelID, err)
	}
	want := elfDigest(img.AppDesc.ELFSHA256)
	if err := s.putELF(ctx, m.Code, want, elf, ports.UnknownSize); err != nil {
		return model.FirmwareUpload{}, err
	}
	up, err := s.UploadFirmware(ctx, modelID, data, opts)
	if err != nil {
		return model.FirmwareUpload{}, err
	}
	if err := s.elfArrived(ctx, modelID, want); err != nil {
		// The upload has its ELF (it saw the blob); older uploads of the
		// same ELF are marked by the ELF's next upload.
		s.report(ctx, "upload firmware: record its ELF on earlier uploads", err)
	}
	up.HasELF = true
	return up, nil
}

// putELF stores an ELF under want, the app_elf_sha256 of the image it
// belongs to: a *model.ValidationError naming both digests when it is
// another ELF, nothing stored.
func (s *Service) putELF(ctx context.Context, modelCode, want string, r io.Reader, size int64) error {
	if want == "" {
		return model.Invalid("elf", "the image carries no app_elf_sha256 in its app descriptor, so no ELF can be matched to it")
	}
	h := sha256.New()
	key := ports.BlobKey{Kind: ports.BlobELF, Namespace: modelCode, SHA256: want}
	if _, err := s.d.Blobs.PutBlob(ctx, key, io.TeeReader(r, h), size, s.cfg.ELFMaxBytes); err != nil {
		var ve *model.ValidationError
		if errors.As(err, &ve) && ve.Field == "sha256" {
			return elfMismatch(h, want)
		}
		return fmt.Errorf("upload ELF: store: %w", err)
	}
	return nil
}

// elfArrived records that the model's ELF elfSHA256 is stored (every
// upload built from it has it) and makes the dumps waiting for it pending
// again. A failure to requeue goes to OnError (the dumps stay no_elf until
// the ELF's next upload).
func (s *Service) elfArrived(ctx context.Context, modelID int64, elfSHA256 string) error {
	if _, err := s.d.ELFs.MarkELFStored(ctx, modelID, elfSHA256); err != nil {
		return err
	}
	if n, err := s.d.Coredumps.RequeueCoredumps(ctx, modelID, elfSHA256); err != nil {
		s.report(ctx, "upload ELF: requeue core dumps", err)
	} else if n > 0 {
		s.wakeCoredumps()
	}
	return nil
}

// elfMismatch is the error of an ELF whose digest is not the image's
// app_elf_sha256; h has hashed what was read of it.
func elfMismatch(h hash.Hash, want string) error {
	return model.Invalid("elf", "the ELF's SHA-256 is %s, but the image's app_elf_sha256 is %s: upload the ELF the image was built from", hex.EncodeToString(h.Sum(nil)), want)
}
