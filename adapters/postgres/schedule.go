package postgres

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// ScheduleRepo records when named schedules last fired, in the
// rotation_schedule table (one row per schedule).
//
// Times are kept at the microsecond precision PostgreSQL stores: AdvanceFire
// truncates from and to to whole microseconds before it writes or compares
// them, and LastFire returns what was stored. A caller passing LastFire's
// result (or the time it advanced to) as the next from therefore always
// matches.
type ScheduleRepo struct {
	db *bun.DB
}

var _ ports.ScheduleRepo = (*ScheduleRepo)(nil)

// NewScheduleRepo returns the schedule repository of db.
func NewScheduleRepo(db *DB) *ScheduleRepo { return &ScheduleRepo{db: db.bun} }

type scheduleRow struct {
	bun.BaseModel `bun:"table:rotation_schedule,alias:s"`

	Name       string    `bun:"name,pk"`
	LastFireAt time.Time `bun:"last_fire_at,notnull"`
}

// LastFire implements ports.ScheduleRepo: the zero time when the schedule
// has no row yet.
func (r *ScheduleRepo) LastFire(ctx context.Context, name string) (time.Time, error) {
	var row scheduleRow
	err := r.db.NewSelect().Model(&row).Where("s.name = ?", name).Scan(ctx)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, translate("last schedule fire", err, fkNone)
	}
	return row.LastFireAt.UTC(), nil
}

// AdvanceFire implements ports.ScheduleRepo with one conditional statement:
// from zero, INSERT ... ON CONFLICT DO NOTHING (a row there means another
// process fired first); otherwise UPDATE ... WHERE last_fire_at = from. It
// reports whether a row was written. A zero to is refused.
func (r *ScheduleRepo) AdvanceFire(ctx context.Context, name string, from, to time.Time, audit []model.AuditEntry) (bool, error) {
	if to.IsZero() {
		return false, errors.New("postgres: advance schedule: zero fire time")
	}
	to = to.UTC().Truncate(time.Microsecond)
	moved := false
	err := runAudited(ctx, r.db, "advance schedule fire", audit, func(ctx context.Context, idb bun.IDB) (auditTarget, error) {
		var (
			res sql.Result
			err error
		)
		if from.IsZero() {
			res, err = idb.NewInsert().Model(&scheduleRow{Name: name, LastFireAt: to}).
				On("CONFLICT (name) DO NOTHING").
				Exec(ctx)
		} else {
			res, err = idb.NewUpdate().Model((*scheduleRow)(nil)).
				Set("last_fire_at = ?", to).
				Where("name = ?", name).
				Where("last_fire_at = ?", from.UTC().Truncate(time.Microsecond)).
				Exec(ctx)
		}
		if err != nil {
			return auditTarget{}, translate("advance schedule fire", err, fkNone)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return auditTarget{}, translate("advance schedule fire", err, fkNone)
		}
		moved = n == 1
		return auditTarget{changed: moved}, nil
	})
	return moved, err
}

// RecordExpression implements ports.ScheduleRepo in one transaction: the
// row is created empty when missing, then locked, compared and updated, so
// that of processes starting together with a new expression exactly one
// sees (and audits) the change.
func (r *ScheduleRepo) RecordExpression(ctx context.Context, name, expr string, audit []model.AuditEntry) (string, error) {
	var prev string
	err := runInTx(ctx, r.db, "record schedule expression", func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx,
			"INSERT INTO rotation_schedule_expression (name, expression) VALUES (?, '') ON CONFLICT (name) DO NOTHING", name); err != nil {
			return translate("record schedule expression", err, fkNone)
		}
		if err := tx.NewRaw("SELECT expression FROM rotation_schedule_expression WHERE name = ? FOR UPDATE", name).
			Scan(ctx, &prev); err != nil {
			return translate("record schedule expression: lock", err, fkNone)
		}
		if prev == expr {
			return nil
		}
		if _, err := tx.ExecContext(ctx,
			"UPDATE rotation_schedule_expression SET expression = ?, recorded_at = now() WHERE name = ?", expr, name); err != nil {
			return translate("record schedule expression", err, fkNone)
		}
		return insertAudit(ctx, tx, audit, 0, 0)
	})
	if err != nil {
		return "", err
	}
	return prev, nil
}
