package portstest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

var (
	_ ports.CoredumpRepo = (*Store)(nil)
	_ ports.FirmwareELFs = (*Store)(nil)
)

func cloneCoredump(c model.Coredump) model.Coredump {
	c.AnalysedAt = cloneTime(c.AnalysedAt)
	c.ClaimedUntil = cloneTime(c.ClaimedUntil)
	if c.Analysis != nil {
		a := *c.Analysis
		a.Frames = slices.Clone(a.Frames)
		a.Notes = slices.Clone(a.Notes)
		c.Analysis = &a
	}
	return c
}

// withDevice fills in what the database joins: the device's model code and
// client id. Call with s.mu held.
func (s *Store) withDevice(c model.Coredump) model.Coredump {
	if d, ok := s.devices[c.DeviceID]; ok {
		c.ModelCode = d.ModelCode
		c.ClientID = model.ClientID(d.ModelCode, d.Key)
	}
	return cloneCoredump(c)
}

// CreateCoredump implements ports.CoredumpRepo.
func (s *Store) CreateCoredump(_ context.Context, c *model.Coredump, keep int, audit []model.AuditEntry) ([]model.Coredump, error) {
	if err := s.hook("CreateCoredump"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[c.DeviceID]
	if !ok {
		return nil, fmt.Errorf("device %d: %w", c.DeviceID, model.ErrNotFound)
	}
	c.ID = s.id()
	c.DeviceModelID = d.DeviceModelID
	if c.ReceivedAt.IsZero() {
		c.ReceivedAt = s.now()
	}
	c.ReceivedAt = us(c.ReceivedAt)
	s.dumps[c.ID] = cloneCoredump(*c)
	*c = s.withDevice(*c)
	var mine []model.Coredump
	for _, o := range s.dumps {
		if o.DeviceID == c.DeviceID {
			mine = append(mine, o)
		}
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].ID > mine[j].ID })
	var evicted []model.Coredump
	for _, o := range mine[min(keep, len(mine)):] {
		delete(s.dumps, o.ID)
		evicted = append(evicted, s.withDevice(o))
	}
	for i := range audit {
		audit[i].ClientID = c.ClientID
	}
	s.audit.commit(audit, c.DeviceID, c.DeviceModelID)
	return evicted, nil
}

