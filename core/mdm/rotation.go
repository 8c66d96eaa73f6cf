package mdm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

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

// errRotationMode is returned before InitRotation resolved the mode.
var errRotationMode = errors.New("rotation: the rotation mode is not resolved (InitRotation was not called)")

// rotationMode returns the mode in force.
func (s *Service) rotationMode() (model.RotationMode, error) {
	m, _ := s.mode.Load().(model.RotationMode)
	if m != model.RotationGrace && m != model.RotationRestore {
		return "", errRotationMode
	}
	return m, nil
}

// RotationMode returns the mode in force; "" before InitRotation.
func (s *Service) RotationMode() model.RotationMode {
	m, _ := s.rotationMode()
	return m
}

// InitRotation resolves the rotation mode against the identity provider's
// rotation policy (SPEC §4): auto is grace when the policy covers the
// device clients, else restore; grace requested (or picked) on a realm
// whose policy is missing, incomplete or disagrees with the configured grace
// is an error that names every problem. It returns the mode in force and
// the policy found.
func (s *Service) InitRotation(ctx context.Context) (model.RotationMode, model.RotationPolicy, error) {
	pol, err := s.d.Identity.RotationPolicy(ctx)
	if err != nil {
		return "", model.RotationPolicy{}, fmt.Errorf("rotation: read the identity provider's rotation policy: %w", err)
	}
	pol.Problems = s.graceProblems(pol)
	ready := pol.FeatureEnabled && pol.Covered && len(pol.Problems) == 0
	want := s.cfg.RotationMode
	var mode model.RotationMode
	switch {
	case want == model.RotationRestore, want == model.RotationAuto && !ready:
		// With a policy in force, restore invalidates the rotated secret
		// right after each generation.
		mode = model.RotationRestore
	case ready:
		mode = model.RotationGrace
	}
	if mode != "" {
		s.mode.Store(mode)
		return mode, pol, nil
	}
	return "", pol, fmt.Errorf("rotation: ROTATION_MODE=%s cannot run on this identity provider: %s", want, strings.Join(pol.Problems, "; "))
}

// RotationModeName names the rotation mode in force in ScheduleRepo's
// record of expressions (RecordRotationMode).
const RotationModeName = "rotation_mode"

// RecordRotationMode records the mode in force (resolved by InitRotation)
// as the last one, and returns the one recorded before ("" the first
// time, or without a ScheduleRepo) and, when that differs, how many
// rotations are unconfirmed (a generated secret awaits confirmation): they
// keep the rules of the mode that generated them (a grace generation
// completes only by the ack, a restore generation is restored on its
// timeout), which the start should say.
func (s *Service) RecordRotationMode(ctx context.Context) (model.RotationMode, int, error) {
	mode, err := s.rotationMode()
	if err != nil || s.d.ScheduleRepo == nil {
		return "", 0, err
	}
	prev, err := s.d.ScheduleRepo.RecordExpression(ctx, RotationModeName, string(mode), nil)
	if err != nil {
		return "", 0, fmt.Errorf("rotation: record the mode in force: %w", err)
	}
	if prev == "" || prev == string(mode) {
		return model.RotationMode(prev), 0, nil
	}
	n, err := s.d.Devices.UnconfirmedRotations(ctx)
	if err != nil {
		return model.RotationMode(prev), 0, fmt.Errorf("rotation: count unconfirmed rotations: %w", err)
	}
	return model.RotationMode(prev), n, nil
}

// graceProblems lists what keeps grace mode from working with pol: the
// identity provider's own findings, then espmdm's (the grace period and
// the secret lifetime against the schedule).
func (s *Service) graceProblems(pol model.RotationPolicy) []string {
	problems := append([]string(nil), pol.Problems...)
	if !pol.FeatureEnabled && len(problems) == 0 {
		problems = append(problems, "the identity provider's client secret rotation feature is off")
	}
	if !pol.Covered && len(problems) == 0 {
		problems = append(problems, "no client policy with a secret-rotation profile covers the device clients")
	}
	if !pol.Covered {
		return problems
	}
	if pol.RotatedExpiration != s.cfg.RotationGrace {
		problems = append(problems, fmt.Sprintf("ROTATION_GRACE is %s but the policy %s keeps rotated secrets for %s (rotated-expiration-period %d): set one to the other",
			s.cfg.RotationGrace, pol.Name, pol.RotatedExpiration, int64(pol.RotatedExpiration/time.Second)))
	}
	if s.d.Schedule != nil {
		if gap, err := maxGap(s.d.Schedule, s.now(), 400*24*time.Hour); err == nil && pol.Expiration <= gap+s.cfg.RotationGrace {
			problems = append(problems, fmt.Sprintf("the policy %s expires main secrets after %s (expiration-period), not longer than the longest gap of ROTATION_CRON (%s) plus the grace: a secret could expire before its rotation",
				pol.Name, pol.Expiration, gap))
		}
	}
	return problems
}

