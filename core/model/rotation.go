package model

import (
	"fmt"
	"time"
)

// The rotation state machine of a device (SPEC §4). Each transition is a
// method of Device that checks the state it starts from and refuses a step
// that is not allowed with a *RotationError; the use case (core/mdm) runs
// it on the locked row inside a repository update and does the identity
// provider's part around it.
//
//	QueueRotation     OK, QUEUED, TIMEOUT -> QUEUED (active only; PENDING stays)
//	Dequeue           QUEUED -> OK (a deactivated device)
//	StartAttempt      QUEUED, TIMEOUT -> PENDING (the attempt begins)
//	IntendGeneration  PENDING, nothing generated -> the intent on record
//	RecordGeneration  PENDING, nothing generated -> a new secret unconfirmed
//	CompleteRotation  a generated secret unconfirmed -> OK
//	TimeOutAttempt    PENDING -> TIMEOUT (a restore also forgets the generation)
//
// What a generated secret may do depends on the mode that generated it,
// not on the mode in force when the rotation ends (a mode can change
// between the two; the start warns about it):
//   - generated in grace mode (IATAfter nil): the old secret stays valid as
//     the rotated one; only the ack completes, and the completion ends the
//     rotated secret; a timeout in grace mode changes nothing in the
//     identity provider (in restore mode it restores the old secret).
//   - generated in restore mode (IATAfter set): the old secret stopped
//     working at generation; the ack or a token issued after IATAfter
//     completes; a timeout restores the old secret in either mode.
//
// TimeoutRestores and RotatedSecretMayLinger hold these two rules.

// RotationStep names a transition of the rotation state machine.
type RotationStep string

// Rotation steps.
const (
	StepQueue    RotationStep = "queue"
	StepStart    RotationStep = "start"
	StepGenerate RotationStep = "generate"
	StepComplete RotationStep = "complete"
	StepTimeOut  RotationStep = "time out"
)

// RotationError is a rotation step that the device's state does not
// allow. It matches ErrConflict, and its Reason (ids and states, never a
// secret) reaches the client as a *ConflictError's.
type RotationError struct {
	DeviceID int64
	Step     RotationStep
	State    RotationState
	Reason   string
}

func (e *RotationError) Error() string {
	return fmt.Sprintf("rotation of device %d: %s refused in state %s: %s", e.DeviceID, e.Step, e.State, e.Reason)
}

// Unwrap makes the error a *ConflictError with the same reason.
func (e *RotationError) Unwrap() error { return &ConflictError{Reason: e.Reason} }

func (d *Device) refuse(step RotationStep, format string, args ...any) error {
	return &RotationError{DeviceID: d.ID, Step: step, State: d.RotationState, Reason: fmt.Sprintf(format, args...)}
}

// Generated reports whether a secret was generated in the device's
// rotation and is not confirmed yet.
func (d Device) Generated() bool { return d.NewSecretAt != nil }

// GeneratedInRestoreMode reports whether the unconfirmed secret was
// generated in restore mode: the old secret stopped working then, so a
// timeout must restore it and a token issued after IATAfter proves the new
// one.
func (d Device) GeneratedInRestoreMode() bool { return d.NewSecretAt != nil && d.IATAfter != nil }

// QueueRotation queues an active device for rotation (from OK, QUEUED or
// TIMEOUT). A PENDING device is left as it is: queued reports false. An
// inactive device is refused.
func (d *Device) QueueRotation() (queued bool, err error) {
	switch {
	case !d.Active:
		return false, d.refuse(StepQueue, "device %d is inactive: activate it to rotate its secret", d.ID)
	case d.RotationState == RotationPending:
		return false, nil
	}
	d.RotationState = RotationQueued
	return true, nil
}

// Dequeue takes a deactivated QUEUED device out of the queue (back to OK)
// and reports whether it did.
func (d *Device) Dequeue() bool {
	if d.Active || d.RotationState != RotationQueued {
		return false
	}
	d.RotationState = RotationOK
	return true
}

// StartAttempt begins a rotation attempt at now: a QUEUED or TIMEOUT
// device of the queue goes PENDING.
func (d *Device) StartAttempt(now time.Time) error {
	if d.RotationState != RotationQueued && d.RotationState != RotationTimeout {
		return d.refuse(StepStart, "device %d is not queued for rotation", d.ID)
	}
	d.RotationState = RotationPending
	d.LastRotationAttemptAt = &now
	return nil
}

