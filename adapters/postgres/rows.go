package postgres

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
)

// Rows are this package's own types; the core structs carry no tags.

type modelRow struct {
	bun.BaseModel `bun:"table:device_models,alias:m"`

	ID              int64           `bun:"id,pk,autoincrement"`
	Code            string          `bun:"code,notnull"`
	Name            string          `bun:"name,notnull"`
	FirmwareVersion *string         `bun:"firmware_version"`
	ConfigSchema    json.RawMessage `bun:"config_schema,type:jsonb,nullzero"`
	CreatedAt       time.Time       `bun:"created_at,notnull,nullzero,default:now()"`
	UpdatedAt       time.Time       `bun:"updated_at,notnull,nullzero,default:now()"`
}

type deviceRow struct {
	bun.BaseModel `bun:"table:devices,alias:d"`

	ID            int64  `bun:"id,pk,autoincrement"`
	Key           string `bun:"key,notnull"`
	DeviceModelID int64  `bun:"device_model_id,notnull"`
	// ModelCode comes from the join with device_models.
	ModelCode     string          `bun:"model_code,scanonly"`
	Config        json.RawMessage `bun:"config,type:jsonb,notnull"`
	Active        bool            `bun:"active,notnull"`
	RotationState string          `bun:"rotation_state,notnull"`

	SecretCreatedAt         *time.Time `bun:"secret_created_at"`
	LastRotationAttemptAt   *time.Time `bun:"last_rotation_attempt_at"`
	LastRotationFetchAt     *time.Time `bun:"last_rotation_fetch_at"`
	LastRotationRenudgeAt   *time.Time `bun:"last_rotation_renudge_at"`
	LastRotationCompletedAt *time.Time `bun:"last_rotation_completed_at"`
	LastSeenAt              *time.Time `bun:"last_seen_at"`
	NewSecretAt             *time.Time `bun:"new_secret_at"`
	NewSecretIATAfter       *time.Time `bun:"new_secret_iat_after"`
	PreviousSecret          []byte     `bun:"previous_secret,type:bytea,nullzero"`
	// SecretSHA256 is NULL when the model's SecretSHA256 is empty.
	SecretSHA256 *string `bun:"secret_sha256"`
	MQTTPassword []byte  `bun:"mqtt_password,type:bytea,nullzero"`
	// Reported and ReportedAt are the latest state report; only
	// ReportState writes them.
	Reported   *reportDoc `bun:"reported,type:jsonb"`
	ReportedAt *time.Time `bun:"reported_at"`
	// Tags is never NULL (an empty array when none); AssignedFirmwareID
	// only AssignFirmware writes.
	Tags               []string `bun:"tags,array,notnull"`
	AssignedFirmwareID *int64   `bun:"assigned_firmware_id"`

	CreatedAt time.Time `bun:"created_at,notnull,nullzero,default:now()"`
	UpdatedAt time.Time `bun:"updated_at,notnull,nullzero,default:now()"`
}

// reportDoc is a state report as the reported column keeps it: the
// members of SPEC §15 by their names there.
type reportDoc struct {
	FirmwareVersion string  `json:"firmware_version"`
	SecureVersion   *uint32 `json:"secure_version,omitempty"`
	AppELFSHA256    string  `json:"app_elf_sha256,omitempty"`
	Partition       string  `json:"partition,omitempty"`
	OTAState        string  `json:"ota_state,omitempty"`
	OTA             *otaDoc `json:"ota,omitempty"`
	ResetReason     string  `json:"reset_reason,omitempty"`
	UptimeS         *int64  `json:"uptime_s,omitempty"`
	FreeHeap        *int64  `json:"free_heap,omitempty"`
	RSSI            *int    `json:"rssi,omitempty"`
	IDFVersion      string  `json:"idf_version,omitempty"`
}

type otaDoc struct {
	Target string `json:"target"`
	Result string `json:"result"`
}

// deviceSelectColumns are the devices columns of a deviceRow, in order
// (not the model code, which is in device_models).
var deviceSelectColumns = append(append([]string{"id", "key", "device_model_id"}, deviceMutableColumns...),
	"reported", "reported_at", "assigned_firmware_id", "created_at", "updated_at")

// deviceMutableColumns are the columns UpdateDevice writes: everything but
// id, key, device_model_id and created_at (updated_at is set separately).
var deviceMutableColumns = []string{
	"config", "active", "rotation_state",
	"secret_created_at", "last_rotation_attempt_at", "last_rotation_fetch_at", "last_rotation_renudge_at",
	"last_rotation_completed_at",
	"last_seen_at", "new_secret_at", "new_secret_iat_after", "previous_secret", "secret_sha256",
	"mqtt_password", "tags",
}

