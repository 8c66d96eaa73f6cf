package postgres

import (
	"context"
	"time"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
)

// Device state reports (SPEC §15) and the fleet counts made of them.

// ReportState implements ports.DeviceRepo: in one transaction it locks the
// device row (SELECT ... FOR UPDATE), hands the report it holds to audit,
// writes the new one with reported_at and moves last_seen_at (GREATEST:
// never back), and appends audit's entries. updated_at is not touched.
func (r *DeviceRepo) ReportState(ctx context.Context, id int64, report model.StateReport, audit func(*model.StateReport) []model.AuditEntry) error {
	return runInTx(ctx, r.db, "report device state", func(ctx context.Context, tx bun.Tx) error {
		var row deviceRow
		if err := tx.NewSelect().Model(&row).Column("id", "device_model_id", "reported", "reported_at").
			Where("d.id = ?", id).For("UPDATE").Scan(ctx); err != nil {
			return translate("report device state: lock", err, fkNone)
		}
		entries := audit(reportFromDoc(row.Reported, row.ReportedAt))
		at := report.At.UTC()
		if _, err := tx.NewUpdate().Model((*deviceRow)(nil)).
			Set("reported = ?", reportToDoc(&report)).
			Set("reported_at = ?", at).
			Set("last_seen_at = GREATEST(last_seen_at, ?)", at).
			Where("id = ?", id).
			Exec(ctx); err != nil {
			return translate("report device state", err, fkNone)
		}
		return insertAudit(ctx, tx, entries, row.ID, row.DeviceModelID)
	})
}

// FirmwareCounts implements ports.FleetStats with one GROUP BY over the
// active devices.
func (r *DeviceRepo) FirmwareCounts(ctx context.Context) ([]model.FirmwareCount, error) {
	var rows []struct {
		ModelID   int64  `bun:"model_id"`
		ModelCode string `bun:"model_code"`
		Version   string `bun:"version"`
		Devices   int    `bun:"devices"`
	}
	err := r.db.NewSelect().TableExpr("devices AS d").
		Join("JOIN device_models AS m ON m.id = d.device_model_id").
		ColumnExpr("m.id AS model_id, m.code AS model_code").
		ColumnExpr("coalesce(d.reported->>'firmware_version', '') AS version").
		ColumnExpr("count(*) AS devices").
		Where("d.active").
		GroupExpr("m.id, m.code, version").
		OrderExpr("m.code, version").
		Scan(ctx, &rows)
	if err != nil {
		return nil, translate("count devices by firmware version", err, fkNone)
	}
	out := make([]model.FirmwareCount, len(rows))
	for i, x := range rows {
		out[i] = model.FirmwareCount{ModelID: x.ModelID, ModelCode: x.ModelCode, Version: x.Version, Devices: x.Devices}
	}
	return out, nil
}

// StaleCounts implements ports.FleetStats with one query: every model,
// left-joined with its active devices, counting the silent ones.
func (r *DeviceRepo) StaleCounts(ctx context.Context, before time.Time) (map[string]int, error) {
	var rows []struct {
		Code    string `bun:"code"`
		Devices int    `bun:"devices"`
	}
	err := r.db.NewSelect().TableExpr("device_models AS m").
		Join("LEFT JOIN devices AS d ON d.device_model_id = m.id AND d.active").
		ColumnExpr("m.code").
		ColumnExpr("count(d.id) FILTER (WHERE coalesce(d.last_seen_at, d.created_at) < ?) AS devices", before.UTC()).
		GroupExpr("m.code").
		Scan(ctx, &rows)
	if err != nil {
		return nil, translate("count stale devices", err, fkNone)
	}
	out := make(map[string]int, len(rows))
	for _, x := range rows {
		out[x.Code] = x.Devices
	}
	return out, nil
}
