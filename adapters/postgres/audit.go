package postgres

import (
	"context"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// auditRow is an audit_log row; its JSON form is what the prepared update
// of UpdateDevice reads with jsonb_to_recordset (a zero At is left out:
// the database's now()).
type auditRow struct {
	bun.BaseModel `bun:"table:audit_log,alias:a"`

	ID           int64     `bun:"id,pk,autoincrement" json:"-"`
	At           time.Time `bun:"at,notnull,nullzero,default:now()" json:"at,omitzero"`
	Kind         string    `bun:"kind,notnull" json:"kind"`
	ActorType    string    `bun:"actor_type,notnull" json:"actor_type"`
	ActorSubject string    `bun:"actor_subject,notnull" json:"actor_subject"`
	ActorClient  string    `bun:"actor_client,notnull" json:"actor_client"`
	ActorName    string    `bun:"actor_name,notnull" json:"actor_name"`
	DeviceID     *int64    `bun:"device_id" json:"device_id"`
	ClientID     string    `bun:"client_id,notnull" json:"client_id"`
	ModelID      *int64    `bun:"model_id" json:"model_id"`
	Outcome      string    `bun:"outcome,notnull" json:"outcome"`
	Detail       string    `bun:"detail,notnull" json:"detail"`
}

// maxDetail is the longest detail audit_log keeps (its CHECK).
const maxDetail = 1000

// auditToRow is e as a row: its time to the microsecond the column keeps,
// NUL characters dropped (no text column can hold one; bun drops them from
// the strings it formats, and jsonb refuses them), the detail cut to
// maxDetail characters.
func auditToRow(e model.AuditEntry) auditRow {
	detail := noNUL(e.Detail)
	if r := []rune(detail); len(r) > maxDetail {
		detail = string(r[:maxDetail-1]) + "…"
	}
	return auditRow{
		At:           utc(e.At).Truncate(time.Microsecond),
		Kind:         noNUL(string(e.Kind)),
		ActorType:    noNUL(string(e.Actor.Type)),
		ActorSubject: noNUL(e.Actor.Subject),
		ActorClient:  noNUL(e.Actor.ClientID),
		ActorName:    noNUL(e.Actor.Name),
		DeviceID:     positiveOrNil(e.DeviceID),
		ClientID:     noNUL(e.ClientID),
		ModelID:      positiveOrNil(e.ModelID),
		Outcome:      noNUL(string(e.Outcome)),
		Detail:       detail,
	}
}

// noNUL drops NUL characters.
func noNUL(s string) string { return strings.ReplaceAll(s, "\x00", "") }

func auditFromRow(r *auditRow) model.AuditEntry {
	e := model.AuditEntry{
		ID:       r.ID,
		At:       utc(r.At),
		Kind:     model.AuditKind(r.Kind),
		Actor:    model.Actor{Type: model.ActorType(r.ActorType), Subject: r.ActorSubject, ClientID: r.ActorClient, Name: r.ActorName},
		ClientID: r.ClientID,
		Outcome:  model.AuditOutcome(r.Outcome),
		Detail:   r.Detail,
	}
	if r.DeviceID != nil {
		e.DeviceID = *r.DeviceID
	}
	if r.ModelID != nil {
		e.ModelID = *r.ModelID
	}
	return e
}

func positiveOrNil(id int64) *int64 {
	if id <= 0 {
		return nil
	}
	return &id
}

// insertAudit writes entries with idb (the transaction of their change); a
// zero DeviceID or ModelID is set to deviceID or modelID (the row a create
// just inserted). No entries is no statement.
func insertAudit(ctx context.Context, idb bun.IDB, entries []model.AuditEntry, deviceID, modelID int64) error {
	if len(entries) == 0 {
		return nil
	}
	rows := auditRows(entries, deviceID, modelID)
	if _, err := idb.NewInsert().Model(&rows).Exec(ctx); err != nil {
		return translate("append audit entries", err, fkNone)
	}
	return nil
}

// auditRows are entries as rows, with deviceID and modelID where an entry
// names none.
func auditRows(entries []model.AuditEntry, deviceID, modelID int64) []auditRow {
	rows := make([]auditRow, len(entries))
	for i, e := range entries {
		if e.DeviceID == 0 {
			e.DeviceID = deviceID
		}
		if e.ModelID == 0 {
			e.ModelID = modelID
		}
		rows[i] = auditToRow(e)
	}
	return rows
}

// withAudit attaches the insert of entries (see auditRows) to q as a
// data-modifying WITH query, so that the change and its audit entries take
// one statement (one round trip) instead of two; q is returned unchanged
// without entries.
func withAudit(idb bun.IDB, q *bun.UpdateQuery, entries []model.AuditEntry, deviceID, modelID int64) *bun.UpdateQuery {
	if len(entries) == 0 {
		return q
	}
	rows := auditRows(entries, deviceID, modelID)
	return q.With("audit_insert", idb.NewInsert().Model(&rows))
}

// AuditLog is the audit_log table: ports.AuditLog. The repositories write
// the entries that record a change in the change's transaction.
type AuditLog struct {
	db *bun.DB
}

var _ ports.AuditLog = (*AuditLog)(nil)

// NewAuditLog returns the audit log of db.
func NewAuditLog(db *DB) *AuditLog { return &AuditLog{db: db.bun} }

// AppendAudit implements ports.AuditLog in one statement.
func (a *AuditLog) AppendAudit(ctx context.Context, entries ...model.AuditEntry) error {
	return insertAudit(ctx, a.db, entries, 0, 0)
}

// ListAudit implements ports.AuditLog: entries after f.AfterID matching
// every set filter, by id, one extra row read to know whether more follow.
func (a *AuditLog) ListAudit(ctx context.Context, f ports.AuditFilter) (ports.AuditPage, error) {
	limit := ports.PageLimit(f.Limit)
	rows := make([]auditRow, 0, limit+1)
	q := a.db.NewSelect().Model(&rows).Where("a.id > ?", f.AfterID)
	if f.DeviceID != 0 {
		q = q.Where("a.device_id = ?", f.DeviceID)
	}
	if f.Kind != "" {
		q = q.Where("a.kind = ?", string(f.Kind))
	}
	if f.Actor != "" {
		q = q.Where("(a.actor_subject = ? OR a.actor_client = ? OR a.actor_name = ?)", f.Actor, f.Actor, f.Actor)
	}
	if !f.Since.IsZero() {
		q = q.Where("a.at >= ?", f.Since.UTC())
	}
	if err := q.OrderExpr("a.id ASC").Limit(limit + 1).Scan(ctx); err != nil {
		return ports.AuditPage{}, translate("list audit entries", err, fkNone)
	}
	var page ports.AuditPage
	page.Entries, page.NextAfterID = pageRows(rows, limit, func(r *auditRow) int64 { return r.ID }, auditFromRow)
	return page, nil
}

// auditTarget says whether a statement run by runAudited changed
// something (its entries are written only then) and which device and
// model it created, for entries that do not name them.
type auditTarget struct {
	changed           bool
	deviceID, modelID int64
}

// runAudited runs fn and stores entries in the same transaction when fn
// changed something; with no entries fn runs on db alone.
func runAudited(ctx context.Context, db *bun.DB, op string, entries []model.AuditEntry, fn func(ctx context.Context, idb bun.IDB) (auditTarget, error)) error {
	if len(entries) == 0 {
		_, err := fn(ctx, db)
		return err
	}
	return runInTx(ctx, db, op, func(ctx context.Context, tx bun.Tx) error {
		t, err := fn(ctx, tx)
		if err != nil || !t.changed {
			return err
		}
		return insertAudit(ctx, tx, entries, t.deviceID, t.modelID)
	})
}