type firmwareRow struct {
	bun.BaseModel `bun:"table:firmware,alias:f"`

	ID            int64  `bun:"id,pk,autoincrement"`
	DeviceModelID int64  `bun:"device_model_id,notnull"`
	Version       string `bun:"version,notnull"`
	ProjectName   string `bun:"project_name,notnull"`
	IDFVersion    string `bun:"idf_version,notnull"`
	Chip          string `bun:"chip,notnull"`
	ChipID        int    `bun:"chip_id,notnull"`
	SHA256        string `bun:"sha256,notnull"`
	Size          int64  `bun:"size,notnull"`
	SecureVersion int64  `bun:"secure_version,notnull"`
	// ELFSHA256 is NULL for an image whose descriptor names no ELF.
	ELFSHA256  *string   `bun:"elf_sha256"`
	HasELF     bool      `bun:"has_elf,notnull"`
	UploadedAt time.Time `bun:"uploaded_at,notnull,nullzero,default:now()"`
	// ReleasedAt is NULL for an upload stored only (SPEC §16).
	ReleasedAt *time.Time `bun:"released_at"`
}

func modelToRow(m *model.DeviceModel) modelRow {
	r := modelRow{
		ID:           m.ID,
		Code:         m.Code,
		Name:         m.Name,
		ConfigSchema: jsonOrNil(m.ConfigSchema),
		CreatedAt:    utc(m.CreatedAt),
		UpdatedAt:    utc(m.UpdatedAt),
	}
	if m.FirmwareVersion != "" {
		v := m.FirmwareVersion
		r.FirmwareVersion = &v
	}
	return r
}

func modelFromRow(r *modelRow) model.DeviceModel {
	m := model.DeviceModel{
		ID:           r.ID,
		Code:         r.Code,
		Name:         r.Name,
		ConfigSchema: jsonOrNil(r.ConfigSchema),
		CreatedAt:    utc(r.CreatedAt),
		UpdatedAt:    utc(r.UpdatedAt),
	}
	if r.FirmwareVersion != nil {
		m.FirmwareVersion = *r.FirmwareVersion
	}
	return m
}

func deviceToRow(d *model.Device) deviceRow {
	return deviceRow{
		ID:                      d.ID,
		Key:                     d.Key,
		DeviceModelID:           d.DeviceModelID,
		ModelCode:               d.ModelCode,
		Config:                  d.Config,
		Active:                  d.Active,
		RotationState:           string(d.RotationState),
		SecretCreatedAt:         utcPtr(d.SecretCreatedAt),
		LastRotationAttemptAt:   utcPtr(d.LastRotationAttemptAt),
		LastRotationFetchAt:     utcPtr(d.LastRotationFetchAt),
		LastRotationRenudgeAt:   utcPtr(d.LastRotationRenudgeAt),
		LastRotationCompletedAt: utcPtr(d.LastRotationCompletedAt),
		LastSeenAt:              utcPtr(d.LastSeenAt),
		NewSecretAt:             utcPtr(d.NewSecretAt),
		NewSecretIATAfter:       utcPtr(d.IATAfter),
		PreviousSecret:          bytesOrNil(d.PreviousSecret),
		SecretSHA256:            stringOrNil(d.SecretSHA256),
		MQTTPassword:            bytesOrNil(d.MQTTPassword),
		Reported:                reportToDoc(d.Reported),
		ReportedAt:              reportedAt(d.Reported),
		Tags:                    tagsOrEmpty(d.Tags),
		AssignedFirmwareID:      d.AssignedFirmwareID,
		CreatedAt:               utc(d.CreatedAt),
		UpdatedAt:               utc(d.UpdatedAt),
	}
}

func deviceFromRow(r *deviceRow) model.Device {
	return model.Device{
		ID:                      r.ID,
		Key:                     r.Key,
		DeviceModelID:           r.DeviceModelID,
		ModelCode:               r.ModelCode,
		Config:                  r.Config,
		Active:                  r.Active,
		RotationState:           model.RotationState(r.RotationState),
		SecretCreatedAt:         utcPtr(r.SecretCreatedAt),
		LastRotationAttemptAt:   utcPtr(r.LastRotationAttemptAt),
		LastRotationFetchAt:     utcPtr(r.LastRotationFetchAt),
		LastRotationRenudgeAt:   utcPtr(r.LastRotationRenudgeAt),
		LastRotationCompletedAt: utcPtr(r.LastRotationCompletedAt),
		LastSeenAt:              utcPtr(r.LastSeenAt),
		NewSecretAt:             utcPtr(r.NewSecretAt),
		IATAfter:                utcPtr(r.NewSecretIATAfter),
		PreviousSecret:          bytesOrNil(r.PreviousSecret),
		SecretSHA256:            stringOrEmpty(r.SecretSHA256),
		MQTTPassword:            bytesOrNil(r.MQTTPassword),
		Reported:                reportFromDoc(r.Reported, r.ReportedAt),
		Tags:                    tagsOrEmpty(r.Tags),
		AssignedFirmwareID:      r.AssignedFirmwareID,
		CreatedAt:               utc(r.CreatedAt),
		UpdatedAt:               utc(r.UpdatedAt),
	}
}