// recordSchedule records, at the first cycle that can, the rotation
// schedule this process works with; a change since the last one recorded
// (ROTATION_CRON or ROTATION_TZ) is audited, once across processes.
func (s *Service) recordSchedule(ctx context.Context) error {
	if s.d.Schedule == nil || s.d.ScheduleRepo == nil || s.scheduleRecorded.Load() {
		return nil
	}
	expr := s.d.Schedule.String()
	if z, ok := s.d.Schedule.(interface{ Location() *time.Location }); ok && z.Location() != nil {
		expr += " (" + z.Location().String() + ")"
	}
	changed := s.entry(ctx, model.AuditScheduleChanged, "the rotation schedule is now "+expr)
	if _, err := s.d.ScheduleRepo.RecordExpression(ctx, RotationScheduleName, expr, s.audited(changed)); err != nil {
		return fmt.Errorf("rotation: record the schedule: %w", err)
	}
	s.scheduleRecorded.Store(true)
	return nil
}

// maxGap is the longest time between two fires of sch in the span after
// from.
func maxGap(sch ports.Schedule, from time.Time, span time.Duration) (time.Duration, error) {
	prev, err := sch.Next(from)
	if err != nil {
		return 0, err
	}
	var gap time.Duration
	for end := from.Add(span); prev.Before(end); {
		next, err := sch.Next(prev)
		if err != nil {
			return 0, err
		}
		gap = max(gap, next.Sub(prev))
		prev = next
	}
	return gap, nil
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

// RotateDevice implements ports.Rotation: it queues the device (an OK,
// QUEUED or TIMEOUT one) and starts free slots. A PENDING device is left as
// it is; an inactive one is model.ErrConflict.
func (s *Service) RotateDevice(ctx context.Context, id int64) (ports.RotateResult, error) {
	if _, err := s.rotationMode(); err != nil {
		return "", err
	}
	res := ports.RotateQueued
	_, err := s.d.Devices.UpdateDevice(ctx, id, func(d *model.Device) ([]model.AuditEntry, error) {
		res = ports.RotateQueued
		switch {
		case !d.Active:
			return nil, model.Conflict("device %d is inactive: activate it to rotate its secret", id)
		case d.RotationState == model.RotationPending:
			res = ports.RotateAlreadyPending
			return nil, nil
		}
		e := s.deviceEntry(ctx, model.AuditRotationQueued, *d, "from "+string(d.RotationState))
		d.RotationState = model.RotationQueued
		return s.audited(e), nil
	})
	if err != nil {
		return "", fmt.Errorf("rotate device %d: %w", id, err)
	}
	s.fillSlots(ctx)
	return res, nil
}

// TriggerRotation implements ports.Rotation.
func (s *Service) TriggerRotation(ctx context.Context) (int, error) {
	if _, err := s.rotationMode(); err != nil {
		return 0, err
	}
	n, err := s.d.Devices.QueueRotations(ctx)
	if err != nil {
		return 0, fmt.Errorf("trigger rotation: %w", err)
	}
	s.report(ctx, "trigger rotation: audit", s.appendAudit(ctx, s.entry(ctx, model.AuditRotationTriggered, fmt.Sprintf("%d device(s) queued", n))))
	s.fillSlots(ctx)
	return n, nil
}

// fillSlots starts devices in free slots; a failure goes to OnError (the
// next cycle tries again).
func (s *Service) fillSlots(ctx context.Context) int {
	n, err := s.startRotations(ctx)
	s.report(ctx, "rotation: start devices in free slots", err)
	return n
}

// startRotations starts devices in free slots and nudges them.
func (s *Service) startRotations(ctx context.Context) (int, error) {
	now := s.now()
	started, err := s.d.Devices.StartRotations(ctx, s.cfg.RotationConcurrency, now.Add(-s.cfg.RotationRetry), func(d *model.Device) []model.AuditEntry {
		e := s.deviceEntry(ctx, model.AuditRotationStarted, *d, "from "+string(d.RotationState))
		d.RotationState = model.RotationPending
		at := now
		d.LastRotationAttemptAt = &at
		return s.audited(e)
	})
	if err != nil {
		return 0, fmt.Errorf("start rotations: %w", err)
	}
	for _, d := range started {
		s.event(ctx, RotationEvent{Kind: EventStarted, DeviceID: d.ID, ClientID: d.ClientID(), At: now})
		if err := s.d.Notifier.RotationNudge(ctx, d.ClientID()); err != nil {
			s.report(ctx, "rotation: nudge", fmt.Errorf("device %d: %w", d.ID, err))
		}
	}
	return len(started), nil
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

// fireSchedule queues every active OK device when the schedule's next fire
// after its last one has come.
func (s *Service) fireSchedule(ctx context.Context) (bool, int, error) {
	now := s.now()
	last, err := s.d.ScheduleRepo.LastFire(ctx, RotationScheduleName)
	if err != nil {
		return false, 0, fmt.Errorf("rotation schedule: %w", err)
	}
	if last.IsZero() {
		// First start: nothing was missed. Record now as the last fire.
		_, err := s.d.ScheduleRepo.AdvanceFire(ctx, RotationScheduleName, time.Time{}, now, nil)
		if err != nil {
			return false, 0, fmt.Errorf("rotation schedule: %w", err)
		}
		return false, 0, nil
	}
	next, err := s.d.Schedule.Next(last)
	if err != nil {
		return false, 0, fmt.Errorf("rotation schedule: %w", err)
	}
	if next.After(now) {
		return false, 0, nil
	}
	// Every fire time up to now collapses into this one. The devices are
	// queued before the fire is recorded: a failure (or a kill) between
	// the two then repeats the fire at the next cycle, which only queues
	// again what is still OK, instead of losing it.
	n, err := s.d.Devices.QueueRotations(ctx)
	if err != nil {
		return false, 0, fmt.Errorf("rotation schedule: queue devices: %w", err)
	}
	fired := s.entry(ctx, model.AuditScheduleFired, fmt.Sprintf("%s fire due %s (last fired %s)",
		s.d.Schedule.String(), next.UTC().Format(time.RFC3339), last.UTC().Format(time.RFC3339)))
	ok, err := s.d.ScheduleRepo.AdvanceFire(ctx, RotationScheduleName, last, now, s.audited(fired))
	if err != nil {
		return false, n, fmt.Errorf("rotation schedule: record the fire: %w", err)
	}
	if !ok {
		return false, n, nil // another process fired it (and queued the same devices)
	}
	return true, n, nil
}

// NextScheduledRotation returns the schedule's next fire time; nil without
// a schedule.
func (s *Service) NextScheduledRotation(ctx context.Context) (*time.Time, error) {
	if s.d.Schedule == nil {
		return nil, nil
	}
	from := s.now()
	if s.d.ScheduleRepo != nil {
		last, err := s.d.ScheduleRepo.LastFire(ctx, RotationScheduleName)
		if err != nil {
			return nil, err
		}
		if !last.IsZero() {
			from = last
		}
	}
	next, err := s.d.Schedule.Next(from)
	if err != nil {
		return nil, err
	}
	if now := s.now(); next.Before(now) {
		next = now // overdue: the next cycle fires it
	}
	return &next, nil
}

// timeOutExpired times out every PENDING attempt older than the timeout
// (and every inactive PENDING device).
func (s *Service) timeOutExpired(ctx context.Context) (int, error) {
	total := 0
	for {
		now := s.now()
		before, unfetched := now.Add(-s.cfg.RotationTimeout), now.Add(-s.cfg.RotationFetchTimeout)
		ids, err := s.d.Devices.ExpiredRotations(ctx, before, unfetched, expiredBatch)
		if err != nil {
			return total, fmt.Errorf("rotation timeouts: %w", err)
		}
		var errs []error
		for _, id := range ids {
			done, err := s.timeOut(ctx, id, before, unfetched)
			if err != nil {
				errs = append(errs, err)
			}
			if done {
				total++
			}
		}
		if len(errs) > 0 || len(ids) < expiredBatch {
			return total, errors.Join(errs...)
		}
	}
}

// timeOut ends device id's attempt if it is still PENDING and began at or
// before before, or at or before unfetched without a fetch since (or the
// device is inactive): grace leaves both secrets
// valid, restore makes the old secret the only one again. A failure leaves
// the device PENDING for the next cycle.
func (s *Service) timeOut(ctx context.Context, id int64, before, unfetched time.Time) (bool, error) {
	mode, err := s.rotationMode()
	if err != nil {
		return false, err
	}
	done, restored, missing := false, false, false
	var started *time.Time
	d, err := s.d.Devices.UpdateDevice(ctx, id, func(d *model.Device) ([]model.AuditEntry, error) {
		done, restored, missing = false, false, false
		if d.RotationState != model.RotationPending {
			return nil, nil
		}
		if d.Active && d.LastRotationAttemptAt != nil && d.LastRotationAttemptAt.After(before) &&
			(d.LastRotationAttemptAt.After(unfetched) || d.FetchedThisAttempt()) {
			return nil, nil // a newer attempt, or one its device answered
		}
		started = d.LastRotationAttemptAt
		// A secret generated in restore mode ended the old one, whatever
		// mode is in force now: restore it.
		restoring := mode == model.RotationRestore || d.IATAfter != nil
		if restoring && d.PreviousSecret != nil {
			r, err := s.restore(ctx, d)
			// The identity provider's not-found is the client's, not
			// the row's (which UpdateDevice reports): with the client
			// gone there is nothing to restore, and the attempt must
			// still end, or the device holds its slot for good.
			missing = errors.Is(err, model.ErrNotFound)
			if err != nil && !missing {
				return nil, err
			}
			restored = r
			d.NewSecretAt, d.IATAfter, d.PreviousSecret, d.SecretSHA256 = nil, nil, nil, ""
		}
		d.RotationState = model.RotationTimeout
		done = true
		detail := "both secrets stay valid (grace)"
		if restoring {
			detail = "nothing generated to restore"
			if restored {
				detail = "old secret restored"
			}
		}
		if missing {
			detail = "nothing restored: the device's client is missing in the identity provider; " +
				"repair its identity and provision the device again"
		}
		if !d.Active {
			detail = "device deactivated; " + detail
		}
		e := s.deviceEntry(ctx, model.AuditRotationTimeout, *d, detail)
		if missing {
			e.Outcome = model.OutcomeFailure
		}
		entries := []model.AuditEntry{e}
		if restored {
			entries = append(entries, s.deviceEntry(ctx, model.AuditSecretRestored, *d, "the sealed previous secret is the only one again"))
		}
		return s.audited(entries...), nil
	})
	if errors.Is(err, model.ErrNotFound) {
		return false, nil // the device row was deleted meanwhile
	}
	if err != nil {
		return false, fmt.Errorf("time out the rotation of device %d: %w", id, err)
	}
	if done {
		ev := RotationEvent{Kind: EventTimeout, DeviceID: d.ID, ClientID: d.ClientID(), Restored: restored, ClientMissing: missing}
		if started != nil {
			ev.SinceAttempt = s.now().Sub(*started)
		}
		s.event(ctx, ev)
	}
	return done, nil
}

// restore makes the sealed previous secret the client's only one again when
// the current secret differs from it (a generation happened), and reports
// whether it did.
func (s *Service) restore(ctx context.Context, d *model.Device) (bool, error) {
	prev, err := s.openSecret(d)
	if err != nil {
		return false, err
	}
	cur, err := s.d.Identity.ClientSecret(ctx, d.ClientID())
	if err != nil {
		return false, fmt.Errorf("read the current secret: %w", err)
	}
	if cur == prev {
		// Never generated, but a rotated secret may linger from a realm
		// policy: the previous secret is the only one either way.
		return false, nil
	}
	if err := s.d.Identity.SetSecret(ctx, d.ClientID(), prev); err != nil {
		return false, fmt.Errorf("restore the previous secret: %w", err)
	}
	return true, nil
}

// openSecret opens the device's sealed previous secret.
func (s *Service) openSecret(d *model.Device) (string, error) {
	plain, err := s.d.SecretBox.Open(d.PreviousSecret)
	if err != nil {
		return "", fmt.Errorf("open the sealed previous secret of device %d (was SECRET_KEY changed without SECRET_KEY_PREVIOUS?): %w", d.ID, err)
	}
	return string(plain), nil
}

// FetchCredentials implements ports.DeviceAPI (SPEC §4 "Fetch").
func (s *Service) FetchCredentials(ctx context.Context, d model.Device) (ports.Provisioning, error) {
	mode, err := s.rotationMode()
	if err != nil {
		return ports.Provisioning{}, err
	}
	if d.RotationState != model.RotationPending {
		return s.provisioning(ctx, d)
	}
	ctx = model.WithActor(ctx, model.DeviceActor(d.ClientID()))
	var p ports.Provisioning
	audited := false // the fetch's audit entry is recorded already
	if d.NewSecretAt == nil {
		var fresh string
		if d, fresh, audited, err = s.generate(ctx, d, mode); err != nil {
			return ports.Provisioning{}, err
		}
		p = s.provisioningWith(d, fresh) // no need to read it back
	} else if p, err = s.provisioning(ctx, d); err != nil {
		return ports.Provisioning{}, err
	}
	if d.RotationState == model.RotationPending && d.NewSecretAt != nil {
		// The secret may have been changed behind espmdm's back (an admin
		// in Keycloak): confirm what the device is given. And the attempt
		// is answered: it gets the whole timeout to confirm.
		if digest := secretDigest(p.ClientSecret); digest != d.SecretSHA256 || !d.FetchedThisAttempt() {
			if _, err := s.d.Devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
				if cur.NewSecretAt != nil && digest != d.SecretSHA256 {
					cur.SecretSHA256 = digest
				}
				if cur.RotationState == model.RotationPending && !cur.FetchedThisAttempt() {
					now := s.now()
					cur.LastRotationFetchAt = &now
				}
				return nil, nil
			}); err != nil {
				return ports.Provisioning{}, fmt.Errorf("rotation fetch of device %d: %w", d.ID, err)
			}
		}
		if !audited {
			if err := s.appendAudit(ctx, s.deviceEntry(ctx, model.AuditSecretFetched, d, "the rotation's new secret")); err != nil {
				return ports.Provisioning{}, fmt.Errorf("rotation fetch of device %d: %w", d.ID, err)
			}
		}
		ev := RotationEvent{Kind: EventFetched, DeviceID: d.ID, ClientID: d.ClientID()}
		if d.LastRotationAttemptAt != nil {
			ev.SinceAttempt = s.now().Sub(*d.LastRotationAttemptAt)
		}
		s.event(ctx, ev)
	}
	return p, nil
}

