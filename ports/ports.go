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
	// CreateModel inserts m, setting ID, CreatedAt and UpdatedAt, and
	// appends audit (ModelID set to m's) in the same transaction.
	// A duplicate code is model.ErrConflict.
	CreateModel(ctx context.Context, m *model.DeviceModel, audit []model.AuditEntry) error
	GetModel(ctx context.Context, id int64) (model.DeviceModel, error)
	GetModelByCode(ctx context.Context, code string) (model.DeviceModel, error)
	ListModels(ctx context.Context) ([]model.DeviceModel, error)
	// UpdateModel runs fn on the locked current row and stores the result
	// with the audit entries fn returns, in one transaction (fn may run
	// again: each run returns its own entries). Code and ID changes made
	// by fn are ignored.
	UpdateModel(ctx context.Context, id int64, fn func(*model.DeviceModel) ([]model.AuditEntry, error)) (model.DeviceModel, error)
	// DeleteModel removes a model and appends audit, in one transaction;
	// model.ErrConflict while devices use it.
	DeleteModel(ctx context.Context, id int64, audit []model.AuditEntry) error
}

// Page sizes of every paged list (devices, the rotation dashboard, the
// audit log), here only: the use cases check a requested limit against
// them, the HTTP API declares them, and repositories serve PageLimit.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// PageLimit is the page size a repository serves for a requested limit:
// DefaultPageSize below 1, MaxPageSize above it.
func PageLimit(limit int) int {
	switch {
	case limit < 1:
		return DefaultPageSize
	case limit > MaxPageSize:
		return MaxPageSize
	}
	return limit
}

// DeviceFilter narrows ListDevices. Nil fields do not filter.
type DeviceFilter struct {
	ModelID       *int64
	RotationState *model.RotationState
	Active        *bool
	// FirmwareVersion keeps the devices whose latest state report (SPEC
	// §15) names this firmware version.
	FirmwareVersion *string
	// SeenBefore keeps the devices not seen since then: last_seen_at
	// before it, or never seen.
	SeenBefore *time.Time
	// Tags keeps the devices that carry every one of them (none: no
	// filter).
	Tags []string
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
	// CreateDevice inserts d, setting ID and timestamps, and appends audit
	// (DeviceID set to d's) in the same transaction. A duplicate key is
	// model.ErrConflict; an unknown model is model.ErrNotFound.
	CreateDevice(ctx context.Context, d *model.Device, audit []model.AuditEntry) error
	// GetDevice reads the device's current row.
	GetDevice(ctx context.Context, id int64) (model.Device, error)
	// GetDeviceByKey is the device API's lookup. It may be served from a
	// replica's cache that every committed change of the row invalidates
	// (adapters/devicecache): a change made through another replica shows
	// a few milliseconds late, and LastSeenAt may be older than the row's.
	// A decision that must see the row as it is now reads it with
	// GetDevice or UpdateDevice.
	GetDeviceByKey(ctx context.Context, key string) (model.Device, error)
	ListDevices(ctx context.Context, f DeviceFilter) (DevicePage, error)
	// UpdateDevice runs fn on the locked current row and stores the result
	// with the audit entries fn returns, in the same transaction (fn may
	// run again: each run returns its own entries). ID, Key,
	// DeviceModelID, Reported and AssignedFirmwareID changes are ignored
	// (ReportState writes the report, AssignFirmware the assignment).
	UpdateDevice(ctx context.Context, id int64, fn func(*model.Device) ([]model.AuditEntry, error)) (model.Device, error)
	// DeleteDevice removes the device and appends audit, in one
	// transaction.
	DeleteDevice(ctx context.Context, id int64, audit []model.AuditEntry) error
	// TouchLastSeen sets last_seen_at = at unless it is already later than
	// at - minInterval (so a busy device costs at most one write a minute).
	// An unknown device (deleted since it authenticated) is not an error.
	TouchLastSeen(ctx context.Context, id int64, at time.Time, minInterval time.Duration) error
	// DeviceKeysExist returns the subset of keys that belong to a device.
	DeviceKeysExist(ctx context.Context, keys []string) (map[string]bool, error)
	// ReportState stores report as the device's latest state report (SPEC
	// §15; report.At is its reported_at) and moves last_seen_at to
	// report.At (never back), in one transaction with the device row
	// locked: audit is given the report it replaces (nil for the first)
	// and returns the entries to append with it. updated_at is left
	// alone: a report is not a change of the device. An unknown device is
	// model.ErrNotFound.
	ReportState(ctx context.Context, id int64, report model.StateReport, audit func(previous *model.StateReport) []model.AuditEntry) error
	// AssignFirmware sets the assigned firmware (SPEC §16) of those of the
	// devices whose model is the firmware's to firmwareID, or clears it
	// when firmwareID is nil, and returns how many devices it changed.
	// updated_at is left alone (an assignment is no admin change of the
	// device). Unknown ids are skipped.
	AssignFirmware(ctx context.Context, deviceIDs []int64, firmwareID *int64) (int, error)

	RotationQueue
	FleetStats
}

