package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// CampaignRepo stores firmware campaigns (SPEC §16) in campaigns and
// campaign_members. What the worker runs on a campaign touches one wave's
// rows through the (campaign_id, wave, state) index; a state report finds
// its member through (device_id, campaign_id).
type CampaignRepo struct {
	db *bun.DB
}

var _ ports.CampaignRepo = (*CampaignRepo)(nil)

// NewCampaignRepo returns the campaign repository of db.
func NewCampaignRepo(db *DB) *CampaignRepo { return &CampaignRepo{db: db.bun} }

// errNoRows is what a scan of no row returns.
var errNoRows = sql.ErrNoRows

// memberInsertBatch is how many members one INSERT writes at creation.
const memberInsertBatch = 5000

// Nudge kinds in campaign_members.nudge.
const (
	nudgeNone     = 0
	nudgeAssign   = 1
	nudgeRollback = 2
)

type campaignRow struct {
	bun.BaseModel `bun:"table:campaigns,alias:c"`

	ID                   int64       `bun:"id,pk,autoincrement"`
	DeviceModelID        int64       `bun:"device_model_id,notnull"`
	FirmwareID           int64       `bun:"firmware_id,notnull"`
	FirmwareSHA256       string      `bun:"firmware_sha256,notnull"`
	FirmwareVersion      string      `bun:"firmware_version,notnull"`
	SelectorTags         []string    `bun:"selector_tags,array,notnull"`
	Waves                []int       `bun:"waves,array,notnull"`
	WaveSoakSeconds      int64       `bun:"wave_soak_seconds,notnull"`
	MaxFailureRatio      float64     `bun:"max_failure_ratio,notnull"`
	DeviceTimeoutSeconds int64       `bun:"device_timeout_seconds,notnull"`
	RollbackOnAbort      bool        `bun:"rollback_on_abort,notnull"`
	ReleaseOnComplete    bool        `bun:"release_on_complete,notnull"`
	State                string      `bun:"state,notnull"`
	CurrentWave          int         `bun:"current_wave,notnull"`
	WaveStartedAt        []time.Time `bun:"wave_started_at,array,notnull"`
	AbortReason          string      `bun:"abort_reason,notnull"`
	Members              int         `bun:"members,notnull"`
	CreatedBy            string      `bun:"created_by,notnull"`
	CreatedAt            time.Time   `bun:"created_at,notnull,nullzero,default:now()"`
	UpdatedAt            time.Time   `bun:"updated_at,notnull,nullzero,default:now()"`
	FinishedAt           *time.Time  `bun:"finished_at"`
}

func campaignToRow(c *model.Campaign) campaignRow {
	tags := c.SelectorTags
	if tags == nil {
		tags = []string{}
	}
	started := make([]time.Time, len(c.WaveStartedAt))
	for i, t := range c.WaveStartedAt {
		started[i] = t.UTC()
	}
	return campaignRow{
		ID: c.ID, DeviceModelID: c.DeviceModelID, FirmwareID: c.FirmwareID, FirmwareSHA256: c.FirmwareSHA256,
		FirmwareVersion: c.FirmwareVersion, SelectorTags: tags, Waves: c.Waves, WaveSoakSeconds: c.WaveSoakSeconds,
		MaxFailureRatio: c.MaxFailureRatio, DeviceTimeoutSeconds: c.DeviceTimeoutSeconds,
		RollbackOnAbort: c.RollbackOnAbort, ReleaseOnComplete: c.ReleaseOnComplete, State: string(c.State),
		CurrentWave: c.CurrentWave, WaveStartedAt: started, AbortReason: c.AbortReason, Members: c.Members,
		CreatedBy: c.CreatedBy, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt, FinishedAt: c.FinishedAt,
	}
}