// generate makes the rotation's new secret, once: a secret is never
// generated twice for one rotation, whatever fails in between (a second
// generation would end the old secret, which the device may still hold).
//
// In restore mode the current secret is first sealed into the row, in a
// transaction of its own; then, with the row locked, the secret is
// generated unless the current one already differs from the sealed one (a
// generation whose recording was cut off). Generation replaces the secret
// there, so the old one must be on record before it.
//
// In grace mode Keycloak itself keeps the old secret, as the rotated one:
// one read with the row locked (CoveredSecrets) says whether a generation
// happened that was not recorded (a rotated secret while none is on
// record), and the old secret is sealed in the same transaction that
// records the new one.
//
// It returns the device, the secret the device is to get now, and whether
// the "secret fetched" audit entry went into the recording transaction.
func (s *Service) generate(ctx context.Context, d model.Device, mode model.RotationMode) (model.Device, string, bool, error) {
	clientID := d.ClientID()
	if d.PreviousSecret == nil && mode != model.RotationGrace {
		cur, err := s.d.Identity.ClientSecret(ctx, clientID)
		if err != nil {
			return d, "", false, fmt.Errorf("rotation fetch of device %d: read the current secret: %w", d.ID, err)
		}
		sealed, err := s.d.SecretBox.Seal([]byte(cur))
		if err != nil {
			return d, "", false, fmt.Errorf("rotation fetch of device %d: seal the current secret: %w", d.ID, err)
		}
		d, err = s.d.Devices.UpdateDevice(ctx, d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
			if row.PreviousSecret == nil && row.NewSecretAt == nil {
				row.PreviousSecret = sealed
			}
			return nil, nil
		})
		if err != nil {
			return d, "", false, fmt.Errorf("rotation fetch of device %d: %w", d.ID, err)
		}
	}
	generated, audited := false, false
	var handout string
	dev := d
	d, err := s.d.Devices.UpdateDevice(ctx, d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
		generated, audited, handout = false, false, ""
		if row.RotationState != model.RotationPending {
			return nil, model.Conflict("device %d is no longer in rotation", row.ID)
		}
		fetchedAt := s.now()
		row.LastRotationFetchAt = &fetchedAt // the nudge is answered
		if row.NewSecretAt != nil {
			return nil, nil // a concurrent fetch generated it: read it below
		}
		fresh, taken, err := s.newSecret(ctx, row, mode)
		if err != nil {
			return nil, err
		}
		generated = !taken
		now := s.now()
		row.NewSecretAt = &now
		row.SecretSHA256 = secretDigest(fresh)
		handout = fresh
		detail := "new secret generated (" + string(mode) + ")"
		if taken {
			detail = "a secret generated before an interrupted recording is taken as the new one (" + string(mode) + ")"
		}
		if mode == model.RotationRestore {
			detail += "; the old secret no longer works"
		}
		audited = s.d.Audit != nil
		return s.audited(s.deviceEntry(ctx, model.AuditSecretGenerated, *row, detail),
			s.deviceEntry(ctx, model.AuditSecretFetched, *row, "the rotation's new secret")), nil
	})
	if err != nil {
		if !errors.Is(err, model.ErrConflict) {
			s.auditFailure(ctx, s.deviceEntry(ctx, model.AuditSecretGenerated, dev, ""), err)
		}
		return d, "", false, fmt.Errorf("rotation fetch of device %d: %w", d.ID, err)
	}
	if generated {
		s.event(ctx, RotationEvent{Kind: EventGenerated, DeviceID: d.ID, ClientID: clientID})
	}
	if handout == "" {
		p, err := s.provisioning(ctx, d)
		if err != nil {
			return d, "", false, err
		}
		handout = p.ClientSecret
	}
	return d, handout, audited, nil
}

