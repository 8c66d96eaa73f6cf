package mdm

import (
	"context"
	"errors"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Credential rotation (SPEC §4), one file per job:
//
//	rotation.go           defaults, events, the cycle that ties the jobs together
//	rotation_mode.go      resolving grace or restore, recording the mode in force
//	rotation_schedule.go  the cron schedule: recording it, firing it, the next fire
//	rotation_queue.go     queueing devices and starting them in free slots
//	rotation_fetch.go     the device's fetch, and the generation of its new secret
//	rotation_confirm.go   completion by ack or by token, the second nudge
//	rotation_timeout.go   expired attempts, and what a timeout restores
//	rotation_status.go    the status and the dashboard
//
// The state transitions themselves (queue, start, generate, complete, time
// out) are methods of model.Device that refuse what the state does not
// allow; the functions here run them on the locked row and do the identity
// provider's part around them.

// Rotation defaults (SPEC §4, §7), applied by New to zero Config fields.
const (
	DefaultRotationConcurrency = 10
	DefaultRotationTimeout     = 300 * time.Second
	DefaultRotationRetry       = 3600 * time.Second
	// DefaultRotationFetchTimeout: a device that has not fetched within a
	// minute of its nudge is taken as away.
	DefaultRotationFetchTimeout = 60 * time.Second
	DefaultRotationGrace        = 7 * 24 * time.Hour
	DefaultRotationWarningAge   = 45 * 24 * time.Hour
	DefaultRotationCriticalAge  = 90 * 24 * time.Hour
	// RotationScheduleName names the rotation schedule in ScheduleRepo.
	RotationScheduleName = "rotation"
	// expiredBatch is how many expired attempts a cycle times out at once.
	expiredBatch = 500
)

// RotationEventKind names a step of a device's rotation.
type RotationEventKind string

// Rotation events, reported to Deps.OnRotation.
const (
	// EventStarted: the device went PENDING and was nudged.
	EventStarted RotationEventKind = "started"
	// EventGenerated: the first fetch of the rotation generated the new
	// secret.
	EventGenerated RotationEventKind = "generated"
	// EventFetched: a fetch handed out the rotation's new secret.
	EventFetched RotationEventKind = "fetched"
	// EventConfirmed: the device proved it holds the new secret; Via says
	// how ("ack" or "iat").
	EventConfirmed RotationEventKind = "confirmed"
	// EventInvalidated: the rotated (old) secret was invalidated.
	EventInvalidated RotationEventKind = "rotated_secret_invalidated"
	// EventRenudged: the nudge was sent again to a device that fetched
	// its new secret and then showed up without confirming it.
	EventRenudged RotationEventKind = "renudged"
	// EventTimeout: the attempt timed out (Restored says whether the old
	// secret was restored).
	EventTimeout RotationEventKind = "timeout"
)

// RotationEvent is one step of a device's rotation, for metrics, logs and
// the audit log. It never carries a secret.
type RotationEvent struct {
	Kind     RotationEventKind
	DeviceID int64
	ClientID string
	Mode     model.RotationMode
	// At is when it happened.
	At time.Time
	// SinceAttempt is the time since the attempt started (fetch and
	// confirm phases); SinceGenerated the time since the new secret was
	// generated (confirm phase); zero when not applicable.
	SinceAttempt   time.Duration
	SinceGenerated time.Duration
	// Via is "ack" or "iat" for EventConfirmed.
	Via string
	// ReplacedAge is, for EventConfirmed, how old the secret it replaced
	// was (zero when unknown).
	ReplacedAge time.Duration
	// Restored is true for an EventTimeout that restored the old secret.
	Restored bool
	// ClientMissing is true for an EventTimeout that found the device's
	// client gone from the identity provider: nothing could be restored,
	// the device needs its identity repaired and a new provisioning.
	ClientMissing bool
}

// event reports a rotation step to OnRotation.
func (s *Service) event(ctx context.Context, ev RotationEvent) {
	if s.d.OnRotation == nil {
		return
	}
	if ev.At.IsZero() {
		ev.At = s.now()
	}
	ev.Mode = s.RotationMode()
	s.d.OnRotation(ctx, ev)
}

// RunRotationCycle implements ports.Rotation: it fires the schedule when a
// fire time has passed since the last fire (missed fires collapse into one;
// the first cycle ever only records now), times out expired attempts and
// starts devices in free slots.
func (s *Service) RunRotationCycle(ctx context.Context) (ports.CycleReport, error) {
	var rep ports.CycleReport
	if _, err := s.rotationMode(); err != nil {
		return rep, err
	}
	errs := []error{s.recordSchedule(ctx)}
	if s.d.Schedule != nil && s.d.ScheduleRepo != nil {
		fired, queued, err := s.fireSchedule(ctx)
		rep.Fired, rep.Queued = fired, queued
		errs = append(errs, err)
	}
	n, err := s.timeOutExpired(ctx)
	rep.TimedOut = n
	errs = append(errs, err)
	n, err = s.startRotations(ctx)
	rep.Started = n
	errs = append(errs, err)
	return rep, errors.Join(errs...)
}
