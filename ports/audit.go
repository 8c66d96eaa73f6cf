package ports

import (
	"context"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// AuditFilter narrows ListAudit. Zero fields do not filter.
type AuditFilter struct {
	DeviceID int64
	Kind     model.AuditKind
	// Actor matches an entry whose actor subject, client id or name is
	// Actor.
	Actor string
	// Since keeps entries at or after it.
	Since time.Time
	// Limit is the page size (DefaultPageSize below 1, at most
	// MaxPageSize); AfterID the cursor: only entries with a larger ID, in
	// ID order (the order they were appended).
	Limit   int
	AfterID int64
}

// AuditPage is one page of the audit log; NextAfterID is 0 on the last
// page.
type AuditPage struct {
	Entries     []model.AuditEntry
	NextAfterID int64
}

// AuditLog is the append-only audit log (SPEC §12). Nothing updates or
// deletes an entry. An entry that records a change is not appended here:
// it is an argument (or an update closure's result) of the repository
// call that makes the change, which stores it in the change's transaction,
// so that an entry exists exactly when its change was committed.
type AuditLog interface {
	// AppendAudit stores entries on their own (events that change nothing
	// else: a download, a refused ack, a failure). Sets nothing in them.
	AppendAudit(ctx context.Context, entries ...model.AuditEntry) error
	// ListAudit returns one page of entries.
	ListAudit(ctx context.Context, f AuditFilter) (AuditPage, error)
}
