package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/adapters/schedule"
	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// stepTimeout bounds one rotation cycle. A cycle runs to its end even when
// shutdown begins (SPEC §8: an in-flight rotation step is finished).
const stepTimeout = 2 * time.Minute

// rotationModule provides the rotation's adapters: the schedule, its
// record, the lease and the worker.
func rotationProviders() fx.Option {
	return fx.Provide(
		newSchedule,
		func(c *schedule.Cron) ports.Schedule { return c },
		fx.Annotate(postgres.NewScheduleRepo, fx.As(new(ports.ScheduleRepo))),
		fx.Annotate(newLease, fx.As(new(ports.Lease))),
		newRotationMetrics,
		newRotationWorker,
	)
}

func newSchedule(cfg Config) (*schedule.Cron, error) {
	c, err := schedule.Parse(cfg.RotationCron, cfg.RotationTZ)
	if err != nil {
		return nil, fmt.Errorf("invalid ROTATION_CRON: %w", err)
	}
	return c, nil
}

func newLease(lc fx.Lifecycle, cfg Config, db *postgres.DB) *postgres.Lease {
	l := postgres.NewLease(db, cfg.InstanceName)
	lc.Append(fx.StopHook(func(ctx context.Context) error { return l.Release(ctx) }))
	return l
}

// RotationMetrics are the rotation's Prometheus metrics (SPEC §8).
type RotationMetrics struct {
	phases   *prometheus.HistogramVec
	events   *prometheus.CounterVec
	leaseFor *prometheus.GaugeVec
	unconf   prometheus.Histogram
	age      prometheus.Histogram
}

// rotationBuckets span a fast device (a second) to a slow timeout.
var rotationBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

func newRotationMetrics(m *Metrics, devices ports.DeviceRepo) *RotationMetrics {
	rm := &RotationMetrics{
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "espmdm_rotation_phase_seconds",
			Help:    "Rotation phase durations: nudge_to_fetch (attempt start to the fetch), fetch_to_confirm (generation to confirmation), attempt (start to confirmation).",
			Buckets: rotationBuckets,
		}, []string{"phase"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "espmdm_rotation_events_total",
			Help: "Rotation steps: started, generated, confirmed (by ack or iat), rotated_secret_invalidated, timeout, restored, client_missing (a timeout that found the device's client gone: nothing restored).",
		}, []string{"event", "mode"}),
		leaseFor: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "espmdm_rotation_lease_held",
			Help: "1 while this process holds the rotation lease (works the queue), else 0.",
		}, []string{"holder"}),
		unconf: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "espmdm_rotation_unconfirmed_age_seconds",
			Help:    "Age of a generated secret when its attempt timed out unconfirmed.",
			Buckets: rotationBuckets,
		}),
	}
	rm.age = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "espmdm_rotation_secret_age_seconds",
		Help:    "Age of a device secret when a completed rotation replaced it.",
		Buckets: []float64{3600, 86400, 7 * 86400, 30 * 86400, 45 * 86400, 60 * 86400, 90 * 86400, 180 * 86400, 365 * 86400},
	})
	m.Registry.MustRegister(rm.phases, rm.events, rm.leaseFor, rm.unconf, rm.age, &stateCollector{devices: devices})
	for _, mode := range []model.RotationMode{model.RotationGrace, model.RotationRestore} {
		for _, ev := range []string{"started", "generated", "fetched", "confirmed_ack", "confirmed_iat",
			"rotated_secret_invalidated", "timeout", "restored", "client_missing"} {
			rm.events.WithLabelValues(ev, string(mode))
		}
	}
	return rm
}

// stateCollector reads the devices per rotation state at scrape time, so
// every replica reports the database's truth.
type stateCollector struct {
	devices ports.DeviceRepo
}