// GetCoredump implements ports.CoredumpRepo.
func (s *Store) GetCoredump(_ context.Context, id int64) (model.Coredump, error) {
	if err := s.hook("GetCoredump"); err != nil {
		return model.Coredump{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.dumps[id]
	if !ok {
		return model.Coredump{}, fmt.Errorf("core dump %d: %w", id, model.ErrNotFound)
	}
	return s.withDevice(c), nil
}

// ListCoredumps implements ports.CoredumpRepo.
func (s *Store) ListCoredumps(_ context.Context, deviceID int64, limit int, beforeID int64) (ports.CoredumpPage, error) {
	if err := s.hook("ListCoredumps"); err != nil {
		return ports.CoredumpPage{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []model.Coredump
	for _, c := range s.dumps {
		if c.DeviceID == deviceID && (beforeID <= 0 || c.ID < beforeID) {
			all = append(all, s.withDevice(c))
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID > all[j].ID })
	page := ports.CoredumpPage{Coredumps: all}
	if n := ports.PageLimit(limit); len(all) > n {
		page.Coredumps = all[:n]
		page.NextBeforeID = all[n-1].ID
	}
	return page, nil
}

// DeleteCoredump implements ports.CoredumpRepo.
func (s *Store) DeleteCoredump(_ context.Context, id int64, audit []model.AuditEntry) (model.Coredump, error) {
	if err := s.hook("DeleteCoredump"); err != nil {
		return model.Coredump{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.dumps[id]
	if !ok {
		return model.Coredump{}, fmt.Errorf("core dump %d: %w", id, model.ErrNotFound)
	}
	out := s.withDevice(c)
	delete(s.dumps, id)
	for i := range audit {
		audit[i].ClientID = out.ClientID
	}
	s.audit.commit(audit, c.DeviceID, c.DeviceModelID)
	return out, nil
}

// CoredumpBlobInUse implements ports.CoredumpRepo.
func (s *Store) CoredumpBlobInUse(_ context.Context, modelCode, sha256 string) (bool, error) {
	if err := s.hook("CoredumpBlobInUse"); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.dumps {
		if c.SHA256 == sha256 && s.withDevice(c).ModelCode == modelCode {
			return true, nil
		}
	}
	return false, nil
}

// ClaimCoredumps implements ports.CoredumpRepo.
func (s *Store) ClaimCoredumps(_ context.Context, now, until time.Time, n int) ([]model.Coredump, error) {
	if err := s.hook("ClaimCoredumps"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now = us(now)
	var ids []int64
	for id, c := range s.dumps {
		if c.Status == model.CoredumpPending && (c.ClaimedUntil == nil || !c.ClaimedUntil.After(now)) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var out []model.Coredump
	for _, id := range ids[:min(n, len(ids))] {
		c := s.dumps[id]
		u := us(until)
		c.ClaimedUntil = &u
		c.Attempts++
		s.dumps[id] = c
		out = append(out, s.withDevice(c))
	}
	return out, nil
}

// UpdateCoredump implements ports.CoredumpRepo.
func (s *Store) UpdateCoredump(_ context.Context, id int64, fn func(*model.Coredump) error) (model.Coredump, error) {
	if err := s.hook("UpdateCoredump"); err != nil {
		return model.Coredump{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.dumps[id]
	if !ok {
		return model.Coredump{}, fmt.Errorf("core dump %d: %w", id, model.ErrNotFound)
	}
	c := s.withDevice(cur)
	if err := fn(&c); err != nil {
		return model.Coredump{}, err
	}
	cur.Status, cur.Reason, cur.ELFSHA256, cur.FirmwareVersion = c.Status, c.Reason, c.ELFSHA256, c.FirmwareVersion
	cur.Analysis, cur.AnalysedAt, cur.ClaimedUntil = c.Analysis, c.AnalysedAt, c.ClaimedUntil
	if cur.AnalysedAt != nil {
		t := us(*cur.AnalysedAt)
		cur.AnalysedAt = &t
	}
	if cur.ClaimedUntil != nil {
		t := us(*cur.ClaimedUntil)
		cur.ClaimedUntil = &t
	}
	s.dumps[id] = cloneCoredump(cur)
	return s.withDevice(cur), nil
}

// RequeueCoredumps implements ports.CoredumpRepo.
func (s *Store) RequeueCoredumps(_ context.Context, modelID int64, elfSHA256 string) (int, error) {
	if err := s.hook("RequeueCoredumps"); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, c := range s.dumps {
		if c.DeviceModelID == modelID && c.Status == model.CoredumpNoELF &&
			c.Info.ELFSHA256Prefix != "" && strings.HasPrefix(elfSHA256, c.Info.ELFSHA256Prefix) {
			c.Status, c.Reason, c.ClaimedUntil = model.CoredumpPending, "", nil
			s.dumps[id] = c
			n++
		}
	}
	return n, nil
}

// CrashGroups implements ports.CoredumpRepo.
func (s *Store) CrashGroups(_ context.Context, modelID int64, since time.Time) ([]model.CrashGroup, error) {
	if err := s.hook("CrashGroups"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	type key struct{ fn, version string }
	groups := map[key]*model.CrashGroup{}
	for _, c := range s.dumps {
		if c.DeviceModelID != modelID || c.Status != model.CoredumpAnalysed || c.Analysis == nil || c.ReceivedAt.Before(us(since)) {
			continue
		}
		f, _ := c.Analysis.CrashFrame()
		k := key{f.Function, c.FirmwareVersion}
		g := groups[k]
		if g == nil {
			g = &model.CrashGroup{Function: f.Function, FirmwareVersion: c.FirmwareVersion}
			groups[k] = g
		}
		g.Count++
		if c.ID > g.LastID {
			g.LastID, g.LastAt = c.ID, c.ReceivedAt
		}
	}
	out := make([]model.CrashGroup, 0, len(groups))
	for _, g := range groups {
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].LastID > out[j].LastID
	})
	return out, nil
}

// CoredumpCounts implements ports.CoredumpRepo.
func (s *Store) CoredumpCounts(_ context.Context) ([]ports.CoredumpCount, error) {
	if err := s.hook("CoredumpCounts"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	counts := map[ports.CoredumpCount]int{}
	for _, c := range s.dumps {
		counts[ports.CoredumpCount{ModelCode: s.withDevice(c).ModelCode, Status: c.Status}]++
	}
	out := make([]ports.CoredumpCount, 0, len(counts))
	for k, n := range counts {
		k.Count = n
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ModelCode != out[j].ModelCode {
			return out[i].ModelCode < out[j].ModelCode
		}
		return out[i].Status < out[j].Status
	})
	return out, nil
}

// MarkELFStored implements ports.FirmwareELFs.
func (s *Store) MarkELFStored(_ context.Context, modelID int64, elfSHA256 string) (int, error) {
	if err := s.hook("MarkELFStored"); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for i, f := range s.firmware[modelID] {
		if f.ELFSHA256 == elfSHA256 && !f.HasELF {
			s.firmware[modelID][i].HasELF = true
			n++
		}
	}
	return n, nil
}

// FirmwareByELF implements ports.FirmwareELFs.
func (s *Store) FirmwareByELF(_ context.Context, modelID int64, prefix string) (model.Firmware, error) {
	if err := s.hook("FirmwareByELF"); err != nil {
		return model.Firmware{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.firmwareNewestFirst(modelID) {
		if f.HasELF && f.ELFSHA256 != "" && strings.HasPrefix(f.ELFSHA256, prefix) {
			return f, nil
		}
	}
	return model.Firmware{}, fmt.Errorf("firmware of device model %d with the ELF %q: %w", modelID, prefix, model.ErrNotFound)
}