// FleetStats counts devices by what they report (SPEC §15), for the
// metrics and the fleet view. Each is one query.
type FleetStats interface {
	// FirmwareCounts counts the active devices of each model by reported
	// firmware version (Version empty for those without a report), by
	// model code then version; a model without active devices is absent.
	FirmwareCounts(ctx context.Context) ([]model.FirmwareCount, error)
	// StaleCounts counts, for every model (by code, each present), the
	// active devices silent since before before: last seen before it, or
	// never seen and created before it.
	StaleCounts(ctx context.Context, before time.Time) (map[string]int, error)
}

// RotationQueue is the part of DeviceRepo the rotation use case works the
// queue with (SPEC §4).
type RotationQueue interface {
	// QueueRotations sets every active OK device (of model modelID only,
	// when it is not 0) to QUEUED and returns how many it queued.
	QueueRotations(ctx context.Context, modelID int64) (int, error)
	// StartRotations starts rotations in free slots, in one transaction
	// that is serialised with every other StartRotations on the same
	// database (so the bound holds across processes): free = limit minus
	// the PENDING devices (active or not). It claims up to free devices,
	// each row locked FOR UPDATE SKIP LOCKED: active QUEUED devices by
	// oldest SecretCreatedAt (never set first, then by id), then active
	// TIMEOUT devices whose LastRotationAttemptAt is at or before
	// retryBefore, oldest attempt first. start runs on each claimed device
	// (it sets the state to PENDING and the attempt time) and the results,
	// with the audit entries start returns, are stored before the commit;
	// an error of start aborts the whole call (nothing is stored) and is
	// returned as it is. It returns the started devices.
	StartRotations(ctx context.Context, limit int, retryBefore time.Time, start func(*model.Device) ([]model.AuditEntry, error)) ([]model.Device, error)
	// ExpiredRotations returns the ids of PENDING devices whose attempt
	// began at or before before, or at or before unfetchedBefore without a
	// fetch since it began (LastRotationFetchAt), or that are inactive,
	// oldest attempt first, at most limit.
	ExpiredRotations(ctx context.Context, before, unfetchedBefore time.Time, limit int) ([]int64, error)
	// UnconfirmedRotations counts the devices whose rotation generated a
	// secret that is not confirmed yet (NewSecretAt set), active or not.
	UnconfirmedRotations(ctx context.Context) (int, error)
	// RotationCounts counts active devices by state, and inactive ones.
	// Every state is present in ByState (0 when none).
	RotationCounts(ctx context.Context) (model.RotationCounts, error)
	// InFlight returns the ids of the PENDING devices, ascending.
	InFlight(ctx context.Context) ([]int64, error)
	// LastRotationCompleted is the latest LastRotationCompletedAt of any
	// device; nil when no rotation ever completed.
	LastRotationCompleted(ctx context.Context) (*time.Time, error)
	// DashboardCounts counts the devices of each group (every group
	// present).
	DashboardCounts(ctx context.Context, q DashboardQuery) (map[model.DashboardGroup]int, error)
	// DashboardPage is one page of a group's devices by id (Limit and
	// AfterID as in DeviceFilter).
	DashboardPage(ctx context.Context, q DashboardQuery, g model.DashboardGroup, limit int, afterID int64) (DevicePage, error)
}

// DashboardQuery holds the thresholds that sort devices into dashboard
// groups. A device's secret age counts from SecretCreatedAt, or CreatedAt
// when that is unset. For an active device, in this order:
//   - critical: its secret was created before CriticalBefore, or a generated
//     secret is unconfirmed since before UnconfirmedBefore (NewSecretAt set
//     and older);
//   - warning: its secret was created before WarningBefore, or its state is
//     TIMEOUT;
//   - healthy: every other (OK, QUEUED or PENDING with a young secret).
//
// Inactive devices are in the inactive group only.
type DashboardQuery struct {
	WarningBefore     time.Time
	CriticalBefore    time.Time
	UnconfirmedBefore time.Time
}

// ScheduleRepo records when a schedule last fired, so that a tick fires
// once across replicas and missed ticks collapse into one.
type ScheduleRepo interface {
	// LastFire returns when the named schedule last fired; zero when it
	// never did (its first start).
	LastFire(ctx context.Context, name string) (time.Time, error)
	// AdvanceFire moves the schedule's last fire from from (zero: never
	// fired) to to, only if it is still from, and appends audit with the
	// move; false (and nothing appended) when another process moved it
	// first.
	AdvanceFire(ctx context.Context, name string, from, to time.Time, audit []model.AuditEntry) (bool, error)
	// RecordExpression records expr as the named schedule's expression
	// (or another named setting: the rotation mode in force) and returns
	// the one recorded before ("" the first time). When it changes, audit
	// is appended with it.
	RecordExpression(ctx context.Context, name, expr string, audit []model.AuditEntry) (previous string, err error)
}