// MarkFetched records that the device fetched its credentials during its
// PENDING attempt (the nudge is answered: the attempt gets the whole
// timeout to confirm), once per attempt, and reports whether it did.
func (d *Device) MarkFetched(now time.Time) bool {
	if d.RotationState != RotationPending || d.FetchedThisAttempt() {
		return false
	}
	d.LastRotationFetchAt = &now
	return true
}

// KeepPreviousSecret puts the sealed current secret on record before a
// generation that replaces it (restore mode: the record is what a timeout
// restores), unless one is on record already or a secret was generated.
func (d *Device) KeepPreviousSecret(sealed []byte) {
	if d.PreviousSecret == nil && d.NewSecretAt == nil {
		d.PreviousSecret = sealed
	}
}

// HandOut records digest as the generated secret's when the secret handed
// out differs from the one recorded (changed behind espmdm's back, by an
// administrator in the identity provider): the device confirms what it is
// given.
func (d *Device) HandOut(digest string) {
	if d.NewSecretAt != nil {
		d.SecretSHA256 = digest
	}
}

// CanGenerate says whether the generation step may run: the device must be
// PENDING (refused otherwise), and generated is true when a secret was
// generated already (a concurrent fetch: the step does nothing then).
func (d *Device) CanGenerate() (generated bool, err error) {
	if d.RotationState != RotationPending {
		return false, d.refuse(StepGenerate, "device %d is no longer in rotation", d.ID)
	}
	return d.NewSecretAt != nil, nil
}

// IntendGeneration records, at now, that the identity provider is about
// to be asked to generate the rotation's new secret (the write-ahead
// intent, to be committed before the request), and returns the intent's
// mark (unique per device: later than any earlier intent) and whether an
// earlier intent was outstanding, that is, a generation may have happened
// whose recording was lost. The device must be PENDING; generated is true
// (and nothing is recorded) when a secret was generated already.
func (d *Device) IntendGeneration(now time.Time) (mark time.Time, outstanding, generated bool, err error) {
	if generated, err = d.CanGenerate(); err != nil || generated {
		return time.Time{}, false, generated, err
	}
	// Whole microseconds, as a database keeps them, so the mark read back
	// equals the one returned.
	mark = now.UTC().Truncate(time.Microsecond)
	if prev := d.GenerationIntentAt; prev != nil {
		outstanding = true
		if !mark.After(*prev) {
			mark = prev.Add(time.Microsecond)
		}
	}
	d.GenerationIntentAt = &mark
	return mark, outstanding, false, nil
}

// GenerationUnsure reports, for a PENDING device with nothing recorded as
// generated, whether a generation may have happened that is not
// recorded: unless the outstanding intent is the caller's own (mark, set
// with no earlier one outstanding), another caller may have asked the
// identity provider after its own intent and lost the answer. Every
// generation request follows its caller's committed intent, so with the
// caller's intent still in place no other request was made since.
func (d Device) GenerationUnsure(mark time.Time, outstandingBefore bool) bool {
	return outstandingBefore || mark.IsZero() || d.GenerationIntentAt == nil || !d.GenerationIntentAt.Equal(mark)
}

// MarkCovered records that the identity provider's secret-rotation
// policy covers the device's client.
func (d *Device) MarkCovered() { d.ClientCovered = true }

// RecordGeneration records the rotation's new secret, generated at at,
// by its SHA-256 (lower-case hex). iatAfter is set for a restore-mode
// generation (when the old secret stopped working, by the identity
// provider's clock) and nil for a grace-mode one. The device must be
// PENDING with nothing generated yet.
func (d *Device) RecordGeneration(at time.Time, digest string, iatAfter *time.Time) error {
	generated, err := d.CanGenerate()
	if err != nil {
		return err
	}
	if generated {
		return d.refuse(StepGenerate, "device %d has a generated secret awaiting confirmation", d.ID)
	}
	d.NewSecretAt = &at
	d.SecretSHA256 = digest
	d.IATAfter = iatAfter
	d.GenerationIntentAt = nil // the intent has its result
	return nil
}

// CheckAck says whether an ack of the secret with SHA-256 digest
// completes the rotation. Without an unconfirmed generation the digest of
// the last completed rotation's secret is acked again (idempotent: false,
// nil), also once the next rotation is queued or started; anything else
// is refused, as is a digest that is not the generated secret's.
func (d Device) CheckAck(digest string) (bool, error) {
	if d.NewSecretAt == nil {
		if d.SecretSHA256 == digest {
			return false, nil
		}
		return false, d.refuse(StepComplete, "no rotation of this device awaits confirmation")
	}
	if d.SecretSHA256 != digest {
		return false, d.refuse(StepComplete, "client_secret_sha256 does not match the secret generated in this rotation")
	}
	return true, nil
}

