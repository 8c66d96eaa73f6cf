package model

import (
	"encoding/json"
	"regexp"
	"time"
)

// DeviceModel is a hardware type. Code is unique and immutable.
type DeviceModel struct {
	ID   int64
	Code string
	Name string
	// FirmwareVersion is the version of the released firmware's app
	// descriptor (SPEC §16); empty when none was released.
	FirmwareVersion string
	// ConfigSchema is an optional JSON Schema for device configs; nil when
	// unset.
	ConfigSchema json.RawMessage
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// ModelCodePattern is what a device model code must match.
var ModelCodePattern = regexp.MustCompile(`^[a-z0-9_]{1,50}$`)

// RotationState is where a device is in the credential rotation cycle.
type RotationState string

// Rotation states. OK -> QUEUED -> PENDING -> OK; PENDING -> TIMEOUT -> PENDING.
const (
	RotationOK      RotationState = "OK"
	RotationQueued  RotationState = "QUEUED"
	RotationPending RotationState = "PENDING"
	RotationTimeout RotationState = "TIMEOUT"
)

// Valid reports whether s is one of the four rotation states.
func (s RotationState) Valid() bool {
	switch s {
	case RotationOK, RotationQueued, RotationPending, RotationTimeout:
		return true
	}
	return false
}

// Device is one physical ESP32. Key is unique and immutable.
type Device struct {
	ID            int64
	Key           string
	DeviceModelID int64
	// ModelCode is the code of the device's model, loaded with the device
	// (it is immutable, so it never goes stale).
	ModelCode string
	// Config is a JSON object.
	Config        json.RawMessage
	Active        bool
	RotationState RotationState

	SecretCreatedAt       *time.Time
	LastRotationAttemptAt *time.Time
	// LastRotationFetchAt is when the device last fetched its credentials
	// during a PENDING attempt; before LastRotationAttemptAt (or nil) when
	// it has not answered the current attempt's nudge.
	LastRotationFetchAt *time.Time
	// LastRotationRenudgeAt is when the nudge was last sent again to a
	// device that showed up after fetching without confirming (SPEC §4
	// decision: once per attempt).
	LastRotationRenudgeAt   *time.Time
	LastRotationCompletedAt *time.Time
	LastSeenAt              *time.Time

	// NewSecretAt is when the new secret of the rotation in progress was
	// generated in the identity provider; nil when none was.
	NewSecretAt *time.Time
	// PreviousSecret is the sealed (encrypted) secret the device had before
	// the rotation in progress; nil outside a rotation. It is set before the
	// new secret is generated, so a rotation whose generation was cut off
	// (crash, Keycloak timeout) can tell whether it happened.
	PreviousSecret []byte
	// IATAfter is, for a rotation whose new secret was generated in
	// restore mode, a time by the identity provider's own clock (whole
	// seconds) by which the old secret had stopped working: a token whose
	// iat is a later second was issued for the new secret. Nil when no
	// token can prove that: nothing generated, generated in grace mode
	// (where the old secret stays valid until the ack), or recorded before
	// espmdm kept this time.
	IATAfter *time.Time
	// SecretSHA256 is the lower-case hex SHA-256 of the secret generated in
	// the device's latest rotation: unconfirmed while NewSecretAt is set,
	// confirmed (kept for an idempotent repeated ack) after completion;
	// empty when none was generated or a restore undid it. A digest of a
	// random 32-character secret reveals nothing of it.
	SecretSHA256 string

	// MQTTPassword is the sealed (encrypted) password of the device's
	// broker account (SPEC §19); nil when it has none yet (a device made
	// before broker accounts, or with MQTT_AUTH=none): the reconciler
	// makes one.
	MQTTPassword []byte

	// Tags are the device's tags (SPEC §16): sorted, without duplicates,
	// each matching TagPattern, at most MaxTags (CheckTags).
	Tags []string
	// AssignedFirmwareID is the firmware a campaign assigned to the device
	// (SPEC §16): its effective firmware instead of the model's released
	// one; nil: the released one. Only FirmwareRepo.AssignFirmware writes
	// it.
	AssignedFirmwareID *int64

	// Reported is the device's latest state report (SPEC §15), with the
	// time espmdm received it; nil before its first. Only
	// DeviceRepo.ReportState writes it.
	Reported *StateReport

	CreatedAt time.Time
	UpdatedAt time.Time
}

// DeviceKeyPattern is what a device key matches: 8 chars of [a-z0-9].
var DeviceKeyPattern = regexp.MustCompile(`^[a-z0-9]{8}$`)

// ClientIDPrefix starts every device's identity-provider client id.
const ClientIDPrefix = "iotdevice-"

// ClientID derives the identity-provider client id of a device.
func ClientID(modelCode, key string) string {
	return ClientIDPrefix + modelCode + "-" + key
}

// ClientID is the device's identity-provider client id.
func (d Device) ClientID() string { return ClientID(d.ModelCode, d.Key) }

// clientIDPattern matches a device client id; groups are model code and key.
var clientIDPattern = regexp.MustCompile(`^iotdevice-([a-z0-9_]+)-([a-z0-9]{8})$`)

// ParseClientID splits a device client id into model code and key.
func ParseClientID(clientID string) (modelCode, key string, ok bool) {
	m := clientIDPattern.FindStringSubmatch(clientID)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// Firmware is one uploaded firmware version of a device model.
type Firmware struct {
	ID            int64
	DeviceModelID int64
	Version       string
	ProjectName   string
	IDFVersion    string
	Chip          string // "esp32", "esp32s3", ...
	ChipID        int
	SHA256        string // lower-case hex of the whole file
	Size          int64
	// SecureVersion is the app descriptor's secure_version: devices with
	// anti-rollback (eFuse-backed) refuse an image whose value is lower
	// than the one they run.
	SecureVersion uint32
	// ELFSHA256 is the app descriptor's app_elf_sha256: the SHA-256 of the
	// ELF the image was built from (lower-case hex; empty for an image
	// whose descriptor does not carry it). HasELF is true once that ELF is
	// stored (SPEC §17), for core dump analysis.
	ELFSHA256  string
	HasELF     bool
	UploadedAt time.Time
	// ReleasedAt is when the upload was last released (SPEC §16): the
	// model's released firmware is its upload with the latest ReleasedAt
	// (ties by ID). Nil: stored only (history and binary, offered to no
	// device unless a campaign assigns it).
	ReleasedAt *time.Time
}

// ReleasedBefore reports whether f was released before g: g is the later
// release (SPEC §16: the model's released firmware is its upload with the
// latest ReleasedAt, ties by ID). An upload never released is before every
// released one.
func (f Firmware) ReleasedBefore(g Firmware) bool {
	switch {
	case g.ReleasedAt == nil:
		return false
	case f.ReleasedAt == nil:
		return true
	case !f.ReleasedAt.Equal(*g.ReleasedAt):
		return f.ReleasedAt.Before(*g.ReleasedAt)
	}
	return f.ID < g.ID
}

// ReleasedIn returns the released firmware among a model's uploads; false
// when none of them is released.
func ReleasedIn(history []Firmware) (Firmware, bool) {
	var out Firmware
	found := false
	for _, f := range history {
		if f.ReleasedAt != nil && (!found || out.ReleasedBefore(f)) {
			out, found = f, true
		}
	}
	return out, found
}

// UploadOptions are an admin's choices for one firmware upload.
type UploadOptions struct {
	// Force accepts an image whose secure_version is lower than the
	// released firmware's, which anti-rollback devices will refuse.
	Force bool
	// Store keeps the upload without releasing it (?release=false): it is
	// recorded in the history and its binary kept, and no device is told.
	Store bool
}

// FirmwareUpload is the outcome of a firmware upload.
type FirmwareUpload struct {
	Firmware
	// Unchanged is true when the image was the released firmware already
	// (or, stored only, the released or newest upload): nothing was
	// recorded and no device was told.
	Unchanged bool
	// Released is true when the upload is (now) the model's released
	// firmware; false when it was only stored (asked so, or held by
	// ports.ReleaseGate).
	Released bool
	// Warnings say where the upload goes backwards (secure_version when
	// forced, or the version string) against the released firmware, and
	// why an upload meant for release was only stored.
	Warnings []string
}

// IdentityStatus is the state of a device's client in the identity
// provider, as reported by GET /api/devices/{id}/identity.
type IdentityStatus struct {
	ClientID       string
	Exists         bool
	Enabled        bool
	ServiceAccount bool
	// Problems lists every way the client differs from what espmdm
	// creates (missing role mapper, wrong flows, ...). Empty when healthy.
	Problems []string
}

// ClientInfo is one device client found in the identity provider.
type ClientInfo struct {
	ClientID string
	// CreatedAt is when espmdm created the client (recorded in a client
	// attribute); zero when unknown. The reconciler leaves orphans younger
	// than a grace period alone: their device row may still be on its way.
	CreatedAt time.Time
}

// DeviceClaims is what a verified device access token says.
type DeviceClaims struct {
	ClientID  string
	ModelCode string
	Key       string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// Principal is a verified admin API caller.
type Principal struct {
	Subject  string
	ClientID string
	// Username is the token's preferred_username, when it has one.
	Username string
	Roles    []string
}

// HasRole reports whether p holds role.
func (p Principal) HasRole(role string) bool {
	for _, r := range p.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// RotationMode is how a rotation keeps devices connected (SPEC §4).
type RotationMode string

// Rotation modes.
const (
	// RotationAuto picks RotationGrace when the identity provider's
	// client policies cover the device clients with a secret-rotation
	// profile, else RotationRestore.
	RotationAuto RotationMode = "auto"
	// RotationGrace keeps the old secret valid as the rotated secret until
	// the device acks the new one (zero lockout).
	RotationGrace RotationMode = "grace"
	// RotationRestore replaces the secret at generation and restores the
	// old one when the device does not confirm in time.
	RotationRestore RotationMode = "restore"
)

// RotationPolicy is what the identity provider does when a device secret is
// generated: whether its secret-rotation feature is on and a client policy
// with a secret-rotation profile covers the device clients, with that
// profile's periods.
type RotationPolicy struct {
	// FeatureEnabled: the identity provider's client secret rotation
	// feature is enabled.
	FeatureEnabled bool
	// Covered: an enabled client policy whose profile has a
	// secret-rotation executor applies to device clients.
	Covered bool
	// Name names the covering policy and profile ("policy/profile").
	Name string
	// Expiration is how long a main secret lives (expiration-period).
	Expiration time.Duration
	// RotatedExpiration is how long the old secret stays valid after a
	// generation (rotated-expiration-period): the grace.
	RotatedExpiration time.Duration
	// RemainingRotation is how close to its expiry a secret must be for a
	// client update to rotate it (remaining-rotation-period).
	RemainingRotation time.Duration
	// Problems says, one line each, what keeps grace mode from working
	// (feature off, no policy, a policy that does not cover device
	// clients, periods that would rotate on updates, ...). It may be
	// non-empty while FeatureEnabled and Covered: grace mode needs both and
	// no problem.
	Problems []string
}

// Secrets are the secrets of a device client that authenticate now.
type Secrets struct {
	// Current is the main secret.
	Current string
	// Rotated is the old secret still valid after a generation under a
	// secret-rotation policy; empty when there is none.
	Rotated string
}

// SecretState is what the identity provider records about a client's
// secrets, without the secrets.
type SecretState struct {
	// CreatedAt is when the provider made the current secret, by its own
	// clock (whole seconds); zero when it does not record it.
	CreatedAt time.Time
	// Rotated is true while a rotated (old) secret is kept beside the
	// current one and has not expired.
	Rotated bool
}

// RotationCounts are the devices per rotation state (active devices only)
// and the number of inactive devices.
type RotationCounts struct {
	ByState  map[RotationState]int
	Inactive int
}

// DashboardGroup is one group of the rotation dashboard (SPEC §4).
type DashboardGroup string

// Dashboard groups.
const (
	// DashboardHealthy: active, secret younger than the warning age and
	// not TIMEOUT (OK, or QUEUED or PENDING in a normal rotation).
	DashboardHealthy DashboardGroup = "healthy"
	// DashboardWarning: active and not critical, with a secret older than
	// the warning age or in state TIMEOUT.
	DashboardWarning DashboardGroup = "warning"
	// DashboardCritical: active, secret older than the critical age, or a
	// generated secret unconfirmed for longer than half the grace.
	DashboardCritical DashboardGroup = "critical"
	// DashboardInactive: inactive devices.
	DashboardInactive DashboardGroup = "inactive"
)

// DashboardGroups lists the groups in display order.
var DashboardGroups = []DashboardGroup{DashboardHealthy, DashboardWarning, DashboardCritical, DashboardInactive}

// RenudgedThisAttempt reports whether the nudge was sent again since the
// current rotation attempt began.
func (d Device) RenudgedThisAttempt() bool {
	return sinceAttempt(d, d.LastRotationRenudgeAt)
}

// FetchedThisAttempt reports whether the device fetched its credentials
// since its current rotation attempt began (at or after it, to the
// microsecond the database keeps).
func (d Device) FetchedThisAttempt() bool {
	return sinceAttempt(d, d.LastRotationFetchAt)
}

// sinceAttempt reports whether at is set and not before d's current
// rotation attempt began (to the microsecond the database keeps).
func sinceAttempt(d Device, at *time.Time) bool {
	if at == nil {
		return false
	}
	if d.LastRotationAttemptAt == nil {
		return true
	}
	us := func(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }
	return !us(*at).Before(us(*d.LastRotationAttemptAt))
}