func campaignFromRow(r *campaignRow) model.Campaign {
	tags := r.SelectorTags
	if tags == nil {
		tags = []string{}
	}
	var started []time.Time
	for _, t := range r.WaveStartedAt {
		started = append(started, t.UTC())
	}
	return model.Campaign{
		ID: r.ID, DeviceModelID: r.DeviceModelID, FirmwareID: r.FirmwareID, FirmwareSHA256: r.FirmwareSHA256,
		FirmwareVersion: r.FirmwareVersion, SelectorTags: tags, Waves: r.Waves, WaveSoakSeconds: r.WaveSoakSeconds,
		MaxFailureRatio: r.MaxFailureRatio, DeviceTimeoutSeconds: r.DeviceTimeoutSeconds,
		RollbackOnAbort: r.RollbackOnAbort, ReleaseOnComplete: r.ReleaseOnComplete, State: model.CampaignState(r.State),
		CurrentWave: r.CurrentWave, WaveStartedAt: started, AbortReason: r.AbortReason, Members: r.Members,
		CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(), FinishedAt: utcPtr(r.FinishedAt),
	}
}

// memberRow is a member joined with its device's key and model code.
type memberRow struct {
	bun.BaseModel `bun:"table:campaign_members,alias:cm"`

	CampaignID        int64      `bun:"campaign_id,pk"`
	DeviceID          int64      `bun:"device_id,pk"`
	Key               string     `bun:"key,scanonly"`
	ModelCode         string     `bun:"model_code,scanonly"`
	Wave              int        `bun:"wave,notnull"`
	State             string     `bun:"state,notnull"`
	AssignedAt        *time.Time `bun:"assigned_at"`
	ResolvedAt        *time.Time `bun:"resolved_at"`
	Nudge             int        `bun:"nudge,notnull"`
	ReportedVersion   *string    `bun:"reported_version"`
	ReportedOTAState  *string    `bun:"reported_ota_state"`
	ReportedOTATarget *string    `bun:"reported_ota_target"`
	ReportedOTAResult *string    `bun:"reported_ota_result"`
	ReportedAt        *time.Time `bun:"reported_at"`
}

func memberFromRow(r *memberRow) model.CampaignMember {
	m := model.CampaignMember{
		CampaignID: r.CampaignID, DeviceID: r.DeviceID, Key: r.Key, Wave: r.Wave, State: model.MemberState(r.State),
		AssignedAt: utcPtr(r.AssignedAt), ResolvedAt: utcPtr(r.ResolvedAt), ReportedAt: utcPtr(r.ReportedAt),
	}
	if r.ModelCode != "" && r.Key != "" {
		m.ClientID = model.ClientID(r.ModelCode, r.Key)
	}
	if r.ReportedVersion != nil {
		m.ReportedVersion = *r.ReportedVersion
	}
	if r.ReportedOTAState != nil {
		m.ReportedOTAState = model.OTAState(*r.ReportedOTAState)
	}
	if r.ReportedOTATarget != nil && r.ReportedOTAResult != nil {
		m.ReportedOTA = &model.OTAAttempt{Target: *r.ReportedOTATarget, Result: model.OTAResult(*r.ReportedOTAResult)}
	}
	return m
}

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// selectMembers starts a query of members joined with their device's key
// and model code.
func selectMembers(idb bun.IDB, rows any) *bun.SelectQuery {
	return idb.NewSelect().Model(rows).
		ColumnExpr("cm.*").
		ColumnExpr("d.key AS key, m.code AS model_code").
		Join("JOIN devices AS d ON d.id = cm.device_id").
		Join("JOIN device_models AS m ON m.id = d.device_model_id")
}

