package app

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Firmware campaigns (SPEC §16): the repository, the worker that advances
// them (in one replica at a time, under a lease of its own), and the
// metrics.

func campaignProviders() fx.Option {
	return fx.Provide(
		fx.Annotate(postgres.NewCampaignRepo, fx.As(new(ports.CampaignRepo))),
		newCampaignLease,
		newCampaignMetrics,
		newCampaignWorker,
	)
}

// CampaignLease is the campaign worker's lease: an advisory lock of its
// own (postgres.CampaignLeaseKey), apart from the rotation's.
type CampaignLease struct{ ports.Lease }

func newCampaignLease(lc fx.Lifecycle, cfg Config, db *postgres.DB) *CampaignLease {
	l := postgres.NewKeyedLease(db, cfg.InstanceName, postgres.CampaignLeaseKey)
	lc.Append(fx.StopHook(func(ctx context.Context) error { return l.Release(ctx) }))
	return &CampaignLease{l}
}

// CampaignMetrics are the campaigns' Prometheus metrics.
type CampaignMetrics struct {
	steps    *prometheus.CounterVec
	leaseFor *prometheus.GaugeVec
	ticks    prometheus.Histogram
}

var (
	campaignsDesc = prometheus.NewDesc("espmdm_campaigns", "Firmware campaigns by state.", []string{"state"}, nil)
	// Only running and paused campaigns are reported: at most one per
	// model, so the series are bounded by models × 4 member states.
	campaignMembersDesc = prometheus.NewDesc("espmdm_campaign_members",
		"Members of each running or paused campaign by state (campaign is its id; finished campaigns are left out, so at most one campaign per model).",
		[]string{"campaign", "state"}, nil)
)

func newCampaignMetrics(m *Metrics, repo ports.CampaignRepo) *CampaignMetrics {
	cm := &CampaignMetrics{
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "espmdm_campaign_steps_total",
			Help: "Campaign steps: wave_started, timed_out, nudged, paused, resumed, aborted, completed (members counts the members the step concerned).",
		}, []string{"step"}),
		leaseFor: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "espmdm_campaign_lease_held",
			Help: "1 while this process holds the campaign lease (advances the campaigns), else 0.",
		}, []string{"holder"}),
		ticks: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "espmdm_campaign_tick_seconds",
			Help:    "Duration of one campaign worker tick (every running campaign advanced once).",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
	}
	m.Registry.MustRegister(cm.steps, cm.leaseFor, cm.ticks, &campaignCollector{repo: repo})
	return cm
}

// campaignCollector reads the campaign counts at scrape time.
type campaignCollector struct {
	repo ports.CampaignRepo
}

func (c *campaignCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- campaignsDesc
	ch <- campaignMembersDesc
}

