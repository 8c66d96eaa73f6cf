package portstest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The Store's ports.CampaignRepo (SPEC §16), over the devices' Tags and
// AssignedFirmwareID.

var _ ports.CampaignRepo = (*Store)(nil)

type nudgeKind int

const (
	nudgeNone nudgeKind = iota
	nudgeAssign
	nudgeRollback
)

type memberRec struct {
	m     model.CampaignMember
	nudge nudgeKind
}

// campaignData is guarded by the Store's mu and then its own mu, in this
// order; ActiveCampaign takes its mu alone, so that a release gate may ask
// it inside RecordFirmware's check (which runs with the Store locked).
type campaignData struct {
	mu        sync.Mutex
	campaigns map[int64]model.Campaign
	members   map[int64]map[int64]*memberRec // campaign -> device -> member
}

func newCampaignData() *campaignData {
	return &campaignData{campaigns: map[int64]model.Campaign{}, members: map[int64]map[int64]*memberRec{}}
}

// cd returns the campaign data; its mu must be held.
func (s *Store) cd() *campaignData { return s.camp }

// lockCampaigns locks the Store and its campaigns and returns the unlock.
func (s *Store) lockCampaigns() func() {
	s.mu.Lock()
	s.camp.mu.Lock()
	return func() {
		s.camp.mu.Unlock()
		s.mu.Unlock()
	}
}

// SetDeviceTags sets a device's tags (what a campaign selector matches).
func (s *Store) SetDeviceTags(deviceID int64, tags ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.devices[deviceID]; ok {
		d.Tags = slices.Clone(tags)
		s.devices[deviceID] = d
	}
}

// AssignedFirmware is the firmware id assigned to the device (0 when
// none).
func (s *Store) AssignedFirmware(deviceID int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.devices[deviceID]; ok && d.AssignedFirmwareID != nil {
		return *d.AssignedFirmwareID
	}
	return 0
}

// setAssigned sets (or, with 0, clears) a device's assigned firmware.
// s.mu must be held.
func (s *Store) setAssigned(deviceID, firmwareID int64) {
	d, ok := s.devices[deviceID]
	if !ok {
		return
	}
	if firmwareID == 0 {
		d.AssignedFirmwareID = nil
	} else {
		d.AssignedFirmwareID = &firmwareID
	}
	s.devices[deviceID] = d
}

func cloneCampaign(c model.Campaign) model.Campaign {
	c.SelectorTags = slices.Clone(c.SelectorTags)
	c.Waves = slices.Clone(c.Waves)
	c.WaveStartedAt = slices.Clone(c.WaveStartedAt)
	c.FinishedAt = cloneTime(c.FinishedAt)
	return c
}

func cloneMember(m model.CampaignMember) model.CampaignMember {
	m.AssignedAt = cloneTime(m.AssignedAt)
	m.ResolvedAt = cloneTime(m.ResolvedAt)
	m.ReportedAt = cloneTime(m.ReportedAt)
	if m.ReportedOTA != nil {
		o := *m.ReportedOTA
		m.ReportedOTA = &o
	}
	return m
}

func activeState(st model.CampaignState) bool {
	return st == model.CampaignRunning || st == model.CampaignPaused
}

// CreateCampaign implements ports.CampaignRepo.
func (s *Store) CreateCampaign(_ context.Context, c *model.Campaign, waveOf func(int64, string) int, audit []model.AuditEntry) error {
	if err := s.hook("CreateCampaign"); err != nil {
		return err
	}
	defer s.lockCampaigns()()
	cd := s.cd()
	if _, ok := s.models[c.DeviceModelID]; !ok {
		return fmt.Errorf("device model %d: %w", c.DeviceModelID, model.ErrNotFound)
	}
	for _, o := range cd.campaigns {
		if o.DeviceModelID == c.DeviceModelID && activeState(o.State) {
			return model.Conflict("device model %d has a %s campaign (%d)", c.DeviceModelID, o.State, o.ID)
		}
	}
	now := s.now()
	c.ID = s.id()
	c.CreatedAt, c.UpdatedAt = now, now
	members := map[int64]*memberRec{}
	for _, d := range s.devices {
		if d.DeviceModelID != c.DeviceModelID || !d.Active {
			continue
		}
		if !containsAll(d.Tags, c.SelectorTags) {
			continue
		}
		members[d.ID] = &memberRec{m: model.CampaignMember{
			CampaignID: c.ID, DeviceID: d.ID, Key: d.Key, ClientID: d.ClientID(),
			Wave: waveOf(c.ID, d.Key), State: model.MemberPending,
		}}
	}
	c.Members = len(members)
	cd.campaigns[c.ID] = cloneCampaign(*c)
	cd.members[c.ID] = members
	s.audit.commit(audit, 0, c.DeviceModelID)
	return nil
}