// newSecret makes the new secret of row's rotation in Keycloak, row
// locked and without a recorded generation, and seals the old one into
// row where it is not yet. It returns the new secret and whether it was
// taken from a generation made before (one whose recording was cut off, or
// an administrator's in Keycloak) rather than generated now. In restore
// mode it sets row.IATAfter for the iat rule.
func (s *Service) newSecret(ctx context.Context, row *model.Device, mode model.RotationMode) (string, bool, error) {
	row.IATAfter = nil
	fresh, taken, err := s.makeSecret(ctx, row, mode)
	if err != nil || mode != model.RotationRestore {
		return fresh, taken, err
	}
	clientID := row.ClientID()
	st, err := s.d.Identity.SecretState(ctx, clientID)
	if err != nil {
		return "", false, fmt.Errorf("read when the secret was made: %w", err)
	}
	// The old secret must stop working now, also where a realm policy kept
	// it as the rotated one (and also after a generation whose recording
	// was cut off before this step).
	if err := s.d.Identity.InvalidateRotatedSecret(ctx, clientID); err != nil {
		return "", false, fmt.Errorf("invalidate the rotated secret: %w", err)
	}
	// The iat rule compares Keycloak's times with Keycloak's times: a
	// token's iat with when the old secret stopped working by Keycloak's
	// clock, which may differ from espmdm's. That is the generation's time
	// (client.secret.creation.time), unless the old secret lived on as
	// the rotated one until the invalidation just made (or Keycloak did not
	// date the generation): then Keycloak's clock read after it.
	after := st.CreatedAt
	if st.Rotated || after.IsZero() {
		if after, err = s.d.Identity.Now(ctx); err != nil {
			return "", false, fmt.Errorf("read the identity provider's clock: %w", err)
		}
	}
	row.IATAfter = &after
	return fresh, taken, nil
}

