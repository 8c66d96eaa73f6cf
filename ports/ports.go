// Package ports defines the interfaces the espmdm core needs from the outside
// world: persistence, the identity provider, notifications, firmware storage,
// token verification, secret sealing and time. Adapters implement them; the
// in-memory fakes and contract suites in portstest keep them honest.
package ports

import (
	"context"
	"io"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// Clock tells the time. Tests use a controllable fake.
type Clock interface {
	Now() time.Time
}

// ModelRepo persists device models.
type ModelRepo interface {
	// CreateModel inserts m, setting ID, CreatedAt and UpdatedAt.
	// A duplicate code is model.ErrConflict.
	CreateModel(ctx context.Context, m *model.DeviceModel) error
	GetModel(ctx context.Context, id int64) (model.DeviceModel, error)
	GetModelByCode(ctx context.Context, code string) (model.DeviceModel, error)
	ListModels(ctx context.Context) ([]model.DeviceModel, error)
	// UpdateModel runs fn on the locked current row and stores the result.
	// Code and ID changes made by fn are ignored.
	UpdateModel(ctx context.Context, id int64, fn func(*model.DeviceModel) error) (model.DeviceModel, error)
	// DeleteModel removes a model; model.ErrConflict while devices use it.
	DeleteModel(ctx context.Context, id int64) error
}

// Page sizes of ListDevices.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// DeviceFilter narrows ListDevices. Nil fields do not filter.
type DeviceFilter struct {
	ModelID       *int64
	RotationState *model.RotationState
	Active        *bool
	// Limit is the page size: DefaultPageSize below 1, at most
	// MaxPageSize. AfterID is the cursor: only devices with a larger ID are
	// returned, ordered by ID.
	Limit   int
	AfterID int64
}

// DevicePage is one page of devices; NextAfterID is 0 on the last page.
type DevicePage struct {
	Devices     []model.Device
	NextAfterID int64
}

// DeviceRepo persists devices. Every returned Device has ModelCode set.
type DeviceRepo interface {
	// CreateDevice inserts d, setting ID and timestamps. A duplicate key is
	// model.ErrConflict; an unknown model is model.ErrNotFound.
	CreateDevice(ctx context.Context, d *model.Device) error
	GetDevice(ctx context.Context, id int64) (model.Device, error)
	GetDeviceByKey(ctx context.Context, key string) (model.Device, error)
	ListDevices(ctx context.Context, f DeviceFilter) (DevicePage, error)
	// UpdateDevice runs fn on the locked current row and stores the result
	// in the same transaction. ID, Key and DeviceModelID changes are ignored.
	UpdateDevice(ctx context.Context, id int64, fn func(*model.Device) error) (model.Device, error)
	DeleteDevice(ctx context.Context, id int64) error
	// TouchLastSeen sets last_seen_at = at unless it is already later than
	// at - minInterval (so a busy device costs at most one write a minute).
	// An unknown device (deleted since it authenticated) is not an error.
	TouchLastSeen(ctx context.Context, id int64, at time.Time, minInterval time.Duration) error
	// DeviceKeysExist returns the subset of keys that belong to a device.
	DeviceKeysExist(ctx context.Context, keys []string) (map[string]bool, error)
}

// FirmwareRepo records firmware uploads.
type FirmwareRepo interface {
	// RecordFirmware stores f as the model's current firmware and sets the
	// model's FirmwareVersion, atomically. Sets f.ID.
	// check, when not nil, runs first in the same transaction with the
	// model locked, given the model's current firmware (nil when none); its
	// error aborts the recording and is returned as it is.
	RecordFirmware(ctx context.Context, f *model.Firmware, check func(current *model.Firmware) error) error
	// CurrentFirmware is the newest upload of the model, or ErrNotFound.
	CurrentFirmware(ctx context.Context, modelID int64) (model.Firmware, error)
	// ListFirmware is the model's upload history, newest first.
	ListFirmware(ctx context.Context, modelID int64) ([]model.Firmware, error)
}

// Blob is an opened stored file.
type Blob interface {
	io.ReadSeekCloser
	Size() int64
}

// FirmwareStore keeps firmware binaries, addressed by model code and the
// SHA-256 (hex) of their content.
type FirmwareStore interface {
	// Put writes data atomically (a reader never sees a partial file).
	Put(ctx context.Context, modelCode, sha256 string, data []byte) error
	Open(ctx context.Context, modelCode, sha256 string) (Blob, error)
	// DeleteModel removes every binary of the model (its model was
	// deleted); a model without binaries is not an error.
	DeleteModel(ctx context.Context, modelCode string) error
}

// IdentityProvider manages device clients in the identity provider
// (Keycloak). Client ids are model.ClientID values.
type IdentityProvider interface {
	// CreateClient creates a confidential device client and returns its
	// secret. An existing client is model.ErrConflict.
	CreateClient(ctx context.Context, clientID string) (secret string, err error)
	// DeleteClient removes the client; a missing client is not an error.
	DeleteClient(ctx context.Context, clientID string) error
	// ClientStatus reports whether the client exists and is set up as
	// CreateClient would have made it.
	ClientStatus(ctx context.Context, clientID string) (model.IdentityStatus, error)
	// RepairClient makes the client match what CreateClient makes,
	// creating it when missing, without changing an existing secret.
	RepairClient(ctx context.Context, clientID string) (model.IdentityStatus, error)
	// ClientSecret returns the client's current secret.
	ClientSecret(ctx context.Context, clientID string) (string, error)
	// RegenerateSecret replaces the secret with a new random one.
	RegenerateSecret(ctx context.Context, clientID string) (string, error)
	// SetSecret sets a specific secret (restoring a previous one).
	SetSecret(ctx context.Context, clientID, secret string) error
	// ListDeviceClients returns every client whose id starts with
	// model.ClientIDPrefix.
	ListDeviceClients(ctx context.Context) ([]model.ClientInfo, error)
	// Ping checks that the identity provider answers.
	Ping(ctx context.Context) error
}

// TokenVerifier checks bearer tokens from the OIDC issuer.
type TokenVerifier interface {
	// VerifyDevice checks a device access token (signature, issuer,
	// audience, lifetime, azp pattern). Failures are model.ErrUnauthenticated.
	VerifyDevice(ctx context.Context, raw string) (model.DeviceClaims, error)
	// VerifyAdmin checks an admin API token and returns its caller. A device
	// token is model.ErrUnauthenticated.
	VerifyAdmin(ctx context.Context, raw string) (model.Principal, error)
}

// Notifier tells devices that something changed. Implementations must not
// fail the caller while the broker is down: they queue and retry.
type Notifier interface {
	RotationNudge(ctx context.Context, clientID string) error
	ConfigChanged(ctx context.Context, clientID string) error
	FirmwareReleased(ctx context.Context, modelCode, version string) error
}

// SecretBox seals secrets kept at rest (AES-256-GCM).
type SecretBox interface {
	Seal(plaintext []byte) ([]byte, error)
	Open(sealed []byte) ([]byte, error)
}