// CreateCampaign implements ports.CampaignRepo. The model row is locked
// first (FOR UPDATE, as a firmware upload locks it), so a campaign's
// creation and an upload to its model are serialised: an upload either
// sees the campaign (and is only stored) or was recorded before it. The
// members are selected with tags @> selector (the GIN index) and inserted
// in batches, in the same transaction.
func (r *CampaignRepo) CreateCampaign(ctx context.Context, c *model.Campaign, waveOf func(int64, string) int, audit []model.AuditEntry) error {
	row := campaignToRow(c)
	row.ID = 0
	row.CreatedAt, row.UpdatedAt = time.Time{}, time.Time{}
	err := runInTx(ctx, r.db, "create campaign", func(ctx context.Context, tx bun.Tx) error {
		var modelID int64
		if err := tx.NewSelect().Table("device_models").Column("id").Where("id = ?", c.DeviceModelID).
			For("UPDATE").Scan(ctx, &modelID); err != nil {
			return translate("create campaign: lock device model", err, fkNone)
		}
		if _, err := tx.NewInsert().Model(&row).Returning("*").Exec(ctx); err != nil {
			err = translate("create campaign", err, fkMissingRef)
			if errors.Is(err, model.ErrConflict) {
				return model.Conflict("device model %d has a running or paused campaign already", c.DeviceModelID)
			}
			return err
		}
		var devices []struct {
			ID  int64  `bun:"id"`
			Key string `bun:"key"`
		}
		if err := tx.NewSelect().Table("devices").Column("id", "key").
			Where("device_model_id = ?", c.DeviceModelID).Where("active").
			Where("tags @> ?::text[]", pgdialect.Array(row.SelectorTags)).
			OrderExpr("id").Scan(ctx, &devices); err != nil {
			return translate("create campaign: select members", err, fkNone)
		}
		for start := 0; start < len(devices); start += memberInsertBatch {
			batch := devices[start:min(start+memberInsertBatch, len(devices))]
			ids, waves := make([]int64, len(batch)), make([]int64, len(batch))
			for i, d := range batch {
				ids[i], waves[i] = d.ID, int64(waveOf(row.ID, d.Key))
			}
			if _, err := tx.NewRaw(`INSERT INTO campaign_members (campaign_id, device_id, wave)
				SELECT ?, unnest(?::bigint[]), unnest(?::integer[])`,
				row.ID, pgdialect.Array(ids), pgdialect.Array(waves)).Exec(ctx); err != nil {
				return translate("create campaign: insert members", err, fkNone)
			}
		}
		row.Members = len(devices)
		if _, err := tx.NewUpdate().Model(&row).Column("members").WherePK().Exec(ctx); err != nil {
			return translate("create campaign: count members", err, fkNone)
		}
		return insertAudit(ctx, tx, audit, 0, c.DeviceModelID)
	})
	if err != nil {
		return err
	}
	*c = campaignFromRow(&row)
	return nil
}

// GetCampaign implements ports.CampaignRepo.
func (r *CampaignRepo) GetCampaign(ctx context.Context, id int64) (model.Campaign, error) {
	return getCampaign(ctx, r.db, id, false)
}

func getCampaign(ctx context.Context, idb bun.IDB, id int64, lock bool) (model.Campaign, error) {
	var row campaignRow
	q := idb.NewSelect().Model(&row).Where("c.id = ?", id)
	if lock {
		q = q.For("UPDATE")
	}
	if err := q.Scan(ctx); err != nil {
		return model.Campaign{}, translate(fmt.Sprintf("campaign %d", id), err, fkNone)
	}
	return campaignFromRow(&row), nil
}

// ActiveCampaign implements ports.CampaignRepo.
func (r *CampaignRepo) ActiveCampaign(ctx context.Context, modelID int64) (model.Campaign, error) {
	var row campaignRow
	if err := r.db.NewSelect().Model(&row).Where("c.device_model_id = ?", modelID).
		Where("c.state IN ('running', 'paused')").Limit(1).Scan(ctx); err != nil {
		return model.Campaign{}, translate("active campaign", err, fkNone)
	}
	return campaignFromRow(&row), nil
}

