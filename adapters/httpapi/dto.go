package httpapi

import (
	"bytes"
	"encoding/json"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The wire shapes of the API (SPEC §1, §2) and their converters. Core
// structs carry no json tags; these do.

// timestamp formats t as RFC 3339 in UTC.
func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func optTimestamp(t *time.Time) *string {
	if t == nil || t.IsZero() {
		return nil
	}
	s := timestamp(*t)
	return &s
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// rawOrNull returns the JSON null for an empty raw value.
func rawOrNull(r json.RawMessage) json.RawMessage {
	if len(r) == 0 {
		return json.RawMessage("null")
	}
	return r
}

type deviceModelDTO struct {
	ID              int64           `json:"id"`
	Code            string          `json:"code" oas:"use=modelCode"`
	Name            string          `json:"name" oas:"use=name"`
	FirmwareVersion *string         `json:"firmware_version"`
	ConfigSchema    json.RawMessage `json:"config_schema" oas:"type=object|boolean|null" desc:"the model's JSON Schema as it was stored (see JSONSchema), or null"`
	CreatedAt       string          `json:"created_at" oas:"use=dateTime"`
	UpdatedAt       string          `json:"updated_at" oas:"use=dateTime"`
}

func toModelDTO(m model.DeviceModel) deviceModelDTO {
	return deviceModelDTO{
		ID:              m.ID,
		Code:            m.Code,
		Name:            m.Name,
		FirmwareVersion: optString(m.FirmwareVersion),
		ConfigSchema:    rawOrNull(m.ConfigSchema),
		CreatedAt:       timestamp(m.CreatedAt),
		UpdatedAt:       timestamp(m.UpdatedAt),
	}
}

type deviceModelListDTO struct {
	DeviceModels []deviceModelDTO `json:"device_models"`
}

// createModelDTO is the POST /api/device-models body.
type createModelDTO struct {
	Code         *string         `json:"code" oas:"required,use=modelCode"`
	Name         *string         `json:"name" oas:"required,use=name"`
	ConfigSchema json.RawMessage `json:"config_schema" oas:"ref=ConfigSchema" desc:"optional JSON Schema for device configs (null: none)"`
}

func fromCreateModelDTO(in createModelDTO) (ports.NewModel, error) {
	if in.Code == nil {
		return ports.NewModel{}, model.Invalid("code", "required")
	}
	if in.Name == nil {
		return ports.NewModel{}, model.Invalid("name", "required")
	}
	out := ports.NewModel{Code: *in.Code, Name: *in.Name}
	if !isJSONNull(in.ConfigSchema) {
		out.ConfigSchema = in.ConfigSchema
	}
	return out, nil
}

// updateModelDTO is the PUT /api/device-models/{id} body. Raw fields tell
// an absent member (nil) from an explicit null.
type updateModelDTO struct {
	Name         json.RawMessage `json:"name" oas:"use=name"`
	ConfigSchema json.RawMessage `json:"config_schema" oas:"ref=ConfigSchema" desc:"a JSON Schema; null removes it; absent leaves it"`
	// Code is read only to refuse it with a reason; the document leaves
	// it out (an unknown member, which the schema refuses as well).
	Code json.RawMessage `json:"code" oas:"-"`
}

func fromUpdateModelDTO(in updateModelDTO) (ports.ModelUpdate, error) {
	var out ports.ModelUpdate
	if in.Code != nil {
		return out, model.Invalid("code", "cannot be changed: a device model's code is immutable (devices' client ids contain it); create a new model instead")
	}
	if in.Name != nil {
		if isJSONNull(in.Name) {
			return out, model.Invalid("name", "must be a string, not null")
		}
		var name string
		if err := json.Unmarshal(in.Name, &name); err != nil {
			return out, model.Invalid("name", "must be a string")
		}
		out.Name = &name
	}
	if in.ConfigSchema != nil {
		out.SetSchema = true
		if !isJSONNull(in.ConfigSchema) {
			out.ConfigSchema = in.ConfigSchema
		}
	}
	return out, nil
}

type deviceDTO struct {
	ID                      int64           `json:"id"`
	Key                     string          `json:"key" oas:"use=deviceKey"`
	DeviceModelID           int64           `json:"device_model_id"`
	ClientID                string          `json:"client_id" desc:"iotdevice-<model code>-<key>"`
	Config                  json.RawMessage `json:"config" oas:"type=object"`
	Active                  bool            `json:"active"`
	RotationState           string          `json:"rotation_state" oas:"use=rotationState"`
	SecretCreatedAt         *string         `json:"secret_created_at" oas:"use=optDateTime"`
	LastRotationAttemptAt   *string         `json:"last_rotation_attempt_at" oas:"use=optDateTime"`
	LastRotationCompletedAt *string         `json:"last_rotation_completed_at" oas:"use=optDateTime"`
	LastSeenAt              *string         `json:"last_seen_at" oas:"use=optDateTime" desc:"RFC 3339, UTC: the device's last token-authenticated call or state report (written at most once a minute); null when never"`
	Tags                    []string        `json:"tags" oas:"use=tags"`
	Reported                *reportedDTO    `json:"reported" desc:"the device's latest state report (POST /iot/state), the members it sent; null before the first"`
	ReportedAt              *string         `json:"reported_at" oas:"use=optDateTime" desc:"RFC 3339, UTC: when espmdm received the latest state report; null before the first"`
	CreatedAt               string          `json:"created_at" oas:"use=dateTime"`
	UpdatedAt               string          `json:"updated_at" oas:"use=dateTime"`
}

func toDeviceDTO(d model.Device) deviceDTO {
	cfg := d.Config
	if len(cfg) == 0 {
		cfg = json.RawMessage("{}")
	}
	return deviceDTO{
		ID:                      d.ID,
		Key:                     d.Key,
		DeviceModelID:           d.DeviceModelID,
		ClientID:                d.ClientID(),
		Config:                  cfg,
		Active:                  d.Active,
		RotationState:           string(d.RotationState),
		SecretCreatedAt:         optTimestamp(d.SecretCreatedAt),
		LastRotationAttemptAt:   optTimestamp(d.LastRotationAttemptAt),
		LastRotationCompletedAt: optTimestamp(d.LastRotationCompletedAt),
		LastSeenAt:              optTimestamp(d.LastSeenAt),
		Tags:                    tagsOrEmpty(d.Tags),
		Reported:                toReportedDTO(d.Reported),
		ReportedAt:              reportedAt(d),
		CreatedAt:               timestamp(d.CreatedAt),
		UpdatedAt:               timestamp(d.UpdatedAt),
	}
}

type deviceListDTO struct {
	Devices    []deviceDTO `json:"devices"`
	NextCursor *string     `json:"next_cursor" oas:"use=nextCursor"`
}

// createDeviceDTO is the POST /api/devices body.
type createDeviceDTO struct {
	DeviceModelID json.RawMessage `json:"device_model_id" oas:"required,type=integer,format=int64,minimum=1" desc:"an existing device model; one that does not exist is a 409 naming this field"`
	Config        json.RawMessage `json:"config" oas:"required,use=checkedConfig"`
	Active        json.RawMessage `json:"active" oas:"type=boolean,default=true"`
	Tags          json.RawMessage `json:"tags" oas:"use=tags,default=[]"`
}

func fromCreateDeviceDTO(in createDeviceDTO) (ports.NewDevice, error) {
	if in.DeviceModelID == nil || isJSONNull(in.DeviceModelID) {
		return ports.NewDevice{}, model.Invalid("device_model_id", "required")
	}
	id, ok := jsonID(in.DeviceModelID)
	if !ok {
		return ports.NewDevice{}, model.Invalid("device_model_id", "must be a device model id (an integer from 1)")
	}
	if in.Config == nil || isJSONNull(in.Config) {
		return ports.NewDevice{}, model.Invalid("config", "required: a JSON object")
	}
	active, err := optBool("active", in.Active)
	if err != nil {
		return ports.NewDevice{}, err
	}
	tags, err := optTags("tags", in.Tags)
	if err != nil {
		return ports.NewDevice{}, err
	}
	out := ports.NewDevice{DeviceModelID: id, Config: in.Config, Active: active}
	if tags != nil {
		out.Tags = *tags
	}
	return out, nil
}

// optTags decodes an optional array of tags (checked by the use case);
// null and anything but an array of strings are refused.
func optTags(field string, raw json.RawMessage) (*[]string, error) {
	if raw == nil {
		return nil, nil
	}
	var tags []string
	if isJSONNull(raw) || json.Unmarshal(raw, &tags) != nil {
		return nil, model.Invalid(field, "must be an array of strings")
	}
	if tags == nil {
		tags = []string{}
	}
	return &tags, nil
}

// tagsOrEmpty is tags, or an empty array for nil.
func tagsOrEmpty(tags []string) []string {
	if tags == nil {
		return []string{}
	}
	return tags
}

// jsonID reads a JSON number that is an id: an integer from 1 up to the
// largest int64, in any JSON spelling of it (see intText).
func jsonID(raw json.RawMessage) (int64, bool) {
	n, ok := intText(string(bytes.TrimSpace(raw)))
	return n, ok && n >= 1
}

// intText reads an integer written as a JSON number: JSON Schema's integer
// is a value, so 7, 7.0 and 7e0 are all 7 (and tools send integers that
// way, in bodies, paths and queries alike). It must fit an int64; no sign
// but "-", no spaces.
func intText(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 64 || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) || !json.Valid([]byte(s)) {
		return 0, false // not a number (a string, an object, ...), or absurdly long
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true
	}
	// An exponent is bounded before big.Rat expands it (1e999999999
	// would take gigabytes).
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		if exp, err := strconv.Atoi(s[i+1:]); err != nil || exp < -64 || exp > 64 {
			return 0, false
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || !r.IsInt() || !r.Num().IsInt64() {
		return 0, false
	}
	return r.Num().Int64(), true
}

// updateDeviceDTO is the PUT /api/devices/{id} body; absent members are
// left unchanged, null is refused.
type updateDeviceDTO struct {
	Config json.RawMessage `json:"config" oas:"use=checkedConfig"`
	Active json.RawMessage `json:"active" oas:"type=boolean"`
	Tags   json.RawMessage `json:"tags" oas:"use=tags" desc:"the device's new tags, replacing the old ones ([] removes them all); absent leaves them"`
}

func fromUpdateDeviceDTO(in updateDeviceDTO) (ports.DeviceUpdate, error) {
	var out ports.DeviceUpdate
	if in.Config != nil {
		if isJSONNull(in.Config) {
			return out, model.Invalid("config", "must be a JSON object, not null")
		}
		out.Config = in.Config
	}
	active, err := optBool("active", in.Active)
	if err != nil {
		return out, err
	}
	out.Active = active
	if out.Tags, err = optTags("tags", in.Tags); err != nil {
		return out, err
	}
	return out, nil
}

// optBool decodes an optional boolean member; null is refused.
func optBool(field string, raw json.RawMessage) (*bool, error) {
	if raw == nil {
		return nil, nil
	}
	var b bool
	if isJSONNull(raw) || json.Unmarshal(raw, &b) != nil {
		return nil, model.Invalid(field, "must be true or false")
	}
	return &b, nil
}

type firmwareDTO struct {
	ID            int64   `json:"id"`
	DeviceModelID int64   `json:"device_model_id"`
	Version       string  `json:"version"`
	ProjectName   string  `json:"project_name"`
	IDFVersion    string  `json:"idf_version"`
	Chip          string  `json:"chip" oas:"examples=esp32|esp32s3"`
	ChipID        int     `json:"chip_id"`
	SHA256        string  `json:"sha256" pattern:"^[0-9a-f]{64}$"`
	Size          int64   `json:"size"`
	SecureVersion uint32  `json:"secure_version" desc:"the app descriptor's secure_version (anti-rollback); 0 for uploads recorded before it was kept"`
	ELFSHA256     *string `json:"elf_sha256" pattern:"^[0-9a-f]{64}$" desc:"the app descriptor's app_elf_sha256: the ELF the image was built from; null when the image does not name one (or was recorded before it was kept)"`
	HasELF        bool    `json:"has_elf" desc:"that ELF is stored: core dumps of this firmware can be analysed"`
	UploadedAt    string  `json:"uploaded_at" oas:"use=dateTime"`
	Released      bool    `json:"released" desc:"this upload is the model's released firmware: the one its devices are offered unless a campaign assigned them another"`
	ReleasedAt    *string `json:"released_at" oas:"use=optDateTime" desc:"RFC 3339, UTC: when this upload was last released; null for an upload only stored (never released)"`
}

type firmwareUploadDTO struct {
	firmwareDTO
	Warnings []string `json:"warnings" desc:"where the upload goes backwards against the released firmware (a forced lower secure_version, a lower version), and why an upload meant for release was only stored; empty otherwise"`
}

func toFirmwareUploadDTO(u model.FirmwareUpload) firmwareUploadDTO {
	w := u.Warnings
	if w == nil {
		w = []string{}
	}
	return firmwareUploadDTO{firmwareDTO: toFirmwareDTO(u.Firmware, u.Released), Warnings: w}
}

// toFirmwareListDTO is a model's history, its released upload marked.
func toFirmwareListDTO(fws []model.Firmware) firmwareListDTO {
	rel, ok := model.ReleasedIn(fws)
	out := firmwareListDTO{Versions: make([]firmwareDTO, len(fws))}
	for i, f := range fws {
		out.Versions[i] = toFirmwareDTO(f, ok && f.ID == rel.ID)
	}
	return out
}

// toFirmwareDTO is an upload; released says whether it is the model's
// released firmware.
func toFirmwareDTO(f model.Firmware, released bool) firmwareDTO {
	return firmwareDTO{
		ID:            f.ID,
		DeviceModelID: f.DeviceModelID,
		Version:       f.Version,
		ProjectName:   f.ProjectName,
		IDFVersion:    f.IDFVersion,
		Chip:          f.Chip,
		ChipID:        f.ChipID,
		SHA256:        f.SHA256,
		Size:          f.Size,
		SecureVersion: f.SecureVersion,
		ELFSHA256:     optString(f.ELFSHA256),
		HasELF:        f.HasELF,
		UploadedAt:    timestamp(f.UploadedAt),
		Released:      released,
		ReleasedAt:    optTimestamp(f.ReleasedAt),
	}
}

type firmwareListDTO struct {
	Versions []firmwareDTO `json:"versions"`
}

type firmwareVersionDTO struct {
	FirmwareVersion *string `json:"firmware_version" desc:"the version of the firmware GET /iot/firmware serves; null when none"`
	SHA256          *string `json:"sha256" pattern:"^[0-9a-f]{64}$" desc:"its SHA-256 (GET /iot/firmware's ETag); null when none"`
}

type identityDTO struct {
	ClientID       string   `json:"client_id"`
	Exists         bool     `json:"exists"`
	Enabled        bool     `json:"enabled"`
	ServiceAccount bool     `json:"service_account"`
	Problems       []string `json:"problems"`
}

func toIdentityDTO(st model.IdentityStatus) identityDTO {
	problems := st.Problems
	if problems == nil {
		problems = []string{}
	}
	return identityDTO{
		ClientID:       st.ClientID,
		Exists:         st.Exists,
		Enabled:        st.Enabled,
		ServiceAccount: st.ServiceAccount,
		Problems:       problems,
	}
}

// provisioningNVSDTO is the default GET /api/devices/{id}/provisioning body.
type provisioningNVSDTO struct {
	Partition string `json:"partition" oas:"const=nvs"`
	Size      int    `json:"size"`
	Data      []byte `json:"data" desc:"the NVS partition image"` // base64 (standard, padded)
}

// provisioningDTO is ?format=json: the NVS keys as JSON members, optional
// ones omitted when unset.
type provisioningDTO struct {
	DeviceKey    string `json:"device_key"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	TokenURL     string `json:"token_url,omitempty"`
	BaseURL      string `json:"base_url,omitempty"`
	MQTTURL      string `json:"mqtt_url,omitempty"`
	MQTTPassword string `json:"mqtt_password,omitempty"`
	WiFiSSID     string `json:"wifi_ssid,omitempty"`
	WiFiPassword string `json:"wifi_password,omitempty"`
}

func toProvisioningDTO(p ports.Provisioning) provisioningDTO {
	return provisioningDTO{
		DeviceKey:    p.DeviceKey,
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		TokenURL:     p.TokenURL,
		BaseURL:      p.BaseURL,
		MQTTURL:      p.MQTTURL,
		MQTTPassword: p.MQTTPassword,
		WiFiSSID:     p.WiFiSSID,
		WiFiPassword: p.WiFiPassword,
	}
}

// isJSONNull reports whether raw is the JSON literal null.
func isJSONNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}
