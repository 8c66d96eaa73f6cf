package mdm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Firmware campaigns (SPEC §16): the admin's side (create, read, pause,
// resume, abort) and the device's (its state reports resolve its member).
// The progression is campaign_worker.go.

var _ ports.CampaignAdmin = (*Service)(nil)

// campaigns is the campaign repository, or an unavailable error when none
// is configured.
func (s *Service) campaigns() (ports.CampaignRepo, error) {
	if s.d.Campaigns == nil {
		return nil, fmt.Errorf("campaigns: no campaign store configured: %w", model.ErrUnavailable)
	}
	return s.d.Campaigns, nil
}

// campaignEntry is entry about campaign c.
func (s *Service) campaignEntry(ctx context.Context, kind model.AuditKind, c model.Campaign, detail string) model.AuditEntry {
	e := s.entry(ctx, kind, fmt.Sprintf("campaign %d: %s", c.ID, detail))
	e.ModelID = c.DeviceModelID
	return e
}

// CreateCampaign implements ports.CampaignAdmin: it checks the settings
// (SPEC §16's defaults for those left out), finds the target among the
// model's uploads and creates the campaign with its members, fixed now.
// The first wave starts when the worker wakes (at once on this replica when
// it holds the lease, else at the holder's next tick).
func (s *Service) CreateCampaign(ctx context.Context, in ports.NewCampaign) (model.Campaign, error) {
	repo, err := s.campaigns()
	if err != nil {
		return model.Campaign{}, err
	}
	c := model.Campaign{
		DeviceModelID:        in.DeviceModelID,
		SelectorTags:         in.SelectorTags,
		Waves:                in.Waves,
		WaveSoakSeconds:      orDefault(in.WaveSoakSeconds, model.DefaultWaveSoakSeconds),
		MaxFailureRatio:      orDefault(in.MaxFailureRatio, model.DefaultMaxFailureRatio),
		DeviceTimeoutSeconds: orDefault(in.DeviceTimeoutSeconds, model.DefaultDeviceTimeoutSecs),
		RollbackOnAbort:      orDefault(in.RollbackOnAbort, model.DefaultRollbackOnAbort),
		ReleaseOnComplete:    orDefault(in.ReleaseOnComplete, model.DefaultReleaseOnComplete),
		State:                model.CampaignRunning,
		CurrentWave:          -1,
	}
	if c.Waves == nil {
		c.Waves = model.DefaultWaves()
	}
	if c.SelectorTags == nil {
		c.SelectorTags = []string{}
	}
	if err := c.Validate(); err != nil {
		return model.Campaign{}, err
	}
	sha := strings.ToLower(in.FirmwareSHA256)
	if !model.SHA256Pattern.MatchString(sha) {
		return model.Campaign{}, model.Invalid("firmware_sha256", "must be 64 hex digits")
	}
	// A model or an upload the body names that does not exist is a
	// conflict on that member, as for a device's device_model_id.
	m, err := s.d.Models.GetModel(ctx, c.DeviceModelID)
	if errors.Is(err, model.ErrNotFound) {
		return model.Campaign{}, model.ConflictOn("device_model_id", "device model %d does not exist", c.DeviceModelID)
	}
	if err != nil {
		return model.Campaign{}, fmt.Errorf("create campaign: device model %d: %w", c.DeviceModelID, err)
	}
	f, err := s.uploadOf(ctx, m, sha)
	if err != nil {
		return model.Campaign{}, err
	}
	c.FirmwareID, c.FirmwareSHA256, c.FirmwareVersion = f.ID, f.SHA256, f.Version
	a := model.ActorOf(ctx)
	c.CreatedBy = a.Name
	if c.CreatedBy == "" {
		c.CreatedBy = a.Subject
	}
	entry := s.entry(ctx, model.AuditCampaignCreated, "")
	entry.ModelID = m.ID
	err = repo.CreateCampaign(ctx, &c, func(id int64, key string) int {
		return model.WaveOf(c.Waves, model.WaveFraction(id, key))
	}, nil)
	if err != nil {
		return model.Campaign{}, fmt.Errorf("create campaign for device model %s: %w", m.Code, err)
	}
	// The entry names the campaign, whose id the insert made: appended
	// after it (a lost entry is reported, the campaign stands).
	entry.Detail = fmt.Sprintf("campaign %d: firmware %s (%s) to %d devices of %s in waves %v",
		c.ID, c.FirmwareVersion, c.FirmwareSHA256[:12], c.Members, m.Code, c.Waves)
	s.report(ctx, "audit: campaign created", s.appendAudit(ctx, entry))
	s.wakeCampaigns()
	return c, nil
}

