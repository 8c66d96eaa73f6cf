package mdm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// The rotation mode (SPEC §4 "Modes"): resolved once at start against the
// identity provider's rotation policy, and recorded, so that a start whose
// mode differs from the last one can warn about the rotations it leaves
// unconfirmed (they keep the rules of the mode that generated them).

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
	pol, err := s.d.Policy.RotationPolicy(ctx)
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
