package postgres

import (
	"context"
	"database/sql"
	"sync"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// DeviceRepo stores devices in the devices table. Every device it returns
// carries its model's code, loaded with a join.
type DeviceRepo struct {
	db *bun.DB

	// stmts are the prepared statements of the device API's hot path
	// (devicestmts.go), prepared at their first use under mu.
	mu    sync.Mutex
	stmts deviceStmts
	// codes caches model id → code for GetDeviceByKey, which then needs no
	// join: a model's code never changes, and a model with devices cannot
	// be deleted (nor an id reused), so an entry can never be stale.
	codes sync.Map
}

var _ ports.DeviceRepo = (*DeviceRepo)(nil)

// NewDeviceRepo returns the device repository of db.
func NewDeviceRepo(db *DB) *DeviceRepo { return &DeviceRepo{db: db.bun, stmts: newDeviceStmts()} }

// selectDevices starts a query of devices joined with their model code.
func selectDevices(idb bun.IDB, rows any) *bun.SelectQuery {
	return idb.NewSelect().Model(rows).
		ColumnExpr("d.*").
		ColumnExpr("m.code AS model_code").
		Join("JOIN device_models AS m ON m.id = d.device_model_id")
}

// CreateDevice implements ports.DeviceRepo. The database sets ID and
// timestamps; a missing RotationState is OK.
func (r *DeviceRepo) CreateDevice(ctx context.Context, d *model.Device, audit []model.AuditEntry) error {
	row := deviceToRow(d)
	row.ID = 0
	row.CreatedAt, row.UpdatedAt = time.Time{}, time.Time{}
	row.Reported, row.ReportedAt = nil, nil // only ReportState writes a report
	if row.RotationState == "" {
		row.RotationState = string(model.RotationOK)
	}
	// The model code comes back from the same statement: a CTE inserts,
	// the outer query joins the new row with its model.
	var out deviceRow
	err := runAudited(ctx, r.db, "create device", audit, func(ctx context.Context, idb bun.IDB) (auditTarget, error) {
		ins := idb.NewInsert().Model(&row).Returning("*")
		err := idb.NewSelect().
			With("ins", ins).
			TableExpr("ins AS d").
			ColumnExpr("d.*").
			ColumnExpr("m.code AS model_code").
			Join("JOIN device_models AS m ON m.id = d.device_model_id").
			Scan(ctx, &out)
		if err != nil {
			return auditTarget{}, translate("create device", err, fkMissingRef)
		}
		return auditTarget{changed: true, deviceID: out.ID, modelID: out.DeviceModelID}, nil
	})
	if err != nil {
		return err
	}
	*d = deviceFromRow(&out)
	return nil
}

// GetDevice implements ports.DeviceRepo.
func (r *DeviceRepo) GetDevice(ctx context.Context, id int64) (model.Device, error) {
	var row deviceRow
	if err := selectDevices(r.db, &row).Where("d.id = ?", id).Scan(ctx); err != nil {
		return model.Device{}, translate("get device", err, fkNone)
	}
	return deviceFromRow(&row), nil
}

// GetDeviceByKey implements ports.DeviceRepo.
func (r *DeviceRepo) GetDeviceByKey(ctx context.Context, key string) (model.Device, error) {
	stmt, err := r.prepared(ctx, &r.stmts.byKey)
	if err != nil {
		return model.Device{}, translate("get device by key: prepare", err, fkNone)
	}
	var row deviceRow
	if err := r.queryDevice(ctx, nil, stmt, &row, key); err != nil {
		return model.Device{}, translate("get device by key", err, fkNone)
	}
	if row.ModelCode, err = r.modelCode(ctx, r.db, row.DeviceModelID); err != nil {
		return model.Device{}, translate("get device by key: model code", err, fkNone)
	}
	return deviceFromRow(&row), nil
}

// modelCode returns the code of model id, from the cache when it is there.
// A miss reads it through idb: within a transaction, the transaction's
// own connection (another could wait for one the transaction holds).
func (r *DeviceRepo) modelCode(ctx context.Context, idb bun.IDB, id int64) (string, error) {
	if c, ok := r.codes.Load(id); ok {
		return c.(string), nil
	}
	var code string
	if err := idb.NewSelect().Table("device_models").Column("code").Where("id = ?", id).Scan(ctx, &code); err != nil {
		return "", err
	}
	r.codes.Store(id, code)
	return code, nil
}

// ListDevices implements ports.DeviceRepo: devices with an ID above
// f.AfterID that match every set filter, in ID order. A Limit outside
// 1..ports.MaxPageSize is served as ports.PageLimit says.
// NextAfterID is set only when more rows follow (one extra row is read to
// know).
func (r *DeviceRepo) ListDevices(ctx context.Context, f ports.DeviceFilter) (ports.DevicePage, error) {
	limit := ports.PageLimit(f.Limit)
	rows := make([]deviceRow, 0, limit+1)
	q := selectDevices(r.db, &rows).Where("d.id > ?", f.AfterID)
	if f.ModelID != nil {
		q = q.Where("d.device_model_id = ?", *f.ModelID)
	}
	if f.RotationState != nil {
		q = q.Where("d.rotation_state = ?", string(*f.RotationState))
	}
	if f.Active != nil {
		q = q.Where("d.active = ?", *f.Active)
	}
	if f.FirmwareVersion != nil {
		q = q.Where("d.reported->>'firmware_version' = ?", *f.FirmwareVersion)
	}
	if f.SeenBefore != nil {
		q = q.Where("(d.last_seen_at IS NULL OR d.last_seen_at < ?)", f.SeenBefore.UTC())
	}
	if len(f.Tags) > 0 {
		q = q.Where("d.tags @> ?", pgdialect.Array(f.Tags)) // devices_tags_idx
	}
	if err := q.OrderExpr("d.id ASC").Limit(limit + 1).Scan(ctx); err != nil {
		return ports.DevicePage{}, translate("list devices", err, fkNone)
	}
	return devicePage(rows, limit), nil
}

// devicePage makes a page of rows read with one extra row (limit+1).
func devicePage(rows []deviceRow, limit int) ports.DevicePage {
	var page ports.DevicePage
	page.Devices, page.NextAfterID = pageRows(rows, limit, func(r *deviceRow) int64 { return r.ID }, deviceFromRow)
	return page
}

// pageRows makes a page of rows read with one extra row (limit+1): the
// extra one only says that more follow. It returns the kept rows converted
// with to, and the id the next page starts after (0 when none follow).
func pageRows[R, T any](rows []R, limit int, id func(*R) int64, to func(*R) T) ([]T, int64) {
	var next int64
	if len(rows) > limit {
		rows = rows[:limit]
		next = id(&rows[limit-1])
	}
	out := make([]T, len(rows))
	for i := range rows {
		out[i] = to(&rows[i])
	}
	return out, next
}

// UpdateDevice implements ports.DeviceRepo: in one transaction it locks the
// device row (SELECT ... FOR UPDATE OF d, leaving the model row unlocked),
// runs fn and writes every mutable column back. Concurrent updates of one
// device therefore run one after the other and never lose a write. fn's
// error aborts the transaction and is returned as is.
func (r *DeviceRepo) UpdateDevice(ctx context.Context, id int64, fn func(*model.Device) ([]model.AuditEntry, error)) (model.Device, error) {
	lock, err := r.prepared(ctx, &r.stmts.lock)
	if err != nil {
		return model.Device{}, translate("update device: prepare", err, fkNone)
	}
	update, err := r.prepared(ctx, &r.stmts.update)
	if err != nil {
		return model.Device{}, translate("update device: prepare", err, fkNone)
	}
	var out model.Device
	err = runInTx(ctx, r.db, "update device", func(ctx context.Context, tx bun.Tx) error {
		var row deviceRow
		if err := r.queryDevice(ctx, &tx, lock, &row, id); err != nil {
			return translate("update device: lock", err, fkNone)
		}
		code, err := r.modelCode(ctx, tx, row.DeviceModelID)
		if err != nil {
			return translate("update device: model code", err, fkNone)
		}
		row.ModelCode = code
		cur := deviceFromRow(&row)
		entries, err := fn(&cur)
		if err != nil {
			return err
		}
		next := deviceToRow(&cur)
		next.ID = row.ID
		if next.RotationState == "" {
			next.RotationState = row.RotationState
		}
		// The audit entries go in with the UPDATE, as a WITH query.
		audit, err := auditJSON(entries, row.ID, row.DeviceModelID)
		if err != nil {
			return translate("update device: audit entries", err, fkNone)
		}
		if err := r.queryDevice(ctx, &tx, update, &next, updateArgs(&next, audit)...); err != nil {
			return translate("update device", err, fkNone)
		}
		next.ModelCode = code
		out = deviceFromRow(&next)
		return nil
	})
	if err != nil {
		return model.Device{}, err
	}
	return out, nil
}

// AssignFirmware implements ports.DeviceRepo with one UPDATE, which skips
// the devices of other models than the firmware's and those assigned it
// already.
func (r *DeviceRepo) AssignFirmware(ctx context.Context, deviceIDs []int64, firmwareID *int64) (int, error) {
	if len(deviceIDs) == 0 {
		return 0, nil
	}
	q := r.db.NewUpdate().Model((*deviceRow)(nil)).Where("d.id = ANY(?)", pgdialect.Array(deviceIDs))
	if firmwareID == nil {
		q = q.Set("assigned_firmware_id = NULL").Where("d.assigned_firmware_id IS NOT NULL")
	} else {
		q = q.Set("assigned_firmware_id = ?", *firmwareID).
			Where("d.device_model_id = (SELECT f.device_model_id FROM firmware AS f WHERE f.id = ?)", *firmwareID).
			Where("d.assigned_firmware_id IS DISTINCT FROM ?", *firmwareID)
	}
	res, err := q.Exec(ctx)
	if err != nil {
		return 0, translate("assign firmware", err, fkNone)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, translate("assign firmware", err, fkNone)
	}
	return int(n), nil
}

// DeleteDevice implements ports.DeviceRepo.
func (r *DeviceRepo) DeleteDevice(ctx context.Context, id int64, audit []model.AuditEntry) error {
	return runAudited(ctx, r.db, "delete device", audit, func(ctx context.Context, idb bun.IDB) (auditTarget, error) {
		var modelIDs []int64
		if err := idb.NewDelete().Model((*deviceRow)(nil)).Where("id = ?", id).
			Returning("device_model_id").Scan(ctx, &modelIDs); err != nil {
			return auditTarget{}, translate("delete device", err, fkNone)
		}
		if len(modelIDs) == 0 {
			return auditTarget{}, translate("delete device", sql.ErrNoRows, fkNone)
		}
		return auditTarget{changed: true, deviceID: id, modelID: modelIDs[0]}, nil
	})
}

// TouchLastSeen implements ports.DeviceRepo with one UPDATE that writes only
// when last_seen_at is unset or older than at - minInterval. It leaves
// updated_at alone (being seen is not a change of the device), and a
// missing device is not an error: there is nothing to touch.
func (r *DeviceRepo) TouchLastSeen(ctx context.Context, id int64, at time.Time, minInterval time.Duration) error {
	at = at.UTC()
	_, err := r.db.NewUpdate().Model((*deviceRow)(nil)).
		Set("last_seen_at = ?", at).
		Where("id = ?", id).
		Where("last_seen_at IS NULL OR last_seen_at < ?", at.Add(-minInterval)).
		Exec(ctx)
	if err != nil {
		return translate("touch device last seen", err, fkNone)
	}
	return nil
}

// DeviceKeysExist implements ports.DeviceRepo with one query
// (key = ANY($1)).
func (r *DeviceRepo) DeviceKeysExist(ctx context.Context, keys []string) (map[string]bool, error) {
	found := make(map[string]bool)
	if len(keys) == 0 {
		return found, nil
	}
	var existing []string
	err := r.db.NewSelect().Model((*deviceRow)(nil)).
		Column("d.key").
		Where("d.key = ANY(?)", pgdialect.Array(keys)).
		Scan(ctx, &existing)
	if err != nil {
		return nil, translate("check device keys", err, fkNone)
	}
	for _, k := range existing {
		found[k] = true
	}
	return found, nil
}