// makeSecret is newSecret but for restore mode's invalidation.
func (s *Service) makeSecret(ctx context.Context, row *model.Device, mode model.RotationMode) (string, bool, error) {
	clientID := row.ClientID()
	var cur, old string
	if mode == model.RotationGrace {
		// Keycloak applies the rotation policy at a client's creation or
		// update only: make sure it covers this one (read with the
		// secrets, in one request), or the old secret would die at
		// generation.
		sec, err := s.d.Identity.CoveredSecrets(ctx, clientID)
		if err != nil {
			return "", false, fmt.Errorf("read the secrets and apply the rotation policy: %w", err)
		}
		cur, old = sec.Current, sec.Rotated
	} else {
		var err error
		if cur, err = s.d.Identity.ClientSecret(ctx, clientID); err != nil {
			return "", false, fmt.Errorf("read the current secret: %w", err)
		}
	}
	if row.PreviousSecret != nil {
		prev, err := s.openSecret(row)
		if err != nil {
			return "", false, err
		}
		if cur != prev {
			return cur, true, nil
		}
	} else {
		if mode != model.RotationGrace {
			return "", false, fmt.Errorf("device %d: no old secret on record to restore should the rotation time out", row.ID)
		}
		taken := old != ""
		if !taken {
			old = cur
		}
		sealed, err := s.d.SecretBox.Seal([]byte(old))
		if err != nil {
			return "", false, fmt.Errorf("seal the current secret: %w", err)
		}
		row.PreviousSecret = sealed
		if taken {
			// A rotated secret while none is on record: a generation
			// that was not recorded. The device holds the old secret
			// (still valid as the rotated one) or the new one: both
			// work until the ack, and generating again would end the
			// old one.
			return cur, true, nil
		}
	}
	fresh, err := s.d.Identity.RegenerateSecret(ctx, clientID)
	if err != nil {
		return "", false, fmt.Errorf("generate a secret: %w", err)
	}
	return fresh, false, nil
}

