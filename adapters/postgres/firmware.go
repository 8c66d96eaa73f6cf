package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// FirmwareRepo records firmware uploads in the firmware table; released_at
// says which are released (SPEC §16).
type FirmwareRepo struct {
	db *bun.DB
}

var _ ports.FirmwareRepo = (*FirmwareRepo)(nil)

// NewFirmwareRepo returns the firmware repository of db.
func NewFirmwareRepo(db *DB) *FirmwareRepo { return &FirmwareRepo{db: db.bun} }

// releaseTime is the released_at of a release of the model ? made now:
// the statement's clock (taken after the model lock, not the
// transaction's start, which could be earlier than a release that took
// the lock first), and never before a microsecond after the model's latest
// release, so the latest release is the latest released_at even when
// clocks disagree.
const releaseTime = `GREATEST(clock_timestamp(), ` +
	`(SELECT max(r.released_at) + interval '1 microsecond' FROM firmware AS r WHERE r.device_model_id = ?))`

// lockModel locks the model row for the rest of tx: uploads and releases
// of one model run one after the other.
func lockModel(ctx context.Context, tx bun.Tx, op string, modelID int64) error {
	var locked int64
	if err := tx.NewSelect().Model((*modelRow)(nil)).Column("m.id").
		Where("m.id = ?", modelID).For("UPDATE").Scan(ctx, &locked); err != nil {
		return translate(op+": lock device model", err, fkNone)
	}
	return nil
}

// setModelVersion makes version the model's firmware_version.
func setModelVersion(ctx context.Context, tx bun.Tx, op string, modelID int64, version string) error {
	if _, err := tx.NewUpdate().Model((*modelRow)(nil)).
		Set("firmware_version = ?", version).
		Set("updated_at = now()").
		Where("id = ?", modelID).
		Exec(ctx); err != nil {
		return translate(op+": set model version", err, fkNone)
	}
	return nil
}

// RecordFirmware implements ports.FirmwareRepo. In one transaction it locks
// the model row (so concurrent uploads and releases of one model are
// recorded in order), runs check with the released and newest uploads
// read under that lock, inserts the firmware row and, when f is released,
// stamps released_at (releaseTime) and sets device_models.firmware_version.
// A missing model is model.ErrNotFound. A zero UploadedAt is the
// database's now().
func (r *FirmwareRepo) RecordFirmware(ctx context.Context, f *model.Firmware, check func(ports.FirmwareHeads) ([]model.AuditEntry, error)) error {
	return runInTx(ctx, r.db, "record firmware", func(ctx context.Context, tx bun.Tx) error {
		if err := lockModel(ctx, tx, "record firmware", f.DeviceModelID); err != nil {
			return err
		}
		var entries []model.AuditEntry
		if check != nil {
			heads, err := firmwareHeads(ctx, tx, f.DeviceModelID)
			if err != nil {
				return translate("record firmware: released and newest firmware", err, fkNone)
			}
			if entries, err = check(heads); err != nil {
				return err
			}
		}
		row := firmwareToRow(f) // after check, which may decide ReleasedAt
		row.ID = 0
		release := row.ReleasedAt != nil
		row.ReleasedAt = nil
		if _, err := tx.NewInsert().Model(&row).Returning("*").Exec(ctx); err != nil {
			return translate("record firmware", err, fkMissingRef)
		}
		if release {
			if err := tx.NewUpdate().Model(&row).
				Set("released_at = "+releaseTime, row.DeviceModelID).
				WherePK().Returning("released_at").Scan(ctx, &row.ReleasedAt); err != nil {
				return translate("record firmware: release", err, fkNone)
			}
			if err := setModelVersion(ctx, tx, "record firmware", row.DeviceModelID, row.Version); err != nil {
				return err
			}
		}
		*f = firmwareFromRow(&row)
		return insertAudit(ctx, tx, entries, 0, row.DeviceModelID)
	})
}

// firmwareHeads reads the model's released and newest uploads.
func firmwareHeads(ctx context.Context, idb bun.IDB, modelID int64) (ports.FirmwareHeads, error) {
	var h ports.FirmwareHeads
	rel, err := releasedFirmware(ctx, idb, modelID)
	switch {
	case err == nil:
		h.Released = &rel
	case !errors.Is(err, sql.ErrNoRows):
		return h, err
	}
	var row firmwareRow
	err = idb.NewSelect().Model(&row).Where("f.device_model_id = ?", modelID).
		OrderExpr("f.id DESC").Limit(1).Scan(ctx)
	switch {
	case err == nil:
		newest := firmwareFromRow(&row)
		h.Newest = &newest
	case !errors.Is(err, sql.ErrNoRows):
		return h, err
	}
	return h, nil
}

