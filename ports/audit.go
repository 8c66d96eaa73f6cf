package ports

import (
	"context"
	"sync"
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
// deletes an entry.
type AuditLog interface {
	// AppendAudit stores entries on their own (events that change nothing
	// else: a download, a refused ack, a failure). Sets nothing in them.
	AppendAudit(ctx context.Context, entries ...model.AuditEntry) error
	// ListAudit returns one page of entries.
	ListAudit(ctx context.Context, f AuditFilter) (AuditPage, error)
}

// AuditBatch carries audit entries to the transaction of the change they
// record. The core puts one in the context of a repository call
// (WithAudit) and adds entries to it, before the call or from inside the
// call's update closure; a repository that changes something takes the
// batch's entries (TakeAudit) after its closure ran and stores them in the
// same transaction as the change, so an entry exists exactly when its
// change was committed.
type AuditBatch struct {
	mu      sync.Mutex
	entries []model.AuditEntry
}

// Add queues entries for the transaction.
func (b *AuditBatch) Add(entries ...model.AuditEntry) {
	b.mu.Lock()
	b.entries = append(b.entries, entries...)
	b.mu.Unlock()
}

// Reset drops the queued entries (an update closure that runs again).
func (b *AuditBatch) Reset() {
	b.mu.Lock()
	b.entries = nil
	b.mu.Unlock()
}

type auditBatchKey struct{}

// WithAudit returns ctx carrying a new, empty AuditBatch, and the batch.
func WithAudit(ctx context.Context) (context.Context, *AuditBatch) {
	b := &AuditBatch{}
	return context.WithValue(ctx, auditBatchKey{}, b), b
}

// TakeAudit removes and returns the entries queued in ctx's AuditBatch
// (none without one). Repositories call it inside their transaction.
func TakeAudit(ctx context.Context) []model.AuditEntry {
	b, _ := ctx.Value(auditBatchKey{}).(*AuditBatch)
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.entries
	b.entries = nil
	return out
}
