package postgres

import (
	"context"
	"database/sql"
	"errors"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// FirmwareRepo records firmware uploads in the firmware table.
type FirmwareRepo struct {
	db *bun.DB
}

var _ ports.FirmwareRepo = (*FirmwareRepo)(nil)

// NewFirmwareRepo returns the firmware repository of db.
func NewFirmwareRepo(db *DB) *FirmwareRepo { return &FirmwareRepo{db: db.bun} }

// RecordFirmware implements ports.FirmwareRepo. In one transaction it locks
// the model row (so concurrent uploads of one model are recorded in order
// and the model's version is the newest row's), inserts the firmware row and
// sets device_models.firmware_version; check sees the current firmware read
// under that lock. A missing model is model.ErrNotFound. A zero UploadedAt
// is the database's now().
func (r *FirmwareRepo) RecordFirmware(ctx context.Context, f *model.Firmware, check func(*model.Firmware) ([]model.AuditEntry, error)) error {
	row := firmwareToRow(f)
	row.ID = 0
	return runInTx(ctx, r.db, "record firmware", func(ctx context.Context, tx bun.Tx) error {
		var entries []model.AuditEntry
		var locked int64
		if err := tx.NewSelect().Model((*modelRow)(nil)).Column("m.id").
			Where("m.id = ?", row.DeviceModelID).For("UPDATE").Scan(ctx, &locked); err != nil {
			return translate("record firmware: lock device model", err, fkNone)
		}
		if check != nil {
			cur, err := currentFirmware(ctx, tx, row.DeviceModelID)
			var current *model.Firmware
			switch {
			case err == nil:
				current = &cur
			case !errors.Is(err, sql.ErrNoRows):
				return translate("record firmware: current firmware", err, fkNone)
			}
			if entries, err = check(current); err != nil {
				return err
			}
		}
		if _, err := tx.NewInsert().Model(&row).Returning("*").Exec(ctx); err != nil {
			return translate("record firmware", err, fkMissingRef)
		}
		if _, err := tx.NewUpdate().Model((*modelRow)(nil)).
			Set("firmware_version = ?", row.Version).
			Set("updated_at = now()").
			Where("id = ?", row.DeviceModelID).
			Exec(ctx); err != nil {
			return translate("record firmware: set model version", err, fkNone)
		}
		*f = firmwareFromRow(&row)
		return insertAudit(ctx, tx, entries, 0, row.DeviceModelID)
	})
}

// CurrentFirmware implements ports.FirmwareRepo: the model's most recently
// recorded upload.
func (r *FirmwareRepo) CurrentFirmware(ctx context.Context, modelID int64) (model.Firmware, error) {
	f, err := currentFirmware(ctx, r.db, modelID)
	if err != nil {
		return model.Firmware{}, translate("current firmware", err, fkNone)
	}
	return f, nil
}

// currentFirmware reads the model's most recently recorded upload;
// sql.ErrNoRows when there is none.
func currentFirmware(ctx context.Context, idb bun.IDB, modelID int64) (model.Firmware, error) {
	var row firmwareRow
	if err := idb.NewSelect().Model(&row).
		Where("f.device_model_id = ?", modelID).
		OrderExpr("f.id DESC").
		Limit(1).
		Scan(ctx); err != nil {
		return model.Firmware{}, err
	}
	return firmwareFromRow(&row), nil
}

// ListFirmware implements ports.FirmwareRepo: the model's uploads, most
// recently recorded first. A model without uploads (or no such model) has
// an empty history.
func (r *FirmwareRepo) ListFirmware(ctx context.Context, modelID int64) ([]model.Firmware, error) {
	var rows []firmwareRow
	err := r.db.NewSelect().Model(&rows).
		Where("f.device_model_id = ?", modelID).
		OrderExpr("f.id DESC").
		Scan(ctx)
	if err != nil {
		return nil, translate("list firmware", err, fkNone)
	}
	out := make([]model.Firmware, len(rows))
	for i := range rows {
		out[i] = firmwareFromRow(&rows[i])
	}
	return out, nil
}