func containsAll(have, want []string) bool {
	for _, t := range want {
		if !slices.Contains(have, t) {
			return false
		}
	}
	return true
}

// GetCampaign implements ports.CampaignRepo.
func (s *Store) GetCampaign(_ context.Context, id int64) (model.Campaign, error) {
	if err := s.hook("GetCampaign"); err != nil {
		return model.Campaign{}, err
	}
	defer s.lockCampaigns()()
	c, ok := s.cd().campaigns[id]
	if !ok {
		return model.Campaign{}, fmt.Errorf("campaign %d: %w", id, model.ErrNotFound)
	}
	return cloneCampaign(c), nil
}

// ActiveCampaign implements ports.CampaignRepo.
func (s *Store) ActiveCampaign(_ context.Context, modelID int64) (model.Campaign, error) {
	if err := s.hook("ActiveCampaign"); err != nil {
		return model.Campaign{}, err
	}
	s.camp.mu.Lock()
	defer s.camp.mu.Unlock()
	for _, c := range s.cd().campaigns {
		if c.DeviceModelID == modelID && activeState(c.State) {
			return cloneCampaign(c), nil
		}
	}
	return model.Campaign{}, fmt.Errorf("active campaign of device model %d: %w", modelID, model.ErrNotFound)
}

// ListCampaigns implements ports.CampaignRepo.
func (s *Store) ListCampaigns(_ context.Context, f ports.CampaignFilter) (ports.CampaignPage, error) {
	if err := s.hook("ListCampaigns"); err != nil {
		return ports.CampaignPage{}, err
	}
	defer s.lockCampaigns()()
	limit := ports.PageLimit(f.Limit)
	var match []model.Campaign
	for _, c := range s.cd().campaigns {
		if c.ID > f.AfterID && (f.ModelID == nil || c.DeviceModelID == *f.ModelID) && (f.State == nil || c.State == *f.State) {
			match = append(match, cloneCampaign(c))
		}
	}
	sort.Slice(match, func(i, j int) bool { return match[i].ID < match[j].ID })
	var p ports.CampaignPage
	if len(match) > limit {
		match = match[:limit]
		p.NextAfterID = match[limit-1].ID
	}
	p.Campaigns = match
	return p, nil
}

