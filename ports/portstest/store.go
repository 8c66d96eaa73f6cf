package portstest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Store is an in-memory ports.ModelRepo, ports.DeviceRepo (with its
// ports.RotationQueue) and ports.FirmwareRepo in one, so that deleting a
// model sees its devices and recording firmware updates the model, as a
// database does. The rotation queue compares times at the microsecond
// precision PostgreSQL keeps.
//
// Update closures run while the store is locked (like a row lock): they
// must not call back into the Store.
type Store struct {
	// Hook, when set, is called with the method name ("CreateDevice",
	// "GetModel", ...) before each operation; a non-nil result fails the
	// operation with that error and changes nothing. UpdateDevice also
	// calls it with "UpdateDevice.commit" after fn ran and before the
	// result is stored: a failure there is a commit that failed. Set it
	// before use.
	Hook func(op string) error

	now func() time.Time

	mu       sync.Mutex
	nextID   int64
	models   map[int64]model.DeviceModel
	devices  map[int64]model.Device
	firmware map[int64][]model.Firmware // by model id, in upload order
	dumps    map[int64]model.Coredump
	audit    *AuditLog
	// camp holds the campaigns (campaigns.go).
	camp *campaignData
}

var (
	_ ports.ModelRepo    = (*Store)(nil)
	_ ports.DeviceRepo   = (*Store)(nil)
	_ ports.FirmwareRepo = (*Store)(nil)
	_ ports.AuditLog     = (*Store)(nil)
)

// NewStore returns an empty Store stamping times from clock (the wall clock
// when nil).
func NewStore(clock ports.Clock) *Store {
	return &Store{
		now:      nowFunc(clock),
		models:   map[int64]model.DeviceModel{},
		devices:  map[int64]model.Device{},
		firmware: map[int64][]model.Firmware{},
		dumps:    map[int64]model.Coredump{},
		audit:    NewAuditLog(clock),
		camp:     newCampaignData(),
	}
}

// Audit is the store's audit log: the audit entries of each change are
// written to it with the change.
func (s *Store) Audit() *AuditLog { return s.audit }

// AppendAudit implements ports.AuditLog on Audit().
func (s *Store) AppendAudit(ctx context.Context, entries ...model.AuditEntry) error {
	return s.audit.AppendAudit(ctx, entries...)
}

// ListAudit implements ports.AuditLog on Audit().
func (s *Store) ListAudit(ctx context.Context, f ports.AuditFilter) (ports.AuditPage, error) {
	return s.audit.ListAudit(ctx, f)
}

func (s *Store) hook(op string) error {
	if s.Hook == nil {
		return nil
	}
	return s.Hook(op)
}

func (s *Store) id() int64 {
	s.nextID++
	return s.nextID
}

func cloneRaw(r json.RawMessage) json.RawMessage {
	if r == nil {
		return nil
	}
	return bytes.Clone(r)
}

func cloneTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

func cloneModel(m model.DeviceModel) model.DeviceModel {
	m.ConfigSchema = cloneRaw(m.ConfigSchema)
	return m
}

func cloneDevice(d model.Device) model.Device {
	d.Config = cloneRaw(d.Config)
	d.SecretCreatedAt = cloneTime(d.SecretCreatedAt)
	d.LastRotationAttemptAt = cloneTime(d.LastRotationAttemptAt)
	d.LastRotationCompletedAt = cloneTime(d.LastRotationCompletedAt)
	d.LastSeenAt = cloneTime(d.LastSeenAt)
	d.NewSecretAt = cloneTime(d.NewSecretAt)
	d.IATAfter = cloneTime(d.IATAfter)
	if d.PreviousSecret != nil {
		d.PreviousSecret = bytes.Clone(d.PreviousSecret)
	}
	d.Reported = cloneReport(d.Reported)
	d.Tags = slices.Clone(d.Tags)
	if d.Tags == nil {
		d.Tags = []string{} // as the database returns it
	}
	if d.AssignedFirmwareID != nil {
		id := *d.AssignedFirmwareID
		d.AssignedFirmwareID = &id
	}
	return d
}

// cloneReport deep-copies a state report (nil stays nil).
func cloneReport(r *model.StateReport) *model.StateReport {
	if r == nil {
		return nil
	}
	c := *r
	if r.OTA != nil {
		ota := *r.OTA
		c.OTA = &ota
	}
	if r.SecureVersion != nil {
		v := *r.SecureVersion
		c.SecureVersion = &v
	}
	if r.UptimeS != nil {
		v := *r.UptimeS
		c.UptimeS = &v
	}
	if r.FreeHeap != nil {
		v := *r.FreeHeap
		c.FreeHeap = &v
	}
	if r.RSSI != nil {
		v := *r.RSSI
		c.RSSI = &v
	}
	return &c
}

// normSchema stores a JSON null schema as no schema, as a nullable column
// does.
func normSchema(r json.RawMessage) json.RawMessage {
	if len(bytes.TrimSpace(r)) == 0 || string(bytes.TrimSpace(r)) == "null" {
		return nil
	}
	return cloneRaw(r)
}

// CreateModel implements ports.ModelRepo.
func (s *Store) CreateModel(_ context.Context, m *model.DeviceModel, audit []model.AuditEntry) error {
	if err := s.hook("CreateModel"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.models {
		if o.Code == m.Code {
			return fmt.Errorf("device model code %q: %w", m.Code, model.ErrConflict)
		}
	}
	now := s.now()
	m.ID = s.id()
	m.CreatedAt, m.UpdatedAt = now, now
	m.ConfigSchema = normSchema(m.ConfigSchema)
	s.models[m.ID] = cloneModel(*m)
	s.audit.commit(audit, 0, m.ID)
	return nil
}

// GetModel implements ports.ModelRepo.
func (s *Store) GetModel(_ context.Context, id int64) (model.DeviceModel, error) {
	if err := s.hook("GetModel"); err != nil {
		return model.DeviceModel{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.models[id]
	if !ok {
		return model.DeviceModel{}, fmt.Errorf("device model %d: %w", id, model.ErrNotFound)
	}
	return cloneModel(m), nil
}

// GetModelByCode implements ports.ModelRepo.
func (s *Store) GetModelByCode(_ context.Context, code string) (model.DeviceModel, error) {
	if err := s.hook("GetModelByCode"); err != nil {
		return model.DeviceModel{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.models {
		if m.Code == code {
			return cloneModel(m), nil
		}
	}
	return model.DeviceModel{}, fmt.Errorf("device model %q: %w", code, model.ErrNotFound)
}

// ListModels implements ports.ModelRepo; models come ordered by ID.
func (s *Store) ListModels(_ context.Context) ([]model.DeviceModel, error) {
	if err := s.hook("ListModels"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]model.DeviceModel, 0, len(s.models))
	for _, m := range s.models {
		out = append(out, cloneModel(m))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// UpdateModel implements ports.ModelRepo.
func (s *Store) UpdateModel(_ context.Context, id int64, fn func(*model.DeviceModel) ([]model.AuditEntry, error)) (model.DeviceModel, error) {
	if err := s.hook("UpdateModel"); err != nil {
		return model.DeviceModel{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.models[id]
	if !ok {
		return model.DeviceModel{}, fmt.Errorf("device model %d: %w", id, model.ErrNotFound)
	}
	m := cloneModel(cur)
	entries, err := fn(&m)
	if err != nil {
		return model.DeviceModel{}, err
	}
	m.ID, m.Code, m.CreatedAt = cur.ID, cur.Code, cur.CreatedAt
	m.ConfigSchema = normSchema(m.ConfigSchema)
	m.UpdatedAt = s.now()
	s.models[id] = cloneModel(m)
	s.audit.commit(entries, 0, id)
	return m, nil
}

// DeleteModel implements ports.ModelRepo. The model's firmware history goes
// with it.
func (s *Store) DeleteModel(_ context.Context, id int64, audit []model.AuditEntry) error {
	if err := s.hook("DeleteModel"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.models[id]; !ok {
		return fmt.Errorf("device model %d: %w", id, model.ErrNotFound)
	}
	for _, d := range s.devices {
		if d.DeviceModelID == id {
			return fmt.Errorf("device model %d has devices: %w", id, model.ErrConflict)
		}
	}
	delete(s.models, id)
	delete(s.firmware, id)
	s.audit.commit(audit, 0, id)
	return nil
}

// CreateDevice implements ports.DeviceRepo. An empty RotationState is
// stored as model.RotationOK.
func (s *Store) CreateDevice(_ context.Context, d *model.Device, audit []model.AuditEntry) error {
	if err := s.hook("CreateDevice"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.models[d.DeviceModelID]
	if !ok {
		return fmt.Errorf("device model %d: %w", d.DeviceModelID, model.ErrNotFound)
	}
	for _, o := range s.devices {
		if o.Key == d.Key {
			return fmt.Errorf("device key: %w", model.ErrConflict)
		}
	}
	now := s.now()
	d.ID = s.id()
	d.ModelCode = m.Code
	d.CreatedAt, d.UpdatedAt = now, now
	if d.RotationState == "" {
		d.RotationState = model.RotationOK
	}
	d.Reported = nil // only ReportState writes a report
	s.devices[d.ID] = cloneDevice(*d)
	*d = cloneDevice(*d)
	s.audit.commit(audit, d.ID, d.DeviceModelID)
	return nil
}

// GetDevice implements ports.DeviceRepo.
func (s *Store) GetDevice(_ context.Context, id int64) (model.Device, error) {
	if err := s.hook("GetDevice"); err != nil {
		return model.Device{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[id]
	if !ok {
		return model.Device{}, fmt.Errorf("device %d: %w", id, model.ErrNotFound)
	}
	return cloneDevice(d), nil
}

// GetDeviceByKey implements ports.DeviceRepo.
func (s *Store) GetDeviceByKey(_ context.Context, key string) (model.Device, error) {
	if err := s.hook("GetDeviceByKey"); err != nil {
		return model.Device{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.devices {
		if d.Key == key {
			return cloneDevice(d), nil
		}
	}
	return model.Device{}, fmt.Errorf("device key: %w", model.ErrNotFound)
}

// ListDevices implements ports.DeviceRepo. A Limit below 1 is
// ports.DefaultPageSize, one above ports.MaxPageSize is MaxPageSize.
func (s *Store) ListDevices(_ context.Context, f ports.DeviceFilter) (ports.DevicePage, error) {
	if err := s.hook("ListDevices"); err != nil {
		return ports.DevicePage{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.page(f.Limit, f.AfterID, func(d model.Device) bool {
		return (f.ModelID == nil || d.DeviceModelID == *f.ModelID) &&
			(f.RotationState == nil || d.RotationState == *f.RotationState) &&
			(f.Active == nil || d.Active == *f.Active) &&
			(f.FirmwareVersion == nil || (d.Reported != nil && d.Reported.FirmwareVersion == *f.FirmwareVersion)) &&
			(f.SeenBefore == nil || d.LastSeenAt == nil || us(*d.LastSeenAt).Before(us(*f.SeenBefore))) &&
			hasAll(d.Tags, f.Tags)
	}), nil
}

// page is one page (by id, after afterID) of the devices keep selects,
// with the page size rules of ports.DeviceFilter. s.mu must be held.
func (s *Store) page(limit int, afterID int64, keep func(model.Device) bool) ports.DevicePage {
	limit = ports.PageLimit(limit)
	var match []model.Device
	for _, d := range s.devices {
		if d.ID > afterID && keep(d) {
			match = append(match, d)
		}
	}
	sort.Slice(match, func(i, j int) bool { return match[i].ID < match[j].ID })
	var page ports.DevicePage
	if len(match) > limit {
		match = match[:limit]
		page.NextAfterID = match[limit-1].ID
	}
	page.Devices = make([]model.Device, len(match))
	for i, d := range match {
		page.Devices[i] = cloneDevice(d)
	}
	return page
}

// UpdateDevice implements ports.DeviceRepo.
func (s *Store) UpdateDevice(_ context.Context, id int64, fn func(*model.Device) ([]model.AuditEntry, error)) (model.Device, error) {
	if err := s.hook("UpdateDevice"); err != nil {
		return model.Device{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.devices[id]
	if !ok {
		return model.Device{}, fmt.Errorf("device %d: %w", id, model.ErrNotFound)
	}
	d := cloneDevice(cur)
	entries, err := fn(&d)
	if err != nil {
		return model.Device{}, err
	}
	if err := s.hook("UpdateDevice.commit"); err != nil {
		return model.Device{}, err
	}
	d.ID, d.Key, d.DeviceModelID, d.ModelCode, d.CreatedAt = cur.ID, cur.Key, cur.DeviceModelID, cur.ModelCode, cur.CreatedAt
	d.Reported = cur.Reported
	d.AssignedFirmwareID = cur.AssignedFirmwareID
	d.UpdatedAt = s.now()
	s.devices[id] = cloneDevice(d)
	s.audit.commit(entries, id, d.DeviceModelID)
	return d, nil
}

// DeleteDevice implements ports.DeviceRepo.
func (s *Store) DeleteDevice(_ context.Context, id int64, audit []model.AuditEntry) error {
	if err := s.hook("DeleteDevice"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[id]
	if !ok {
		return fmt.Errorf("device %d: %w", id, model.ErrNotFound)
	}
	delete(s.devices, id)
	for cid, c := range s.dumps {
		if c.DeviceID == id {
			delete(s.dumps, cid) // ON DELETE CASCADE
		}
	}
	s.audit.commit(audit, id, d.DeviceModelID)
	return nil
}

// TouchLastSeen implements ports.DeviceRepo.
func (s *Store) TouchLastSeen(_ context.Context, id int64, at time.Time, minInterval time.Duration) error {
	if err := s.hook("TouchLastSeen"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[id]
	if !ok {
		return nil
	}
	if d.LastSeenAt != nil && d.LastSeenAt.After(at.Add(-minInterval)) {
		return nil
	}
	d.LastSeenAt = &at
	s.devices[id] = d
	return nil
}

// DeviceKeysExist implements ports.DeviceRepo.
func (s *Store) DeviceKeysExist(_ context.Context, keys []string) (map[string]bool, error) {
	if err := s.hook("DeviceKeysExist"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]bool{}
	for _, d := range s.devices {
		if slices.Contains(keys, d.Key) {
			out[d.Key] = true
		}
	}
	return out, nil
}

// ReportState implements ports.DeviceRepo.
func (s *Store) ReportState(_ context.Context, id int64, report model.StateReport, audit func(*model.StateReport) []model.AuditEntry) error {
	if err := s.hook("ReportState"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[id]
	if !ok {
		return fmt.Errorf("device %d: %w", id, model.ErrNotFound)
	}
	entries := audit(cloneReport(d.Reported))
	d.Reported = cloneReport(&report)
	if at := report.At; d.LastSeenAt == nil || d.LastSeenAt.Before(at) {
		d.LastSeenAt = &at
	}
	s.devices[id] = d
	s.audit.commit(entries, id, d.DeviceModelID)
	return nil
}

// FirmwareCounts implements ports.FleetStats.
func (s *Store) FirmwareCounts(_ context.Context) ([]model.FirmwareCount, error) {
	if err := s.hook("FirmwareCounts"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	type key struct {
		model   int64
		version string
	}
	counts := map[key]int{}
	for _, d := range s.devices {
		if !d.Active {
			continue
		}
		k := key{model: d.DeviceModelID}
		if d.Reported != nil {
			k.version = d.Reported.FirmwareVersion
		}
		counts[k]++
	}
	out := make([]model.FirmwareCount, 0, len(counts))
	for k, n := range counts {
		out = append(out, model.FirmwareCount{ModelID: k.model, ModelCode: s.models[k.model].Code, Version: k.version, Devices: n})
	}
	slices.SortFunc(out, func(a, b model.FirmwareCount) int {
		if c := strings.Compare(a.ModelCode, b.ModelCode); c != 0 {
			return c
		}
		return strings.Compare(a.Version, b.Version)
	})
	return out, nil
}

// StaleCounts implements ports.FleetStats.
func (s *Store) StaleCounts(_ context.Context, before time.Time) (map[string]int, error) {
	if err := s.hook("StaleCounts"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.models))
	for _, m := range s.models {
		out[m.Code] = 0
	}
	for _, d := range s.devices {
		seen := d.CreatedAt
		if d.LastSeenAt != nil {
			seen = *d.LastSeenAt
		}
		if d.Active && us(seen).Before(us(before)) {
			out[s.models[d.DeviceModelID].Code]++
		}
	}
	return out, nil
}

// RecordFirmware implements ports.FirmwareRepo.
func (s *Store) RecordFirmware(_ context.Context, f *model.Firmware, check func(ports.FirmwareHeads) ([]model.AuditEntry, error)) error {
	if err := s.hook("RecordFirmware"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.models[f.DeviceModelID]
	if !ok {
		return fmt.Errorf("device model %d: %w", f.DeviceModelID, model.ErrNotFound)
	}
	var entries []model.AuditEntry
	if check != nil {
		var err error
		if entries, err = check(s.heads(m.ID)); err != nil {
			return err
		}
	}
	f.ID = s.id()
	if f.ReleasedAt != nil {
		at := s.releaseTime(m.ID)
		f.ReleasedAt = &at
		m.FirmwareVersion = f.Version
		m.UpdatedAt = s.now()
		s.models[m.ID] = m
	}
	s.audit.commit(entries, 0, m.ID)
	s.firmware[m.ID] = append(s.firmware[m.ID], cloneFirmware(*f))
	return nil
}

// cloneFirmware deep-copies f.
func cloneFirmware(f model.Firmware) model.Firmware {
	f.ReleasedAt = cloneTime(f.ReleasedAt)
	if f.ReleasedAt != nil {
		*f.ReleasedAt = us(*f.ReleasedAt)
	}
	return f
}

// releaseTime is the time of a release of the model now: now, but never
// before a microsecond after its latest release (as the Postgres adapter
// does). s.mu must be held.
func (s *Store) releaseTime(modelID int64) time.Time {
	at := us(s.now())
	if r, ok := model.ReleasedIn(s.firmware[modelID]); ok && !at.After(*r.ReleasedAt) {
		at = r.ReleasedAt.Add(time.Microsecond)
	}
	return at
}

// heads are the model's released and newest uploads. s.mu must be held.
func (s *Store) heads(modelID int64) ports.FirmwareHeads {
	var h ports.FirmwareHeads
	if hist := s.firmwareNewestFirst(modelID); len(hist) > 0 {
		h.Newest = &hist[0]
	}
	if r, ok := model.ReleasedIn(s.firmware[modelID]); ok {
		r = cloneFirmware(r)
		h.Released = &r
	}
	return h
}

// firmwareNewestFirst returns the model's history, the most recently
// recorded first, as PostgreSQL orders it (by ID, not by UploadedAt).
// s.mu must be held.
func (s *Store) firmwareNewestFirst(modelID int64) []model.Firmware {
	out := make([]model.Firmware, 0, len(s.firmware[modelID]))
	for _, f := range slices.Backward(s.firmware[modelID]) {
		out = append(out, cloneFirmware(f))
	}
	return out
}

// ReleasedFirmware implements ports.FirmwareRepo.
func (s *Store) ReleasedFirmware(_ context.Context, modelID int64) (model.Firmware, error) {
	if err := s.hook("ReleasedFirmware"); err != nil {
		return model.Firmware{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := model.ReleasedIn(s.firmware[modelID])
	if !ok {
		return model.Firmware{}, fmt.Errorf("released firmware of device model %d: %w", modelID, model.ErrNotFound)
	}
	return cloneFirmware(r), nil
}

// FirmwareBySHA256 implements ports.FirmwareRepo.
func (s *Store) FirmwareBySHA256(_ context.Context, modelID int64, sha256 string) (model.Firmware, error) {
	if err := s.hook("FirmwareBySHA256"); err != nil {
		return model.Firmware{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.bySHA256(modelID, sha256)
	if i < 0 {
		return model.Firmware{}, fmt.Errorf("firmware %s of device model %d: %w", sha256, modelID, model.ErrNotFound)
	}
	return cloneFirmware(s.firmware[modelID][i]), nil
}

// bySHA256 is the index of the model's newest upload of sha256, -1 when
// none. s.mu must be held.
func (s *Store) bySHA256(modelID int64, sha256 string) int {
	h := s.firmware[modelID]
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].SHA256 == sha256 {
			return i
		}
	}
	return -1
}

// ReleaseFirmware implements ports.FirmwareRepo.
func (s *Store) ReleaseFirmware(_ context.Context, modelID int64, sha256 string,
	audit func(f model.Firmware, alreadyReleased bool) []model.AuditEntry) (model.Firmware, bool, error) {
	if err := s.hook("ReleaseFirmware"); err != nil {
		return model.Firmware{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.models[modelID]
	if !ok {
		return model.Firmware{}, false, fmt.Errorf("device model %d: %w", modelID, model.ErrNotFound)
	}
	i := s.bySHA256(modelID, sha256)
	if i < 0 {
		return model.Firmware{}, false, fmt.Errorf("firmware %s of device model %d: %w", sha256, modelID, model.ErrNotFound)
	}
	f := cloneFirmware(s.firmware[modelID][i])
	if r, ok := model.ReleasedIn(s.firmware[modelID]); ok && r.ID == f.ID {
		s.audit.commit(audit(f, true), 0, modelID)
		return f, false, nil
	}
	at := s.releaseTime(modelID)
	f.ReleasedAt = &at
	s.firmware[modelID][i] = cloneFirmware(f)
	m.FirmwareVersion = f.Version
	m.UpdatedAt = s.now()
	s.models[modelID] = m
	s.audit.commit(audit(f, false), 0, modelID)
	return f, true, nil
}

// EffectiveFirmware implements ports.FirmwareRepo.
func (s *Store) EffectiveFirmware(_ context.Context, deviceID int64) (model.Firmware, error) {
	if err := s.hook("EffectiveFirmware"); err != nil {
		return model.Firmware{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[deviceID]
	if !ok {
		return model.Firmware{}, fmt.Errorf("effective firmware of device %d: %w", deviceID, model.ErrNotFound)
	}
	modelID, assignedID := d.DeviceModelID, d.AssignedFirmwareID
	if assignedID != nil {
		for _, f := range s.firmware[modelID] {
			if f.ID == *assignedID {
				return cloneFirmware(f), nil
			}
		}
	}
	r, ok := model.ReleasedIn(s.firmware[modelID])
	if !ok {
		return model.Firmware{}, fmt.Errorf("effective firmware of device model %d: %w", modelID, model.ErrNotFound)
	}
	return cloneFirmware(r), nil
}

// AssignFirmware implements ports.DeviceRepo.
func (s *Store) AssignFirmware(_ context.Context, deviceIDs []int64, firmwareID *int64) (int, error) {
	if err := s.hook("AssignFirmware"); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var fwModel int64 = -1
	if firmwareID != nil {
		for mid, h := range s.firmware {
			for _, f := range h {
				if f.ID == *firmwareID {
					fwModel = mid
				}
			}
		}
	}
	n := 0
	for _, id := range slices.Compact(slices.Sorted(slices.Values(deviceIDs))) {
		d, ok := s.devices[id]
		if !ok {
			continue
		}
		switch {
		case firmwareID == nil && d.AssignedFirmwareID != nil:
			d.AssignedFirmwareID = nil
		case firmwareID != nil && d.DeviceModelID == fwModel &&
			(d.AssignedFirmwareID == nil || *d.AssignedFirmwareID != *firmwareID):
			fid := *firmwareID
			d.AssignedFirmwareID = &fid
		default:
			continue
		}
		s.devices[id] = d
		n++
	}
	return n, nil
}

// hasAll reports whether have holds every one of want.
func hasAll(have, want []string) bool {
	for _, t := range want {
		if !slices.Contains(have, t) {
			return false
		}
	}
	return true
}

// ListFirmware implements ports.FirmwareRepo.
func (s *Store) ListFirmware(_ context.Context, modelID int64) ([]model.Firmware, error) {
	if err := s.hook("ListFirmware"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firmwareNewestFirst(modelID), nil
}

// us truncates t to the microseconds PostgreSQL keeps, so that the fake
// compares times as the database does.
func us(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// atOrBefore reports whether a (nil: never, the oldest of all) is at or
// before b, at microsecond precision.
func atOrBefore(a *time.Time, b time.Time) bool {
	return a == nil || !us(*a).After(us(b))
}

// oldestFirst orders optional times oldest first, nil before any, then by
// id: the order of StartRotations and ExpiredRotations.
func oldestFirst(ta, tb *time.Time, ida, idb int64) int {
	switch {
	case ta == nil && tb != nil:
		return -1
	case ta != nil && tb == nil:
		return 1
	case ta != nil && tb != nil:
		if c := us(*ta).Compare(us(*tb)); c != 0 {
			return c
		}
	}
	return cmpInt64(ida, idb)
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// QueueRotations implements ports.RotationQueue.
func (s *Store) QueueRotations(_ context.Context, modelID int64) (int, error) {
	if err := s.hook("QueueRotations"); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	n := 0
	for id, d := range s.devices {
		if d.Active && d.RotationState == model.RotationOK && (modelID == 0 || d.DeviceModelID == modelID) {
			d.RotationState = model.RotationQueued
			d.UpdatedAt = now
			s.devices[id] = d
			n++
		}
	}
	return n, nil
}

// UnconfirmedRotations implements ports.RotationQueue.
func (s *Store) UnconfirmedRotations(_ context.Context) (int, error) {
	if err := s.hook("UnconfirmedRotations"); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, d := range s.devices {
		if d.NewSecretAt != nil {
			n++
		}
	}
	return n, nil
}

// StartRotations implements ports.RotationQueue. The whole call runs with
// the store locked (which serialises it as the database's advisory lock
// does); start runs in it and must not call back into the Store. Changes
// start makes to ID, Key, DeviceModelID, ModelCode and CreatedAt are
// ignored, as in UpdateDevice.
func (s *Store) StartRotations(_ context.Context, limit int, retryBefore time.Time, start func(*model.Device) ([]model.AuditEntry, error)) ([]model.Device, error) {
	if err := s.hook("StartRotations"); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	pending := 0
	var queued, retry []model.Device
	for _, d := range s.devices {
		switch {
		case d.RotationState == model.RotationPending:
			pending++
		case !d.Active:
		case d.RotationState == model.RotationQueued:
			queued = append(queued, d)
		case d.RotationState == model.RotationTimeout && atOrBefore(d.LastRotationAttemptAt, retryBefore):
			retry = append(retry, d)
		}
	}
	free := limit - pending
	if free <= 0 {
		return nil, nil
	}
	slices.SortFunc(queued, func(a, b model.Device) int {
		return oldestFirst(a.SecretCreatedAt, b.SecretCreatedAt, a.ID, b.ID)
	})
	slices.SortFunc(retry, func(a, b model.Device) int {
		return oldestFirst(a.LastRotationAttemptAt, b.LastRotationAttemptAt, a.ID, b.ID)
	})
	claim := slices.Concat(queued, retry)
	claim = claim[:min(free, len(claim))]
	now := s.now()
	var started []model.Device
	var entries []model.AuditEntry
	for _, cur := range claim {
		d := cloneDevice(cur)
		es, err := start(&d)
		if err != nil {
			return nil, err // nothing stored yet: the "transaction" aborts
		}
		entries = append(entries, es...)
		d.ID, d.Key, d.DeviceModelID, d.ModelCode, d.CreatedAt = cur.ID, cur.Key, cur.DeviceModelID, cur.ModelCode, cur.CreatedAt
		if d.RotationState == "" {
			d.RotationState = cur.RotationState
		}
		d.UpdatedAt = now
		started = append(started, d)
	}
	for _, d := range started {
		s.devices[d.ID] = cloneDevice(d)
	}
	s.audit.commit(entries, 0, 0)
	return started, nil
}

// ExpiredRotations implements ports.RotationQueue. A PENDING device
// without an attempt time counts as expired, the oldest of all; limit <= 0
// returns none.
func (s *Store) ExpiredRotations(_ context.Context, before, unfetchedBefore time.Time, limit int) ([]int64, error) {
	if err := s.hook("ExpiredRotations"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var expired []model.Device
	for _, d := range s.devices {
		if d.RotationState == model.RotationPending && (!d.Active || atOrBefore(d.LastRotationAttemptAt, before) ||
			(atOrBefore(d.LastRotationAttemptAt, unfetchedBefore) && !d.FetchedThisAttempt())) {
			expired = append(expired, d)
		}
	}
	slices.SortFunc(expired, func(a, b model.Device) int {
		return oldestFirst(a.LastRotationAttemptAt, b.LastRotationAttemptAt, a.ID, b.ID)
	})
	ids := []int64{}
	for _, d := range expired[:min(max(limit, 0), len(expired))] {
		ids = append(ids, d.ID)
	}
	return ids, nil
}

// RotationCounts implements ports.RotationQueue.
func (s *Store) RotationCounts(_ context.Context) (model.RotationCounts, error) {
	if err := s.hook("RotationCounts"); err != nil {
		return model.RotationCounts{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := model.RotationCounts{ByState: map[model.RotationState]int{
		model.RotationOK: 0, model.RotationQueued: 0, model.RotationPending: 0, model.RotationTimeout: 0,
	}}
	for _, d := range s.devices {
		if !d.Active {
			c.Inactive++
			continue
		}
		c.ByState[d.RotationState]++
	}
	return c, nil
}

// InFlight implements ports.RotationQueue; an empty (not nil) slice when
// no device is PENDING.
func (s *Store) InFlight(_ context.Context) ([]int64, error) {
	if err := s.hook("InFlight"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := []int64{}
	for _, d := range s.devices {
		if d.RotationState == model.RotationPending {
			ids = append(ids, d.ID)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// LastRotationCompleted implements ports.RotationQueue.
func (s *Store) LastRotationCompleted(_ context.Context) (*time.Time, error) {
	if err := s.hook("LastRotationCompleted"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var last *time.Time
	for _, d := range s.devices {
		if t := d.LastRotationCompletedAt; t != nil && (last == nil || t.After(*last)) {
			last = t
		}
	}
	return cloneTime(last), nil
}

// dashboardGroup sorts d into its dashboard group as ports.DashboardQuery
// says, comparing at microsecond precision.
func dashboardGroup(d model.Device, q ports.DashboardQuery) model.DashboardGroup {
	if !d.Active {
		return model.DashboardInactive
	}
	secretAt := us(d.CreatedAt)
	if d.SecretCreatedAt != nil {
		secretAt = us(*d.SecretCreatedAt)
	}
	switch {
	case secretAt.Before(us(q.CriticalBefore)),
		d.NewSecretAt != nil && us(*d.NewSecretAt).Before(us(q.UnconfirmedBefore)):
		return model.DashboardCritical
	case secretAt.Before(us(q.WarningBefore)), d.RotationState == model.RotationTimeout:
		return model.DashboardWarning
	}
	return model.DashboardHealthy
}

// DashboardCounts implements ports.RotationQueue.
func (s *Store) DashboardCounts(_ context.Context, q ports.DashboardQuery) (map[model.DashboardGroup]int, error) {
	if err := s.hook("DashboardCounts"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[model.DashboardGroup]int, len(model.DashboardGroups))
	for _, g := range model.DashboardGroups {
		out[g] = 0
	}
	for _, d := range s.devices {
		out[dashboardGroup(d, q)]++
	}
	return out, nil
}

// DashboardPage implements ports.RotationQueue. An unknown group is a
// *model.ValidationError for "group".
func (s *Store) DashboardPage(_ context.Context, q ports.DashboardQuery, g model.DashboardGroup, limit int, afterID int64) (ports.DevicePage, error) {
	if err := s.hook("DashboardPage"); err != nil {
		return ports.DevicePage{}, err
	}
	if !slices.Contains(model.DashboardGroups, g) {
		return ports.DevicePage{}, model.Invalid("group", "unknown dashboard group %q", string(g))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.page(limit, afterID, func(d model.Device) bool { return dashboardGroup(d, q) == g }), nil
}