// ListCampaigns implements ports.CampaignRepo.
func (r *CampaignRepo) ListCampaigns(ctx context.Context, f ports.CampaignFilter) (ports.CampaignPage, error) {
	limit := ports.PageLimit(f.Limit)
	var rows []campaignRow
	q := r.db.NewSelect().Model(&rows).Where("c.id > ?", f.AfterID).OrderExpr("c.id").Limit(limit + 1)
	if f.ModelID != nil {
		q = q.Where("c.device_model_id = ?", *f.ModelID)
	}
	if f.State != nil {
		q = q.Where("c.state = ?", string(*f.State))
	}
	if err := q.Scan(ctx); err != nil {
		return ports.CampaignPage{}, translate("list campaigns", err, fkNone)
	}
	var p ports.CampaignPage
	p.Campaigns, p.NextAfterID = pageRows(rows, limit, func(r *campaignRow) int64 { return r.ID }, campaignFromRow)
	return p, nil
}

// RunningCampaigns implements ports.CampaignRepo.
func (r *CampaignRepo) RunningCampaigns(ctx context.Context) ([]model.Campaign, error) {
	var rows []campaignRow
	if err := r.db.NewSelect().Model(&rows).Where("c.state = 'running'").OrderExpr("c.id").Scan(ctx); err != nil {
		return nil, translate("running campaigns", err, fkNone)
	}
	out := make([]model.Campaign, len(rows))
	for i := range rows {
		out[i] = campaignFromRow(&rows[i])
	}
	return out, nil
}

// CampaignCounts implements ports.CampaignRepo.
func (r *CampaignRepo) CampaignCounts(ctx context.Context) (map[model.CampaignState]int, error) {
	var rows []struct {
		State string `bun:"state"`
		N     int    `bun:"n"`
	}
	if err := r.db.NewSelect().Table("campaigns").ColumnExpr("state, count(*) AS n").GroupExpr("state").Scan(ctx, &rows); err != nil {
		return nil, translate("count campaigns", err, fkNone)
	}
	out := map[model.CampaignState]int{}
	for _, st := range model.CampaignStates {
		out[st] = 0
	}
	for _, x := range rows {
		out[model.CampaignState(x.State)] = x.N
	}
	return out, nil
}

// ListMembers implements ports.CampaignRepo.
func (r *CampaignRepo) ListMembers(ctx context.Context, f ports.MemberFilter) (ports.MemberPage, error) {
	if _, err := r.GetCampaign(ctx, f.CampaignID); err != nil {
		return ports.MemberPage{}, err
	}
	limit := ports.PageLimit(f.Limit)
	var rows []memberRow
	q := selectMembers(r.db, &rows).Where("cm.campaign_id = ?", f.CampaignID).Where("cm.device_id > ?", f.AfterID).
		OrderExpr("cm.device_id").Limit(limit + 1)
	if f.State != nil {
		q = q.Where("cm.state = ?", string(*f.State))
	}
	if err := q.Scan(ctx); err != nil {
		return ports.MemberPage{}, translate("list campaign members", err, fkNone)
	}
	var p ports.MemberPage
	p.Members, p.NextAfterID = pageRows(rows, limit, func(r *memberRow) int64 { return r.DeviceID }, memberFromRow)
	return p, nil
}

type waveCountRow struct {
	Wave        int        `bun:"wave"`
	State       string     `bun:"state"`
	N           int        `bun:"n"`
	LastSuccess *time.Time `bun:"last_success"`
}

func countWaves(ctx context.Context, idb bun.IDB, campaignID int64, wave *int) ([]waveCountRow, error) {
	var rows []waveCountRow
	q := idb.NewSelect().Table("campaign_members").
		ColumnExpr("wave, state, count(*) AS n").
		ColumnExpr("max(resolved_at) FILTER (WHERE state = 'succeeded') AS last_success").
		Where("campaign_id = ?", campaignID).GroupExpr("wave, state")
	if wave != nil {
		q = q.Where("wave = ?", *wave)
	}
	if err := q.Scan(ctx, &rows); err != nil {
		return nil, translate("count campaign members", err, fkNone)
	}
	return rows, nil
}

func addWaveRow(w *model.WaveCount, x waveCountRow) {
	w.Add(model.MemberState(x.State), x.N)
	if x.LastSuccess != nil && (w.LastSuccessAt == nil || x.LastSuccess.After(*w.LastSuccessAt)) {
		w.LastSuccessAt = utcPtr(x.LastSuccess)
	}
}