// uploadOf finds the model's upload whose SHA-256 is sha (released or
// stored).
func (s *Service) uploadOf(ctx context.Context, m model.DeviceModel, sha string) (model.Firmware, error) {
	f, err := s.d.Firmware.FirmwareBySHA256(ctx, m.ID, sha)
	switch {
	case errors.Is(err, model.ErrNotFound):
		return model.Firmware{}, model.ConflictOn("firmware_sha256", "is not an upload of device model %s (see its firmware history)", m.Code)
	case err != nil:
		return model.Firmware{}, fmt.Errorf("firmware of device model %s: %w", m.Code, err)
	}
	return f, nil
}

// HoldRelease implements ports.ReleaseGate (SPEC §16): while the model has
// a running or paused campaign an upload is stored, not released. New
// makes the Service its own gate when it has campaigns and no other gate.
func (s *Service) HoldRelease(ctx context.Context, modelID int64) (string, error) {
	c, err := s.d.Campaigns.ActiveCampaign(ctx, modelID)
	switch {
	case errors.Is(err, model.ErrNotFound):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("campaign of device model %d: %w", modelID, err)
	}
	return fmt.Sprintf("stored, not released: campaign %d of this model is %s; its devices get firmware through it (release this upload once it has ended)",
		c.ID, c.State), nil
}

