package mdm

import (
	"context"
	"errors"
	"fmt"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The audit log (SPEC §12). What is audited, and by whom, is decided here:
// an entry that records a change is an argument (or an update closure's
// result) of the repository call that makes the change, which stores it
// in the change's transaction; an event that changes nothing else (a
// download, a fetch, a refused ack, a failure) is appended on its own.
// Entries never hold a secret: details are written here from fixed words,
// counts and ids.

// audited returns entries for a repository call to store with its change;
// none when no audit log is configured.
func (s *Service) audited(entries ...model.AuditEntry) []model.AuditEntry {
	if s.d.Audit == nil {
		return nil
	}
	return entries
}

// entry is a successful event of kind by ctx's actor, now.
func (s *Service) entry(ctx context.Context, kind model.AuditKind, detail string) model.AuditEntry {
	return model.AuditEntry{At: s.now(), Kind: kind, Actor: model.ActorOf(ctx), Outcome: model.OutcomeSuccess, Detail: detail}
}

// deviceEntry is entry about device d.
func (s *Service) deviceEntry(ctx context.Context, kind model.AuditKind, d model.Device, detail string) model.AuditEntry {
	e := s.entry(ctx, kind, detail)
	e.DeviceID, e.ClientID, e.ModelID = d.ID, d.ClientID(), d.DeviceModelID
	return e
}

// appendAudit stores entries on their own. An error is returned for the
// caller to decide: an event that hands out a secret fails without its
// record; a record of a failure only goes to OnError.
func (s *Service) appendAudit(ctx context.Context, entries ...model.AuditEntry) error {
	if s.d.Audit == nil || len(entries) == 0 {
		return nil
	}
	if err := s.d.Audit.AppendAudit(context.WithoutCancel(ctx), entries...); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// auditFailure records a failed event; failing to record it goes to
// OnError.
func (s *Service) auditFailure(ctx context.Context, e model.AuditEntry, cause error) {
	e.Outcome = model.OutcomeFailure
	if e.Detail != "" {
		e.Detail += ": "
	}
	e.Detail += failureWord(cause)
	s.report(ctx, "audit: record a failure", s.appendAudit(ctx, e))
}

// failureWord names the kind of a failure in a few fixed words (an error's
// text is never copied into the log: it could quote anything).
func failureWord(err error) string {
	var ve *model.ValidationError
	switch {
	case errors.Is(err, model.ErrUnavailable):
		return "a dependency was unavailable"
	case errors.Is(err, model.ErrConflict):
		return "refused as a conflict"
	case errors.Is(err, model.ErrNotFound):
		return "not found"
	case errors.As(err, &ve):
		return "invalid " + ve.Field
	}
	return "failed"
}

// ListAudit implements ports.AuditReader.
func (s *Service) ListAudit(ctx context.Context, f ports.AuditFilter) (ports.AuditPage, error) {
	if s.d.Audit == nil {
		return ports.AuditPage{}, fmt.Errorf("list audit: no audit log configured: %w", model.ErrUnavailable)
	}
	var err error
	if f.Limit, err = checkPage(f.Limit, f.AfterID); err != nil {
		return ports.AuditPage{}, err
	}
	if f.DeviceID < 0 {
		return ports.AuditPage{}, model.Invalid("device_id", "must be a positive integer")
	}
	if f.Kind != "" && !f.Kind.Valid() {
		return ports.AuditPage{}, model.Invalid("kind", "not an audit event kind")
	}
	p, err := s.d.Audit.ListAudit(ctx, f)
	if err != nil {
		return ports.AuditPage{}, fmt.Errorf("list audit: %w", err)
	}
	return p, nil
}