func (c *campaignCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := c.repo.CampaignCounts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(campaignsDesc, err)
		return
	}
	for _, st := range model.CampaignStates {
		ch <- prometheus.MustNewConstMetric(campaignsDesc, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
	for _, st := range []model.CampaignState{model.CampaignRunning, model.CampaignPaused} {
		if counts[st] == 0 {
			continue
		}
		p, err := c.repo.ListCampaigns(ctx, ports.CampaignFilter{State: &st, Limit: ports.MaxPageSize})
		if err != nil {
			ch <- prometheus.NewInvalidMetric(campaignMembersDesc, err)
			return
		}
		for _, cp := range p.Campaigns {
			waves, err := c.repo.WaveCounts(ctx, cp.ID)
			if err != nil {
				ch <- prometheus.NewInvalidMetric(campaignMembersDesc, err)
				return
			}
			var sum model.WaveCount
			for _, w := range waves {
				sum.Pending += w.Pending
				sum.Succeeded += w.Succeeded
				sum.Failed += w.Failed
				sum.TimedOut += w.TimedOut
			}
			id := strconv.FormatInt(cp.ID, 10)
			for st, n := range map[model.MemberState]int{model.MemberPending: sum.Pending, model.MemberSucceeded: sum.Succeeded,
				model.MemberFailed: sum.Failed, model.MemberTimedOut: sum.TimedOut} {
				ch <- prometheus.MustNewConstMetric(campaignMembersDesc, prometheus.GaugeValue, float64(n), id, string(st))
			}
		}
	}
}

// onCampaign logs a campaign step and counts it.
func (cm *CampaignMetrics) onCampaign(log *zap.Logger) func(context.Context, mdm.CampaignEvent) {
	return func(_ context.Context, ev mdm.CampaignEvent) {
		cm.steps.WithLabelValues(ev.Step).Inc()
		fields := []zap.Field{zap.String("step", ev.Step), zap.Int64("campaign_id", ev.Campaign.ID),
			zap.Int64("device_model_id", ev.Campaign.DeviceModelID), zap.String("state", string(ev.Campaign.State)),
			zap.Int("wave", ev.Campaign.CurrentWave), zap.Int("members", ev.Members)}
		switch ev.Step {
		case "aborted":
			log.Warn("campaign", append(fields, zap.String("reason", ev.Campaign.AbortReason))...)
		case "nudged", "timed_out":
			log.Debug("campaign", fields...)
		default:
			log.Info("campaign", fields...)
		}
	}
}

// CampaignWorker advances the running campaigns while this process holds
// the campaign lease, every CAMPAIGN_TICK_SECONDS, and at once when this
// replica's Service wakes it (mdm.Service.CampaignWake: a campaign created
// or resumed, a wave's last pending member resolved by a report here). A
// report on another replica does not wake it: that replica's wake reaches
// only its own worker, which holds no lease, and the holder's next tick
// sees the wave finished.
type CampaignWorker struct {
	svc     *mdm.Service
	lease   *CampaignLease
	tick    time.Duration
	log     *zap.Logger
	metrics *CampaignMetrics
	holder  string
}

func newCampaignWorker(cfg Config, svc *mdm.Service, lease *CampaignLease, log *zap.Logger, m *CampaignMetrics) *CampaignWorker {
	return &CampaignWorker{svc: svc, lease: lease, tick: cfg.CampaignTick, log: log.Named("campaign"), metrics: m, holder: cfg.InstanceName}
}

// Once runs one tick if this process holds (or can take) the lease, and
// reports whether it held it.
func (w *CampaignWorker) Once(ctx context.Context) (mdm.CampaignTickReport, bool, error) {
	held, err := w.lease.Hold(ctx)
	v := 0.0
	if held {
		v = 1
	}
	w.metrics.leaseFor.WithLabelValues(w.holder).Set(v)
	if err != nil || !held {
		return mdm.CampaignTickReport{}, false, err
	}
	began := time.Now()
	rep, err := w.svc.RunCampaignTick(ctx)
	w.metrics.ticks.Observe(time.Since(began).Seconds())
	return rep, true, err
}

// Run loops until ctx ends, ticking every w.tick or on a wake; each tick
// runs under a context of its own so that shutdown lets it finish. A wake
// that arrives during a tick is kept (the channel holds one) and runs the
// next tick at once, so none is lost.
func (w *CampaignWorker) Run(ctx context.Context) {
	for {
		step, cancel := context.WithTimeout(context.WithoutCancel(ctx), stepTimeout)
		rep, held, err := w.Once(step)
		cancel()
		switch {
		case err != nil && !errors.Is(err, context.Canceled):
			w.log.Warn("campaign tick failed; the next one resumes", zap.Error(err))
		case held && (rep.WavesStarts > 0 || rep.Aborted > 0 || rep.Completed > 0):
			w.log.Info("campaign tick", zap.Int("campaigns", rep.Campaigns), zap.Int("waves_started", rep.WavesStarts),
				zap.Int("assigned", rep.Assigned), zap.Int("timed_out", rep.TimedOut), zap.Int("nudged", rep.Nudged),
				zap.Int("aborted", rep.Aborted), zap.Int("completed", rep.Completed))
		}
		t := time.NewTimer(w.tick)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-w.svc.CampaignWake():
			t.Stop()
		}
	}
}

// registerCampaignWorker runs the worker until shutdown, then releases its
// lease.
func registerCampaignWorker(lc fx.Lifecycle, lt *Lifetime, w *CampaignWorker) {
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(lt.Ctx)
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			wg.Go(func() { w.Run(ctx) })
			return nil
		},
		OnStop: func(stopCtx context.Context) error {
			cancel()
			if err := waitGroup(stopCtx, &wg); err != nil {
				return err
			}
			return w.lease.Release(stopCtx)
		},
	})
}
