package devicecache_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/devicecache"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// counting is the fake repository with its GetDeviceByKey calls counted,
// and a hook run in the middle of each (after the read).
type counting struct {
	*portstest.Store
	mu      sync.Mutex
	reads   int
	midRead func()
}

func (c *counting) GetDeviceByKey(ctx context.Context, key string) (model.Device, error) {
	d, err := c.Store.GetDeviceByKey(ctx, key)
	c.mu.Lock()
	c.reads++
	hook := c.midRead
	c.mu.Unlock()
	if hook != nil {
		hook()
	}
	return d, err
}

func (c *counting) readCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

type fixture struct {
	t     *testing.T
	db    *counting
	cache *devicecache.Repo
	model model.DeviceModel
	now   time.Time
}

func newFixture(t *testing.T, cfg devicecache.Config) *fixture {
	t.Helper()
	f := &fixture{t: t, db: &counting{Store: portstest.NewStore(nil)}, now: time.Unix(1_800_000_000, 0)}
	cfg.Now = func() time.Time { return f.now }
	f.cache = devicecache.New(f.db, cfg)
	f.model = model.DeviceModel{Code: "cache_m", Name: "M"}
	if err := f.db.CreateModel(t.Context(), &f.model, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) device(key string) model.Device {
	f.t.Helper()
	d := model.Device{Key: key, DeviceModelID: f.model.ID, Config: json.RawMessage(`{"n":1}`), Active: true, RotationState: model.RotationOK}
	if err := f.db.CreateDevice(f.t.Context(), &d, nil); err != nil {
		f.t.Fatal(err)
	}
	return d
}

// get looks key up through the cache and says whether it read the
// database.
func (f *fixture) get(key string) (model.Device, bool) {
	f.t.Helper()
	before := f.db.readCount()
	d, err := f.cache.GetDeviceByKey(f.t.Context(), key)
	if err != nil {
		f.t.Fatalf("GetDeviceByKey(%s): %v", key, err)
	}
	return d, f.db.readCount() > before
}

// change writes the row behind the cache's back (another replica) and
// returns what it became.
func (f *fixture) change(id int64, fn func(*model.Device)) model.Device {
	f.t.Helper()
	d, err := f.db.UpdateDevice(f.t.Context(), id, func(d *model.Device) ([]model.AuditEntry, error) { fn(d); return nil, nil })
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

func TestCacheOffUntilListening(t *testing.T) {
	f := newFixture(t, devicecache.Config{})
	f.device("aaaaaaaa")
	for i := range 3 {
		if _, read := f.get("aaaaaaaa"); !read {
			t.Fatalf("lookup %d before Listening(true) was served from memory", i)
		}
	}
	f.cache.Listening(true)
	f.get("aaaaaaaa")
	if _, read := f.get("aaaaaaaa"); read {
		t.Errorf("second lookup while listening read the database")
	}
	st := f.cache.Stats()
	if st.Bypasses != 3 || st.Misses != 1 || st.Hits != 1 || st.Entries != 1 || !st.Listening {
		t.Errorf("stats %+v, want 3 bypasses, 1 miss, 1 hit, 1 entry, listening", st)
	}
}

func TestCacheDropsWhatIsTold(t *testing.T) {
	f := newFixture(t, devicecache.Config{})
	d := f.device("aaaaaaaa")
	e := f.device("bbbbbbbb")
	f.cache.Listening(true)
	f.get("aaaaaaaa")
	f.get("bbbbbbbb")

	f.change(d.ID, func(d *model.Device) { d.Active = false })
	if got, _ := f.get("aaaaaaaa"); !got.Active {
		t.Fatalf("before the change is told: got inactive, the test is wrong")
	}
	f.cache.DevicesChanged([]int64{d.ID})
	got, read := f.get("aaaaaaaa")
	if !read || got.Active {
		t.Errorf("after DevicesChanged: read the database %v, active %v; want a read and inactive", read, got.Active)
	}
	if _, read := f.get("bbbbbbbb"); read {
		t.Errorf("a device not told was dropped")
	}

	f.change(e.ID, func(d *model.Device) { d.Config = json.RawMessage(`{"n":2}`) })
	f.cache.AllDevicesChanged()
	if got, read := f.get("bbbbbbbb"); !read || string(got.Config) != `{"n":2}` {
		t.Errorf("after AllDevicesChanged: read %v, config %s", read, got.Config)
	}
}

func TestCacheKeepsNothingReadAcrossAChange(t *testing.T) {
	f := newFixture(t, devicecache.Config{})
	d := f.device("aaaaaaaa")
	f.cache.Listening(true)
	// The change commits and is told while the lookup's read is in
	// flight: what it read may be the old row.
	f.db.midRead = func() { f.cache.DevicesChanged([]int64{d.ID}) }
	f.get("aaaaaaaa")
	f.db.midRead = nil
	if _, read := f.get("aaaaaaaa"); !read {
		t.Errorf("a device read across a change was kept")
	}
	// The same for the cache going off and on during the read.
	f.db.midRead = func() { f.cache.Listening(false); f.cache.Listening(true) }
	f.cache.AllDevicesChanged()
	f.get("aaaaaaaa")
	f.db.midRead = nil
	if _, read := f.get("aaaaaaaa"); !read {
		t.Errorf("a device read across a reconnection was kept")
	}
}

func TestCacheNeverKeepsPending(t *testing.T) {
	f := newFixture(t, devicecache.Config{})
	d := f.device("aaaaaaaa")
	f.change(d.ID, func(d *model.Device) { d.RotationState = model.RotationPending })
	f.cache.Listening(true)
	for i := range 3 {
		if _, read := f.get("aaaaaaaa"); !read {
			t.Fatalf("lookup %d of a PENDING device was served from memory", i)
		}
	}
}

func TestCacheOffDropsEverything(t *testing.T) {
	f := newFixture(t, devicecache.Config{})
	d := f.device("aaaaaaaa")
	f.cache.Listening(true)
	f.get("aaaaaaaa")
	f.cache.Listening(false)
	// Changes are not heard now: the cache must not serve.
	f.change(d.ID, func(d *model.Device) { d.Active = false })
	if got, read := f.get("aaaaaaaa"); !read || got.Active {
		t.Fatalf("while not listening: read %v, active %v; want the database's inactive device", read, got.Active)
	}
	if st := f.cache.Stats(); st.Entries != 0 || st.Losses != 1 || st.Listening {
		t.Errorf("stats %+v, want no entries, one loss, not listening", st)
	}
	// Back: what was held before is gone (it was dropped), and nothing
	// read while off was kept.
	f.cache.Listening(true)
	if _, read := f.get("aaaaaaaa"); !read {
		t.Errorf("first lookup after listening again was served from memory")
	}
}

func TestCacheBoundedLRU(t *testing.T) {
	f := newFixture(t, devicecache.Config{MaxEntries: 2})
	f.device("aaaaaaaa")
	f.device("bbbbbbbb")
	f.device("cccccccc")
	f.cache.Listening(true)
	f.get("aaaaaaaa")
	f.get("bbbbbbbb")
	f.get("aaaaaaaa") // b is now the least recently used
	f.get("cccccccc")
	if st := f.cache.Stats(); st.Entries != 2 {
		t.Errorf("%d entries, want 2", st.Entries)
	}
	if _, read := f.get("aaaaaaaa"); read {
		t.Errorf("the most recently used device was evicted")
	}
	if _, read := f.get("bbbbbbbb"); !read {
		t.Errorf("the least recently used device was kept beyond MaxEntries")
	}
}

func TestCacheTTL(t *testing.T) {
	f := newFixture(t, devicecache.Config{TTL: time.Minute})
	f.device("aaaaaaaa")
	f.cache.Listening(true)
	f.get("aaaaaaaa")
	f.now = f.now.Add(59 * time.Second)
	if _, read := f.get("aaaaaaaa"); read {
		t.Errorf("read the database within the TTL")
	}
	f.now = f.now.Add(time.Second)
	if _, read := f.get("aaaaaaaa"); !read {
		t.Errorf("served an entry at its TTL")
	}
}

func TestCacheTouchLastSeen(t *testing.T) {
	f := newFixture(t, devicecache.Config{})
	d := f.device("aaaaaaaa")
	f.cache.Listening(true)
	f.get("aaaaaaaa")
	at := f.now.UTC()
	if err := f.cache.TouchLastSeen(t.Context(), d.ID, at, time.Minute); err != nil {
		t.Fatal(err)
	}
	got, read := f.get("aaaaaaaa")
	if read || got.LastSeenAt == nil || !got.LastSeenAt.Equal(at) {
		t.Errorf("after TouchLastSeen: read %v, last seen %v; want a hit at %v", read, got.LastSeenAt, at)
	}
	row, err := f.db.GetDevice(t.Context(), d.ID)
	if err != nil || row.LastSeenAt == nil || !row.LastSeenAt.Equal(at) {
		t.Errorf("the database's last_seen_at %v (%v), want %v", row.LastSeenAt, err, at)
	}
}

// The writes through the cache drop the device here before they return:
// a replica reads its own writes without waiting for the notification.
func TestCacheOwnWrites(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, devicecache.Config{})
	d := f.device("aaaaaaaa")
	f.cache.Listening(true)
	check := func(what string, want func(model.Device) bool) {
		t.Helper()
		got, read := f.get("aaaaaaaa")
		if !read || !want(got) {
			t.Errorf("after %s: read the database %v, device %+v", what, read, got)
		}
		f.get("aaaaaaaa") // cached again
	}
	f.get("aaaaaaaa")
	if _, err := f.cache.UpdateDevice(ctx, d.ID, func(d *model.Device) ([]model.AuditEntry, error) {
		d.Active = false
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	check("UpdateDevice", func(d model.Device) bool { return !d.Active })
	if err := f.cache.ReportState(ctx, d.ID, model.StateReport{FirmwareVersion: "1.2.3", At: f.now}, func(*model.StateReport) []model.AuditEntry { return nil }); err != nil {
		t.Fatal(err)
	}
	check("ReportState", func(d model.Device) bool { return d.Reported != nil && d.Reported.FirmwareVersion == "1.2.3" })
	f.change(d.ID, func(d *model.Device) { d.Active = true })
	f.cache.DevicesChanged([]int64{d.ID})
	f.get("aaaaaaaa")
	if _, err := f.cache.QueueRotations(ctx, 0); err != nil {
		t.Fatal(err)
	}
	check("QueueRotations", func(d model.Device) bool { return d.RotationState == model.RotationQueued })
	if _, err := f.cache.StartRotations(ctx, 1, f.now, func(d *model.Device) ([]model.AuditEntry, error) {
		return nil, d.StartAttempt(f.now)
	}); err != nil {
		t.Fatal(err)
	}
	check("StartRotations", func(d model.Device) bool { return d.RotationState == model.RotationPending })
	if err := f.cache.DeleteDevice(ctx, d.ID, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cache.GetDeviceByKey(ctx, "aaaaaaaa"); err == nil {
		t.Errorf("a deleted device is still found")
	}
}

// The cache passes the repository contract (over the in-memory fake,
// listening, so that every lookup may be served from memory).
func TestCacheRepoContract(t *testing.T) {
	portstest.RunRepoContract(t, func(t *testing.T) (ports.ModelRepo, ports.DeviceRepo, ports.FirmwareRepo) {
		s := portstest.NewStore(nil)
		c := devicecache.New(s, devicecache.Config{})
		c.Listening(true)
		return s, c, s
	})
}

func TestCacheConcurrent(t *testing.T) {
	f := newFixture(t, devicecache.Config{MaxEntries: 3})
	keys := []string{"aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd"}
	ids := make([]int64, len(keys))
	for i, k := range keys {
		ids[i] = f.device(k).ID
	}
	f.cache.Listening(true)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				k := keys[(w+i)%len(keys)]
				if d, err := f.cache.GetDeviceByKey(t.Context(), k); err != nil || d.Key != k {
					t.Errorf("GetDeviceByKey(%s): %v, key %s", k, err, d.Key)
					return
				}
				switch i % 50 {
				case 7:
					f.cache.DevicesChanged(ids[:2])
				case 31:
					f.cache.Listening(false)
					f.cache.Listening(true)
				}
			}
		})
	}
	wg.Wait()
	if st := f.cache.Stats(); st.Entries > 3 {
		t.Errorf("%d entries, want at most 3", st.Entries)
	}
}

// BenchmarkCacheHit is the hot path: a listening cache serving a device it
// holds (lock, recency, copy).
func BenchmarkCacheHit(b *testing.B) {
	s := portstest.NewStore(nil)
	m := model.DeviceModel{Code: "bench_m", Name: "M"}
	if err := s.CreateModel(b.Context(), &m, nil); err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	d := model.Device{Key: "aaaaaaaa", DeviceModelID: m.ID, Config: json.RawMessage(`{"interval":60,"name":"bench device 1"}`),
		Active: true, RotationState: model.RotationOK, SecretCreatedAt: &now, LastSeenAt: &now, MQTTPassword: make([]byte, 60)}
	if err := s.CreateDevice(b.Context(), &d, nil); err != nil {
		b.Fatal(err)
	}
	c := devicecache.New(s, devicecache.Config{})
	c.Listening(true)
	ctx := b.Context()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.GetDeviceByKey(ctx, "aaaaaaaa"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