// ReleasedFirmware implements ports.FirmwareRepo.
func (r *FirmwareRepo) ReleasedFirmware(ctx context.Context, modelID int64) (model.Firmware, error) {
	f, err := releasedFirmware(ctx, r.db, modelID)
	if err != nil {
		return model.Firmware{}, translate("released firmware", err, fkNone)
	}
	return f, nil
}

// releasedFirmware reads the model's released upload (firmware_released_idx);
// sql.ErrNoRows when none is.
func releasedFirmware(ctx context.Context, idb bun.IDB, modelID int64) (model.Firmware, error) {
	var row firmwareRow
	if err := idb.NewSelect().Model(&row).
		Where("f.device_model_id = ?", modelID).
		Where("f.released_at IS NOT NULL").
		OrderExpr("f.released_at DESC, f.id DESC").
		Limit(1).
		Scan(ctx); err != nil {
		return model.Firmware{}, err
	}
	return firmwareFromRow(&row), nil
}

// FirmwareBySHA256 implements ports.FirmwareRepo.
func (r *FirmwareRepo) FirmwareBySHA256(ctx context.Context, modelID int64, sha256 string) (model.Firmware, error) {
	f, err := firmwareBySHA256(ctx, r.db, modelID, sha256)
	if err != nil {
		return model.Firmware{}, translate("firmware by sha256", err, fkNone)
	}
	return f, nil
}

func firmwareBySHA256(ctx context.Context, idb bun.IDB, modelID int64, sha256 string) (model.Firmware, error) {
	var row firmwareRow
	if err := idb.NewSelect().Model(&row).
		Where("f.device_model_id = ?", modelID).
		Where("f.sha256 = ?", sha256).
		OrderExpr("f.id DESC").
		Limit(1).
		Scan(ctx); err != nil {
		return model.Firmware{}, err
	}
	return firmwareFromRow(&row), nil
}

// ReleaseFirmware implements ports.FirmwareRepo: with the model row locked
// it reads the upload and the released one, and unless they are the same
// stamps the upload's released_at (releaseTime) and sets the model's
// firmware_version, with audit's entries, in one transaction.
func (r *FirmwareRepo) ReleaseFirmware(ctx context.Context, modelID int64, sha256 string,
	audit func(f model.Firmware, alreadyReleased bool) []model.AuditEntry) (model.Firmware, bool, error) {
	var out model.Firmware
	var changed bool
	err := runInTx(ctx, r.db, "release firmware", func(ctx context.Context, tx bun.Tx) error {
		changed = false
		if err := lockModel(ctx, tx, "release firmware", modelID); err != nil {
			return err
		}
		f, err := firmwareBySHA256(ctx, tx, modelID, sha256)
		if err != nil {
			return translate(fmt.Sprintf("release firmware: upload %s", sha256), err, fkNone)
		}
		rel, err := releasedFirmware(ctx, tx, modelID)
		switch {
		case err == nil && rel.ID == f.ID:
			out = f
			return insertAudit(ctx, tx, audit(f, true), 0, modelID)
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return translate("release firmware: released firmware", err, fkNone)
		}
		row := firmwareToRow(&f)
		if err := tx.NewUpdate().Model(&row).
			Set("released_at = "+releaseTime, modelID).
			WherePK().Returning("released_at").Scan(ctx, &row.ReleasedAt); err != nil {
			return translate("release firmware", err, fkNone)
		}
		if err := setModelVersion(ctx, tx, "release firmware", modelID, row.Version); err != nil {
			return err
		}
		out, changed = firmwareFromRow(&row), true
		return insertAudit(ctx, tx, audit(out, false), 0, modelID)
	})
	if err != nil {
		return model.Firmware{}, false, err
	}
	return out, changed, nil
}

// EffectiveFirmware implements ports.FirmwareRepo in one query: among the
// model's upload assignedID and its released uploads, the assigned one
// first, then the latest release.
func (r *FirmwareRepo) EffectiveFirmware(ctx context.Context, deviceID int64) (model.Firmware, error) {
	var row firmwareRow
	// The device's row is read in the same statement: its assignment is
	// the one committed now, whatever copy of the device the caller holds.
	q := r.db.NewSelect().Model(&row).
		Join("JOIN devices AS d ON d.device_model_id = f.device_model_id").
		Where("d.id = ?", deviceID).
		Where("(f.id = d.assigned_firmware_id OR f.released_at IS NOT NULL)").
		OrderExpr("COALESCE(f.id = d.assigned_firmware_id, false) DESC, f.released_at DESC NULLS LAST, f.id DESC")
	if err := q.Limit(1).Scan(ctx); err != nil {
		return model.Firmware{}, translate("effective firmware", err, fkNone)
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
