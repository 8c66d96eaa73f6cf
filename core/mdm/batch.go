package mdm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/nvs"
	"github.com/espmdm/espmdm/ports"
)

// Devices by the hundred (SPEC §18): a batch is checked as a whole before
// any identity-provider work, then its devices are created a bounded number
// at a time, each all or nothing, each with its NVS partition.

var _ ports.DeviceBatch = (*Service)(nil)

// DefaultBatchConcurrency is Config.BatchConcurrency's default (espmdm sets
// twice KEYCLOAK_MAX_CONCURRENCY, whose default is 8).
const DefaultBatchConcurrency = 16

// CheckDeviceBatch validates a batch without creating anything.
func (s *Service) CheckDeviceBatch(ctx context.Context, in ports.NewDeviceBatch) error {
	_, _, err := s.checkBatch(ctx, in)
	return err
}

// checkBatch validates in and returns the model and the devices to make
// (normalised configs, tags sorted without duplicates).
// Every refusal is a *model.ValidationError: the batch as a whole is bad
// input (a config the schema refuses included, unlike CreateDevice's 409,
// since nothing of the batch exists yet to conflict with).
func (s *Service) checkBatch(ctx context.Context, in ports.NewDeviceBatch) (model.DeviceModel, []newDevice, error) {
	n := len(in.Devices)
	if n < ports.MinBatchDevices || n > ports.MaxBatchDevices {
		return model.DeviceModel{}, nil, model.Invalid("count", "must be from %d to %d devices, got %d",
			ports.MinBatchDevices, ports.MaxBatchDevices, n)
	}
	if in.Size < MinNVSSize || in.Size > MaxNVSSize || in.Size%nvsPageSize != 0 {
		return model.DeviceModel{}, nil, model.Invalid("size", "must be a multiple of 0x%x between 0x%x and 0x%x, got 0x%x",
			nvsPageSize, MinNVSSize, MaxNVSSize, in.Size)
	}
	m, err := s.d.Models.GetModel(ctx, in.DeviceModelID)
	if errors.Is(err, model.ErrNotFound) {
		return model.DeviceModel{}, nil, model.Invalid("device_model_id", "device model %d does not exist", in.DeviceModelID)
	}
	if err != nil {
		return model.DeviceModel{}, nil, fmt.Errorf("device batch: get device model %d: %w", in.DeviceModelID, err)
	}
	if err := s.checkBatchSize(m, in.Size); err != nil {
		return model.DeviceModel{}, nil, err
	}
	configs := make([]newDevice, n)
	for i, d := range in.Devices {
		field := fmt.Sprintf("devices[%d]", i)
		tags, err := model.CheckTags(field+".tags", d.Tags)
		if err != nil {
			return model.DeviceModel{}, nil, err
		}
		config, err := normalizeConfig(d.Config)
		if err == nil {
			err = validateConfig(m, config)
		}
		if err != nil {
			return model.DeviceModel{}, nil, asBatchInput(field, err)
		}
		configs[i] = newDevice{config: config, active: true, tags: tags}
	}
	return m, configs, nil
}

// asBatchInput re-words a device's config error as bad input on field.
func asBatchInput(field string, err error) error {
	var ve *model.ValidationError
	if errors.As(err, &ve) {
		return model.Invalid(field+"."+ve.Field, "%s", ve.Reason)
	}
	var ce *model.ConflictError
	if errors.As(err, &ce) {
		f := field
		if ce.Field != "" {
			f += "." + ce.Field
		}
		return model.Invalid(f, "%s", ce.Reason)
	}
	return err
}

// checkBatchSize refuses a partition size too small for the provisioning
// data, before anything is created: it encodes the data of a device of m
// with values as long as real ones get.
func (s *Service) checkBatchSize(m model.DeviceModel, size int) error {
	key := strings.Repeat("k", keyLen)
	p, err := s.provisioningWith(model.Device{Key: key, ModelCode: m.Code}, strings.Repeat("s", 64))
	if err != nil {
		return err
	}
	if s.d.Broker != nil {
		p.MQTTPassword = strings.Repeat("p", 64)
	}
	_, err = nvs.Encode(nvs.Strings(NVSNamespace, nvsPairs(p)...), nvs.Options{Size: size, Version: nvs.Version2})
	switch {
	case errors.Is(err, nvs.ErrNoSpace):
		return model.Invalid("size", "0x%x is too small for the provisioning data", size)
	case err != nil:
		return errors.New("device batch: the provisioning data cannot be stored as NVS strings")
	}
	return nil
}

// CreateDeviceBatch checks the batch, then creates its devices with at most
// Config.BatchConcurrency at work at once. Each device is all or nothing:
// its client, broker account and row (CreateDevice's steps), its NVS
// partition and that partition's audit entry; when a later step fails the
// device is deleted again. A cancelled ctx stops starting devices: those
// not started are reported with the context's error.
func (s *Service) CreateDeviceBatch(ctx context.Context, in ports.NewDeviceBatch, each func(ports.BatchResult)) error {
	m, configs, err := s.checkBatch(ctx, in)
	if err != nil {
		return err
	}
	workers := min(s.cfg.BatchConcurrency, len(configs))
	jobs := make(chan int)
	results := make(chan ports.BatchResult)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				r := ports.BatchResult{Index: i}
				if err := ctx.Err(); err != nil {
					r.Err = fmt.Errorf("device batch: not started: %w", err)
				} else {
					r.Device, r.NVS, r.Err = s.createBatchDevice(ctx, m, configs[i], in.Size)
				}
				results <- r
			}
		}()
	}
	go func() {
		for i := range configs {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		close(results)
	}()
	for r := range results {
		each(r)
	}
	return nil
}

// createBatchDevice makes one device of a batch and its partition: the
// partition is encoded before the row is inserted, and its audit entry
// (handed out) is written in the row's transaction with device_created, so
// that a device exists exactly when its partition does.
func (s *Service) createBatchDevice(ctx context.Context, m model.DeviceModel, nd newDevice, size int) (model.Device, []byte, error) {
	var img []byte
	d, _, err := s.createDevice(ctx, m, nd, func(d model.Device, secret string) ([]model.AuditEntry, error) {
		var err error
		if img, err = s.batchNVS(d, secret, size); err != nil {
			return nil, err
		}
		what := fmt.Sprintf("NVS partition of 0x%x bytes (device batch)", size)
		return []model.AuditEntry{s.deviceEntry(ctx, model.AuditProvisioningDownloaded, d, what)}, nil
	})
	if err != nil {
		return model.Device{}, nil, err
	}
	return d, img, nil
}

// batchNVS encodes d's partition with the secret its client was made with.
func (s *Service) batchNVS(d model.Device, secret string, size int) ([]byte, error) {
	p, err := s.provisioningWith(d, secret)
	if err != nil {
		return nil, err
	}
	img, err := nvs.Encode(nvs.Strings(NVSNamespace, nvsPairs(p)...), nvs.Options{Size: size, Version: nvs.Version2})
	switch {
	case errors.Is(err, nvs.ErrNoSpace):
		err = model.Invalid("size", "0x%x is too small for the provisioning data", size)
	case err != nil:
		// The nvs error may quote a value (a secret): keep only its kind.
		err = fmt.Errorf("provisioning of %s: the data cannot be stored as NVS strings", d.ClientID())
	}
	if err != nil {
		return nil, err
	}
	return img, nil
}