// WaveCounts implements ports.CampaignRepo.
func (r *CampaignRepo) WaveCounts(ctx context.Context, campaignID int64) ([]model.WaveCount, error) {
	c, err := r.GetCampaign(ctx, campaignID)
	if err != nil {
		return nil, err
	}
	rows, err := countWaves(ctx, r.db, campaignID, nil)
	if err != nil {
		return nil, err
	}
	out := make([]model.WaveCount, len(c.Waves))
	for i := range out {
		out[i].Wave = i
	}
	for _, x := range rows {
		if x.Wave >= 0 && x.Wave < len(out) {
			addWaveRow(&out[x.Wave], x)
		}
	}
	return out, nil
}

// WaveCount implements ports.CampaignRepo with one grouped query on the
// (campaign_id, wave, state) index.
func (r *CampaignRepo) WaveCount(ctx context.Context, campaignID int64, wave int) (model.WaveCount, error) {
	rows, err := countWaves(ctx, r.db, campaignID, &wave)
	if err != nil {
		return model.WaveCount{}, err
	}
	out := model.WaveCount{Wave: wave}
	for _, x := range rows {
		addWaveRow(&out, x)
	}
	return out, nil
}

// WavePending implements ports.CampaignRepo: an EXISTS that stops at the
// first pending entry of the (campaign_id, wave, state) index.
func (r *CampaignRepo) WavePending(ctx context.Context, campaignID int64, wave int) (bool, error) {
	var pending bool
	if err := r.db.NewRaw(`SELECT EXISTS (SELECT 1 FROM campaign_members
		WHERE campaign_id = ? AND wave = ? AND state = 'pending')`, campaignID, wave).Scan(ctx, &pending); err != nil {
		return false, translate("campaign wave pending", err, fkNone)
	}
	return pending, nil
}

// updateLocked locks campaign id, runs fn on it and stores what fn may
// change (state, reason, wave, times) with fn's audit entries. It returns
// the campaign as it was and as it is.
func updateLocked(ctx context.Context, tx bun.Tx, id int64, fn func(*model.Campaign) ([]model.AuditEntry, error)) (cur, next model.Campaign, err error) {
	cur, err = getCampaign(ctx, tx, id, true)
	if err != nil {
		return cur, next, err
	}
	next = cur
	next.WaveStartedAt = append([]time.Time(nil), cur.WaveStartedAt...)
	entries, err := fn(&next)
	if err != nil {
		return cur, next, err
	}
	row := campaignToRow(&next)
	row.ID = cur.ID
	if _, err := tx.NewUpdate().Model(&row).
		Column("state", "current_wave", "wave_started_at", "abort_reason", "finished_at").
		Set("updated_at = now()").
		WherePK().Returning("updated_at").Exec(ctx); err != nil {
		return cur, next, translate("update campaign", err, fkNone)
	}
	next.UpdatedAt = row.UpdatedAt.UTC()
	return cur, next, insertAudit(ctx, tx, entries, 0, cur.DeviceModelID)
}

// UpdateCampaign implements ports.CampaignRepo (a change of the wave is
// StartWave's: fn's is refused).
func (r *CampaignRepo) UpdateCampaign(ctx context.Context, id int64, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, error) {
	var out model.Campaign
	err := runInTx(ctx, r.db, "update campaign", func(ctx context.Context, tx bun.Tx) error {
		_, next, err := updateLocked(ctx, tx, id, func(c *model.Campaign) ([]model.AuditEntry, error) {
			w, started := c.CurrentWave, len(c.WaveStartedAt)
			entries, err := fn(c)
			if err == nil && (c.CurrentWave != w || len(c.WaveStartedAt) != started) {
				return nil, errors.New("postgres: update campaign: a wave starts with StartWave")
			}
			return entries, err
		})
		out = next
		return err
	})
	return out, err
}

