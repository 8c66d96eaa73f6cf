package mdm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// Timeouts (SPEC §4 "Timeouts"). A PENDING attempt ends when it is older
// than RotationTimeout, when its device has not fetched within
// RotationFetchTimeout of the nudge, or when the device is deactivated.
// What the timeout does depends on the mode (model.Device.TimeoutRestores):
//   - restore mode, and any secret generated in restore mode: the sealed
//     old secret is made the client's only one again (the unconfirmed new
//     one stops working) and the generation is forgotten, so the retry
//     generates afresh; with the client gone from the identity provider
//     there is nothing to restore, and the attempt still ends;
//   - grace mode, for a secret generated in grace mode: nothing changes in
//     the identity provider (both secrets stay valid), the generated
//     secret stays unconfirmed, and the retry nudges again without
//     generating.

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

// timeOut ends device id's attempt if it is still PENDING and expired
// (model.Device.AttemptExpired against before and unfetched), as the mode
// says. A failure leaves the device PENDING for the next cycle.
func (s *Service) timeOut(ctx context.Context, id int64, before, unfetched time.Time) (bool, error) {
	mode, err := s.rotationMode()
	if err != nil {
		return false, err
	}
	done, restored, missing := false, false, false
	var started *time.Time
	d, err := s.d.Devices.UpdateDevice(ctx, id, func(d *model.Device) ([]model.AuditEntry, error) {
		done, restored, missing = false, false, false
		if !d.AttemptExpired(before, unfetched) {
			return nil, nil // not PENDING, a newer attempt, or one its device answered
		}
		started = d.LastRotationAttemptAt
		restoring := d.TimeoutRestores(mode)
		// A grace-mode generation puts no old secret on record (Keycloak
		// keeps it, as the rotated one): restoring one restores that.
		fromRotated := restoring && d.PreviousSecret == nil && d.Generated() && !d.GeneratedInRestoreMode()
		forget := restoring && d.PreviousSecret != nil
		if forget || fromRotated {
			var r bool
			var err error
			if fromRotated {
				r, err = s.restoreRotatedSecret(ctx, *d)
				forget = r // nothing to restore from: the generation stands
			} else {
				r, err = s.restoreOldSecret(ctx, *d)
			}
			// The identity provider's not-found is the client's, not
			// the row's (which UpdateDevice reports): with the client
			// gone there is nothing to restore, and the attempt must
			// still end, or the device holds its slot for good.
			missing = errors.Is(err, model.ErrNotFound)
			if err != nil && !missing {
				return nil, err
			}
			restored = r
		}
		if err := d.TimeOutAttempt(forget); err != nil {
			return nil, err
		}
		done = true
		return s.audited(s.timeoutEntries(ctx, *d, restoring, restored, missing)...), nil
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

// timeoutEntries are the audit entries of a timeout.
func (s *Service) timeoutEntries(ctx context.Context, d model.Device, restoring, restored, missing bool) []model.AuditEntry {
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
	e := s.deviceEntry(ctx, model.AuditRotationTimeout, d, detail)
	if missing {
		e.Outcome = model.OutcomeFailure
	}
	entries := []model.AuditEntry{e}
	if restored {
		entries = append(entries, s.deviceEntry(ctx, model.AuditSecretRestored, d, "the sealed previous secret is the only one again"))
	}
	return entries
}

// restoreOldSecret makes the sealed previous secret the client's only one
// again when the current secret differs from it (a generation happened),
// and reports whether it did.
func (s *Service) restoreOldSecret(ctx context.Context, d model.Device) (bool, error) {
	prev, err := s.openSecret(d)
	if err != nil {
		return false, err
	}
	cur, err := s.d.Rotator.ClientSecret(ctx, d.ClientID())
	if err != nil {
		return false, fmt.Errorf("read the current secret: %w", err)
	}
	if cur == prev {
		// Never generated, but a rotated secret may linger from a realm
		// policy: the previous secret is the only one either way.
		return false, nil
	}
	if err := s.d.Rotator.SetSecret(ctx, d.ClientID(), prev); err != nil {
		return false, fmt.Errorf("restore the previous secret: %w", err)
	}
	return true, nil
}

// restoreRotatedSecret makes the old secret of a grace-mode generation,
// which the identity provider keeps as the rotated one, the client's only
// one again, and reports whether it did (false: no rotated secret left to
// restore).
func (s *Service) restoreRotatedSecret(ctx context.Context, d model.Device) (bool, error) {
	sec, err := s.d.Rotator.Secrets(ctx, d.ClientID())
	if err != nil {
		return false, fmt.Errorf("read the rotated secret: %w", err)
	}
	if sec.Rotated == "" {
		return false, nil
	}
	if err := s.d.Rotator.SetSecret(ctx, d.ClientID(), sec.Rotated); err != nil {
		return false, fmt.Errorf("restore the previous secret: %w", err)
	}
	return true, nil
}