// ConfirmedByToken reports whether a token issued at iat proves the new
// secret: the device is PENDING with a secret generated in restore mode,
// and iat is a later whole second than IATAfter (both by the identity
// provider's clock; a token of the old secret fetched in the same second
// must not pass). A grace-mode generation completes only by the ack.
func (d Device) ConfirmedByToken(iat time.Time) bool {
	return d.RotationState == RotationPending && d.GeneratedInRestoreMode() && iat.Unix() > d.IATAfter.Unix()
}

// RotatedSecretMayLinger reports whether the identity provider may still
// keep the old secret as the rotated one, to be ended at completion: in
// grace mode, and for any secret not generated in restore mode (whose
// generation ended it already).
func (d Device) RotatedSecretMayLinger(mode RotationMode) bool {
	return mode == RotationGrace || d.IATAfter == nil
}

// Completion is what a completed rotation replaced, for metrics.
type Completion struct {
	// Attempt is when the completing attempt began (zero when unknown).
	Attempt time.Time
	// Generated is when the confirmed secret was generated.
	Generated time.Time
	// Replaced is when the secret it replaced was made (zero when
	// unknown).
	Replaced time.Time
}

// CompleteRotation confirms the generated secret at now: state OK, the
// completion and secret times set, the sealed previous secret wiped (the
// digest stays, for an idempotent repeated ack). Refused without an
// unconfirmed generation.
func (d *Device) CompleteRotation(now time.Time) (Completion, error) {
	if d.NewSecretAt == nil {
		return Completion{}, d.refuse(StepComplete, "no rotation of this device awaits confirmation")
	}
	var c Completion
	if d.LastRotationAttemptAt != nil {
		c.Attempt = *d.LastRotationAttemptAt
	}
	c.Generated = *d.NewSecretAt
	if d.SecretCreatedAt != nil {
		c.Replaced = *d.SecretCreatedAt
	}
	d.RotationState = RotationOK
	d.LastRotationCompletedAt = &now
	d.SecretCreatedAt = d.NewSecretAt
	d.NewSecretAt, d.IATAfter, d.PreviousSecret, d.GenerationIntentAt = nil, nil, nil, nil
	return c, nil
}

// AttemptExpired reports whether the device's PENDING attempt is over: it
// began at or before before, or at or before unfetched without a fetch
// since, or the device is inactive.
func (d Device) AttemptExpired(before, unfetched time.Time) bool {
	if d.RotationState != RotationPending {
		return false
	}
	if !d.Active || d.LastRotationAttemptAt == nil {
		return true
	}
	return !d.LastRotationAttemptAt.After(before) || (!d.LastRotationAttemptAt.After(unfetched) && !d.FetchedThisAttempt())
}

// TimeoutRestores reports whether a timeout in mode restores the old
// secret: in restore mode, and for a secret generated in restore mode
// whatever mode is in force now (the old secret ended at generation). In
// grace mode a grace generation keeps both secrets valid until the ack.
func (d Device) TimeoutRestores(mode RotationMode) bool {
	return mode == RotationRestore || d.IATAfter != nil
}

// TimeOutAttempt ends the PENDING attempt: state TIMEOUT. With
// forgetGeneration (the old secret was restored, or there was nothing to
// restore it from or to) the generation is forgotten too: the next
// attempt generates afresh; without it (grace) the generated secret stays
// unconfirmed, never generated again, and its ack still completes.
func (d *Device) TimeOutAttempt(forgetGeneration bool) error {
	if d.RotationState != RotationPending {
		return d.refuse(StepTimeOut, "device %d has no rotation attempt in progress", d.ID)
	}
	if forgetGeneration {
		d.NewSecretAt, d.IATAfter, d.PreviousSecret, d.SecretSHA256 = nil, nil, nil, ""
		// The restore undid any generation, recorded or not; and the
		// secret set by it left the client without the policy's expiry
		// (re-applied only where a policy is in force): check again.
		d.GenerationIntentAt, d.ClientCovered = nil, false
	}
	d.RotationState = RotationTimeout
	return nil
}

// RenudgeDue reports whether the device fetched its current attempt's
// generated secret without confirming it and was not nudged again yet.
func (d Device) RenudgeDue() bool {
	return d.RotationState == RotationPending && d.NewSecretAt != nil && d.FetchedThisAttempt() && !d.RenudgedThisAttempt()
}

// MarkRenudged records that the nudge is sent again at now, when due, and
// reports whether it is.
func (d *Device) MarkRenudged(now time.Time) bool {
	if !d.RenudgeDue() {
		return false
	}
	d.LastRotationRenudgeAt = &now
	return true
}
