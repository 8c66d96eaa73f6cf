package model

import (
	"context"
	"time"
)

// AuditKind names an event of the audit log (SPEC §12).
type AuditKind string

// Audit event kinds. Credential-lifecycle events first, then the admin
// changes around them.
const (
	AuditDeviceCreated          AuditKind = "device_created"
	AuditDeviceUpdated          AuditKind = "device_updated"
	AuditDeviceDeleted          AuditKind = "device_deleted"
	AuditProvisioningDownloaded AuditKind = "provisioning_downloaded"
	AuditIdentityRepaired       AuditKind = "identity_repaired"
	AuditOrphanClientDeleted    AuditKind = "orphan_client_deleted"
	AuditRotationQueued         AuditKind = "rotation_queued"
	AuditRotationTriggered      AuditKind = "rotation_triggered"
	AuditScheduleFired          AuditKind = "rotation_schedule_fired"
	AuditScheduleChanged        AuditKind = "rotation_schedule_changed"
	AuditRotationStarted        AuditKind = "rotation_started"
	AuditSecretGenerated        AuditKind = "secret_generated"
	AuditSecretFetched          AuditKind = "secret_fetched"
	AuditSecretConfirmed        AuditKind = "secret_confirmed"
	AuditSecretAckRefused       AuditKind = "secret_ack_refused"
	AuditRotatedInvalidated     AuditKind = "rotated_secret_invalidated"
	AuditRotationTimeout        AuditKind = "rotation_timeout"
	AuditSecretRestored         AuditKind = "secret_restored"
	AuditModelCreated           AuditKind = "model_created"
	AuditModelUpdated           AuditKind = "model_updated"
	AuditModelDeleted           AuditKind = "model_deleted"
	AuditFirmwareUploaded       AuditKind = "firmware_uploaded"
	// AuditBrokerAccountReconciled: the reconciler made or repaired a
	// device's broker account (SPEC §19); AuditOrphanAccountDeleted: it
	// removed an account without a device.
	AuditBrokerAccountReconciled AuditKind = "broker_account_reconciled"
	AuditOrphanAccountDeleted    AuditKind = "orphan_account_deleted"
	// AuditCoredumpUploaded: a device uploaded a core dump (SPEC §17);
	// AuditCoredumpDeleted: an admin deleted one.
	AuditCoredumpUploaded AuditKind = "coredump_uploaded"
	AuditCoredumpDeleted  AuditKind = "coredump_deleted"
	// AuditFirmwareReported: a device's state report (SPEC §15) names
	// another firmware version than its previous report (or is its first).
	AuditFirmwareReported AuditKind = "device_firmware_changed"
	// AuditFirmwareReleased: an admin released a stored (or earlier)
	// upload (SPEC §16); an upload released at once is firmware_uploaded
	// alone.
	AuditFirmwareReleased AuditKind = "firmware_released"
	// Firmware campaigns (SPEC §16): created, a wave started (its
	// members assigned the target), paused, resumed, aborted (by an admin
	// or on the failure ratio), completed.
	AuditCampaignCreated     AuditKind = "campaign_created"
	AuditCampaignWaveStarted AuditKind = "campaign_wave_started"
	AuditCampaignPaused      AuditKind = "campaign_paused"
	AuditCampaignResumed     AuditKind = "campaign_resumed"
	AuditCampaignAborted     AuditKind = "campaign_aborted"
	AuditCampaignCompleted   AuditKind = "campaign_completed"
)

// AuditKinds lists every kind, in the order above.
var AuditKinds = []AuditKind{
	AuditDeviceCreated, AuditDeviceUpdated, AuditDeviceDeleted, AuditProvisioningDownloaded,
	AuditIdentityRepaired, AuditOrphanClientDeleted, AuditRotationQueued, AuditRotationTriggered,
	AuditScheduleFired, AuditScheduleChanged, AuditRotationStarted, AuditSecretGenerated, AuditSecretFetched,
	AuditSecretConfirmed, AuditSecretAckRefused, AuditRotatedInvalidated, AuditRotationTimeout,
	AuditSecretRestored, AuditModelCreated, AuditModelUpdated, AuditModelDeleted, AuditFirmwareUploaded,
	AuditBrokerAccountReconciled, AuditOrphanAccountDeleted, AuditCoredumpUploaded, AuditCoredumpDeleted,
	AuditFirmwareReported, AuditFirmwareReleased, AuditCampaignCreated, AuditCampaignWaveStarted, AuditCampaignPaused,
	AuditCampaignResumed, AuditCampaignAborted, AuditCampaignCompleted,
}

// Valid reports whether k is one of AuditKinds.
func (k AuditKind) Valid() bool {
	for _, x := range AuditKinds {
		if x == k {
			return true
		}
	}
	return false
}

// ActorType says who caused an audited event.
type ActorType string

// Actor types: an admin API caller, a device on /iot, or espmdm itself
// (the rotation worker, the reconciler, a command).
const (
	ActorAdmin  ActorType = "admin"
	ActorDevice ActorType = "device"
	ActorSystem ActorType = "system"
)

// Actor is who caused an audited event: for an admin the token's subject,
// client (azp) and username, for a device its client id, for the system a
// name ("rotation worker", "reconciler").
type Actor struct {
	Type     ActorType
	Subject  string
	ClientID string
	// Name is a readable name: the admin's username (preferred_username).
	Name string
}

// AdminActor is the admin API caller p.
func AdminActor(p Principal) Actor {
	return Actor{Type: ActorAdmin, Subject: p.Subject, ClientID: p.ClientID, Name: p.Username}
}

// SystemActor is espmdm itself acting as name.
func SystemActor(name string) Actor { return Actor{Type: ActorSystem, Subject: name} }

// DeviceActor is the device whose client id is clientID.
func DeviceActor(clientID string) Actor { return Actor{Type: ActorDevice, ClientID: clientID} }

type actorKey struct{}

// WithActor returns ctx carrying a as the caller of what is done with it.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorOf returns the actor WithActor put in ctx, or the system actor
// "espmdm" when there is none.
func ActorOf(ctx context.Context) Actor {
	if a, ok := ctx.Value(actorKey{}).(Actor); ok && a.Type != "" {
		return a
	}
	return SystemActor("espmdm")
}

// AuditOutcome is how an audited event ended.
type AuditOutcome string

// Outcomes.
const (
	OutcomeSuccess AuditOutcome = "success"
	OutcomeFailure AuditOutcome = "failure"
)

// AuditEntry is one row of the audit log. It never holds a secret: Detail
// is a short description written by the core (what changed, how many,
// which format), never a value that authenticates.
type AuditEntry struct {
	ID    int64
	At    time.Time
	Kind  AuditKind
	Actor Actor
	// DeviceID and ClientID name the device concerned (0 and "" when
	// none); ModelID the device model (0 when none).
	DeviceID int64
	ClientID string
	ModelID  int64
	Outcome  AuditOutcome
	Detail   string
}
