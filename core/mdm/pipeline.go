package mdm

import (
	"bytes"
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
	if up.ELF != nil {
		// The ELF is checked against the image's app_elf_sha256 and stored
		// first (SPEC §17): a wrong one leaves nothing recorded.
		return s.UploadFirmwareWithELF(ctx, m.ID, up.Image, up.Opts, bytes.NewReader(up.ELF))
	}
	return s.UploadFirmware(ctx, m.ID, up.Image, up.Opts)
}

// CurrentFirmwareByCode returns the model whose code is code and its
// released firmware (SPEC §16), nil when none is released.
func (s *Service) CurrentFirmwareByCode(ctx context.Context, code string) (model.DeviceModel, *model.Firmware, error) {
	m, err := s.modelByCode(ctx, "current firmware", code)
	if err != nil {
		return model.DeviceModel{}, nil, err
	}
	f, err := s.d.Firmware.ReleasedFirmware(ctx, m.ID)
	switch {
	case errors.Is(err, model.ErrNotFound):
		return m, nil, nil
	case err != nil:
		return model.DeviceModel{}, nil, fmt.Errorf("current firmware of %s: %w", code, err)
	}
	return m, &f, nil
}
