package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// CoredumpRepo keeps core dump records in the coredumps table (SPEC §17).
type CoredumpRepo struct {
	db *bun.DB
}

var (
	_ ports.CoredumpRepo = (*CoredumpRepo)(nil)
	_ ports.FirmwareELFs = (*FirmwareRepo)(nil)
)

// NewCoredumpRepo returns the core dump repository of db.
func NewCoredumpRepo(db *DB) *CoredumpRepo { return &CoredumpRepo{db: db.bun} }

type coredumpRow struct {
	bun.BaseModel `bun:"table:coredumps,alias:c"`

	ID              int64           `bun:"id,pk,autoincrement"`
	DeviceID        int64           `bun:"device_id,notnull"`
	DeviceModelID   int64           `bun:"device_model_id,notnull"`
	SHA256          string          `bun:"sha256,notnull"`
	Size            int64           `bun:"size,notnull"`
	Info            json.RawMessage `bun:"info,type:jsonb,notnull"`
	ELFPrefix       string          `bun:"elf_prefix,notnull"`
	ReceivedAt      time.Time       `bun:"received_at,notnull,nullzero,default:now()"`
	Status          string          `bun:"status,notnull"`
	Reason          string          `bun:"reason,notnull"`
	ELFSHA256       *string         `bun:"elf_sha256"`
	FirmwareVersion *string         `bun:"firmware_version"`
	Analysis        json.RawMessage `bun:"analysis,type:jsonb,nullzero"`
	CrashFunction   *string         `bun:"crash_function"`
	AnalysedAt      *time.Time      `bun:"analysed_at"`
	Attempts        int             `bun:"attempts,notnull"`
	ClaimedUntil    *time.Time      `bun:"claimed_until"`
	// ModelCode and DeviceKey come from the joins.
	ModelCode string `bun:"model_code,scanonly"`
	DeviceKey string `bun:"device_key,scanonly"`
}

// coredumpInfoDoc and coredumpAnalysisDoc are the jsonb documents of a
// record's info and analysis: this package's own types, so the core's
// structs carry no tags and a renamed Go field does not change stored data.
type coredumpInfoDoc struct {
	Chip            string `json:"chip"`
	ChipID          uint16 `json:"chip_id"`
	Xtensa          bool   `json:"xtensa"`
	Format          string `json:"format"`
	Version         uint16 `json:"version"`
	ELFSHA256Prefix string `json:"elf_sha256_prefix"`
	PanicReason     string `json:"panic_reason"`
	ChecksumValid   bool   `json:"checksum_valid"`
	Length          int    `json:"length"`
	ELFOffset       int    `json:"elf_offset"`
	ELFLength       int    `json:"elf_length"`
}

type coredumpFrameDoc struct {
	PC       uint32 `json:"pc"`
	Function string `json:"function"`
	File     string `json:"file"`
	Line     int    `json:"line"`
}

type coredumpAnalysisDoc struct {
	Chip        string             `json:"chip"`
	CrashedTask string             `json:"crashed_task"`
	PanicReason string             `json:"panic_reason"`
	Frames      []coredumpFrameDoc `json:"frames"`
	Text        string             `json:"text"`
	Notes       []string           `json:"notes"`
}

