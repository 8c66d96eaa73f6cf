package ports

import (
	"context"
	"encoding/json"

	"github.com/espmdm/espmdm/core/model"
)

// The inbound ports: what driving adapters (HTTP, CLI) call. core/mdm
// implements them; adapters depend only on these interfaces.

// NewModel is the input of Catalog.CreateModel.
type NewModel struct {
	Code         string
	Name         string
	ConfigSchema json.RawMessage // nil or JSON null: no schema
}

// ModelUpdate is the input of Catalog.UpdateModel. Nil fields are left as
// they are; SetSchema with a nil ConfigSchema clears the schema.
type ModelUpdate struct {
	Name         *string
	SetSchema    bool
	ConfigSchema json.RawMessage
}

// NewDevice is the input of Catalog.CreateDevice.
type NewDevice struct {
	DeviceModelID int64
	Config        json.RawMessage // a JSON object
	Active        *bool           // nil: true
}

// DeviceUpdate is the input of Catalog.UpdateDevice.
type DeviceUpdate struct {
	Config json.RawMessage // nil: unchanged
	Active *bool           // nil: unchanged
}

// Provisioning is what a device needs to reach espmdm: the fields of its NVS
// partition, in NVS order. Optional fields are empty when unset.
type Provisioning struct {
	DeviceKey    string
	ClientID     string
	ClientSecret string
	TokenURL     string
	BaseURL      string
	MQTTURL      string
	WiFiSSID     string
	WiFiPassword string
}

// ReconcileReport says what a reconciliation found and did.
type ReconcileReport struct {
	// DeletedOrphans are device clients without a device row, now deleted.
	DeletedOrphans []string
	// MissingClients are devices whose client does not exist.
	MissingClients []string
	// Failed lists clients whose deletion failed (retried next run).
	Failed []string
}

// Catalog is the admin use cases for device models, firmware and devices.
type Catalog interface {
	CreateModel(ctx context.Context, in NewModel) (model.DeviceModel, error)
	GetModel(ctx context.Context, id int64) (model.DeviceModel, error)
	ListModels(ctx context.Context) ([]model.DeviceModel, error)
	UpdateModel(ctx context.Context, id int64, in ModelUpdate) (model.DeviceModel, error)
	DeleteModel(ctx context.Context, id int64) error

	// UploadFirmware validates data as an ESP32 app image for the model
	// and makes it the model's current firmware.
	UploadFirmware(ctx context.Context, modelID int64, data []byte) (model.Firmware, error)
	// OpenFirmware returns the model's current firmware and its content.
	OpenFirmware(ctx context.Context, modelID int64) (model.Firmware, Blob, error)
	ListFirmware(ctx context.Context, modelID int64) ([]model.Firmware, error)

	CreateDevice(ctx context.Context, in NewDevice) (model.Device, error)
	GetDevice(ctx context.Context, id int64) (model.Device, error)
	ListDevices(ctx context.Context, f DeviceFilter) (DevicePage, error)
	UpdateDevice(ctx context.Context, id int64, in DeviceUpdate) (model.Device, error)
	DeleteDevice(ctx context.Context, id int64) error

	// Provisioning returns the device's provisioning fields.
	Provisioning(ctx context.Context, id int64) (Provisioning, error)
	// ProvisioningNVS returns the device's NVS partition image of size
	// bytes (0x3000..0x100000, a multiple of 0x1000).
	ProvisioningNVS(ctx context.Context, id int64, size int) ([]byte, error)
	IdentityStatus(ctx context.Context, id int64) (model.IdentityStatus, error)
	SyncIdentity(ctx context.Context, id int64) (model.IdentityStatus, error)

	Reconcile(ctx context.Context) (ReconcileReport, error)
}

// DeviceAPI is the use cases behind /iot, for authenticated devices.
type DeviceAPI interface {
	// AuthenticateDevice resolves verified claims to the device: unknown
	// device or model mismatch is model.ErrUnauthenticated, an inactive
	// device model.ErrForbidden. It records last_seen_at (at most once a
	// minute).
	AuthenticateDevice(ctx context.Context, c model.DeviceClaims) (model.Device, error)
	// DeviceConfig returns the device's config.
	DeviceConfig(ctx context.Context, d model.Device, c model.DeviceClaims) (json.RawMessage, error)
	// DeviceFirmware returns the current firmware of the device's model.
	DeviceFirmware(ctx context.Context, d model.Device) (model.Firmware, Blob, error)
}
