package mdm

import (
	"context"
	"fmt"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

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
	if !known {
		return ports.Dashboard{}, model.Invalid("group", "must be one of healthy, warning, critical, inactive")
	}
	limit, err := checkPage(limit, afterID)
	if err != nil {
		return ports.Dashboard{}, err
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
