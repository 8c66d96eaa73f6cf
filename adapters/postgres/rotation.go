package postgres

import (
	"context"
	"database/sql"
	"slices"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/schema"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// rotationSlotsLockKey is the pg_advisory_xact_lock key that serialises
// StartRotations across processes ("espmdmrs" in ASCII).
const rotationSlotsLockKey int64 = 0x6573706d646d7273

// attemptOrder is a device's last rotation attempt with a missing one as
// the oldest possible: the expression the TIMEOUT and PENDING indexes of
// the rotation queue are built on (migration 20250801000001).
const attemptOrder = "COALESCE(d.last_rotation_attempt_at, '-infinity'::timestamptz)"

// QueueRotations implements ports.RotationQueue with one UPDATE of every
// active OK device.
func (r *DeviceRepo) QueueRotations(ctx context.Context, modelID int64) (int, error) {
	q := r.db.NewUpdate().Model((*deviceRow)(nil)).
		Set("rotation_state = ?", string(model.RotationQueued)).
		Set("updated_at = now()").
		Where("active").
		Where("rotation_state = ?", string(model.RotationOK))
	if modelID != 0 {
		q = q.Where("device_model_id = ?", modelID)
	}
	res, err := q.Exec(ctx)
	if err != nil {
		return 0, translate("queue rotations", err, fkNone)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, translate("queue rotations", err, fkNone)
	}
	return int(n), nil
}

// UnconfirmedRotations implements ports.RotationQueue.
func (r *DeviceRepo) UnconfirmedRotations(ctx context.Context) (int, error) {
	n, err := r.db.NewSelect().Model((*deviceRow)(nil)).Where("d.new_secret_at IS NOT NULL").Count(ctx)
	if err != nil {
		return 0, translate("count unconfirmed rotations", err, fkNone)
	}
	return n, nil
}

// StartRotations implements ports.RotationQueue in one transaction. Its
// first statement takes a transaction-level advisory lock, so concurrent
// calls (in this process or another) run one after the other and each
// counts the PENDING devices the previous ones committed: the bound holds
// across replicas. It then claims active QUEUED devices (oldest
// secret_created_at first, never set before any, then id) and, for the
// slots left, active TIMEOUT devices whose last attempt is at or before
// retryBefore (a missing attempt time counts as the oldest), each with
// FOR UPDATE OF d SKIP LOCKED so that a device another transaction is
// updating (deactivating it, say) is left alone rather than waited for.
// start runs on each claimed device with the row locked; every mutable
// column it may have changed is written back (as UpdateDevice writes them)
// before the commit, in one UPDATE. limit <= 0 starts nothing and touches
// nothing.
func (r *DeviceRepo) StartRotations(ctx context.Context, limit int, retryBefore time.Time, start func(*model.Device) ([]model.AuditEntry, error)) ([]model.Device, error) {
	if limit <= 0 {
		return nil, nil
	}
	retryBefore = retryBefore.UTC()
	var started []model.Device
	err := runInTx(ctx, r.db, "start rotations", func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(?)", rotationSlotsLockKey); err != nil {
			return translate("start rotations: lock", err, fkNone)
		}
		// now() is the transaction's start: the updated_at UpdateDevice
		// would write.
		var (
			pending int
			txNow   time.Time
		)
		if err := tx.NewSelect().Model((*deviceRow)(nil)).
			ColumnExpr("count(*)").
			ColumnExpr("now()").
			Where("d.rotation_state = ?", string(model.RotationPending)).
			Scan(ctx, &pending, &txNow); err != nil {
			return translate("start rotations: count pending", err, fkNone)
		}
		free := limit - pending
		if free <= 0 {
			return nil
		}
		rows := make([]deviceRow, 0, free)
		if err := selectDevices(tx, &rows).
			Where("d.rotation_state = ?", string(model.RotationQueued)).
			Where("d.active").
			OrderExpr("d.secret_created_at ASC NULLS FIRST, d.id ASC").
			Limit(free).
			For("UPDATE OF d SKIP LOCKED").
			Scan(ctx); err != nil {
			return translate("start rotations: claim queued", err, fkNone)
		}
		if n := free - len(rows); n > 0 {
			retry := make([]deviceRow, 0, n)
			if err := selectDevices(tx, &retry).
				Where("d.rotation_state = ?", string(model.RotationTimeout)).
				Where("d.active").
				Where(attemptOrder+" <= ?", retryBefore).
				OrderExpr(attemptOrder + " ASC, d.id ASC").
				Limit(n).
				For("UPDATE OF d SKIP LOCKED").
				Scan(ctx); err != nil {
				return translate("start rotations: claim timed out", err, fkNone)
			}
			rows = append(rows, retry...)
		}
		if len(rows) == 0 {
			return nil
		}
		next := make([]deviceRow, len(rows))
		var entries []model.AuditEntry
		for i := range rows {
			row := &rows[i]
			cur := deviceFromRow(row)
			es, err := start(&cur)
			if err != nil {
				return err
			}
			entries = append(entries, es...)
			next[i] = deviceToRow(&cur)
			next[i].ID, next[i].Key, next[i].DeviceModelID, next[i].ModelCode = row.ID, row.Key, row.DeviceModelID, row.ModelCode
			next[i].CreatedAt, next[i].UpdatedAt = row.CreatedAt, txNow
			if next[i].RotationState == "" {
				next[i].RotationState = row.RotationState
			}
		}
		// One UPDATE ... FROM (VALUES ...) for all of them.
		// With the audit entries, as a WITH query of the same statement.
		if _, err := withAudit(tx, tx.NewUpdate(), entries, 0, 0).Model(&next).
			Column(append(slices.Clone(deviceMutableColumns), "updated_at")...).
			Bulk().
			Exec(ctx); err != nil {
			return translate("start rotations: store started devices", err, fkNone)
		}
		for i := range next {
			started = append(started, deviceFromRow(&next[i]))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return started, nil
}

// ExpiredRotations implements ports.RotationQueue. A PENDING device without
// an attempt time (set so by hand) counts as expired, the oldest of all, so
// that it cannot hold a slot forever. limit <= 0 returns none.
func (r *DeviceRepo) ExpiredRotations(ctx context.Context, before, unfetchedBefore time.Time, limit int) ([]int64, error) {
	ids := []int64{}
	if limit <= 0 {
		return ids, nil
	}
	err := r.db.NewSelect().Model((*deviceRow)(nil)).
		Column("d.id").
		Where("d.rotation_state = ?", string(model.RotationPending)).
		WhereGroup(" AND ", func(q *bun.SelectQuery) *bun.SelectQuery {
			return q.Where(attemptOrder+" <= ?", before.UTC()).
				WhereOr("NOT d.active").
				WhereOr(attemptOrder+" <= ? AND (d.last_rotation_fetch_at IS NULL OR d.last_rotation_fetch_at < "+attemptOrder+")",
					unfetchedBefore.UTC())
		}).
		OrderExpr(attemptOrder+" ASC, d.id ASC").
		Limit(limit).
		Scan(ctx, &ids)
	if err != nil {
		return nil, translate("expired rotations", err, fkNone)
	}
	return ids, nil
}

// RotationCounts implements ports.RotationQueue with one aggregate query.
func (r *DeviceRepo) RotationCounts(ctx context.Context) (model.RotationCounts, error) {
	var rows []struct {
		Active bool   `bun:"active"`
		State  string `bun:"rotation_state"`
		N      int    `bun:"n"`
	}
	err := r.db.NewSelect().Model((*deviceRow)(nil)).
		Column("d.active", "d.rotation_state").
		ColumnExpr("count(*) AS n").
		GroupExpr("d.active, d.rotation_state").
		Scan(ctx, &rows)
	if err != nil {
		return model.RotationCounts{}, translate("rotation counts", err, fkNone)
	}
	c := model.RotationCounts{ByState: map[model.RotationState]int{
		model.RotationOK: 0, model.RotationQueued: 0, model.RotationPending: 0, model.RotationTimeout: 0,
	}}
	for _, row := range rows {
		if !row.Active {
			c.Inactive += row.N
			continue
		}
		c.ByState[model.RotationState(row.State)] += row.N
	}
	return c, nil
}

// InFlight implements ports.RotationQueue: the PENDING devices (active or
// not), ascending; an empty (not nil) slice when there are none.
func (r *DeviceRepo) InFlight(ctx context.Context) ([]int64, error) {
	ids := []int64{}
	err := r.db.NewSelect().Model((*deviceRow)(nil)).
		Column("d.id").
		Where("d.rotation_state = ?", string(model.RotationPending)).
		OrderExpr("d.id ASC").
		Scan(ctx, &ids)
	if err != nil {
		return nil, translate("rotations in flight", err, fkNone)
	}
	return ids, nil
}

// LastRotationCompleted implements ports.RotationQueue (max() over a
// partial index: one index probe).
func (r *DeviceRepo) LastRotationCompleted(ctx context.Context) (*time.Time, error) {
	var last sql.NullTime
	err := r.db.NewSelect().Model((*deviceRow)(nil)).
		ColumnExpr("max(d.last_rotation_completed_at)").
		Scan(ctx, &last)
	if err != nil {
		return nil, translate("last rotation completed", err, fkNone)
	}
	if !last.Valid {
		return nil, nil
	}
	return utcPtr(&last.Time), nil
}

// dashboardPredicates are the SQL conditions of the dashboard groups for
// q, on devices aliased d, each true or false (never NULL, so that NOT
// works). A secret's age counts from secret_created_at, else created_at
// (never NULL).
type dashboardPredicates struct {
	critical, warning schema.QueryWithArgs
}

func newDashboardPredicates(q ports.DashboardQuery) dashboardPredicates {
	return dashboardPredicates{
		critical: bun.SafeQuery(
			"COALESCE(d.secret_created_at, d.created_at) < ? OR (d.new_secret_at IS NOT NULL AND d.new_secret_at < ?)",
			q.CriticalBefore.UTC(), q.UnconfirmedBefore.UTC()),
		warning: bun.SafeQuery(
			"COALESCE(d.secret_created_at, d.created_at) < ? OR d.rotation_state = ?",
			q.WarningBefore.UTC(), string(model.RotationTimeout)),
	}
}

// where returns the condition selecting group g's devices.
func (p dashboardPredicates) where(g model.DashboardGroup) (schema.QueryWithArgs, error) {
	switch g {
	case model.DashboardCritical:
		return bun.SafeQuery("d.active AND (?)", p.critical), nil
	case model.DashboardWarning:
		return bun.SafeQuery("d.active AND NOT (?) AND (?)", p.critical, p.warning), nil
	case model.DashboardHealthy:
		return bun.SafeQuery("d.active AND NOT (?) AND NOT (?)", p.critical, p.warning), nil
	case model.DashboardInactive:
		return bun.SafeQuery("NOT d.active"), nil
	}
	return schema.QueryWithArgs{}, model.Invalid("group", "unknown dashboard group %q", string(g))
}

// classify is the CASE expression naming each device's group: the order
// of its branches is the order of ports.DashboardQuery's rules.
func (p dashboardPredicates) classify() schema.QueryWithArgs {
	return bun.SafeQuery("CASE WHEN NOT d.active THEN ? WHEN (?) THEN ? WHEN (?) THEN ? ELSE ? END",
		string(model.DashboardInactive),
		p.critical, string(model.DashboardCritical),
		p.warning, string(model.DashboardWarning),
		string(model.DashboardHealthy))
}

// DashboardCounts implements ports.RotationQueue with one aggregate query:
// one pass over the devices table sorting each device into its group with
// one CASE (each condition evaluated at most once per row), grouped.
func (r *DeviceRepo) DashboardCounts(ctx context.Context, q ports.DashboardQuery) (map[model.DashboardGroup]int, error) {
	groups := r.db.NewSelect().Model((*deviceRow)(nil)).
		ColumnExpr("? AS g", newDashboardPredicates(q).classify())
	var rows []struct {
		G string `bun:"g"`
		N int    `bun:"n"`
	}
	err := r.db.NewSelect().TableExpr("(?) AS c", groups).
		ColumnExpr("c.g").
		ColumnExpr("count(*) AS n").
		GroupExpr("c.g").
		Scan(ctx, &rows)
	if err != nil {
		return nil, translate("dashboard counts", err, fkNone)
	}
	out := make(map[model.DashboardGroup]int, len(model.DashboardGroups))
	for _, g := range model.DashboardGroups {
		out[g] = 0
	}
	for _, row := range rows {
		out[model.DashboardGroup(row.G)] = row.N
	}
	return out, nil
}

// DashboardPage implements ports.RotationQueue: the group's devices with an
// id above afterID, in id order, paged as ListDevices pages. An unknown
// group is a *model.ValidationError for "group".
func (r *DeviceRepo) DashboardPage(ctx context.Context, q ports.DashboardQuery, g model.DashboardGroup, limit int, afterID int64) (ports.DevicePage, error) {
	cond, err := newDashboardPredicates(q).where(g)
	if err != nil {
		return ports.DevicePage{}, err
	}
	limit = ports.PageLimit(limit)
	rows := make([]deviceRow, 0, limit+1)
	if err := selectDevices(r.db, &rows).
		Where("d.id > ?", afterID).
		Where("?", cond).
		OrderExpr("d.id ASC").
		Limit(limit + 1).
		Scan(ctx); err != nil {
		return ports.DevicePage{}, translate("dashboard page", err, fkNone)
	}
	return devicePage(rows, limit), nil
}