// provisioning is the device's provisioning fields with its current
// secret.
func (s *Service) provisioning(ctx context.Context, d model.Device) (ports.Provisioning, error) {
	secret, err := s.d.Identity.ClientSecret(ctx, d.ClientID())
	if err != nil {
		return ports.Provisioning{}, fmt.Errorf("provisioning of device %d: client secret: %w", d.ID, err)
	}
	return s.provisioningWith(d, secret), nil
}

// secretDigest is the lower-case hex SHA-256 of a secret.
func secretDigest(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// AckCredentials implements ports.DeviceAPI (SPEC §4 "Confirmation").
func (s *Service) AckCredentials(ctx context.Context, d model.Device, digest string) error {
	mode, err := s.rotationMode()
	if err != nil {
		return err
	}
	digest = strings.ToLower(digest)
	if len(digest) != sha256.Size*2 || strings.Trim(digest, "0123456789abcdef") != "" {
		return model.Invalid("client_secret_sha256", "must be the 64 hex digits of the SHA-256 of the new client secret")
	}
	ctx = model.WithActor(ctx, model.DeviceActor(d.ClientID()))
	err = s.complete(ctx, d.ID, mode, "ack", func(row *model.Device) (bool, error) {
		if row.NewSecretAt == nil {
			// Without a generation in progress SecretSHA256 is the last
			// completed rotation's: acking its secret again is 204, also
			// once the next rotation is queued or started (a device
			// promoting it at boot, after the iat rule completed it).
			if row.SecretSHA256 == digest {
				return false, nil
			}
			return false, model.Conflict("no rotation of this device awaits confirmation")
		}
		if row.SecretSHA256 != digest {
			return false, model.Conflict("client_secret_sha256 does not match the secret generated in this rotation")
		}
		return true, nil
	})
	if err != nil {
		detail := "ack not recorded"
		var ce *model.ConflictError
		if errors.As(err, &ce) {
			detail = "ack refused: " + ce.Reason
		}
		e := s.deviceEntry(ctx, model.AuditSecretAckRefused, d, detail)
		e.Outcome = model.OutcomeFailure
		s.report(ctx, "rotation ack: audit", s.appendAudit(ctx, e))
	}
	return err
}

// confirmByToken completes a PENDING restore-mode rotation when the device
// presents a token issued in a later second than the old secret stopped
// working, both by the identity provider's clock (IATAfter): the token
// proves the new secret. A rotation generated in grace mode has no
// IATAfter (its old secret stays valid) and completes only by the ack. It
// reports whether the token did so.
func (s *Service) confirmByToken(ctx context.Context, d model.Device, c model.DeviceClaims) (bool, error) {
	if mode, err := s.rotationMode(); err != nil || mode != model.RotationRestore {
		return false, nil // not resolved yet (nothing rotates then) or grace: only the ack confirms
	}
	mode := model.RotationRestore
	if !issuedAfter(d, c) {
		return false, nil
	}
	ctx = model.WithActor(ctx, model.DeviceActor(d.ClientID()))
	return true, s.complete(ctx, d.ID, mode, "iat", func(row *model.Device) (bool, error) {
		return issuedAfter(*row, c), nil
	})
}

// renudge sends the rotation nudge once more, once per attempt, to a
// PENDING device that fetched its new secret but shows up on the device
// API without having confirmed it: it rebooted between the fetch and the
// ack (losing the secret, or keeping it unconfirmed), and would otherwise
// wait for the attempt to time out and for its retry. A device in the
// middle of its rotation steps that gets the nudge twice fetches the same
// secret again and acks once more, which changes nothing. Failures are
// reported only: the timeout and retry still come.
func (s *Service) renudge(ctx context.Context, d model.Device) {
	if !renudgeDue(d) {
		return
	}
	send := false
	_, err := s.d.Devices.UpdateDevice(ctx, d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
		send = renudgeDue(*row)
		if send {
			now := s.now()
			row.LastRotationRenudgeAt = &now
		}
		return nil, nil
	})
	if err != nil {
		s.report(ctx, "rotation: nudge again", fmt.Errorf("device %d: %w", d.ID, err))
		return
	}
	if !send {
		return
	}
	s.event(ctx, RotationEvent{Kind: EventRenudged, DeviceID: d.ID, ClientID: d.ClientID(), At: s.now()})
	if err := s.d.Notifier.RotationNudge(ctx, d.ClientID()); err != nil {
		s.report(ctx, "rotation: nudge again", fmt.Errorf("device %d: %w", d.ID, err))
	}
}