// Lease is the rotation worker's lease: at most one process on a database
// holds it; it is released when its holder stops or dies (within seconds).
type Lease interface {
	// Hold keeps or takes the lease and reports whether this process holds
	// it now. A lease lost meanwhile (database restarted) is reported as
	// not held, and taken again when it is free.
	Hold(ctx context.Context) (bool, error)
	// Release gives the lease up; not holding it is not an error.
	Release(ctx context.Context) error
	// Holder names the process holding the lease ("" when none).
	Holder(ctx context.Context) (string, error)
}

// FirmwareRepo records firmware uploads and which of them is released
// (SPEC §16). An upload is released when its ReleasedAt is set; the
// model's released firmware is its upload with the latest ReleasedAt (ties
// by ID), and device_models.firmware_version is that upload's version.
// Uploads are never deleted but with their model.
type FirmwareRepo interface {
	// RecordFirmware appends f to the model's history, atomically with
	// its check: released when f.ReleasedAt is set (the repository stores
	// its own release time, later than every earlier release of the
	// model, in f.ReleasedAt, and sets the model's FirmwareVersion),
	// stored only when it is nil. Sets f.ID.
	// check, when not nil, runs first in the same transaction with the
	// model locked, given the model's released and newest uploads; its
	// error aborts the recording and is returned as it is, the audit
	// entries it returns are appended with the recording, and it may set
	// or clear f.ReleasedAt (and nothing else of f) to decide.
	RecordFirmware(ctx context.Context, f *model.Firmware, check func(cur FirmwareHeads) ([]model.AuditEntry, error)) error
	// ReleasedFirmware is the model's released firmware, or ErrNotFound
	// (none released, or no such model).
	ReleasedFirmware(ctx context.Context, modelID int64) (model.Firmware, error)
	// FirmwareBySHA256 is the model's upload of that image (the newest
	// when it was uploaded more than once), or ErrNotFound.
	FirmwareBySHA256(ctx context.Context, modelID int64, sha256 string) (model.Firmware, error)
	// ReleaseFirmware makes the model's upload sha256 (FirmwareBySHA256's)
	// its released firmware, with the model locked: ReleasedAt = now
	// (later than every earlier release), the model's FirmwareVersion =
	// its version. When it is the released one already nothing changes.
	// audit is given the upload (as it is after the call) and whether it
	// was released already, and its entries are appended in the same
	// transaction. It returns the upload and whether anything changed;
	// ErrNotFound for an unknown model or sha256.
	ReleaseFirmware(ctx context.Context, modelID int64, sha256 string, audit func(f model.Firmware, alreadyReleased bool) []model.AuditEntry) (model.Firmware, bool, error)
	// EffectiveFirmware is device deviceID's effective firmware (SPEC §16)
	// in one lookup that reads the device's assignment with it (never a
	// copy the caller holds, which a cache may have kept from before a
	// campaign assigned it): the assigned upload when there is one, else
	// the model's released firmware; ErrNotFound when there is neither, or
	// no such device.
	EffectiveFirmware(ctx context.Context, deviceID int64) (model.Firmware, error)
	// ListFirmware is the model's upload history, newest first.
	ListFirmware(ctx context.Context, modelID int64) ([]model.Firmware, error)
}

// FirmwareHeads are what RecordFirmware's check compares an upload with:
// the model's released firmware and its newest upload (nil when none).
type FirmwareHeads struct {
	Released *model.Firmware
	Newest   *model.Firmware
}

// ReleaseGate can hold an upload back from release (SPEC §16: while a model
// has a running or paused campaign an upload is stored, not released). The
// upload use case asks it inside RecordFirmware's check, with the model
// row locked: whatever takes that lock to start holding releases (a
// campaign's creation) is serialised with the upload.
type ReleaseGate interface {
	// HoldRelease returns why an upload to the model is stored and not
	// released now ("" to release it); the reason becomes one of the
	// upload's warnings.
	HoldRelease(ctx context.Context, modelID int64) (reason string, err error)
}

// Blob is an opened stored blob (BlobStore.OpenBlob).
type Blob interface {
	io.ReadSeekCloser
	Size() int64
}

// The identity provider (Keycloak) holds one confidential client per
// device; client ids are model.ClientID values. Its ports are split by
// the use cases that consume them: DeviceClients (a device's client over
// its life), ClientDirectory (the reconciler), SecretRotator (the
// rotation's steps) and RotationPolicyReader (the rotation mode).
// IdentityProvider is all of them, the whole of what an adapter serves.