// StartWave implements ports.CampaignRepo: in one transaction, with the
// campaign locked, fn's wave must be the next one; the wave's pending
// members get their assignment time and a nudge owed, and their devices
// the target as assigned firmware.
func (r *CampaignRepo) StartWave(ctx context.Context, id int64, at time.Time, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, int, error) {
	var out model.Campaign
	var n int
	err := runInTx(ctx, r.db, "start campaign wave", func(ctx context.Context, tx bun.Tx) error {
		cur, next, err := updateLocked(ctx, tx, id, fn)
		if err != nil {
			return err
		}
		if next.CurrentWave != cur.CurrentWave+1 {
			return model.Conflict("campaign %d: wave %d is not the next after %d", id, next.CurrentWave, cur.CurrentWave)
		}
		var ids []int64
		if err := tx.NewRaw(`UPDATE campaign_members SET assigned_at = ?, nudge = ?
			WHERE campaign_id = ? AND wave = ? AND state = 'pending' AND assigned_at IS NULL
			RETURNING device_id`, at.UTC(), nudgeAssign, id, next.CurrentWave).Scan(ctx, &ids); err != nil && !errors.Is(err, errNoRows) {
			return translate("start campaign wave: assign members", err, fkNone)
		}
		if len(ids) > 0 {
			if _, err := tx.NewRaw(`UPDATE devices SET assigned_firmware_id = ? WHERE id = ANY(?::bigint[])`,
				next.FirmwareID, pgdialect.Array(ids)).Exec(ctx); err != nil {
				return translate("start campaign wave: assign devices", err, fkNone)
			}
		}
		out, n = next, len(ids)
		return nil
	})
	return out, n, err
}

// AbortCampaign implements ports.CampaignRepo.
func (r *CampaignRepo) AbortCampaign(ctx context.Context, id int64, rollback bool, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, int, error) {
	var out model.Campaign
	var n int
	err := runInTx(ctx, r.db, "abort campaign", func(ctx context.Context, tx bun.Tx) error {
		_, next, err := updateLocked(ctx, tx, id, fn)
		if err != nil {
			return err
		}
		out = next
		if !rollback {
			return nil
		}
		var ids []int64
		if err := tx.NewRaw(`UPDATE campaign_members SET nudge = ?
			WHERE campaign_id = ? AND assigned_at IS NOT NULL AND state IN ('pending', 'failed')
			RETURNING device_id`, nudgeRollback, id).Scan(ctx, &ids); err != nil && !errors.Is(err, errNoRows) {
			return translate("abort campaign: roll back members", err, fkNone)
		}
		if len(ids) > 0 {
			// Only where the target is still the assignment (another
			// campaign may have assigned something else since).
			if _, err := tx.NewRaw(`UPDATE devices SET assigned_firmware_id = NULL
				WHERE id = ANY(?::bigint[]) AND assigned_firmware_id = ?`,
				pgdialect.Array(ids), next.FirmwareID).Exec(ctx); err != nil {
				return translate("abort campaign: roll back devices", err, fkNone)
			}
		}
		n = len(ids)
		return nil
	})
	return out, n, err
}

// TimeOutMembers implements ports.CampaignRepo in one UPDATE on the
// wave's pending rows; the CASE is model.CampaignMember.TimeoutState.
func (r *CampaignRepo) TimeOutMembers(ctx context.Context, c model.Campaign, wave int, assignedBefore, at time.Time) (int, error) {
	res, err := r.db.NewRaw(`UPDATE campaign_members
		SET state = CASE WHEN reported_version = ? AND reported_ota_state = ? THEN 'failed' ELSE 'timed_out' END,
		    resolved_at = ?
		WHERE campaign_id = ? AND wave = ? AND state = 'pending' AND assigned_at <= ?`,
		c.FirmwareVersion, string(model.OTAPendingVerify), at.UTC(), c.ID, wave, assignedBefore.UTC()).Exec(ctx)
	if err != nil {
		return 0, translate("time out campaign members", err, fkNone)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, translate("time out campaign members", err, fkNone)
	}
	return int(n), nil
}