// renudgeDue reports whether d fetched its current attempt's generated
// secret without confirming it and was not nudged again yet.
func renudgeDue(d model.Device) bool {
	return d.RotationState == model.RotationPending && d.NewSecretAt != nil && d.FetchedThisAttempt() && !d.RenudgedThisAttempt()
}

// issuedAfter reports whether d is PENDING with a secret generated in
// restore mode and c was issued in a later whole second than the old
// secret stopped working (both by the identity provider's clock).
func issuedAfter(d model.Device, c model.DeviceClaims) bool {
	return d.RotationState == model.RotationPending && d.NewSecretAt != nil && d.IATAfter != nil &&
		c.IssuedAt.Unix() > d.IATAfter.Unix()
}

// complete finishes device id's rotation when check (run on the locked row)
// says so: where a rotated secret may be left (grace mode, or a secret
// generated in grace mode and confirmed under restore) it is invalidated
// first (a failure leaves the rotation unconfirmed); then state OK,
// completion and secret times, sealed secret wiped. The freed slot starts
// the next device.
func (s *Service) complete(ctx context.Context, id int64, mode model.RotationMode, via string, check func(*model.Device) (bool, error)) error {
	done, invalidated := false, false
	var attempt, generated, replaced time.Time
	d, err := s.d.Devices.UpdateDevice(ctx, id, func(row *model.Device) ([]model.AuditEntry, error) {
		ok, err := check(row)
		done = ok
		if err != nil || !ok {
			return nil, err
		}
		// A restore-mode generation (IATAfter set) invalidated the
		// rotated secret already; any other may have left one.
		invalidated = mode == model.RotationGrace || row.IATAfter == nil
		if invalidated {
			if err := s.d.Identity.InvalidateRotatedSecret(ctx, row.ClientID()); err != nil {
				return nil, fmt.Errorf("invalidate the rotated secret: %w", err)
			}
		}
		now := s.now()
		if row.LastRotationAttemptAt != nil {
			attempt = *row.LastRotationAttemptAt
		}
		generated = *row.NewSecretAt
		if row.SecretCreatedAt != nil {
			replaced = *row.SecretCreatedAt
		}
		row.RotationState = model.RotationOK
		row.LastRotationCompletedAt = &now
		row.SecretCreatedAt = row.NewSecretAt
		row.NewSecretAt, row.IATAfter = nil, nil
		row.PreviousSecret = nil
		var entries []model.AuditEntry
		if invalidated {
			entries = append(entries, s.deviceEntry(ctx, model.AuditRotatedInvalidated, *row, "the old secret no longer works"))
		}
		entries = append(entries, s.deviceEntry(ctx, model.AuditSecretConfirmed, *row, "confirmed by "+confirmWord(via)))
		return s.audited(entries...), nil
	})
	if err != nil {
		return fmt.Errorf("confirm the rotation of device %d: %w", id, err)
	}
	if !done {
		return nil
	}
	now := s.now()
	if invalidated {
		s.event(ctx, RotationEvent{Kind: EventInvalidated, DeviceID: d.ID, ClientID: d.ClientID(), At: now})
	}
	ev := RotationEvent{Kind: EventConfirmed, DeviceID: d.ID, ClientID: d.ClientID(), At: now, Via: via, SinceGenerated: now.Sub(generated)}
	if !attempt.IsZero() {
		ev.SinceAttempt = now.Sub(attempt)
	}
	if !replaced.IsZero() {
		ev.ReplacedAge = generated.Sub(replaced)
	}
	s.event(ctx, ev)
	s.fillSlots(ctx)
	return nil
}