// DeviceClients manages one device's client: created and deleted with the
// device, its secret handed out in provisioning data, its set-up checked
// and repaired by the identity admin use cases.
type DeviceClients interface {
	// CreateClient creates a confidential device client and returns its
	// secret. An existing client is model.ErrConflict.
	CreateClient(ctx context.Context, clientID string) (secret string, err error)
	// DeleteClient removes the client; a missing client is not an error.
	DeleteClient(ctx context.Context, clientID string) error
	// ClientSecret returns the client's current secret.
	ClientSecret(ctx context.Context, clientID string) (string, error)
	// ClientStatus reports whether the client exists and is set up as
	// CreateClient would have made it.
	ClientStatus(ctx context.Context, clientID string) (model.IdentityStatus, error)
	// RepairClient makes the client match what CreateClient makes,
	// creating it when missing, without changing an existing secret.
	RepairClient(ctx context.Context, clientID string) (model.IdentityStatus, error)
}

// ClientDirectory is what the reconciler compares the device rows with:
// every device client, and the deletion of an orphan.
type ClientDirectory interface {
	// ListDeviceClients returns every client whose id starts with
	// model.ClientIDPrefix.
	ListDeviceClients(ctx context.Context) ([]model.ClientInfo, error)
	// DeleteClient removes the client; a missing client is not an error.
	DeleteClient(ctx context.Context, clientID string) error
}

// SecretRotator is what the rotation's steps do to a device client's
// secrets: generate, confirm, end the old one, restore it.
type SecretRotator interface {
	// ClientSecret returns the client's current secret.
	ClientSecret(ctx context.Context, clientID string) (string, error)
	// RegenerateSecret makes a new random secret the client's main one.
	// Where a secret-rotation policy covers the client, the old secret
	// stays valid as the rotated secret; elsewhere it stops working at once.
	RegenerateSecret(ctx context.Context, clientID string) (string, error)
	// CoverClient makes sure the realm's client policies have been applied
	// to the client (Keycloak applies them at creation and update only),
	// updating it when they have not; it never changes a secret. It
	// reports whether it updated the client.
	CoverClient(ctx context.Context, clientID string) (bool, error)
	// Secrets returns the secrets that authenticate the client now.
	Secrets(ctx context.Context, clientID string) (model.Secrets, error)
	// InvalidateRotatedSecret ends the rotated secret at once; a client
	// without one is not an error.
	InvalidateRotatedSecret(ctx context.Context, clientID string) error
	// SetSecret sets a specific secret as the only valid one (restoring a
	// previous one; a rotated secret ends).
	SetSecret(ctx context.Context, clientID, secret string) error
	// SecretState reports what the provider records about the client's
	// secrets: when it made the current one (by its own clock) and
	// whether a rotated secret is kept beside it.
	SecretState(ctx context.Context, clientID string) (model.SecretState, error)
	// Now reads the provider's clock (whole seconds) by an operation that
	// begins after the call: every operation the provider finished before
	// the call happened at or before the time returned.
	Now(ctx context.Context) (time.Time, error)
}

// CoveredSecretsReader is an optional SecretRotator shortcut: a provider
// that can apply the rotation policy and read the secrets in fewer
// requests than CoverClient followed by Secrets offers it, and the
// rotation uses it where it needs both (grace-mode generation, on every
// device's rotation).
type CoveredSecretsReader interface {
	// CoveredSecrets is CoverClient followed by Secrets.
	CoveredSecrets(ctx context.Context, clientID string) (model.Secrets, error)
}

// RotationPolicyReader is what the rotation mode is resolved from.
type RotationPolicyReader interface {
	// RotationPolicy reports whether the secret-rotation feature is on and
	// a client policy covers device clients with a secret-rotation profile.
	RotationPolicy(ctx context.Context) (model.RotationPolicy, error)
}

// IdentityProvider is every identity-provider port, and Ping for
// readiness: what an adapter implements and
// portstest.RunIdentityProviderContract checks. No use case takes it
// whole.
type IdentityProvider interface {
	DeviceClients
	ClientDirectory
	SecretRotator
	RotationPolicyReader
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
	// FirmwareAssigned tells one device which firmware it should run now
	// (a campaign assigned it, or an abort took the assignment back):
	// {"firmware_version", "sha256"} on iotsupport/<client_id>/firmware
	// (SPEC §16).
	FirmwareAssigned(ctx context.Context, clientID, version, sha256 string) error
}

// SecretBox seals secrets kept at rest (AES-256-GCM).
type SecretBox interface {
	Seal(plaintext []byte) ([]byte, error)
	Open(sealed []byte) ([]byte, error)
}

// Schedule says when a cron schedule fires next.
type Schedule interface {
	// Next returns the first fire time strictly after after.
	Next(after time.Time) (time.Time, error)
	// String is the schedule's expression.
	String() string
}