// RunningCampaigns implements ports.CampaignRepo.
func (s *Store) RunningCampaigns(_ context.Context) ([]model.Campaign, error) {
	if err := s.hook("RunningCampaigns"); err != nil {
		return nil, err
	}
	defer s.lockCampaigns()()
	var out []model.Campaign
	for _, c := range s.cd().campaigns {
		if c.State == model.CampaignRunning {
			out = append(out, cloneCampaign(c))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// CampaignCounts implements ports.CampaignRepo.
func (s *Store) CampaignCounts(_ context.Context) (map[model.CampaignState]int, error) {
	if err := s.hook("CampaignCounts"); err != nil {
		return nil, err
	}
	defer s.lockCampaigns()()
	out := map[model.CampaignState]int{}
	for _, st := range model.CampaignStates {
		out[st] = 0
	}
	for _, c := range s.cd().campaigns {
		out[c.State]++
	}
	return out, nil
}

// ListMembers implements ports.CampaignRepo.
func (s *Store) ListMembers(_ context.Context, f ports.MemberFilter) (ports.MemberPage, error) {
	if err := s.hook("ListMembers"); err != nil {
		return ports.MemberPage{}, err
	}
	defer s.lockCampaigns()()
	if _, ok := s.cd().campaigns[f.CampaignID]; !ok {
		return ports.MemberPage{}, fmt.Errorf("campaign %d: %w", f.CampaignID, model.ErrNotFound)
	}
	limit := ports.PageLimit(f.Limit)
	var match []model.CampaignMember
	for _, r := range s.cd().members[f.CampaignID] {
		if r.m.DeviceID > f.AfterID && (f.State == nil || r.m.State == *f.State) {
			match = append(match, cloneMember(r.m))
		}
	}
	sort.Slice(match, func(i, j int) bool { return match[i].DeviceID < match[j].DeviceID })
	var p ports.MemberPage
	if len(match) > limit {
		match = match[:limit]
		p.NextAfterID = match[limit-1].DeviceID
	}
	p.Members = match
	return p, nil
}

// waveCount counts wave w of campaign id. s.mu must be held.
func (s *Store) waveCount(id int64, w int) model.WaveCount {
	wc := model.WaveCount{Wave: w}
	for _, r := range s.cd().members[id] {
		if r.m.Wave != w {
			continue
		}
		wc.Add(r.m.State, 1)
		if r.m.State == model.MemberSucceeded && r.m.ResolvedAt != nil &&
			(wc.LastSuccessAt == nil || r.m.ResolvedAt.After(*wc.LastSuccessAt)) {
			wc.LastSuccessAt = cloneTime(r.m.ResolvedAt)
		}
	}
	return wc
}

// WaveCounts implements ports.CampaignRepo.
func (s *Store) WaveCounts(_ context.Context, id int64) ([]model.WaveCount, error) {
	if err := s.hook("WaveCounts"); err != nil {
		return nil, err
	}
	defer s.lockCampaigns()()
	c, ok := s.cd().campaigns[id]
	if !ok {
		return nil, fmt.Errorf("campaign %d: %w", id, model.ErrNotFound)
	}
	out := make([]model.WaveCount, len(c.Waves))
	for w := range c.Waves {
		out[w] = s.waveCount(id, w)
	}
	return out, nil
}

// WaveCount implements ports.CampaignRepo.
func (s *Store) WaveCount(_ context.Context, id int64, wave int) (model.WaveCount, error) {
	if err := s.hook("WaveCount"); err != nil {
		return model.WaveCount{}, err
	}
	defer s.lockCampaigns()()
	if _, ok := s.cd().campaigns[id]; !ok {
		return model.WaveCount{}, fmt.Errorf("campaign %d: %w", id, model.ErrNotFound)
	}
	return s.waveCount(id, wave), nil
}

// WavePending implements ports.CampaignRepo.
func (s *Store) WavePending(_ context.Context, id int64, wave int) (bool, error) {
	if err := s.hook("WavePending"); err != nil {
		return false, err
	}
	defer s.lockCampaigns()()
	if _, ok := s.cd().campaigns[id]; !ok {
		return false, fmt.Errorf("campaign %d: %w", id, model.ErrNotFound)
	}
	return s.waveCount(id, wave).Pending > 0, nil
}

// updateCampaign runs fn on a copy of campaign id and stores it when fn
// succeeds. s.mu must be held.
func (s *Store) updateCampaign(id int64, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, model.Campaign, []model.AuditEntry, error) {
	cur, ok := s.cd().campaigns[id]
	if !ok {
		return model.Campaign{}, model.Campaign{}, nil, fmt.Errorf("campaign %d: %w", id, model.ErrNotFound)
	}
	c := cloneCampaign(cur)
	entries, err := fn(&c)
	if err != nil {
		return model.Campaign{}, model.Campaign{}, nil, err
	}
	// What fn may not change.
	c.ID, c.DeviceModelID, c.FirmwareID, c.FirmwareSHA256, c.FirmwareVersion = cur.ID, cur.DeviceModelID, cur.FirmwareID, cur.FirmwareSHA256, cur.FirmwareVersion
	c.Waves, c.SelectorTags, c.Members, c.CreatedAt, c.CreatedBy = cur.Waves, cur.SelectorTags, cur.Members, cur.CreatedAt, cur.CreatedBy
	c.UpdatedAt = s.now()
	return cur, c, entries, nil
}

// UpdateCampaign implements ports.CampaignRepo.
func (s *Store) UpdateCampaign(_ context.Context, id int64, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, error) {
	if err := s.hook("UpdateCampaign"); err != nil {
		return model.Campaign{}, err
	}
	defer s.lockCampaigns()()
	cur, c, entries, err := s.updateCampaign(id, fn)
	if err != nil {
		return model.Campaign{}, err
	}
	// Waves start and members roll back through their own methods.
	c.CurrentWave, c.WaveStartedAt = cur.CurrentWave, cur.WaveStartedAt
	s.cd().campaigns[id] = cloneCampaign(c)
	s.audit.commit(entries, 0, c.DeviceModelID)
	return c, nil
}

// StartWave implements ports.CampaignRepo.
func (s *Store) StartWave(_ context.Context, id int64, at time.Time, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, int, error) {
	if err := s.hook("StartWave"); err != nil {
		return model.Campaign{}, 0, err
	}
	defer s.lockCampaigns()()
	cur, c, entries, err := s.updateCampaign(id, fn)
	if err != nil {
		return model.Campaign{}, 0, err
	}
	if c.CurrentWave != cur.CurrentWave+1 {
		return model.Campaign{}, 0, model.Conflict("campaign %d: wave %d is not the next after %d", id, c.CurrentWave, cur.CurrentWave)
	}
	if err := s.hook("StartWave.commit"); err != nil {
		return model.Campaign{}, 0, err
	}
	n := 0
	for _, r := range s.cd().members[id] {
		if r.m.Wave != c.CurrentWave || r.m.State != model.MemberPending || r.m.AssignedAt != nil {
			continue
		}
		t := at
		r.m.AssignedAt = &t
		r.nudge = nudgeAssign
		s.setAssigned(r.m.DeviceID, c.FirmwareID)
		n++
	}
	s.cd().campaigns[id] = cloneCampaign(c)
	s.audit.commit(entries, 0, c.DeviceModelID)
	return c, n, nil
}

// AbortCampaign implements ports.CampaignRepo.
func (s *Store) AbortCampaign(_ context.Context, id int64, rollback bool, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, int, error) {
	if err := s.hook("AbortCampaign"); err != nil {
		return model.Campaign{}, 0, err
	}
	defer s.lockCampaigns()()
	cur, c, entries, err := s.updateCampaign(id, fn)
	if err != nil {
		return model.Campaign{}, 0, err
	}
	c.CurrentWave, c.WaveStartedAt = cur.CurrentWave, cur.WaveStartedAt
	n := 0
	if rollback {
		for _, r := range s.cd().members[id] {
			if r.m.AssignedAt == nil || (r.m.State != model.MemberFailed && r.m.State != model.MemberPending) {
				continue
			}
			if d, ok := s.devices[r.m.DeviceID]; ok && d.AssignedFirmwareID != nil && *d.AssignedFirmwareID == c.FirmwareID {
				s.setAssigned(r.m.DeviceID, 0)
			}
			r.nudge = nudgeRollback
			n++
		}
	}
	s.cd().campaigns[id] = cloneCampaign(c)
	s.audit.commit(entries, 0, c.DeviceModelID)
	return c, n, nil
}

// TimeOutMembers implements ports.CampaignRepo.
func (s *Store) TimeOutMembers(_ context.Context, c model.Campaign, wave int, assignedBefore, at time.Time) (int, error) {
	if err := s.hook("TimeOutMembers"); err != nil {
		return 0, err
	}
	defer s.lockCampaigns()()
	n := 0
	for _, r := range s.cd().members[c.ID] {
		if r.m.Wave != wave || r.m.State != model.MemberPending || r.m.AssignedAt == nil || us(*r.m.AssignedAt).After(us(assignedBefore)) {
			continue
		}
		r.m.State = r.m.TimeoutState(c)
		t := at
		r.m.ResolvedAt = &t
		n++
	}
	return n, nil
}

// OwedNudges implements ports.CampaignRepo.
func (s *Store) OwedNudges(_ context.Context, id int64, limit int) ([]model.CampaignNudge, error) {
	if err := s.hook("OwedNudges"); err != nil {
		return nil, err
	}
	defer s.lockCampaigns()()
	var out []model.CampaignNudge
	for _, r := range s.cd().members[id] {
		if r.nudge != nudgeNone {
			out = append(out, model.CampaignNudge{CampaignID: id, DeviceID: r.m.DeviceID, ClientID: r.m.ClientID, Rollback: r.nudge == nudgeRollback})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DeviceID < out[j].DeviceID })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// NudgesSent implements ports.CampaignRepo.
func (s *Store) NudgesSent(_ context.Context, id int64, sent []model.CampaignNudge) error {
	if err := s.hook("NudgesSent"); err != nil {
		return err
	}
	defer s.lockCampaigns()()
	for _, n := range sent {
		kind := nudgeAssign
		if n.Rollback {
			kind = nudgeRollback
		}
		if r, ok := s.cd().members[id][n.DeviceID]; ok && r.nudge == kind {
			r.nudge = nudgeNone
		}
	}
	return nil
}

// ObserveReport implements ports.CampaignRepo.
func (s *Store) ObserveReport(_ context.Context, deviceID int64, fn func(model.Campaign, *model.CampaignMember)) (model.Campaign, model.CampaignMember, bool, error) {
	if err := s.hook("ObserveReport"); err != nil {
		return model.Campaign{}, model.CampaignMember{}, false, err
	}
	defer s.lockCampaigns()()
	var latest int64
	for cid, ms := range s.cd().members {
		if _, ok := ms[deviceID]; ok && cid > latest {
			latest = cid
		}
	}
	if latest == 0 {
		return model.Campaign{}, model.CampaignMember{}, false, nil
	}
	c := cloneCampaign(s.cd().campaigns[latest])
	r := s.cd().members[latest][deviceID]
	m := cloneMember(r.m)
	fn(c, &m)
	// Only the report and the state are the closure's to change.
	r.m.ReportedVersion, r.m.ReportedOTAState, r.m.ReportedOTA, r.m.ReportedAt = m.ReportedVersion, m.ReportedOTAState, m.ReportedOTA, m.ReportedAt
	r.m.State, r.m.ResolvedAt = m.State, m.ResolvedAt
	return c, cloneMember(r.m), true, nil
}