func coredumpToRow(c *model.Coredump) (coredumpRow, error) {
	i := c.Info
	info, err := json.Marshal(coredumpInfoDoc{
		Chip: i.Chip, ChipID: i.ChipID, Xtensa: i.Xtensa, Format: string(i.Format), Version: i.Version,
		ELFSHA256Prefix: i.ELFSHA256Prefix, PanicReason: i.PanicReason, ChecksumValid: i.ChecksumValid,
		Length: i.Length, ELFOffset: i.ELFOffset, ELFLength: i.ELFLength,
	})
	if err != nil {
		return coredumpRow{}, err
	}
	r := coredumpRow{
		ID: c.ID, DeviceID: c.DeviceID, DeviceModelID: c.DeviceModelID, SHA256: c.SHA256, Size: c.Size,
		Info: info, ELFPrefix: i.ELFSHA256Prefix, ReceivedAt: utc(c.ReceivedAt),
		Status: string(c.Status), Reason: c.Reason,
		ELFSHA256: stringOrNil(c.ELFSHA256), FirmwareVersion: stringOrNil(c.FirmwareVersion),
		AnalysedAt: utcPtr(c.AnalysedAt), Attempts: c.Attempts, ClaimedUntil: utcPtr(c.ClaimedUntil),
	}
	if a := c.Analysis; a != nil {
		f, _ := a.CrashFrame()
		r.CrashFunction = &f.Function
		doc := coredumpAnalysisDoc{Chip: a.Chip, CrashedTask: a.CrashedTask, PanicReason: a.PanicReason,
			Frames: make([]coredumpFrameDoc, len(a.Frames)), Text: a.Text, Notes: a.Notes}
		for k, f := range a.Frames {
			doc.Frames[k] = coredumpFrameDoc(f)
		}
		if r.Analysis, err = json.Marshal(doc); err != nil {
			return coredumpRow{}, err
		}
	}
	return r, nil
}

func coredumpFromRow(r *coredumpRow) (model.Coredump, error) {
	c := model.Coredump{
		ID: r.ID, DeviceID: r.DeviceID, DeviceModelID: r.DeviceModelID,
		ModelCode: r.ModelCode, ClientID: model.ClientID(r.ModelCode, r.DeviceKey),
		SHA256: r.SHA256, Size: r.Size, ReceivedAt: utc(r.ReceivedAt),
		Status: model.CoredumpStatus(r.Status), Reason: r.Reason,
		ELFSHA256: deref(r.ELFSHA256), FirmwareVersion: deref(r.FirmwareVersion),
		AnalysedAt: utcPtr(r.AnalysedAt), Attempts: r.Attempts, ClaimedUntil: utcPtr(r.ClaimedUntil),
	}
	var info coredumpInfoDoc
	if err := json.Unmarshal(r.Info, &info); err != nil {
		return model.Coredump{}, fmt.Errorf("core dump %d: info: %w", r.ID, err)
	}
	c.Info = model.CoredumpInfo{
		Chip: info.Chip, ChipID: info.ChipID, Xtensa: info.Xtensa, Format: model.CoredumpFormat(info.Format),
		Version: info.Version, ELFSHA256Prefix: info.ELFSHA256Prefix, PanicReason: info.PanicReason,
		ChecksumValid: info.ChecksumValid, Length: info.Length, ELFOffset: info.ELFOffset, ELFLength: info.ELFLength,
	}
	if len(r.Analysis) > 0 {
		var doc coredumpAnalysisDoc
		if err := json.Unmarshal(r.Analysis, &doc); err != nil {
			return model.Coredump{}, fmt.Errorf("core dump %d: analysis: %w", r.ID, err)
		}
		a := model.CoredumpAnalysis{Chip: doc.Chip, CrashedTask: doc.CrashedTask, PanicReason: doc.PanicReason,
			Frames: make([]model.CoredumpFrame, len(doc.Frames)), Text: doc.Text, Notes: doc.Notes}
		for k, f := range doc.Frames {
			a.Frames[k] = model.CoredumpFrame(f)
		}
		c.Analysis = &a
	}
	return c, nil
}

// selectCoredumps selects records with their device's key and model code.
func selectCoredumps(idb bun.IDB, dst any) *bun.SelectQuery {
	return idb.NewSelect().Model(dst).
		ColumnExpr("c.*").
		ColumnExpr("d.key AS device_key").
		ColumnExpr("m.code AS model_code").
		Join("JOIN devices AS d ON d.id = c.device_id").
		Join("JOIN device_models AS m ON m.id = c.device_model_id")
}

