package app

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/devicecache"
	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/ports"
)

// newDeviceRepo is the DeviceRepo the core gets: the PostgreSQL repository
// behind this replica's device cache (DEVICE_CACHE), which a listener of
// the devices table's change notifications keeps coherent from start to
// stop; the repository alone with DEVICE_CACHE=off.
func newDeviceRepo(lc fx.Lifecycle, lt *Lifetime, cfg Config, db *postgres.DB, repo *postgres.DeviceRepo, m *Metrics, log *zap.Logger) ports.DeviceRepo {
	if cfg.DeviceCache <= 0 {
		return repo
	}
	cache := devicecache.New(repo, devicecache.Config{MaxEntries: cfg.DeviceCache})
	registerDeviceCacheMetrics(m, cache)
	log = log.Named("devicecache")
	ln := postgres.NewDeviceChangeListener(db, loggedSink{cache, log}, postgres.WithListenErrors(func(err error) {
		log.Warn("device cache off until the database's change notifications are heard again", zap.Error(err))
	}))
	ctx, cancel := context.WithCancel(lt.Ctx)
	done := make(chan struct{})
	lc.Append(fx.Hook{
		// After the migrations (newDB's hook runs first): the trigger
		// must exist before the cache can rely on it.
		OnStart: func(context.Context) error {
			go func() {
				defer close(done)
				ln.Run(ctx)
			}()
			return nil
		},
		OnStop: func(context.Context) error {
			cancel()
			<-done
			return nil
		},
	})
	return cache
}

// loggedSink logs the cache turning on and off.
type loggedSink struct {
	*devicecache.Repo
	log *zap.Logger
}

func (s loggedSink) Listening(up bool) {
	s.Repo.Listening(up)
	if up {
		s.log.Info("device cache on: listening for device changes")
	}
}

// registerDeviceCacheMetrics exports the cache's counters, read at scrape
// time.
func registerDeviceCacheMetrics(m *Metrics, c *devicecache.Repo) {
	counter := func(name, help string, v func(devicecache.Stats) uint64, labels prometheus.Labels) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v(c.Stats())) })
	}
	const lookups = "espmdm_device_cache_lookups_total"
	const lookupsHelp = "Device API lookups by result: hit (served from the cache), miss (read from the database, then kept unless PENDING), bypass (the cache was off: not listening)."
	m.Registry.MustRegister(
		counter(lookups, lookupsHelp, func(s devicecache.Stats) uint64 { return s.Hits }, prometheus.Labels{"result": "hit"}),
		counter(lookups, lookupsHelp, func(s devicecache.Stats) uint64 { return s.Misses }, prometheus.Labels{"result": "miss"}),
		counter(lookups, lookupsHelp, func(s devicecache.Stats) uint64 { return s.Bypasses }, prometheus.Labels{"result": "bypass"}),
		counter("espmdm_device_cache_invalidations_total", "Devices dropped from the cache because they changed (notified or written here).",
			func(s devicecache.Stats) uint64 { return s.Invalidated }, nil),
		counter("espmdm_device_cache_flushes_total", "Times the whole cache was dropped for a bulk change (over 1,000 rows, TRUNCATE).",
			func(s devicecache.Stats) uint64 { return s.Flushes }, nil),
		counter("espmdm_device_cache_listen_losses_total", "Times the cache was turned off because its listening connection was lost or silent.",
			func(s devicecache.Stats) uint64 { return s.Losses }, nil),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "espmdm_device_cache_entries", Help: "Devices held in the cache."},
			func() float64 { return float64(c.Stats().Entries) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "espmdm_device_cache_listening", Help: "1 while the cache is on (listening for device changes), 0 while it is off and every lookup reads the database."},
			func() float64 {
				if c.Stats().Listening {
					return 1
				}
				return 0
			}),
	)
}