// OwedNudges implements ports.CampaignRepo (the partial index on
// nudge <> 0).
func (r *CampaignRepo) OwedNudges(ctx context.Context, campaignID int64, limit int) ([]model.CampaignNudge, error) {
	var rows []memberRow
	if err := selectMembers(r.db, &rows).Where("cm.campaign_id = ?", campaignID).Where("cm.nudge <> 0").
		OrderExpr("cm.device_id").Limit(limit).Scan(ctx); err != nil {
		return nil, translate("owed campaign nudges", err, fkNone)
	}
	out := make([]model.CampaignNudge, len(rows))
	for i, x := range rows {
		out[i] = model.CampaignNudge{CampaignID: campaignID, DeviceID: x.DeviceID,
			ClientID: model.ClientID(x.ModelCode, x.Key), Rollback: x.Nudge == nudgeRollback}
	}
	return out, nil
}

// NudgesSent implements ports.CampaignRepo: it clears each nudge only when
// it is still the kind that was sent.
func (r *CampaignRepo) NudgesSent(ctx context.Context, campaignID int64, sent []model.CampaignNudge) error {
	if len(sent) == 0 {
		return nil
	}
	ids, kinds := make([]int64, len(sent)), make([]int64, len(sent))
	for i, n := range sent {
		ids[i], kinds[i] = n.DeviceID, nudgeAssign
		if n.Rollback {
			kinds[i] = nudgeRollback
		}
	}
	if _, err := r.db.NewRaw(`UPDATE campaign_members AS cm SET nudge = ?
		FROM unnest(?::bigint[], ?::smallint[]) AS s(device_id, kind)
		WHERE cm.campaign_id = ? AND cm.device_id = s.device_id AND cm.nudge = s.kind`,
		nudgeNone, pgdialect.Array(ids), pgdialect.Array(kinds), campaignID).Exec(ctx); err != nil {
		return translate("campaign nudges sent", err, fkNone)
	}
	return nil
}

// ObserveReport implements ports.CampaignRepo: the device's member row of
// its most recent campaign is locked, fn runs with the campaign (read, not
// locked: only the member changes), and the member's report and state are
// stored.
func (r *CampaignRepo) ObserveReport(ctx context.Context, deviceID int64, fn func(model.Campaign, *model.CampaignMember)) (model.Campaign, model.CampaignMember, bool, error) {
	var (
		c     model.Campaign
		m     model.CampaignMember
		found bool
	)
	err := runInTx(ctx, r.db, "observe campaign report", func(ctx context.Context, tx bun.Tx) error {
		var row memberRow
		err := tx.NewSelect().Model(&row).Where("cm.device_id = ?", deviceID).
			OrderExpr("cm.campaign_id DESC").Limit(1).For("UPDATE").Scan(ctx)
		if errors.Is(err, errNoRows) {
			return nil
		}
		if err != nil {
			return translate("observe campaign report: lock member", err, fkNone)
		}
		if c, err = getCampaign(ctx, tx, row.CampaignID, false); err != nil {
			return err
		}
		m = memberFromRow(&row)
		fn(c, &m)
		var target, result *string
		if m.ReportedOTA != nil {
			target, result = &m.ReportedOTA.Target, nilIfEmpty(string(m.ReportedOTA.Result))
		}
		if _, err := tx.NewRaw(`UPDATE campaign_members
			SET reported_version = ?, reported_ota_state = ?, reported_ota_target = ?, reported_ota_result = ?,
			    reported_at = ?, state = ?, resolved_at = ?
			WHERE campaign_id = ? AND device_id = ?`,
			nilIfEmpty(m.ReportedVersion), nilIfEmpty(string(m.ReportedOTAState)), target, result,
			utcPtr(m.ReportedAt), string(m.State), utcPtr(m.ResolvedAt), row.CampaignID, deviceID).Exec(ctx); err != nil {
			return translate("observe campaign report", err, fkNone)
		}
		found = true
		return nil
	})
	return c, m, found, err
}
