package mdm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/espmdm/espmdm/core/model"
)

// Confirmation (SPEC §4 "Confirmation"): the device proves it holds the new
// secret by its ack, or, for a secret generated in restore mode, by a
// token issued after the old secret stopped working. Which proof counts is
// decided by model.Device (CheckAck, ConfirmedByToken); completing it here
// also ends the old secret where the identity provider may still keep it.

// AckCredentials implements ports.DeviceAPI (SPEC §4 "Confirmation").
func (s *Service) AckCredentials(ctx context.Context, d model.Device, digest string) error {
	mode, err := s.rotationMode()
	if err != nil {
		return err
	}
	digest = strings.ToLower(digest)
	if !model.SHA256Pattern.MatchString(digest) {
		return model.Invalid("client_secret_sha256", "must be the 64 hex digits of the SHA-256 of the new client secret")
	}
	ctx = model.WithActor(ctx, model.DeviceActor(d.ClientID()))
	err = s.complete(ctx, d.ID, mode, "ack", func(row *model.Device) (bool, error) {
		return row.CheckAck(digest)
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
// presents a token that proves the new secret (model.Device.ConfirmedByToken).
// A rotation generated in grace mode completes only by the ack, and in
// grace mode only the ack confirms. It reports whether the token did so.
func (s *Service) confirmByToken(ctx context.Context, d model.Device, c model.DeviceClaims) (bool, error) {
	if mode, err := s.rotationMode(); err != nil || mode != model.RotationRestore {
		return false, nil // not resolved yet (nothing rotates then) or grace: only the ack confirms
	}
	if !d.ConfirmedByToken(c.IssuedAt) {
		return false, nil
	}
	ctx = model.WithActor(ctx, model.DeviceActor(d.ClientID()))
	return true, s.complete(ctx, d.ID, model.RotationRestore, "iat", func(row *model.Device) (bool, error) {
		return row.ConfirmedByToken(c.IssuedAt), nil
	})
}

// complete finishes device id's rotation when check (run on the locked row)
// says so: where a rotated secret may be left (model.Device.
// RotatedSecretMayLinger) it is invalidated first (a failure leaves the
// rotation unconfirmed); then the row completes (model.Device.
// CompleteRotation). The freed slot starts the next device.
func (s *Service) complete(ctx context.Context, id int64, mode model.RotationMode, via string, check func(*model.Device) (bool, error)) error {
	done, invalidated := false, false
	var c model.Completion
	d, err := s.d.Devices.UpdateDevice(ctx, id, func(row *model.Device) ([]model.AuditEntry, error) {
		ok, err := check(row)
		done = ok
		if err != nil || !ok {
			return nil, err
		}
		invalidated = row.RotatedSecretMayLinger(mode)
		if invalidated {
			if err := s.d.Rotator.InvalidateRotatedSecret(ctx, row.ClientID()); err != nil {
				return nil, fmt.Errorf("invalidate the rotated secret: %w", err)
			}
		}
		if c, err = row.CompleteRotation(s.now()); err != nil {
			return nil, err
		}
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
	ev := RotationEvent{Kind: EventConfirmed, DeviceID: d.ID, ClientID: d.ClientID(), At: now, Via: via, SinceGenerated: now.Sub(c.Generated)}
	if !c.Attempt.IsZero() {
		ev.SinceAttempt = now.Sub(c.Attempt)
	}
	if !c.Replaced.IsZero() {
		ev.ReplacedAge = c.Generated.Sub(c.Replaced)
	}
	s.event(ctx, ev)
	s.fillSlots(ctx)
	return nil
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
	if !d.RenudgeDue() {
		return
	}
	send := false
	_, err := s.d.Devices.UpdateDevice(ctx, d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
		send = row.MarkRenudged(s.now())
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

// confirmWord says how a confirmation was made, for the audit log.
func confirmWord(via string) string {
	if via == "iat" {
		return "a token issued after the generation (iat)"
	}
	return "the device's ack of the secret's SHA-256"
}