// leaveRotation takes a device that was just deactivated out of the queue:
// QUEUED goes back to OK, PENDING is timed out as the mode says (a failure
// is left to the next cycle's timeouts, which also take inactive PENDING
// devices).
func (s *Service) leaveRotation(ctx context.Context, before model.Device) {
	switch before.RotationState {
	case model.RotationQueued:
		_, err := s.d.Devices.UpdateDevice(ctx, before.ID, func(d *model.Device) ([]model.AuditEntry, error) {
			if !d.Active && d.RotationState == model.RotationQueued {
				d.RotationState = model.RotationOK
			}
			return nil, nil
		})
		s.report(ctx, "rotation: dequeue deactivated device", err)
	case model.RotationPending:
		_, err := s.timeOut(ctx, before.ID, s.now(), s.now())
		s.report(ctx, "rotation: time out deactivated device", err)
		s.fillSlots(ctx)
	}
}

// RotationStatus implements ports.Rotation.
func (s *Service) RotationStatus(ctx context.Context) (ports.RotationStatus, error) {
	st := ports.RotationStatus{Mode: s.RotationMode()}
	var err error
	if st.Counts, err = s.d.Devices.RotationCounts(ctx); err != nil {
		return st, fmt.Errorf("rotation status: %w", err)
	}
	if st.InFlight, err = s.d.Devices.InFlight(ctx); err != nil {
		return st, fmt.Errorf("rotation status: %w", err)
	}
	if st.LastCompletedAt, err = s.d.Devices.LastRotationCompleted(ctx); err != nil {
		return st, fmt.Errorf("rotation status: %w", err)
	}
	if st.NextScheduled, err = s.NextScheduledRotation(ctx); err != nil {
		return st, fmt.Errorf("rotation status: %w", err)
	}
	if s.d.Lease != nil {
		if st.LeaseHolder, err = s.d.Lease.Holder(ctx); err != nil {
			return st, fmt.Errorf("rotation status: %w", err)
		}
	}
	return st, nil
}

// RotationDashboard implements ports.Rotation.
func (s *Service) RotationDashboard(ctx context.Context, g model.DashboardGroup, limit int, afterID int64) (ports.Dashboard, error) {
	known := false
	for _, k := range model.DashboardGroups {
		known = known || k == g
	}
	switch {
	case !known:
		return ports.Dashboard{}, model.Invalid("group", "must be one of healthy, warning, critical, inactive")
	case limit == 0:
		limit = DefaultPageSize
	case limit < 0 || limit > MaxPageSize:
		return ports.Dashboard{}, model.Invalid("limit", "must be between 1 and %d", MaxPageSize)
	}
	if afterID < 0 {
		return ports.Dashboard{}, model.Invalid("cursor", "must not be negative")
	}
	q := s.dashboardQuery()
	counts, err := s.d.Devices.DashboardCounts(ctx, q)
	if err != nil {
		return ports.Dashboard{}, fmt.Errorf("rotation dashboard: %w", err)
	}
	page, err := s.d.Devices.DashboardPage(ctx, q, g, limit, afterID)
	if err != nil {
		return ports.Dashboard{}, fmt.Errorf("rotation dashboard: %w", err)
	}
	return ports.Dashboard{Counts: counts, Group: g, Page: page}, nil
}

// dashboardQuery holds the thresholds of SPEC §4's dashboard groups.
func (s *Service) dashboardQuery() ports.DashboardQuery {
	now := s.now()
	return ports.DashboardQuery{
		WarningBefore:     now.Add(-s.cfg.RotationWarningAge),
		CriticalBefore:    now.Add(-s.cfg.RotationCriticalAge),
		UnconfirmedBefore: now.Add(-s.cfg.RotationGrace / 2),
	}
}

// confirmWord says how a confirmation was made, for the audit log.
func confirmWord(via string) string {
	if via == "iat" {
		return "a token issued after the generation (iat)"
	}
	return "the device's ack of the secret's SHA-256"
}