var stateDesc = prometheus.NewDesc("espmdm_rotation_devices", "Devices by rotation state (active devices; state=INACTIVE counts inactive ones).", []string{"state"}, nil)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- stateDesc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := c.devices.RotationCounts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(stateDesc, err)
		return
	}
	for _, st := range []model.RotationState{model.RotationOK, model.RotationQueued, model.RotationPending, model.RotationTimeout} {
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, float64(counts.ByState[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, float64(counts.Inactive), "INACTIVE")
}

// onRotation logs a rotation step and counts it. Nothing in an event is
// secret.
func (rm *RotationMetrics) onRotation(log *zap.Logger) func(context.Context, mdm.RotationEvent) {
	return func(_ context.Context, ev mdm.RotationEvent) {
		name := string(ev.Kind)
		lvl := log.Info
		if ev.Kind == mdm.EventFetched {
			lvl = log.Debug
		}
		switch ev.Kind {
		case mdm.EventFetched:
			rm.phases.WithLabelValues("nudge_to_fetch").Observe(ev.SinceAttempt.Seconds())
		case mdm.EventConfirmed:
			name += "_" + ev.Via
			rm.phases.WithLabelValues("fetch_to_confirm").Observe(ev.SinceGenerated.Seconds())
			if ev.SinceAttempt > 0 {
				rm.phases.WithLabelValues("attempt").Observe(ev.SinceAttempt.Seconds())
			}
			if ev.ReplacedAge > 0 {
				rm.age.Observe(ev.ReplacedAge.Seconds())
			}
		case mdm.EventTimeout:
			if ev.Restored {
				rm.events.WithLabelValues("restored", string(ev.Mode)).Inc()
			}
			if ev.ClientMissing {
				rm.events.WithLabelValues("client_missing", string(ev.Mode)).Inc()
				lvl = log.Warn
			}
			rm.unconf.Observe(ev.SinceAttempt.Seconds())
		}
		rm.events.WithLabelValues(name, string(ev.Mode)).Inc()
		fields := []zap.Field{zap.String("event", string(ev.Kind)), zap.Int64("device_id", ev.DeviceID),
			zap.String("client_id", ev.ClientID), zap.String("mode", string(ev.Mode))}
		if ev.Via != "" {
			fields = append(fields, zap.String("via", ev.Via))
		}
		if ev.Kind == mdm.EventTimeout {
			fields = append(fields, zap.Bool("restored", ev.Restored))
		}
		if ev.ClientMissing {
			fields = append(fields, zap.Bool("client_missing", true), zap.String("action",
				"the device's client is missing in the identity provider: repair its identity (POST /api/devices/{id}/identity/sync) and provision the device again"))
		}
		lvl("rotation", fields...)
	}
}

// RotationWorker works the rotation queue while this process holds the
// lease: every ROTATION_TICK_SECONDS, and at each scheduled fire time, it
// runs one cycle (schedule, timeouts, free slots).
type RotationWorker struct {
	svc     *mdm.Service
	lease   ports.Lease
	sched   ports.Schedule
	clock   ports.Clock
	tick    time.Duration
	log     *zap.Logger
	metrics *RotationMetrics
	holder  string

	mu       sync.Mutex
	resolved bool
}

type workerParams struct {
	fx.In
	Cfg      Config
	Svc      *mdm.Service
	Lease    ports.Lease
	Schedule ports.Schedule
	Clock    ports.Clock
	Log      *zap.Logger
	Metrics  *RotationMetrics
}

func newRotationWorker(p workerParams) *RotationWorker {
	return &RotationWorker{
		svc: p.Svc, lease: p.Lease, sched: p.Schedule, clock: p.Clock, tick: p.Cfg.RotationTick,
		log: p.Log.Named("rotation"), metrics: p.Metrics, holder: p.Cfg.InstanceName,
	}
}

// Resolve resolves the rotation mode (InitRotation) once. A refusal (grace
// requested on a realm without the policy) is returned as it is; an
// unreachable identity provider is model.ErrUnavailable.
func (w *RotationWorker) Resolve(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.resolved {
		return nil
	}
	mode, pol, err := w.svc.InitRotation(ctx)
	if err != nil {
		return err
	}
	w.resolved = true
	w.log.Info("rotation mode in force", zap.String("mode", string(mode)),
		zap.Bool("policy_feature_enabled", pol.FeatureEnabled), zap.Bool("policy_covers_devices", pol.Covered),
		zap.String("policy", pol.Name), zap.Duration("policy_grace", pol.RotatedExpiration),
		zap.Strings("policy_problems", pol.Problems))
	prev, unconfirmed, err := w.svc.RecordRotationMode(ctx)
	switch {
	case err != nil:
		w.log.Warn("rotation: could not record the mode in force", zap.Error(err))
	case prev != "" && prev != mode:
		w.log.Warn("rotation mode changed since the last start: unconfirmed rotations keep the rules of the mode that generated them "+
			"(grace: only the ack confirms; restore: the timeout restores the old secret)",
			zap.String("mode", string(mode)), zap.String("previous_mode", string(prev)),
			zap.Int("unconfirmed_rotations", unconfirmed), zap.Strings("policy_problems", pol.Problems))
	}
	return nil
}

// Once runs one cycle if this process holds (or can take) the lease, and
// reports whether it held it.
func (w *RotationWorker) Once(ctx context.Context) (ports.CycleReport, bool, error) {
	if err := w.Resolve(ctx); err != nil {
		return ports.CycleReport{}, false, err
	}
	held, err := w.lease.Hold(ctx)
	w.setHeld(held)
	if err != nil || !held {
		return ports.CycleReport{}, false, err
	}
	rep, err := w.svc.RunRotationCycle(model.WithActor(ctx, model.SystemActor("rotation worker "+w.holder)))
	return rep, true, err
}

func (w *RotationWorker) setHeld(held bool) {
	v := 0.0
	if held {
		v = 1
	}
	w.metrics.leaseFor.WithLabelValues(w.holder).Set(v)
}

// Run loops until ctx ends; each cycle runs under a context of its own so
// that shutdown lets it finish.
func (w *RotationWorker) Run(ctx context.Context) {
	for {
		step, cancel := context.WithTimeout(context.WithoutCancel(ctx), stepTimeout)
		rep, held, err := w.Once(step)
		cancel()
		switch {
		case err != nil && !errors.Is(err, context.Canceled):
			w.log.Warn("rotation cycle failed; the next one resumes", zap.Error(err))
		case held && (rep.Fired || rep.TimedOut > 0 || rep.Started > 0):
			w.log.Info("rotation cycle", zap.Bool("schedule_fired", rep.Fired), zap.Int("queued", rep.Queued),
				zap.Int("timed_out", rep.TimedOut), zap.Int("started", rep.Started))
		}
		wait := w.tick
		if next, err := w.sched.Next(w.clock.Now()); err == nil {
			if d := next.Sub(w.clock.Now()) + 100*time.Millisecond; d < wait {
				wait = d
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// registerRotation resolves the rotation mode at start (refusing to start
// when grace cannot work; an unreachable Keycloak is retried by the worker)
// and runs the worker until shutdown, then releases the lease.
func registerRotation(lc fx.Lifecycle, lt *Lifetime, w *RotationWorker, lease ports.Lease, log *zap.Logger) {
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(lt.Ctx)
	lc.Append(fx.Hook{
		OnStart: func(startCtx context.Context) error {
			rctx, rcancel := context.WithTimeout(startCtx, 20*time.Second)
			err := w.Resolve(rctx)
			rcancel()
			if err != nil {
				if !errors.Is(err, model.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
					return err
				}
				log.Warn("rotation: the identity provider is unreachable; the rotation mode is resolved when it answers", zap.Error(err))
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.Run(ctx)
			}()
			return nil
		},
		OnStop: func(stopCtx context.Context) error {
			cancel()
			if err := waitGroup(stopCtx, &wg); err != nil {
				return err
			}
			return lease.Release(stopCtx)
		},
	})
}
