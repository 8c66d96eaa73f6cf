package ports

import (
	"context"
	"encoding/json"

	"github.com/espmdm/espmdm/core/model"
)

// The factory and CI use cases (SPEC §18): a CI pipeline shipping firmware
// by model code, and devices made by the hundred on the bench.

// PipelineFirmware is what a CI pipeline may do
// (/api/pipeline/models/{code}/firmware): upload a model's firmware and read
// its current version, naming the model by its code.
type PipelineFirmware interface {
	// UploadFirmwareByCode is FirmwareAdmin.UploadFirmware for the model
	// whose code is code (model.ErrNotFound when there is none): the same
	// validation, idempotency, secure_version rule, warnings and audit.
	UploadFirmwareByCode(ctx context.Context, code string, up PipelineUpload) (model.FirmwareUpload, error)
	// CurrentFirmwareByCode returns the model whose code is code and its
	// current firmware (nil when none was uploaded).
	CurrentFirmwareByCode(ctx context.Context, code string) (model.DeviceModel, *model.Firmware, error)
}

// PipelineUpload is one firmware upload by a pipeline.
type PipelineUpload struct {
	// Image is the application image (build/<project>.bin).
	Image []byte
	// ELF is the application's ELF (build/<project>.elf), or nil: kept for
	// core dump analysis (SPEC §17) when its SHA-256 is the image's
	// app_elf_sha256; another ELF refuses the upload, nothing stored.
	ELF  []byte
	Opts model.UploadOptions
}

// Batch limits (SPEC §18).
const (
	MinBatchDevices = 1
	MaxBatchDevices = 1000
)

// NewDeviceBatch is the input of DeviceBatch: the devices to create, all
// of one model, and the size of their NVS partitions.
type NewDeviceBatch struct {
	DeviceModelID int64
	// Devices has one entry per device (MinBatchDevices..MaxBatchDevices).
	Devices []BatchDevice
	// Size is the NVS partition size (as ProvisioningNVS takes it).
	Size int
}

// BatchDevice is one device of a batch.
type BatchDevice struct {
	Config json.RawMessage // a JSON object
	// Tags are the device's tags (SPEC §16; model.CheckTags).
	Tags []string
}

// BatchResult is the outcome of one device of a batch: Device and its NVS
// partition, or Err (the device was not created: nothing of it is left).
type BatchResult struct {
	// Index is the device's position in NewDeviceBatch.Devices.
	Index  int
	Device model.Device
	NVS    []byte
	Err    error
}

// DeviceBatch creates devices by the hundred (POST /api/devices/batch).
type DeviceBatch interface {
	// CheckDeviceBatch validates the whole batch (count, model, every
	// config against the model's schema, size) without creating
	// anything: a *model.ValidationError for bad input.
	CheckDeviceBatch(ctx context.Context, in NewDeviceBatch) error
	// CreateDeviceBatch validates the batch like CheckDeviceBatch, then
	// creates its devices, each all or nothing, a bounded number at once,
	// and hands each outcome to each (from one goroutine at a time, in
	// completion order). A failure of one device does not stop the
	// others; a cancelled ctx stops starting new ones (they are reported
	// with the context's error). It returns the validation error, or nil.
	CreateDeviceBatch(ctx context.Context, in NewDeviceBatch, each func(BatchResult)) error
}
