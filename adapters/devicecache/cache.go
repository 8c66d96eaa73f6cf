package devicecache

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Defaults of Config.
const (
	DefaultMaxEntries = 10000
	DefaultTTL        = 10 * time.Minute
)

// Config sizes the cache.
type Config struct {
	// MaxEntries bounds the devices held (DefaultMaxEntries when <= 0);
	// the least recently used go first.
	MaxEntries int
	// TTL bounds how long one entry is served (DefaultTTL when <= 0). A
	// safety net: coherence comes from the change notifications.
	TTL time.Duration
	// Now is the clock of the TTL (time.Now when nil).
	Now func() time.Time
}

// Repo is the caching ports.DeviceRepo. Every method it does not define is
// the wrapped repository's, unchanged. It starts not listening: until
// Listening(true) every lookup reads the database.
type Repo struct {
	ports.DeviceRepo

	max int
	ttl time.Duration
	now func() time.Time

	// listening is read without the lock on the hot path; it changes
	// under mu, with gen.
	listening atomic.Bool

	mu    sync.Mutex
	gen   uint64
	byKey map[string]*entry
	byID  map[int64]*entry
	// head is the sentinel of the recency list: head.next is the most
	// recently used entry, head.prev the least.
	head entry

	hits, misses, bypasses atomic.Uint64
	invalidated, flushes   atomic.Uint64
	losses                 atomic.Uint64
}

type entry struct {
	dev        model.Device
	expires    time.Time
	prev, next *entry
}

var _ ports.DeviceRepo = (*Repo)(nil)