func reportToDoc(r *model.StateReport) *reportDoc {
	if r == nil {
		return nil
	}
	d := &reportDoc{
		FirmwareVersion: r.FirmwareVersion,
		SecureVersion:   r.SecureVersion,
		AppELFSHA256:    r.AppELFSHA256,
		Partition:       r.Partition,
		OTAState:        string(r.OTAState),
		ResetReason:     r.ResetReason,
		UptimeS:         r.UptimeS,
		FreeHeap:        r.FreeHeap,
		RSSI:            r.RSSI,
		IDFVersion:      r.IDFVersion,
	}
	if r.OTA != nil {
		d.OTA = &otaDoc{Target: r.OTA.Target, Result: string(r.OTA.Result)}
	}
	return d
}

func reportedAt(r *model.StateReport) *time.Time {
	if r == nil {
		return nil
	}
	at := r.At.UTC()
	return &at
}

// reportFromDoc is the report of a row; nil when it has none (a report
// without its time, which ReportState never writes, counts as none).
func reportFromDoc(d *reportDoc, at *time.Time) *model.StateReport {
	if d == nil || at == nil {
		return nil
	}
	r := &model.StateReport{
		FirmwareVersion: d.FirmwareVersion,
		SecureVersion:   d.SecureVersion,
		AppELFSHA256:    d.AppELFSHA256,
		Partition:       d.Partition,
		OTAState:        model.OTAState(d.OTAState),
		ResetReason:     d.ResetReason,
		UptimeS:         d.UptimeS,
		FreeHeap:        d.FreeHeap,
		RSSI:            d.RSSI,
		IDFVersion:      d.IDFVersion,
		At:              at.UTC(),
	}
	if d.OTA != nil {
		r.OTA = &model.OTAAttempt{Target: d.OTA.Target, Result: model.OTAResult(d.OTA.Result)}
	}
	return r
}

func firmwareToRow(f *model.Firmware) firmwareRow {
	return firmwareRow{
		ID:            f.ID,
		DeviceModelID: f.DeviceModelID,
		Version:       f.Version,
		ProjectName:   f.ProjectName,
		IDFVersion:    f.IDFVersion,
		Chip:          f.Chip,
		ChipID:        f.ChipID,
		SHA256:        f.SHA256,
		Size:          f.Size,
		SecureVersion: int64(f.SecureVersion),
		ELFSHA256:     stringOrNil(f.ELFSHA256),
		HasELF:        f.HasELF,
		UploadedAt:    utc(f.UploadedAt),
		ReleasedAt:    utcPtr(f.ReleasedAt),
	}
}

func firmwareFromRow(r *firmwareRow) model.Firmware {
	return model.Firmware{
		ID:            r.ID,
		DeviceModelID: r.DeviceModelID,
		Version:       r.Version,
		ProjectName:   r.ProjectName,
		IDFVersion:    r.IDFVersion,
		Chip:          r.Chip,
		ChipID:        r.ChipID,
		SHA256:        r.SHA256,
		Size:          r.Size,
		SecureVersion: uint32(r.SecureVersion), //nolint:gosec // the column's CHECK keeps it in uint32's range
		ELFSHA256:     deref(r.ELFSHA256),
		HasELF:        r.HasELF,
		UploadedAt:    utc(r.UploadedAt),
		ReleasedAt:    utcPtr(r.ReleasedAt),
	}
}

// jsonOrNil maps an absent value and JSON null to nil (SQL NULL).
func jsonOrNil(r json.RawMessage) json.RawMessage {
	t := bytes.TrimSpace(r)
	if len(t) == 0 || string(t) == "null" {
		return nil
	}
	return r
}

func bytesOrNil(b []byte) []byte {
	if b == nil {
		return nil
	}
	return bytes.Clone(b)
}

// stringOrNil maps the empty string to nil (SQL NULL).
func stringOrNil(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func stringOrEmpty(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// deref is *s, "" for nil.
func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// tagsOrEmpty is tags, or an empty set for nil (the column is NOT NULL).
func tagsOrEmpty(tags []string) []string {
	if tags == nil {
		return []string{}
	}
	return tags
}
