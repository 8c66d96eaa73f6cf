package mdm

import (
	"context"
	"fmt"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The rotation schedule (SPEC §4 "Schedule"): each cycle fires it when a
// fire time has come since its last fire, once across replicas.

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
	n, err := s.d.Devices.QueueRotations(ctx, 0)
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