// New wraps repo with a cache sized by cfg.
func New(repo ports.DeviceRepo, cfg Config) *Repo {
	r := &Repo{
		DeviceRepo: repo,
		max:        cfg.MaxEntries,
		ttl:        cfg.TTL,
		now:        cfg.Now,
		byKey:      map[string]*entry{},
		byID:       map[int64]*entry{},
	}
	if r.max <= 0 {
		r.max = DefaultMaxEntries
	}
	if r.ttl <= 0 {
		r.ttl = DefaultTTL
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.head.prev, r.head.next = &r.head, &r.head
	return r
}

// cacheable says whether d may be kept: not while its rotation is PENDING,
// when the device's own requests may change its row (confirmation by the
// token, a second nudge, the fetch), so those read the database.
func cacheable(d model.Device) bool { return d.RotationState != model.RotationPending }

// GetDeviceByKey implements ports.DeviceRepo from memory when it can.
func (r *Repo) GetDeviceByKey(ctx context.Context, key string) (model.Device, error) {
	if !r.listening.Load() {
		r.bypasses.Add(1)
		return r.DeviceRepo.GetDeviceByKey(ctx, key)
	}
	r.mu.Lock()
	if e := r.byKey[key]; e != nil {
		if r.now().Before(e.expires) {
			r.touch(e)
			d := cloneDevice(e.dev)
			r.mu.Unlock()
			r.hits.Add(1)
			return d, nil
		}
		r.remove(e)
	}
	gen := r.gen
	r.mu.Unlock()

	r.misses.Add(1)
	d, err := r.DeviceRepo.GetDeviceByKey(ctx, key)
	if err != nil || !cacheable(d) {
		return d, err
	}
	keep := cloneDevice(d)
	r.mu.Lock()
	// A change told since gen, or the cache turned off and on, may be
	// newer than what was read: keep nothing then.
	if r.gen == gen && r.listening.Load() {
		r.insert(keep)
	}
	r.mu.Unlock()
	return d, nil
}

// TouchLastSeen implements ports.DeviceRepo and moves the cached
// last_seen_at forward (the notifications do not tell it): the device is
// not written again for minInterval through this replica.
func (r *Repo) TouchLastSeen(ctx context.Context, id int64, at time.Time, minInterval time.Duration) error {
	if err := r.DeviceRepo.TouchLastSeen(ctx, id, at, minInterval); err != nil {
		return err
	}
	r.mu.Lock()
	if e := r.byID[id]; e != nil && (e.dev.LastSeenAt == nil || e.dev.LastSeenAt.Before(at)) {
		t := at.UTC()
		e.dev.LastSeenAt = &t
	}
	r.mu.Unlock()
	return nil
}

// UpdateDevice implements ports.DeviceRepo; the device is dropped from
// this replica's cache before it returns (even on an error: the commit
// may have happened).
func (r *Repo) UpdateDevice(ctx context.Context, id int64, fn func(*model.Device) ([]model.AuditEntry, error)) (model.Device, error) {
	defer r.DevicesChanged([]int64{id})
	return r.DeviceRepo.UpdateDevice(ctx, id, fn)
}

// DeleteDevice implements ports.DeviceRepo, dropping the device.
func (r *Repo) DeleteDevice(ctx context.Context, id int64, audit []model.AuditEntry) error {
	defer r.DevicesChanged([]int64{id})
	return r.DeviceRepo.DeleteDevice(ctx, id, audit)
}

// ReportState implements ports.DeviceRepo, dropping the device.
func (r *Repo) ReportState(ctx context.Context, id int64, report model.StateReport, audit func(*model.StateReport) []model.AuditEntry) error {
	defer r.DevicesChanged([]int64{id})
	return r.DeviceRepo.ReportState(ctx, id, report, audit)
}

// QueueRotations implements ports.RotationQueue, dropping every device
// (any active one may have been queued).
func (r *Repo) QueueRotations(ctx context.Context, modelID int64) (int, error) {
	defer r.AllDevicesChanged()
	return r.DeviceRepo.QueueRotations(ctx, modelID)
}

// AssignFirmware implements ports.DeviceRepo, dropping the devices whose
// assignment it changes (every named one, also when it fails).
func (r *Repo) AssignFirmware(ctx context.Context, deviceIDs []int64, firmwareID *int64) (int, error) {
	defer r.DevicesChanged(deviceIDs)
	return r.DeviceRepo.AssignFirmware(ctx, deviceIDs, firmwareID)
}

// StartRotations implements ports.RotationQueue, dropping the started
// devices (every device when it fails: some may have committed).
func (r *Repo) StartRotations(ctx context.Context, limit int, retryBefore time.Time, start func(*model.Device) ([]model.AuditEntry, error)) ([]model.Device, error) {
	started, err := r.DeviceRepo.StartRotations(ctx, limit, retryBefore, start)
	if err != nil {
		r.AllDevicesChanged()
		return started, err
	}
	if len(started) > 0 {
		ids := make([]int64, len(started))
		for i := range started {
			ids[i] = started[i].ID
		}
		r.DevicesChanged(ids)
	}
	return started, nil
}

// DevicesChanged drops the devices ids: they changed (a notification, or
// a write of this replica).
func (r *Repo) DevicesChanged(ids []int64) {
	r.mu.Lock()
	r.gen++
	for _, id := range ids {
		if e := r.byID[id]; e != nil {
			r.remove(e)
		}
	}
	r.mu.Unlock()
	r.invalidated.Add(uint64(len(ids)))
}

// AllDevicesChanged drops every device (a bulk change).
func (r *Repo) AllDevicesChanged() {
	r.mu.Lock()
	r.flush()
	r.mu.Unlock()
	r.flushes.Add(1)
}

// Listening turns the cache on (up: every change from now on will be
// told) or off (changes may go unheard); either way it drops everything:
// what it held may have changed unheard.
func (r *Repo) Listening(up bool) {
	r.mu.Lock()
	r.flush()
	was := r.listening.Swap(up)
	r.mu.Unlock()
	if was && !up {
		r.losses.Add(1)
	}
}

// Stats are the cache's counters since New.
type Stats struct {
	// Hits, Misses: lookups served from memory, and read from the
	// database while listening; Bypasses: lookups read from the database
	// because the cache was off (not listening).
	Hits, Misses, Bypasses uint64
	// Invalidated counts device drops told (one per id); Flushes the
	// times everything was dropped for a bulk change.
	Invalidated, Flushes uint64
	// Losses counts the times the cache went off after being on.
	Losses uint64
	// Entries is the devices held now; Listening whether the cache is on.
	Entries   int
	Listening bool
}

// Stats returns the counters.
func (r *Repo) Stats() Stats {
	r.mu.Lock()
	n := len(r.byKey)
	r.mu.Unlock()
	return Stats{
		Hits: r.hits.Load(), Misses: r.misses.Load(), Bypasses: r.bypasses.Load(),
		Invalidated: r.invalidated.Load(), Flushes: r.flushes.Load(), Losses: r.losses.Load(),
		Entries: n, Listening: r.listening.Load(),
	}
}

// flush drops everything; mu held.
func (r *Repo) flush() {
	r.gen++
	clear(r.byKey)
	clear(r.byID)
	r.head.prev, r.head.next = &r.head, &r.head
}

// insert keeps d as the most recently used entry, evicting the least
// recently used beyond max; mu held.
func (r *Repo) insert(d model.Device) {
	if old := r.byKey[d.Key]; old != nil {
		r.remove(old)
	}
	if old := r.byID[d.ID]; old != nil {
		r.remove(old)
	}
	e := &entry{dev: d, expires: r.now().Add(r.ttl)}
	r.byKey[d.Key], r.byID[d.ID] = e, e
	r.pushFront(e)
	for len(r.byKey) > r.max {
		r.remove(r.head.prev)
	}
}

func (r *Repo) remove(e *entry) {
	delete(r.byKey, e.dev.Key)
	delete(r.byID, e.dev.ID)
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (r *Repo) pushFront(e *entry) {
	e.prev, e.next = &r.head, r.head.next
	r.head.next.prev = e
	r.head.next = e
}

// touch makes e the most recently used; mu held.
func (r *Repo) touch(e *entry) {
	if r.head.next == e {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	r.pushFront(e)
}