func coredumpsFromRows(rows []coredumpRow) ([]model.Coredump, error) {
	out := make([]model.Coredump, 0, len(rows))
	for i := range rows {
		c, err := coredumpFromRow(&rows[i])
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// CreateCoredump implements ports.CoredumpRepo: the device row is locked
// (so concurrent uploads of one device evict in order), the record
// inserted with the device's model, and the device's records beyond the
// newest keep deleted, with the audit entries, in one transaction.
func (r *CoredumpRepo) CreateCoredump(ctx context.Context, c *model.Coredump, keep int, audit []model.AuditEntry) ([]model.Coredump, error) {
	var evicted []model.Coredump
	err := runInTx(ctx, r.db, "create core dump", func(ctx context.Context, tx bun.Tx) error {
		var dev struct {
			ModelID int64  `bun:"device_model_id"`
			Key     string `bun:"key"`
			Code    string `bun:"code"`
		}
		if err := tx.NewSelect().TableExpr("devices AS d").
			ColumnExpr("d.device_model_id, d.key, m.code").
			Join("JOIN device_models AS m ON m.id = d.device_model_id").
			Where("d.id = ?", c.DeviceID).For("UPDATE OF d").Scan(ctx, &dev); err != nil {
			return translate("create core dump: lock device", err, fkNone)
		}
		c.DeviceModelID, c.ModelCode, c.ClientID = dev.ModelID, dev.Code, model.ClientID(dev.Code, dev.Key)
		row, err := coredumpToRow(c)
		if err != nil {
			return err
		}
		row.ID = 0
		if _, err := tx.NewInsert().Model(&row).Returning("id, received_at").Exec(ctx); err != nil {
			return translate("create core dump", err, fkMissingRef)
		}
		c.ID, c.ReceivedAt = row.ID, utc(row.ReceivedAt)
		var gone []coredumpRow
		if err := tx.NewRaw(`DELETE FROM coredumps WHERE id IN (
				SELECT id FROM coredumps WHERE device_id = ? ORDER BY id DESC OFFSET ?)
			RETURNING *, ? AS device_key, ? AS model_code`, c.DeviceID, max(keep, 0), dev.Key, dev.Code).
			Scan(ctx, &gone); err != nil {
			return translate("create core dump: evict", err, fkNone)
		}
		if evicted, err = coredumpsFromRows(gone); err != nil {
			return err
		}
		for i := range audit {
			audit[i].ClientID = c.ClientID
		}
		return insertAudit(ctx, tx, audit, c.DeviceID, c.DeviceModelID)
	})
	if err != nil {
		return nil, err
	}
	return evicted, nil
}

// GetCoredump implements ports.CoredumpRepo.
func (r *CoredumpRepo) GetCoredump(ctx context.Context, id int64) (model.Coredump, error) {
	var row coredumpRow
	if err := selectCoredumps(r.db, &row).Where("c.id = ?", id).Scan(ctx); err != nil {
		return model.Coredump{}, translate("get core dump", err, fkNone)
	}
	return coredumpFromRow(&row)
}

// ListCoredumps implements ports.CoredumpRepo.
func (r *CoredumpRepo) ListCoredumps(ctx context.Context, deviceID int64, limit int, beforeID int64) (ports.CoredumpPage, error) {
	n := ports.PageLimit(limit)
	var rows []coredumpRow
	q := selectCoredumps(r.db, &rows).Where("c.device_id = ?", deviceID)
	if beforeID > 0 {
		q = q.Where("c.id < ?", beforeID)
	}
	if err := q.OrderExpr("c.id DESC").Limit(n + 1).Scan(ctx); err != nil {
		return ports.CoredumpPage{}, translate("list core dumps", err, fkNone)
	}
	var page ports.CoredumpPage
	if len(rows) > n {
		rows = rows[:n]
		page.NextBeforeID = rows[n-1].ID
	}
	var err error
	page.Coredumps, err = coredumpsFromRows(rows)
	return page, err
}

// DeleteCoredump implements ports.CoredumpRepo.
func (r *CoredumpRepo) DeleteCoredump(ctx context.Context, id int64, audit []model.AuditEntry) (model.Coredump, error) {
	var out model.Coredump
	err := runInTx(ctx, r.db, "delete core dump", func(ctx context.Context, tx bun.Tx) error {
		var row coredumpRow
		if err := selectCoredumps(tx, &row).Where("c.id = ?", id).For("UPDATE OF c").Scan(ctx); err != nil {
			return translate("delete core dump", err, fkNone)
		}
		if _, err := tx.NewDelete().Model((*coredumpRow)(nil)).Where("id = ?", id).Exec(ctx); err != nil {
			return translate("delete core dump", err, fkNone)
		}
		var err error
		if out, err = coredumpFromRow(&row); err != nil {
			return err
		}
		for i := range audit {
			audit[i].ClientID = out.ClientID
		}
		return insertAudit(ctx, tx, audit, out.DeviceID, out.DeviceModelID)
	})
	return out, err
}

// CoredumpBlobInUse implements ports.CoredumpRepo.
func (r *CoredumpRepo) CoredumpBlobInUse(ctx context.Context, modelCode, sha256 string) (bool, error) {
	ok, err := r.db.NewSelect().TableExpr("coredumps AS c").
		Join("JOIN device_models AS m ON m.id = c.device_model_id").
		Where("m.code = ? AND c.sha256 = ?", modelCode, sha256).Exists(ctx)
	if err != nil {
		return false, translate("core dump blob in use", err, fkNone)
	}
	return ok, nil
}

// ClaimCoredumps implements ports.CoredumpRepo with one UPDATE over the
// oldest claimable rows, locked FOR UPDATE SKIP LOCKED.
func (r *CoredumpRepo) ClaimCoredumps(ctx context.Context, now, until time.Time, n int) ([]model.Coredump, error) {
	var ids []int64
	if err := r.db.NewRaw(`UPDATE coredumps SET claimed_until = ?, attempts = attempts + 1
		WHERE id IN (SELECT id FROM coredumps
			WHERE status = 'pending' AND (claimed_until IS NULL OR claimed_until <= ?)
			ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED)
		RETURNING id`, utc(until), utc(now), n).Scan(ctx, &ids); err != nil {
		return nil, translate("claim core dumps", err, fkNone)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	var rows []coredumpRow
	if err := selectCoredumps(r.db, &rows).Where("c.id IN (?)", bun.List(ids)).OrderExpr("c.id").Scan(ctx); err != nil {
		return nil, translate("claim core dumps: read", err, fkNone)
	}
	return coredumpsFromRows(rows)
}

// UpdateCoredump implements ports.CoredumpRepo.
func (r *CoredumpRepo) UpdateCoredump(ctx context.Context, id int64, fn func(*model.Coredump) error) (model.Coredump, error) {
	var out model.Coredump
	err := runInTx(ctx, r.db, "update core dump", func(ctx context.Context, tx bun.Tx) error {
		var row coredumpRow
		if err := selectCoredumps(tx, &row).Where("c.id = ?", id).For("UPDATE OF c").Scan(ctx); err != nil {
			return translate("update core dump: lock", err, fkNone)
		}
		cur, err := coredumpFromRow(&row)
		if err != nil {
			return err
		}
		if err := fn(&cur); err != nil {
			return err
		}
		next, err := coredumpToRow(&cur)
		if err != nil {
			return err
		}
		next.ID = row.ID
		if _, err := tx.NewUpdate().Model(&next).
			Column("status", "reason", "elf_sha256", "firmware_version", "analysis", "crash_function", "analysed_at", "claimed_until").
			WherePK().Exec(ctx); err != nil {
			return translate("update core dump", err, fkNone)
		}
		next.DeviceID, next.DeviceModelID, next.SHA256, next.Size = row.DeviceID, row.DeviceModelID, row.SHA256, row.Size
		next.Info, next.ReceivedAt, next.Attempts = row.Info, row.ReceivedAt, row.Attempts
		next.ModelCode, next.DeviceKey = row.ModelCode, row.DeviceKey
		out, err = coredumpFromRow(&next)
		return err
	})
	return out, err
}

// RequeueCoredumps implements ports.CoredumpRepo.
func (r *CoredumpRepo) RequeueCoredumps(ctx context.Context, modelID int64, elfSHA256 string) (int, error) {
	res, err := r.db.NewRaw(`UPDATE coredumps SET status = 'pending', reason = '', claimed_until = NULL
		WHERE device_model_id = ? AND status = 'no_elf' AND elf_prefix <> '' AND starts_with(?, elf_prefix)`,
		modelID, strings.ToLower(elfSHA256)).Exec(ctx)
	if err != nil {
		return 0, translate("requeue core dumps", err, fkNone)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// CrashGroups implements ports.CoredumpRepo.
func (r *CoredumpRepo) CrashGroups(ctx context.Context, modelID int64, since time.Time) ([]model.CrashGroup, error) {
	var rows []struct {
		Function string    `bun:"function"`
		Version  string    `bun:"version"`
		N        int       `bun:"n"`
		LastAt   time.Time `bun:"last_at"`
		LastID   int64     `bun:"last_id"`
	}
	if err := r.db.NewSelect().TableExpr("coredumps AS c").
		ColumnExpr("coalesce(c.crash_function, '') AS function, coalesce(c.firmware_version, '') AS version").
		ColumnExpr("count(*) AS n, max(c.received_at) AS last_at, max(c.id) AS last_id").
		Where("c.device_model_id = ? AND c.status = 'analysed' AND c.received_at >= ?", modelID, utc(since)).
		GroupExpr("1, 2").OrderExpr("n DESC, last_id DESC").Scan(ctx, &rows); err != nil {
		return nil, translate("crash groups", err, fkNone)
	}
	out := make([]model.CrashGroup, len(rows))
	for i, x := range rows {
		out[i] = model.CrashGroup{Function: x.Function, FirmwareVersion: x.Version, Count: x.N, LastAt: utc(x.LastAt), LastID: x.LastID}
	}
	return out, nil
}

// CoredumpCounts implements ports.CoredumpRepo.
func (r *CoredumpRepo) CoredumpCounts(ctx context.Context) ([]ports.CoredumpCount, error) {
	var rows []struct {
		Code   string `bun:"code"`
		Status string `bun:"status"`
		N      int    `bun:"n"`
	}
	if err := r.db.NewSelect().TableExpr("coredumps AS c").
		ColumnExpr("m.code, c.status, count(*) AS n").
		Join("JOIN device_models AS m ON m.id = c.device_model_id").
		GroupExpr("m.code, c.status").OrderExpr("m.code, c.status").Scan(ctx, &rows); err != nil {
		return nil, translate("count core dumps", err, fkNone)
	}
	out := make([]ports.CoredumpCount, len(rows))
	for i, x := range rows {
		out[i] = ports.CoredumpCount{ModelCode: x.Code, Status: model.CoredumpStatus(x.Status), Count: x.N}
	}
	return out, nil
}

// MarkELFStored implements ports.FirmwareELFs.
func (r *FirmwareRepo) MarkELFStored(ctx context.Context, modelID int64, elfSHA256 string) (int, error) {
	res, err := r.db.NewUpdate().Model((*firmwareRow)(nil)).
		Set("has_elf = true").
		Where("device_model_id = ? AND elf_sha256 = ? AND NOT has_elf", modelID, elfSHA256).Exec(ctx)
	if err != nil {
		return 0, translate("mark ELF stored", err, fkNone)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// FirmwareByELF implements ports.FirmwareELFs.
func (r *FirmwareRepo) FirmwareByELF(ctx context.Context, modelID int64, prefix string) (model.Firmware, error) {
	var row firmwareRow
	if err := r.db.NewSelect().Model(&row).
		Where("f.device_model_id = ? AND f.has_elf AND f.elf_sha256 IS NOT NULL AND starts_with(f.elf_sha256, ?)", modelID, prefix).
		OrderExpr("f.id DESC").Limit(1).Scan(ctx); err != nil {
		return model.Firmware{}, translate("firmware by ELF", err, fkNone)
	}
	return firmwareFromRow(&row), nil
}