// refuseReleaseDuringCampaign refuses a release by hand while the model
// has a running or paused campaign: its devices change firmware only
// through the campaign (SPEC §16).
func (s *Service) refuseReleaseDuringCampaign(ctx context.Context, m model.DeviceModel) error {
	if s.d.Campaigns == nil {
		return nil
	}
	c, err := s.d.Campaigns.ActiveCampaign(ctx, m.ID)
	switch {
	case errors.Is(err, model.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("campaign of device model %s: %w", m.Code, err)
	}
	return model.Conflict("device model %s has a %s campaign (%d): its firmware changes only through the campaign; abort it before releasing by hand",
		m.Code, c.State, c.ID)
}

func orDefault[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// GetCampaign implements ports.CampaignAdmin: the campaign with its
// waves' counts.
func (s *Service) GetCampaign(ctx context.Context, id int64) (ports.CampaignView, error) {
	repo, err := s.campaigns()
	if err != nil {
		return ports.CampaignView{}, err
	}
	c, err := repo.GetCampaign(ctx, id)
	if err != nil {
		return ports.CampaignView{}, fmt.Errorf("campaign %d: %w", id, err)
	}
	return s.view(ctx, c)
}

func (s *Service) view(ctx context.Context, c model.Campaign) (ports.CampaignView, error) {
	waves, err := s.d.Campaigns.WaveCounts(ctx, c.ID)
	if err != nil {
		return ports.CampaignView{}, fmt.Errorf("campaign %d: count members: %w", c.ID, err)
	}
	return ports.CampaignView{Campaign: c, Waves: waves}, nil
}

// ListCampaigns implements ports.CampaignAdmin.
func (s *Service) ListCampaigns(ctx context.Context, f ports.CampaignFilter) (ports.CampaignPage, error) {
	repo, err := s.campaigns()
	if err != nil {
		return ports.CampaignPage{}, err
	}
	if f.Limit, err = checkPage(f.Limit, f.AfterID); err != nil {
		return ports.CampaignPage{}, err
	}
	if f.State != nil && !f.State.Valid() {
		return ports.CampaignPage{}, model.Invalid("state", "must be running, paused, aborted or completed")
	}
	p, err := repo.ListCampaigns(ctx, f)
	if err != nil {
		return ports.CampaignPage{}, fmt.Errorf("list campaigns: %w", err)
	}
	return p, nil
}

// ListCampaignMembers implements ports.CampaignAdmin.
func (s *Service) ListCampaignMembers(ctx context.Context, f ports.MemberFilter) (ports.MemberPage, error) {
	repo, err := s.campaigns()
	if err != nil {
		return ports.MemberPage{}, err
	}
	if f.Limit, err = checkPage(f.Limit, f.AfterID); err != nil {
		return ports.MemberPage{}, err
	}
	if f.State != nil && !f.State.Valid() {
		return ports.MemberPage{}, model.Invalid("state", "must be pending, succeeded, failed or timed_out")
	}
	p, err := repo.ListMembers(ctx, f)
	if err != nil {
		return ports.MemberPage{}, fmt.Errorf("campaign %d: list members: %w", f.CampaignID, err)
	}
	return p, nil
}

// PauseCampaign implements ports.CampaignAdmin: a paused campaign starts
// no wave and times no member out; reports are still recorded and a
// failure ratio over the maximum still aborts it.
func (s *Service) PauseCampaign(ctx context.Context, id int64) (ports.CampaignView, error) {
	return s.transition(ctx, id, model.AuditCampaignPaused, "paused", func(c *model.Campaign) error { return c.Pause(s.now()) })
}

// ResumeCampaign implements ports.CampaignAdmin.
// The worker wakes: a wave that finished while paused starts at once.
func (s *Service) ResumeCampaign(ctx context.Context, id int64) (ports.CampaignView, error) {
	v, err := s.transition(ctx, id, model.AuditCampaignResumed, "resumed", func(c *model.Campaign) error { return c.Resume(s.now()) })
	if err == nil {
		s.wakeCampaigns()
	}
	return v, err
}

func (s *Service) transition(ctx context.Context, id int64, kind model.AuditKind, word string, step func(*model.Campaign) error) (ports.CampaignView, error) {
	repo, err := s.campaigns()
	if err != nil {
		return ports.CampaignView{}, err
	}
	c, err := repo.UpdateCampaign(ctx, id, func(c *model.Campaign) ([]model.AuditEntry, error) {
		if err := step(c); err != nil {
			return nil, err
		}
		return s.audited(s.campaignEntry(ctx, kind, *c, word)), nil
	})
	if err != nil {
		return ports.CampaignView{}, fmt.Errorf("campaign %d: %w", id, err)
	}
	return s.view(ctx, c)
}

// AbortCampaign implements ports.CampaignAdmin: the campaign ends; with
// rollback_on_abort its failed and still-pending assigned members lose the
// target (and are nudged back to the released firmware).
func (s *Service) AbortCampaign(ctx context.Context, id int64) (ports.CampaignView, error) {
	c, err := s.abort(ctx, id, "aborted by an admin", nil)
	if err != nil {
		return ports.CampaignView{}, err
	}
	s.drainNudges(ctx, c)
	return s.view(ctx, c)
}

// abort aborts campaign id for reason. When recheck is set it runs on the
// locked campaign first and the abort happens only when it still says so
// (errNoAbort otherwise).
func (s *Service) abort(ctx context.Context, id int64, reason string, recheck func(model.Campaign) bool) (model.Campaign, error) {
	repo, err := s.campaigns()
	if err != nil {
		return model.Campaign{}, err
	}
	var rollback bool
	cur, err := repo.GetCampaign(ctx, id)
	if err != nil {
		return model.Campaign{}, fmt.Errorf("campaign %d: %w", id, err)
	}
	rollback = cur.RollbackOnAbort
	c, n, err := repo.AbortCampaign(ctx, id, rollback, func(c *model.Campaign) ([]model.AuditEntry, error) {
		if recheck != nil && !recheck(*c) {
			return nil, errNoAbort
		}
		if err := c.Abort(reason, s.now()); err != nil {
			return nil, err
		}
		detail := "aborted: " + reason
		if c.RollbackOnAbort {
			detail += " (failed and pending members rolled back)"
		}
		return s.audited(s.campaignEntry(ctx, model.AuditCampaignAborted, *c, detail)), nil
	})
	if err != nil {
		return model.Campaign{}, fmt.Errorf("campaign %d: abort: %w", id, err)
	}
	s.onCampaign(ctx, CampaignEvent{Campaign: c, Step: "aborted", Members: n})
	return c, nil
}

var errNoAbort = errors.New("campaign no longer to abort")

// observeCampaignReport records a device's state report on its member of
// its most recent campaign and resolves it (model.CampaignMember.Observe);
// a failure that takes the wave over the failure ratio aborts the
// campaign at once (SPEC §16: checked as reports arrive).
func (s *Service) observeCampaignReport(ctx context.Context, d model.Device, r model.StateReport) error {
	if s.d.Campaigns == nil {
		return nil
	}
	var resolved bool
	c, m, found, err := s.d.Campaigns.ObserveReport(ctx, d.ID, func(c model.Campaign, m *model.CampaignMember) {
		resolved = m.Observe(c, r)
	})
	if err != nil || !found {
		return err
	}
	// A failed member checks the ratio on every report, not only the one
	// that resolved it: a check that failed is retried with the device's
	// next report.
	if m.State == model.MemberFailed && !c.State.Finished() {
		if err := s.checkFailureRatio(ctx, c, m.Wave); err != nil {
			return err
		}
	}
	if resolved {
		s.wakeOnWaveDone(ctx, c, m.Wave)
	}
	return nil
}

// wakeOnWaveDone wakes the worker when the report that just resolved a
// member of wave left none of it pending and the wave is c's current one
// (c running): the next wave (or the completion) need not wait for a tick.
// The probe runs after the report's commit, so of two reports resolving a
// wave's last two members concurrently the later probe sees both: at least
// one of them wakes. A failed probe only leaves it to the tick.
func (s *Service) wakeOnWaveDone(ctx context.Context, c model.Campaign, wave int) {
	if c.State != model.CampaignRunning || wave != c.CurrentWave {
		return
	}
	pending, err := s.d.Campaigns.WavePending(ctx, c.ID, wave)
	if err != nil {
		s.report(ctx, "campaign: probe wave", fmt.Errorf("campaign %d wave %d: %w", c.ID, wave, err))
		return
	}
	if !pending {
		s.wakeCampaigns()
	}
}

// checkFailureRatio aborts c when wave's failed members are more than its
// max_failure_ratio.
func (s *Service) checkFailureRatio(ctx context.Context, c model.Campaign, wave int) error {
	wc, err := s.d.Campaigns.WaveCount(ctx, c.ID, wave)
	if err != nil {
		return fmt.Errorf("campaign %d: count wave %d: %w", c.ID, wave, err)
	}
	if !wc.OverFailureRatio(c.MaxFailureRatio) {
		return nil
	}
	ctx = model.WithActor(ctx, model.SystemActor(campaignWorkerName))
	c, err = s.abort(ctx, c.ID, wc.FailureReason(c.MaxFailureRatio), func(c model.Campaign) bool {
		return !c.State.Finished()
	})
	if errors.Is(err, errNoAbort) || errors.Is(err, model.ErrConflict) {
		return nil // another report or the worker aborted it first
	}
	if err != nil {
		return err
	}
	s.drainNudges(ctx, c)
	return nil
}
