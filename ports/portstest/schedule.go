package portstest

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Schedule is an in-memory ports.ScheduleRepo. Like the database it keeps
// times at microsecond precision: AdvanceFire truncates from and to.
type Schedule struct {
	// Hook, when set, is called with the method name ("LastFire",
	// "AdvanceFire") before each operation; a non-nil result fails the
	// operation with that error and changes nothing. Set it before use.
	Hook func(op string) error
	// Audit, when set, receives the audit entries of an AdvanceFire that
	// moves the fire time (and of a RecordExpression that changes the
	// expression). Set it before use.
	Audit *AuditLog

	mu    sync.Mutex
	fires map[string]time.Time
	exprs map[string]string
}

var _ ports.ScheduleRepo = (*Schedule)(nil)

// NewSchedule returns a Schedule on which no schedule has fired yet.
func NewSchedule() *Schedule {
	return &Schedule{fires: map[string]time.Time{}, exprs: map[string]string{}}
}

// RecordExpression implements ports.ScheduleRepo.
func (s *Schedule) RecordExpression(_ context.Context, name, expr string, audit []model.AuditEntry) (string, error) {
	if err := s.hook("RecordExpression"); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.exprs[name]
	if prev != expr {
		s.exprs[name] = expr
		s.audit(audit)
	}
	return prev, nil
}

func (s *Schedule) hook(op string) error {
	if s.Hook == nil {
		return nil
	}
	return s.Hook(op)
}

// LastFire implements ports.ScheduleRepo.
func (s *Schedule) LastFire(_ context.Context, name string) (time.Time, error) {
	if err := s.hook("LastFire"); err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fires[name], nil
}

// AdvanceFire implements ports.ScheduleRepo. A zero to is refused.
func (s *Schedule) AdvanceFire(_ context.Context, name string, from, to time.Time, audit []model.AuditEntry) (bool, error) {
	if err := s.hook("AdvanceFire"); err != nil {
		return false, err
	}
	if to.IsZero() {
		return false, errors.New("portstest: advance schedule: zero fire time")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, fired := s.fires[name]
	switch {
	case from.IsZero() && fired,
		!from.IsZero() && (!fired || !cur.Equal(us(from))):
		return false, nil
	}
	s.fires[name] = us(to)
	s.audit(audit)
	return true, nil
}

func (s *Schedule) audit(entries []model.AuditEntry) {
	if s.Audit != nil {
		s.Audit.commit(entries, 0, 0)
	}
}
