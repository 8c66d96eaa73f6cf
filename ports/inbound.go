package ports

import (
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// The inbound ports: what driving adapters (HTTP, CLI) call. core/mdm
// implements them; adapters depend only on these interfaces.

// NewModel is the input of ModelAdmin.CreateModel.
type NewModel struct {
	Code         string
	Name         string
	ConfigSchema json.RawMessage // nil or JSON null: no schema
}

// ModelUpdate is the input of ModelAdmin.UpdateModel. Nil fields are left as
// they are; SetSchema with a nil ConfigSchema clears the schema.
type ModelUpdate struct {
	Name         *string
	SetSchema    bool
	ConfigSchema json.RawMessage
	// Force applies a new schema even when existing device configs do not
	// match it (it then holds for config writes from now on).
	Force bool
}

// NewDevice is the input of DeviceAdmin.CreateDevice.
type NewDevice struct {
	DeviceModelID int64
	Config        json.RawMessage // a JSON object
	Active        *bool           // nil: true
	Tags          []string        // nil: none (model.CheckTags)
}

// DeviceUpdate is the input of DeviceAdmin.UpdateDevice.
type DeviceUpdate struct {
	Config json.RawMessage // nil: unchanged
	Active *bool           // nil: unchanged
	Tags   *[]string       // nil: unchanged; else the new set (model.CheckTags)
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
	// MQTTPassword is the password of the device's broker account (SPEC
	// §19; its username is ClientID); empty when it has none.
	MQTTPassword string
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
	// AccountsMade are devices whose broker account was missing, now made;
	// AccountsRepaired those whose account differed from the device (its
	// role, its active flag, no password on record), now brought back;
	// AccountsDeleted orphaned accounts, now removed; AccountsFailed the
	// accounts whose repair or removal failed (retried next run). Empty
	// without broker accounts (MQTT_AUTH=none).
	AccountsMade     []string
	AccountsRepaired []string
	AccountsDeleted  []string
	AccountsFailed   []string
}

// The admin use cases, one port per group of admin routes (and the
// reconciler): ModelAdmin, FirmwareAdmin, DeviceAdmin, ProvisioningAdmin,
// IdentityAdmin and Reconciler.

// ModelAdmin is the admin use cases of device models
// (/api/device-models); the firmware routes and the device API read a
// model through it too.
type ModelAdmin interface {
	CreateModel(ctx context.Context, in NewModel) (model.DeviceModel, error)
	GetModel(ctx context.Context, id int64) (model.DeviceModel, error)
	ListModels(ctx context.Context) ([]model.DeviceModel, error)
	UpdateModel(ctx context.Context, id int64, in ModelUpdate) (model.DeviceModel, error)
	DeleteModel(ctx context.Context, id int64) error
}

// FirmwareAdmin is the admin use cases of a model's firmware
// (/api/device-models/{id}/firmware).
type FirmwareAdmin interface {
	// UploadFirmware validates data as an ESP32 app image for the model
	// and records it: released (the model's released firmware) unless
	// opts.Store or a ReleaseGate holds it, else only stored.
	UploadFirmware(ctx context.Context, modelID int64, data []byte, opts model.UploadOptions) (model.FirmwareUpload, error)
	// ReleaseFirmware makes the model's upload sha256 its released
	// firmware (a stored one, or an earlier one again: a rollback);
	// changed is false when it was released already (nothing done).
	ReleaseFirmware(ctx context.Context, modelID int64, sha256 string) (f model.Firmware, changed bool, err error)
	// OpenFirmware returns the model's released firmware and its content.
	OpenFirmware(ctx context.Context, modelID int64) (model.Firmware, Blob, error)
	// ListFirmware is the model's upload history, newest first
	// (model.ReleasedIn tells which one is released).
	ListFirmware(ctx context.Context, modelID int64) ([]model.Firmware, error)
}

// DeviceAdmin is the admin use cases of devices (/api/devices).
type DeviceAdmin interface {
	CreateDevice(ctx context.Context, in NewDevice) (model.Device, error)
	GetDevice(ctx context.Context, id int64) (model.Device, error)
	ListDevices(ctx context.Context, f DeviceFilter) (DevicePage, error)
	UpdateDevice(ctx context.Context, id int64, in DeviceUpdate) (model.Device, error)
	DeleteDevice(ctx context.Context, id int64) error
}

// ProvisioningAdmin hands out a device's provisioning data
// (/api/devices/{id}/provisioning).
type ProvisioningAdmin interface {
	// Provisioning returns the device's provisioning fields.
	Provisioning(ctx context.Context, id int64) (Provisioning, error)
	// ProvisioningNVS returns the device's NVS partition image of size
	// bytes (0x3000..0x100000, a multiple of 0x1000).
	ProvisioningNVS(ctx context.Context, id int64, size int) ([]byte, error)
}

// IdentityAdmin checks and repairs a device's client in the identity
// provider (/api/devices/{id}/identity).
type IdentityAdmin interface {
	IdentityStatus(ctx context.Context, id int64) (model.IdentityStatus, error)
	SyncIdentity(ctx context.Context, id int64) (model.IdentityStatus, error)
}

// Reconciler compares the identity provider's device clients with the
// devices (the periodic reconciler and espmdm reconcile).
type Reconciler interface {
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
	// DeviceFirmware returns the device's effective firmware (SPEC §16):
	// its assigned one, else its model's released one.
	DeviceFirmware(ctx context.Context, d model.Device) (model.Firmware, Blob, error)
	// FetchCredentials is the rotation fetch (GET /iot/provisioning): the
	// device's provisioning fields with the new secret while its rotation
	// is PENDING (generated at the first fetch of the rotation, the same
	// one on every later fetch), the current ones otherwise.
	FetchCredentials(ctx context.Context, d model.Device) (Provisioning, error)
	// AckCredentials confirms the new secret by its SHA-256 (lower-case
	// hex): the rotation completes when it matches the secret generated in
	// it; a repeat after completion is no error; anything else is
	// model.ErrConflict.
	AckCredentials(ctx context.Context, d model.Device, secretSHA256 string) error
	// ReportState stores the device's state report (POST /iot/state, SPEC
	// §15) as its latest, moving last_seen_at, and audits a change of the
	// reported firmware version; an invalid report is a
	// *model.ValidationError naming the member.
	ReportState(ctx context.Context, d model.Device, r model.StateReport) error
	// OfferedFirmware is the firmware GET /iot/firmware serves the device
	// (its effective firmware, without its binary); model.ErrNotFound
	// when it has none.
	OfferedFirmware(ctx context.Context, d model.Device) (model.Firmware, error)
}

// FleetReader is the admin view of the fleet by what its devices report
// (GET /api/fleet/firmware).
type FleetReader interface {
	// FirmwareCounts counts the active devices of each model by reported
	// firmware version (Version empty for those without a report), by
	// model code then version.
	FirmwareCounts(ctx context.Context) ([]model.FirmwareCount, error)
}

// Coredumps serves core dumps (SPEC §17): a device's upload, the admin
// routes over the stored dumps, and the ELFs they are analysed against.
type Coredumps interface {
	// UploadCoredump stores the dump device d sends (at most the
	// configured size: model.ErrTooLarge beyond it) for analysis.
	UploadCoredump(ctx context.Context, d model.Device, r io.Reader) (model.Coredump, error)
	// ListCoredumps is a page of a device's dumps, newest first (beforeID
	// 0: from the newest).
	ListCoredumps(ctx context.Context, deviceID int64, limit int, beforeID int64) (CoredumpPage, error)
	GetCoredump(ctx context.Context, id int64) (model.Coredump, error)
	// OpenCoredump opens a dump's bytes; the caller closes the blob.
	OpenCoredump(ctx context.Context, id int64) (model.Coredump, Blob, error)
	DeleteCoredump(ctx context.Context, id int64) error
	// ModelCrashes groups the model's analysed dumps of the last days by
	// crash function and firmware version.
	ModelCrashes(ctx context.Context, modelID int64, days int) ([]model.CrashGroup, error)
	// UploadFirmwareWithELF is FirmwareAdmin.UploadFirmware with the ELF
	// the image was built from, read to its end: the ELF is checked
	// against the image's app_elf_sha256 and stored first, so a wrong ELF
	// leaves the upload unrecorded.
	UploadFirmwareWithELF(ctx context.Context, modelID int64, data []byte, opts model.UploadOptions, elf io.Reader) (model.FirmwareUpload, error)
	// UploadELF stores the ELF of model modelID's upload imageSHA256 (it
	// must be the image's app_elf_sha256); size is its length or
	// UnknownSize.
	UploadELF(ctx context.Context, modelID int64, imageSHA256 string, r io.Reader, size int64) (model.Firmware, error)
}

// RotateResult is what Rotation.RotateDevice did.
type RotateResult string

// RotateDevice outcomes.
const (
	RotateQueued         RotateResult = "queued"
	RotateAlreadyPending RotateResult = "already_pending"
)

// RotationStatus is the state of the rotation queue (GET
// /api/rotation/status).
type RotationStatus struct {
	Mode     model.RotationMode
	Counts   model.RotationCounts
	InFlight []int64
	// LastCompletedAt and NextScheduled are nil when unknown.
	LastCompletedAt *time.Time
	NextScheduled   *time.Time
	// LeaseHolder names the process working the queue ("" when none).
	LeaseHolder string
}

// Dashboard is one page of the rotation dashboard.
type Dashboard struct {
	Counts map[model.DashboardGroup]int
	Group  model.DashboardGroup
	Page   DevicePage
}

// CycleReport says what one rotation cycle did.
type CycleReport struct {
	// Fired is true when the schedule fired (and Queued devices were
	// queued by it).
	Fired  bool
	Queued int
	// TimedOut and Started count devices.
	TimedOut int
	Started  int
}

// Rotation is the admin and worker use cases of credential rotation.
type Rotation interface {
	// RotateDevice queues one device; an inactive device is
	// model.ErrConflict.
	RotateDevice(ctx context.Context, id int64) (RotateResult, error)
	// TriggerRotation queues every active OK device and returns how many.
	TriggerRotation(ctx context.Context) (int, error)
	RotationStatus(ctx context.Context) (RotationStatus, error)
	// RotationDashboard returns the group counts and one page of group g.
	RotationDashboard(ctx context.Context, g model.DashboardGroup, limit int, afterID int64) (Dashboard, error)
	// RunRotationCycle fires the schedule when due, times out expired
	// attempts and starts devices in free slots. Only the lease holder
	// calls it.
	RunRotationCycle(ctx context.Context) (CycleReport, error)
}

// AuditReader is the admin use case of the audit log (GET /api/audit).
type AuditReader interface {
	// ListAudit returns one page of the audit log, oldest first; an
	// invalid filter is a *model.ValidationError.
	ListAudit(ctx context.Context, f AuditFilter) (AuditPage, error)
}
