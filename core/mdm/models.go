package mdm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// MaxNameLen is the longest device model name, in characters.
const MaxNameLen = 255

func validateName(name string) error {
	switch n := utf8.RuneCountInString(name); {
	case !utf8.ValidString(name):
		return model.Invalid("name", "must be valid UTF-8")
	case strings.TrimSpace(name) == "":
		return model.Invalid("name", "required: 1 to %d characters, not blank", MaxNameLen)
	case strings.ContainsRune(name, 0):
		return model.Invalid("name", "must not contain U+0000 (the database cannot store it)")
	case n > MaxNameLen:
		return model.Invalid("name", "%d characters is too long (at most %d)", n, MaxNameLen)
	}
	return nil
}

// CreateModel validates in and stores a new device model. A code already
// in use is model.ErrConflict.
func (s *Service) CreateModel(ctx context.Context, in ports.NewModel) (model.DeviceModel, error) {
	if !model.ModelCodePattern.MatchString(in.Code) {
		return model.DeviceModel{}, model.Invalid("code", "must match %s", model.ModelCodePattern)
	}
	if err := validateName(in.Name); err != nil {
		return model.DeviceModel{}, err
	}
	schema, err := normalizeSchema(in.ConfigSchema)
	if err != nil {
		return model.DeviceModel{}, err
	}
	m := model.DeviceModel{Code: in.Code, Name: in.Name, ConfigSchema: schema}
	created := s.entry(ctx, model.AuditModelCreated, "code "+in.Code+schemaWord(schema)) // ModelID set by the repository
	if err := s.d.Models.CreateModel(ctx, &m, s.audited(created)); err != nil {
		if errors.Is(err, model.ErrConflict) {
			return model.DeviceModel{}, model.Conflict("a device model with code %s exists already", in.Code)
		}
		return model.DeviceModel{}, fmt.Errorf("create device model %s: %w", in.Code, err)
	}
	return m, nil
}

// GetModel returns one device model.
func (s *Service) GetModel(ctx context.Context, id int64) (model.DeviceModel, error) {
	m, err := s.d.Models.GetModel(ctx, id)
	if err != nil {
		return model.DeviceModel{}, fmt.Errorf("get device model %d: %w", id, err)
	}
	return m, nil
}

// ListModels returns every device model.
func (s *Service) ListModels(ctx context.Context) ([]model.DeviceModel, error) {
	ms, err := s.d.Models.ListModels(ctx)
	if err != nil {
		return nil, fmt.Errorf("list device models: %w", err)
	}
	return ms, nil
}

// UpdateModel changes a model's name and schema; the code is immutable. A
// new schema is checked against the configs of the model's devices first:
// when some do not match it, the update is refused (model.ErrConflict,
// naming the first of them) unless in.Force is set.
func (s *Service) UpdateModel(ctx context.Context, id int64, in ports.ModelUpdate) (model.DeviceModel, error) {
	if in.Name != nil {
		if err := validateName(*in.Name); err != nil {
			return model.DeviceModel{}, err
		}
	}
	var schema []byte
	if in.SetSchema {
		var err error
		if schema, err = normalizeSchema(in.ConfigSchema); err != nil {
			return model.DeviceModel{}, err
		}
		if !in.Force && !isNull(schema) {
			if err := s.checkConfigs(ctx, id, schema); err != nil {
				return model.DeviceModel{}, err
			}
		}
	}
	m, err := s.d.Models.UpdateModel(ctx, id, func(m *model.DeviceModel) ([]model.AuditEntry, error) {
		var changed []string
		if in.Name != nil {
			if m.Name != *in.Name {
				changed = append(changed, "name")
			}
			m.Name = *in.Name
		}
		if in.SetSchema {
			if (!isNull(m.ConfigSchema) || !isNull(schema)) && !jsonEqual(m.ConfigSchema, schema) {
				changed = append(changed, "config_schema")
			}
			m.ConfigSchema = schema
		}
		e := s.entry(ctx, model.AuditModelUpdated, changedWords(changed))
		if in.Force && in.SetSchema {
			e.Detail += " (forced)"
		}
		e.ModelID = m.ID
		return s.audited(e), nil
	})
	if err != nil {
		return model.DeviceModel{}, fmt.Errorf("update device model %d: %w", id, err)
	}
	return m, nil
}

