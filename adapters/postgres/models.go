package postgres

import (
	"context"
	"database/sql"
	"time"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// ModelRepo stores device models in the device_models table.
type ModelRepo struct {
	db *bun.DB
}

var _ ports.ModelRepo = (*ModelRepo)(nil)

// NewModelRepo returns the device model repository of db.
func NewModelRepo(db *DB) *ModelRepo { return &ModelRepo{db: db.bun} }

// CreateModel implements ports.ModelRepo. The database sets ID and both
// timestamps; FirmwareVersion starts empty.
func (r *ModelRepo) CreateModel(ctx context.Context, m *model.DeviceModel, audit []model.AuditEntry) error {
	row := modelToRow(m)
	row.ID, row.FirmwareVersion = 0, nil
	row.CreatedAt, row.UpdatedAt = time.Time{}, time.Time{}
	err := runAudited(ctx, r.db, "create device model", audit, func(ctx context.Context, idb bun.IDB) (auditTarget, error) {
		if _, err := idb.NewInsert().Model(&row).Returning("*").Exec(ctx); err != nil {
			return auditTarget{}, translate("create device model", err, fkNone)
		}
		return auditTarget{changed: true, modelID: row.ID}, nil
	})
	if err != nil {
		return err
	}
	*m = modelFromRow(&row)
	return nil
}

// GetModel implements ports.ModelRepo.
func (r *ModelRepo) GetModel(ctx context.Context, id int64) (model.DeviceModel, error) {
	var row modelRow
	if err := r.db.NewSelect().Model(&row).Where("m.id = ?", id).Scan(ctx); err != nil {
		return model.DeviceModel{}, translate("get device model", err, fkNone)
	}
	return modelFromRow(&row), nil
}

// GetModelByCode implements ports.ModelRepo.
func (r *ModelRepo) GetModelByCode(ctx context.Context, code string) (model.DeviceModel, error) {
	var row modelRow
	if err := r.db.NewSelect().Model(&row).Where("m.code = ?", code).Scan(ctx); err != nil {
		return model.DeviceModel{}, translate("get device model by code", err, fkNone)
	}
	return modelFromRow(&row), nil
}

// ListModels implements ports.ModelRepo: every model, ordered by ID.
func (r *ModelRepo) ListModels(ctx context.Context) ([]model.DeviceModel, error) {
	var rows []modelRow
	if err := r.db.NewSelect().Model(&rows).OrderExpr("m.id ASC").Scan(ctx); err != nil {
		return nil, translate("list device models", err, fkNone)
	}
	out := make([]model.DeviceModel, len(rows))
	for i := range rows {
		out[i] = modelFromRow(&rows[i])
	}
	return out, nil
}

// UpdateModel implements ports.ModelRepo: in one transaction it locks the
// row (SELECT ... FOR UPDATE), runs fn and writes name, config_schema and
// firmware_version back. fn's error aborts the transaction and is returned
// as is.
func (r *ModelRepo) UpdateModel(ctx context.Context, id int64, fn func(*model.DeviceModel) ([]model.AuditEntry, error)) (model.DeviceModel, error) {
	var out model.DeviceModel
	err := runInTx(ctx, r.db, "update device model", func(ctx context.Context, tx bun.Tx) error {
		var row modelRow
		if err := tx.NewSelect().Model(&row).Where("m.id = ?", id).For("UPDATE").Scan(ctx); err != nil {
			return translate("update device model: lock", err, fkNone)
		}
		cur := modelFromRow(&row)
		entries, err := fn(&cur)
		if err != nil {
			return err
		}
		next := modelToRow(&cur)
		next.ID, next.Code, next.CreatedAt = row.ID, row.Code, row.CreatedAt
		if _, err := tx.NewUpdate().Model(&next).
			Column("name", "config_schema", "firmware_version").
			Set("updated_at = now()").
			WherePK().
			Returning("*").
			Exec(ctx); err != nil {
			return translate("update device model", err, fkNone)
		}
		out = modelFromRow(&next)
		return insertAudit(ctx, tx, entries, 0, row.ID)
	})
	if err != nil {
		return model.DeviceModel{}, err
	}
	return out, nil
}

// DeleteModel implements ports.ModelRepo. Its firmware history goes with
// it; devices still using it make it model.ErrConflict.
func (r *ModelRepo) DeleteModel(ctx context.Context, id int64, audit []model.AuditEntry) error {
	return runAudited(ctx, r.db, "delete device model", audit, func(ctx context.Context, idb bun.IDB) (auditTarget, error) {
		res, err := idb.NewDelete().Model((*modelRow)(nil)).Where("id = ?", id).Exec(ctx)
		if err != nil {
			return auditTarget{}, translate("delete device model", err, fkInUse)
		}
		return auditTarget{changed: true, modelID: id}, requireOneRow("delete device model", res)
	})
}

// requireOneRow turns "no row affected" into model.ErrNotFound.
func requireOneRow(op string, res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return translate(op, err, fkNone)
	}
	if n == 0 {
		return translate(op, sql.ErrNoRows, fkNone)
	}
	return nil
}

// runInTx runs fn in a transaction with the tx and ctx bun passes. An error
// of fn (already translated, or the caller's own from an update closure)
// is returned unchanged; a failure to begin or commit is translated.
func runInTx(ctx context.Context, db *bun.DB, op string, fn func(ctx context.Context, tx bun.Tx) error) error {
	var inner error
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		inner = fn(ctx, tx)
		return inner
	})
	if err == nil {
		return nil
	}
	if inner != nil {
		return inner
	}
	return translate(op+": transaction", err, fkNone)
}
