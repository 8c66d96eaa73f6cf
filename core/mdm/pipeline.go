package mdm

import (
	"context"
	"errors"
	"fmt"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The CI pipeline's use cases (SPEC §18): a model's firmware by the model's
// code. The pipeline's token is the actor of the audit entries, as an
// admin's is on the admin routes.

var _ ports.PipelineFirmware = (*Service)(nil)

// modelByCode reads the model whose code is code.
func (s *Service) modelByCode(ctx context.Context, op, code string) (model.DeviceModel, error) {
	if !model.ModelCodePattern.MatchString(code) {
		return model.DeviceModel{}, model.Invalid("code", "must match %s", model.ModelCodePattern)
	}
	m, err := s.d.Models.GetModelByCode(ctx, code)
	if err != nil {
		return model.DeviceModel{}, fmt.Errorf("%s: device model %s: %w", op, code, err)
	}
	return m, nil
}

// UploadFirmwareByCode uploads the firmware of the model whose code is code,
// exactly as UploadFirmware does (validation, idempotency, the
// secure_version rule, warnings, audit, notification).
func (s *Service) UploadFirmwareByCode(ctx context.Context, code string, up ports.PipelineUpload) (model.FirmwareUpload, error) {
	m, err := s.modelByCode(ctx, "upload firmware", code)
	if err != nil {
		return model.FirmwareUpload{}, err
	}
	if err := s.checkELF(up.ELF); err != nil {
		return model.FirmwareUpload{}, err
	}
	res, err := s.UploadFirmware(ctx, m.ID, up.Image, up.Opts)
	if err != nil {
		return model.FirmwareUpload{}, err
	}
	return res, nil
}

// errNoELFStore refuses an ELF while the core keeps none.
var errNoELFStore = model.Invalid("elf",
	"this server does not keep application ELFs yet (they come with core dumps, SPEC §17): upload the image alone")

// checkELF is the extension point of core dumps (SPEC §17): an upload with
// an ELF is refused before anything is stored while the core keeps no
// ELFs. The core-dump server side replaces it with a check of the ELF's
// SHA-256 against the image's app_elf_sha256 and keeps the ELF after the
// image (FirmwareUpload.SHA256 names it).
func (s *Service) checkELF(elf []byte) error {
	if elf == nil {
		return nil
	}
	return errNoELFStore
}

// CurrentFirmwareByCode returns the model whose code is code and its current
// firmware, nil when none was uploaded.
func (s *Service) CurrentFirmwareByCode(ctx context.Context, code string) (model.DeviceModel, *model.Firmware, error) {
	m, err := s.modelByCode(ctx, "current firmware", code)
	if err != nil {
		return model.DeviceModel{}, nil, err
	}
	f, err := s.d.Firmware.CurrentFirmware(ctx, m.ID)
	switch {
	case errors.Is(err, model.ErrNotFound):
		return m, nil, nil
	case err != nil:
		return model.DeviceModel{}, nil, fmt.Errorf("current firmware of %s: %w", code, err)
	}
	return m, &f, nil
}
