package mdm

import (
	"context"
	"crypto/rand"
	"io"
	"sync/atomic"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultFirmwareMaxBytes int64         = 16 << 20
	DefaultOrphanGrace      time.Duration = 2 * time.Minute
)

// Deps are the outbound ports a Service uses. Every port is required
// except those said optional, Rand and OnError.
type Deps struct {
	Models   ports.ModelRepo
	Devices  ports.DeviceRepo
	Firmware ports.FirmwareRepo
	// ReleaseGate, when set, can hold an upload back from release (SPEC
	// §16: a model with a running or paused campaign); nil releases every
	// upload not stored on purpose.
	ReleaseGate ports.ReleaseGate
	// Blobs keeps the firmware binaries, their ELFs and the devices' core
	// dumps (a directory or an S3 bucket), content-addressed: a binary is
	// written there before Firmware records it.
	Blobs ports.BlobStore
	// Coredumps, ELFs and Analyzer serve core dumps (SPEC §17); without
	// Coredumps the core dump use cases answer unavailable.
	Coredumps ports.CoredumpRepo
	ELFs      ports.FirmwareELFs
	Analyzer  ports.CoredumpAnalyzer
	// Clients, Directory, Rotator and Policy are the identity provider's
	// ports (usually one adapter): a device's client (device, provisioning
	// and identity use cases), the device clients Reconcile compares with
	// the devices, the rotation's secret steps (which use
	// ports.CoveredSecretsReader where Rotator offers it), and the policy
	// the rotation mode is resolved from.
	Clients   ports.DeviceClients
	Directory ports.ClientDirectory
	Rotator   ports.SecretRotator
	Policy    ports.RotationPolicyReader
	Notifier  ports.Notifier
	// Broker, when set, holds the devices' broker accounts (SPEC §19,
	// MQTT_AUTH=dynsec); nil means devices get none.
	Broker ports.BrokerAccounts
	Clock  ports.Clock
	// SecretBox seals a device's old secret during its rotation.
	SecretBox ports.SecretBox
	// Schedule and ScheduleRepo drive the rotation schedule; without them
	// RunRotationCycle fires nothing (rotations start from the API only).
	Schedule     ports.Schedule
	ScheduleRepo ports.ScheduleRepo
	// Campaigns keeps the firmware campaigns (SPEC §16); without it the
	// campaign use cases answer unavailable and state reports resolve no
	// member. With it and no ReleaseGate, the Service is its own
	// ReleaseGate (HoldRelease).
	Campaigns ports.CampaignRepo
	// OnCampaign, when set, receives every campaign step (for metrics and
	// logs); it must not block.
	OnCampaign func(ctx context.Context, ev CampaignEvent)
	// Lease, when set, names the rotation worker in RotationStatus.
	Lease ports.Lease
	// Audit, when set, is the audit log (SPEC §12): changes are recorded in
	// their repository transaction, other events appended to it.
	Audit ports.AuditLog
	// OnRotation, when set, receives every rotation step (for metrics,
	// logs and the audit log); it must not block.
	OnRotation func(ctx context.Context, ev RotationEvent)
	// Rand is where device keys come from; nil means crypto/rand.
	Rand io.Reader
	// OnError, when set, receives errors the core handles without returning
	// them (a failed cleanup or notification), with the context of the call
	// (for its request id) and the operation they happened in. They never
	// contain secrets.
	OnError func(ctx context.Context, op string, err error)
}

// Config is what a Service needs to know about its deployment.
type Config struct {
	// TokenURL, BaseURL and MQTTURL are handed to devices in their
	// provisioning data; empty ones are left out.
	TokenURL string
	BaseURL  string
	MQTTURL  string
	// WiFiSSID and WiFiPassword are optional provisioning fields.
	WiFiSSID     string
	WiFiPassword string
	// FirmwareMaxBytes bounds an uploaded image; 0 means
	// DefaultFirmwareMaxBytes.
	FirmwareMaxBytes int64
	// OrphanGrace is how old a device client without a device row must be
	// before Reconcile deletes it; 0 means DefaultOrphanGrace.
	OrphanGrace time.Duration

	// RotationMode is auto (the zero value), grace or restore; InitRotation
	// resolves it.
	RotationMode model.RotationMode
	// RotationConcurrency bounds the PENDING devices (slots).
	RotationConcurrency int
	// RotationTimeout ends an attempt; RotationRetry is the least time
	// between a TIMEOUT device's attempts.
	RotationTimeout time.Duration
	RotationRetry   time.Duration
	// RotationFetchTimeout ends an attempt whose device has not fetched
	// its credentials since the nudge (an offline device), so it frees its
	// slot early; at or above RotationTimeout it changes nothing.
	RotationFetchTimeout time.Duration
	// RotationGrace is how long an old secret stays valid in grace mode
	// (the policy's rotated-expiration-period must agree).
	RotationGrace time.Duration
	// RotationWarningAge and RotationCriticalAge sort secrets into the
	// dashboard's warning and critical groups.
	RotationWarningAge  time.Duration
	RotationCriticalAge time.Duration

	// CoredumpMaxBytes bounds an uploaded core dump (DefaultCoredumpMaxBytes
	// when 0), CoredumpKeep how many a device keeps (DefaultCoredumpKeep),
	// CoredumpTimeout one analysis (DefaultCoredumpTimeout), ELFMaxBytes an
	// uploaded ELF (DefaultELFMaxBytes).
	CoredumpMaxBytes int64
	CoredumpKeep     int
	CoredumpTimeout  time.Duration
	ELFMaxBytes      int64
	// CoredumpRetry is how long a dump whose analysis could not run waits
	// to be claimed again (DefaultCoredumpRetry).
	CoredumpRetry time.Duration
	// BatchConcurrency bounds the devices a batch has in progress at once
	// (each makes two identity-provider requests, then its broker account
	// and its row); 0 means DefaultBatchConcurrency. The identity
	// provider's own bound on requests in flight still holds.
	BatchConcurrency int
}