// checkConfigs refuses a schema that the configs of some of the model's
// devices do not match, naming the first few.
func (s *Service) checkConfigs(ctx context.Context, modelID int64, schema json.RawMessage) error {
	m, err := s.d.Models.GetModel(ctx, modelID)
	if err != nil {
		return fmt.Errorf("update device model %d: %w", modelID, err)
	}
	m.ConfigSchema = schema
	const named = 10
	var bad []string
	total := 0
	for after := int64(0); ; {
		page, err := s.d.Devices.ListDevices(ctx, ports.DeviceFilter{ModelID: &modelID, Limit: ports.MaxPageSize, AfterID: after})
		if err != nil {
			return fmt.Errorf("update device model %d: check device configs: %w", modelID, err)
		}
		for _, d := range page.Devices {
			if validateConfig(m, d.Config) != nil {
				total++
				if len(bad) < named {
					bad = append(bad, strconv.FormatInt(d.ID, 10))
				}
			}
		}
		if after = page.NextAfterID; after == 0 {
			break
		}
	}
	if total == 0 {
		return nil
	}
	ids := strings.Join(bad, ", ")
	if total > len(bad) {
		ids += ", …"
	}
	return model.Conflict("%d device(s) of model %s have a config that does not match the new config_schema (device ids %s): "+
		"change their configs first, or send the update with ?force=true to apply the schema to future writes only",
		total, m.Code, ids)
}

// modelInUse is the conflict of deleting a model that has devices, saying
// how many (counted up to ports.MaxPageSize).
func (s *Service) modelInUse(ctx context.Context, m model.DeviceModel) error {
	page, err := s.d.Devices.ListDevices(ctx, ports.DeviceFilter{ModelID: &m.ID, Limit: ports.MaxPageSize})
	switch {
	case err != nil:
		return model.Conflict("device model %d (%s) still has devices: delete them first", m.ID, m.Code)
	case page.NextAfterID != 0:
		return model.Conflict("device model %d (%s) still has more than %d devices: delete them first", m.ID, m.Code, len(page.Devices))
	}
	if n := len(page.Devices); n != 1 {
		return model.Conflict("device model %d (%s) still has %d devices: delete them first", m.ID, m.Code, n)
	}
	return model.Conflict("device model %d (%s) still has a device: delete it first", m.ID, m.Code)
}

// DeleteModel removes a device model; model.ErrConflict while it has
// devices.
func (s *Service) DeleteModel(ctx context.Context, id int64) error {
	m, err := s.d.Models.GetModel(ctx, id)
	if err != nil {
		return fmt.Errorf("delete device model %d: %w", id, err)
	}
	e := s.entry(ctx, model.AuditModelDeleted, "code "+m.Code)
	e.ModelID = m.ID
	if err := s.d.Models.DeleteModel(ctx, id, s.audited(e)); err != nil {
		if errors.Is(err, model.ErrConflict) {
			return s.modelInUse(ctx, m)
		}
		return fmt.Errorf("delete device model %d: %w", id, err)
	}
	// The history rows went with the model; its blobs (the namespace of
	// its code) go now. A failure leaves unreferenced blobs, nothing a
	// device or the API can reach.
	if err := s.d.Blobs.DeleteNamespace(ctx, m.Code); err != nil {
		s.report(ctx, "delete device model: remove firmware binaries", fmt.Errorf("device model %s: %w", m.Code, err))
	}
	return nil
}

// schemaWord says whether a model is created with a config schema.
func schemaWord(schema json.RawMessage) string {
	if schema == nil || isNull(schema) {
		return ""
	}
	return ", with a config_schema"
}

// changedWords is an audit detail naming changed fields.
func changedWords(fields []string) string {
	if len(fields) == 0 {
		return "nothing changed"
	}
	return "changed " + strings.Join(fields, ", ")
}
