package mdm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The fetch (SPEC §4 "Fetch"): GET /iot/provisioning while PENDING. The
// first fetch of a rotation generates the new secret; every later one
// hands out the same secret. A secret is never generated twice for one
// rotation, whatever fails in between: in grace mode a second generation
// would end the old secret's grace, in restore mode it would replace a
// secret the device may hold already.

// FetchCredentials implements ports.DeviceAPI (SPEC §4 "Fetch").
func (s *Service) FetchCredentials(ctx context.Context, d model.Device) (ports.Provisioning, error) {
	mode, err := s.rotationMode()
	if err != nil {
		return ports.Provisioning{}, err
	}
	if d.RotationState != model.RotationPending {
		// d may come from a replica's device cache, which learns of a
		// rotation started elsewhere a few milliseconds late: the fetch
		// decides on the row itself.
		id := d.ID
		if d, err = s.d.Devices.GetDevice(ctx, id); err != nil {
			return ports.Provisioning{}, fmt.Errorf("rotation fetch of device %d: %w", id, err)
		}
		if d.RotationState != model.RotationPending {
			return s.provisioning(ctx, d)
		}
	}
	ctx = model.WithActor(ctx, model.DeviceActor(d.ClientID()))
	var p ports.Provisioning
	audited := false // the fetch's audit entry is recorded already
	if !d.Generated() {
		var fresh string
		if d, fresh, audited, err = s.generate(ctx, d, mode); err != nil {
			return ports.Provisioning{}, err
		}
		if p, err = s.provisioningWith(d, fresh); err != nil { // no need to read it back
			return ports.Provisioning{}, err
		}
	} else if p, err = s.provisioning(ctx, d); err != nil {
		return ports.Provisioning{}, err
	}
	if d.RotationState == model.RotationPending && d.Generated() {
		// The secret may have been changed behind espmdm's back (an admin
		// in Keycloak): confirm what the device is given. And the attempt
		// is answered: it gets the whole timeout to confirm.
		if digest := secretDigest(p.ClientSecret); digest != d.SecretSHA256 || !d.FetchedThisAttempt() {
			if _, err := s.d.Devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
				if digest != d.SecretSHA256 {
					cur.HandOut(digest)
				}
				cur.MarkFetched(s.now())
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

// generate is the generation step: it makes the rotation's new secret,
// once, and records it.
//
// Write-ahead: first the intent to generate is committed to the row
// (model.Device.IntendGeneration; in restore mode with the current secret
// sealed into it, when none is on record, since generation replaces the
// secret there). Then, with the row locked, the secret is generated and
// recorded, which clears the intent. A generation whose recording was
// lost (a crash, a failed commit, an answer that never came) leaves its
// intent behind: a step that finds an intent other than its own
// (model.Device.GenerationUnsure) reads the identity provider first and
// takes such a generation instead of making another one — in restore mode
// the current secret differs from the sealed one, in grace mode Keycloak
// keeps the old secret as the rotated one (a rotated secret while none is
// on record; also one an administrator made with Keycloak's
// "Regenerate"). A step that finds its own intent knows that no
// generation request was made since, and generates without a read.
//
// Grace mode also needs the client covered by the rotation policy, or
// the old secret would die at generation: clients made in grace mode are
// covered at their creation (and the reconciler covers the others), so
// the step checks (and applies) it only for a row not known to be
// covered, in the same read.
//
// It returns the device, the secret the device is to get now, and whether
// the "secret fetched" audit entry went into the recording transaction.
func (s *Service) generate(ctx context.Context, d model.Device, mode model.RotationMode) (model.Device, string, bool, error) {
	clientID := d.ClientID()
	var sealed []byte
	if d.PreviousSecret == nil && mode != model.RotationGrace {
		var err error
		if sealed, err = s.sealCurrentSecret(ctx, clientID); err != nil {
			return d, "", false, fmt.Errorf("rotation fetch of device %d: %w", d.ID, err)
		}
	}
	var (
		mark        time.Time
		outstanding bool
		kept        bool // this step put the sealed secret on record
	)
	d, err := s.d.Devices.UpdateDevice(ctx, d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
		var (
			generated bool
			err       error
		)
		mark, outstanding, generated, err = row.IntendGeneration(s.now())
		if err != nil || generated {
			return nil, err // refused, or a concurrent fetch generated: read it below
		}
		kept = sealed != nil && row.PreviousSecret == nil
		if kept {
			row.KeepPreviousSecret(sealed)
		}
		return nil, nil
	})
	if err != nil {
		return d, "", false, fmt.Errorf("rotation fetch of device %d: %w", d.ID, err)
	}
	var g generation
	audited := false
	dev := d
	d, err = s.d.Devices.UpdateDevice(ctx, d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
		g, audited = generation{}, false
		generated, err := row.CanGenerate()
		if err != nil {
			return nil, err
		}
		row.MarkFetched(s.now()) // the nudge is answered
		if generated {
			return nil, nil // a concurrent fetch generated it: read it below
		}
		// In restore mode only a secret sealed by this step is known to be
		// the current one (one sealed earlier may predate a generation).
		unsure := row.GenerationUnsure(mark, outstanding) || (mode != model.RotationGrace && !kept)
		if g, err = s.generateInProvider(ctx, *row, mode, unsure); err != nil {
			return nil, err
		}
		if g.previous != nil {
			row.KeepPreviousSecret(g.previous)
		}
		if g.covered {
			row.MarkCovered()
		}
		if err := row.RecordGeneration(s.now(), secretDigest(g.secret), g.iatAfter); err != nil {
			return nil, err
		}
		detail := "new secret generated (" + string(mode) + ")"
		if g.taken {
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
	if g.secret != "" && !g.taken {
		s.event(ctx, RotationEvent{Kind: EventGenerated, DeviceID: d.ID, ClientID: clientID})
	}
	handout := g.secret
	if handout == "" {
		p, err := s.provisioning(ctx, d)
		if err != nil {
			return d, "", false, err
		}
		handout = p.ClientSecret
	}
	return d, handout, audited, nil
}

// generation is what the identity provider's part of the generation step
// made.
type generation struct {
	// secret is the rotation's new secret.
	secret string
	// taken: the secret was generated before (a generation whose
	// recording was cut off, or an administrator's in Keycloak) and is
	// taken as the new one rather than generated now.
	taken bool
	// previous is the sealed old secret to put on record (grace mode,
	// when the step read it).
	previous []byte
	// covered: the step made sure the rotation policy covers the client.
	covered bool
	// iatAfter is set in restore mode: from when a token proves the new
	// secret (model.Device.ConfirmedByToken).
	iatAfter *time.Time
}

// generateInProvider is the identity provider's part of the generation
// step, for row (locked, PENDING, nothing recorded as generated). unsure
// says that a generation may have happened without its recording (see
// generate): the provider is read first. In grace mode the provider keeps
// the old secret as the rotated one; in restore mode the old secret is
// ended at once (endOldSecret).
func (s *Service) generateInProvider(ctx context.Context, row model.Device, mode model.RotationMode, unsure bool) (generation, error) {
	clientID := row.ClientID()
	var g generation
	var cur, old string
	read := false
	switch {
	case mode == model.RotationGrace && (unsure || !row.ClientCovered):
		// Keycloak applies the rotation policy at a client's creation or
		// update only: make sure it covers this one (read with the
		// secrets, in one request), or the old secret would die at
		// generation.
		sec, err := s.coveredSecrets(ctx, clientID)
		if err != nil {
			return g, fmt.Errorf("read the secrets and apply the rotation policy: %w", err)
		}
		cur, old, read, g.covered = sec.Current, sec.Rotated, true, true
	case mode != model.RotationGrace && unsure:
		var err error
		if cur, err = s.d.Rotator.ClientSecret(ctx, clientID); err != nil {
			return g, fmt.Errorf("read the current secret: %w", err)
		}
		read = true
	}
	switch {
	case row.PreviousSecret != nil:
		if read {
			prev, err := s.openSecret(row)
			if err != nil {
				return g, err
			}
			g.secret, g.taken = cur, cur != prev
		}
	case mode != model.RotationGrace:
		return g, fmt.Errorf("device %d: no old secret on record to restore should the rotation time out", row.ID)
	case read:
		// A rotated secret while none is on record: a generation that
		// was not recorded. The device holds the old secret (still valid
		// as the rotated one) or the new one: both work until the ack,
		// and generating again would end the old one.
		g.taken = old != ""
		if !g.taken {
			old = cur
		}
		sealed, err := s.d.SecretBox.Seal([]byte(old))
		if err != nil {
			return g, fmt.Errorf("seal the current secret: %w", err)
		}
		g.previous, g.secret = sealed, cur
	}
	// Not read (grace, covered, this step's own intent): Keycloak keeps
	// the old secret as the rotated one, and nothing is sealed.
	if !g.taken {
		fresh, err := s.d.Rotator.RegenerateSecret(ctx, clientID)
		if err != nil {
			return g, fmt.Errorf("generate a secret: %w", err)
		}
		g.secret = fresh
	}
	if mode != model.RotationRestore {
		return g, nil
	}
	after, err := s.endOldSecret(ctx, clientID)
	if err != nil {
		return generation{}, err
	}
	g.iatAfter = &after
	return g, nil
}

// coveredSecrets makes sure the rotation policy covers the client and
// reads its secrets: in the one call of ports.CoveredSecretsReader where
// the provider offers it (Keycloak: one request), else CoverClient then
// Secrets.
func (s *Service) coveredSecrets(ctx context.Context, clientID string) (model.Secrets, error) {
	if r, ok := s.d.Rotator.(ports.CoveredSecretsReader); ok {
		return r.CoveredSecrets(ctx, clientID)
	}
	if _, err := s.d.Rotator.CoverClient(ctx, clientID); err != nil {
		return model.Secrets{}, err
	}
	return s.d.Rotator.Secrets(ctx, clientID)
}

// endOldSecret makes the old secret stop working now (restore mode), also
// where a realm policy kept it as the rotated one (and also after a
// generation whose recording was cut off before this step), and returns
// from when, by the identity provider's clock, a token proves the new
// secret.
func (s *Service) endOldSecret(ctx context.Context, clientID string) (time.Time, error) {
	st, err := s.d.Rotator.SecretState(ctx, clientID)
	if err != nil {
		return time.Time{}, fmt.Errorf("read when the secret was made: %w", err)
	}
	if err := s.d.Rotator.InvalidateRotatedSecret(ctx, clientID); err != nil {
		return time.Time{}, fmt.Errorf("invalidate the rotated secret: %w", err)
	}
	// The iat rule compares Keycloak's times with Keycloak's times: a
	// token's iat with when the old secret stopped working by Keycloak's
	// clock, which may differ from espmdm's. That is the generation's time
	// (client.secret.creation.time), unless the old secret lived on as
	// the rotated one until the invalidation just made (or Keycloak did not
	// date the generation): then Keycloak's clock read after it.
	after := st.CreatedAt
	if st.Rotated || after.IsZero() {
		if after, err = s.d.Rotator.Now(ctx); err != nil {
			return time.Time{}, fmt.Errorf("read the identity provider's clock: %w", err)
		}
	}
	return after, nil
}

// sealCurrentSecret reads the client's current secret and seals it, to be
// put on record before a restore-mode generation replaces it.
func (s *Service) sealCurrentSecret(ctx context.Context, clientID string) ([]byte, error) {
	cur, err := s.d.Rotator.ClientSecret(ctx, clientID)
	if err != nil {
		return nil, fmt.Errorf("read the current secret: %w", err)
	}
	sealed, err := s.d.SecretBox.Seal([]byte(cur))
	if err != nil {
		return nil, fmt.Errorf("seal the current secret: %w", err)
	}
	return sealed, nil
}

// openSecret opens the device's sealed previous secret.
func (s *Service) openSecret(d model.Device) (string, error) {
	plain, err := s.d.SecretBox.Open(d.PreviousSecret)
	if err != nil {
		return "", fmt.Errorf("open the sealed previous secret of device %d (was SECRET_KEY changed without SECRET_KEY_PREVIOUS?): %w", d.ID, err)
	}
	return string(plain), nil
}

// provisioning is the device's provisioning fields with its current
// secret.
func (s *Service) provisioning(ctx context.Context, d model.Device) (ports.Provisioning, error) {
	secret, err := s.d.Clients.ClientSecret(ctx, d.ClientID())
	if err != nil {
		return ports.Provisioning{}, fmt.Errorf("provisioning of device %d: client secret: %w", d.ID, err)
	}
	return s.provisioningWith(d, secret)
}

// secretDigest is the lower-case hex SHA-256 of a secret.
func secretDigest(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}