// Service implements the espmdm use cases. It is safe for concurrent use.
type Service struct {
	d    Deps
	cfg  Config
	mode atomic.Value // model.RotationMode in force, set by InitRotation
	// scheduleRecorded is set once the schedule's expression is recorded.
	scheduleRecorded atomic.Bool
	// coredumpWake wakes a core dump worker (CoredumpWake).
	coredumpWake chan struct{}
	// campaignWake wakes the campaign worker (CampaignWake).
	campaignWake chan struct{}
	// fill coalesces fillSlots calls (rotation_queue.go).
	fill slotFill
}

var (
	_ ports.ModelAdmin        = (*Service)(nil)
	_ ports.FirmwareAdmin     = (*Service)(nil)
	_ ports.DeviceAdmin       = (*Service)(nil)
	_ ports.ProvisioningAdmin = (*Service)(nil)
	_ ports.IdentityAdmin     = (*Service)(nil)
	_ ports.Reconciler        = (*Service)(nil)
	_ ports.DeviceAPI         = (*Service)(nil)
	_ ports.Rotation          = (*Service)(nil)
	_ ports.AuditReader       = (*Service)(nil)
	_ ports.Coredumps         = (*Service)(nil)
	_ ports.FleetReader       = (*Service)(nil)
)

// New returns a Service over deps, with cfg's zero fields set to their
// defaults.
func New(deps Deps, cfg Config) *Service {
	if deps.Rand == nil {
		deps.Rand = rand.Reader
	}
	if cfg.FirmwareMaxBytes <= 0 {
		cfg.FirmwareMaxBytes = DefaultFirmwareMaxBytes
	}
	if cfg.CoredumpMaxBytes <= 0 {
		cfg.CoredumpMaxBytes = DefaultCoredumpMaxBytes
	}
	if cfg.ELFMaxBytes <= 0 {
		cfg.ELFMaxBytes = DefaultELFMaxBytes
	}
	setDefault(&cfg.CoredumpKeep, DefaultCoredumpKeep)
	setDefault(&cfg.CoredumpTimeout, DefaultCoredumpTimeout)
	setDefault(&cfg.CoredumpRetry, DefaultCoredumpRetry)
	if cfg.OrphanGrace <= 0 {
		cfg.OrphanGrace = DefaultOrphanGrace
	}
	if cfg.RotationMode == "" {
		cfg.RotationMode = model.RotationAuto
	}
	setDefault(&cfg.RotationConcurrency, DefaultRotationConcurrency)
	setDefault(&cfg.RotationTimeout, DefaultRotationTimeout)
	setDefault(&cfg.RotationRetry, DefaultRotationRetry)
	setDefault(&cfg.RotationFetchTimeout, DefaultRotationFetchTimeout)
	cfg.RotationFetchTimeout = min(cfg.RotationFetchTimeout, cfg.RotationTimeout)
	setDefault(&cfg.RotationGrace, DefaultRotationGrace)
	setDefault(&cfg.RotationWarningAge, DefaultRotationWarningAge)
	setDefault(&cfg.RotationCriticalAge, DefaultRotationCriticalAge)
	setDefault(&cfg.BatchConcurrency, DefaultBatchConcurrency)
	svc := &Service{d: deps, cfg: cfg, coredumpWake: make(chan struct{}, 1), campaignWake: make(chan struct{}, 1)}
	if svc.d.ReleaseGate == nil && svc.d.Campaigns != nil {
		svc.d.ReleaseGate = svc
	}
	return svc
}

// setDefault sets *v to def when it is not positive.
func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// report hands an error the core handled to OnError.
func (s *Service) report(ctx context.Context, op string, err error) {
	if err != nil && s.d.OnError != nil {
		s.d.OnError(ctx, op, err)
	}
}

func (s *Service) now() time.Time { return s.d.Clock.Now() }

// checkPage checks a paged list's requested limit and cursor (the id
// after which the page starts), and returns the limit to ask the
// repository for: 0 is ports.DefaultPageSize, and more than
// ports.MaxPageSize or a negative limit or cursor is invalid.
func checkPage(limit int, afterID int64) (int, error) {
	switch {
	case limit == 0:
		limit = ports.DefaultPageSize
	case limit < 0 || limit > ports.MaxPageSize:
		return 0, model.Invalid("limit", "must be between 1 and %d", ports.MaxPageSize)
	}
	if afterID < 0 {
		return 0, model.Invalid("cursor", "must not be negative")
	}
	return limit, nil
}
