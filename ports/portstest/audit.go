package portstest

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// AuditLog is an in-memory ports.AuditLog. Store and Schedule write a
// call's audit entries into the one they are given when the call's change
// is made (their "transaction"), as the database adapters do.
type AuditLog struct {
	// Hook, when set, is called with "AppendAudit" or "ListAudit" before
	// the operation; a non-nil result fails it. Set it before use.
	Hook func(op string) error

	now     func() time.Time
	mu      sync.Mutex
	nextID  int64
	entries []model.AuditEntry
}

var _ ports.AuditLog = (*AuditLog)(nil)

// NewAuditLog returns an empty log stamping entries without a time from
// clock (the wall clock when nil).
func NewAuditLog(clock ports.Clock) *AuditLog { return &AuditLog{now: nowFunc(clock)} }

// AppendAudit implements ports.AuditLog.
func (a *AuditLog) AppendAudit(_ context.Context, entries ...model.AuditEntry) error {
	if a.Hook != nil {
		if err := a.Hook("AppendAudit"); err != nil {
			return err
		}
	}
	a.commit(entries, 0, 0)
	return nil
}

// commit stores entries; a zero DeviceID or ModelID is set to deviceID or
// modelID (the row a create just inserted).
func (a *AuditLog) commit(entries []model.AuditEntry, deviceID, modelID int64) {
	if a == nil || len(entries) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range entries {
		a.nextID++
		e.ID = a.nextID
		if e.At.IsZero() {
			e.At = a.now()
		}
		e.At = us(e.At)
		if e.DeviceID == 0 {
			e.DeviceID = deviceID
		}
		if e.ModelID == 0 {
			e.ModelID = modelID
		}
		a.entries = append(a.entries, e)
	}
}

// ListAudit implements ports.AuditLog.
func (a *AuditLog) ListAudit(_ context.Context, f ports.AuditFilter) (ports.AuditPage, error) {
	if a.Hook != nil {
		if err := a.Hook("ListAudit"); err != nil {
			return ports.AuditPage{}, err
		}
	}
	limit := ports.PageLimit(f.Limit)
	a.mu.Lock()
	defer a.mu.Unlock()
	var page ports.AuditPage
	for _, e := range a.entries {
		switch {
		case e.ID <= f.AfterID,
			f.DeviceID != 0 && e.DeviceID != f.DeviceID,
			f.Kind != "" && e.Kind != f.Kind,
			f.Actor != "" && e.Actor.Subject != f.Actor && e.Actor.ClientID != f.Actor && e.Actor.Name != f.Actor,
			!f.Since.IsZero() && e.At.Before(f.Since):
			continue
		}
		if len(page.Entries) == limit {
			page.NextAfterID = page.Entries[limit-1].ID
			break
		}
		page.Entries = append(page.Entries, e)
	}
	return page, nil
}

// Entries returns every entry, oldest first (for tests).
func (a *AuditLog) Entries() []model.AuditEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.entries)
}
