package app

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/coredump"
	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/ports"
)

// Core dumps (SPEC §17): the repository, the analyser over esp-coredump
// and GDB, COREDUMP_WORKERS workers per replica, and the metrics.

func coredumpProviders() fx.Option {
	return fx.Options(
		fx.Provide(
			fx.Annotate(postgres.NewCoredumpRepo, fx.As(new(ports.CoredumpRepo))),
			newCoredumpAnalyzer,
		),
		fx.Invoke(registerCoredumpMetrics),
	)
}

func newCoredumpAnalyzer(cfg Config) ports.CoredumpAnalyzer {
	return coredump.New(coredump.Config{Tool: cfg.CoredumpTool, GDB: cfg.CoredumpGDB, Timeout: cfg.CoredumpTimeout, MaxELF: cfg.ELFMaxBytes})
}

// registerCoredumpWorkers checks the analysis tools at start (saying when
// they are missing: dumps then stay pending with that reason, and are
// analysed once the tools are there) and runs COREDUMP_WORKERS workers until
// shutdown. A worker analyses dumps while there are any to claim, then
// waits for an upload on this replica or COREDUMP_POLL_SECONDS (another
// replica's uploads, claims that ended).
func registerCoredumpWorkers(lc fx.Lifecycle, lt *Lifetime, cfg Config, svc *mdm.Service, an ports.CoredumpAnalyzer, log *zap.Logger) {
	log = log.Named("coredump")
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(lt.Ctx)
	lc.Append(fx.Hook{
		OnStart: func(startCtx context.Context) error {
			if cfg.CoredumpWorkers == 0 {
				log.Info("COREDUMP_WORKERS=0: this replica analyses no core dumps (a replica with the tools does)")
				return nil
			}
			if err := an.Check(startCtx); err != nil {
				log.Warn("core dump analysis tools missing: uploaded dumps stay pending until they are installed (make deps) or COREDUMP_TOOL/COREDUMP_GDB point at them",
					zap.Error(err))
			} else {
				log.Info("core dump analysis ready", zap.String("tool", cfg.CoredumpTool), zap.String("gdb", cfg.CoredumpGDB),
					zap.Int("workers", cfg.CoredumpWorkers))
			}
			for range cfg.CoredumpWorkers {
				wg.Go(func() { coredumpWorker(ctx, svc, cfg.CoredumpPoll, log) })
			}
			return nil
		},
		OnStop: func(stopCtx context.Context) error {
			cancel()
			return waitGroup(stopCtx, &wg)
		},
	})
}

func coredumpWorker(ctx context.Context, svc *mdm.Service, poll time.Duration, log *zap.Logger) {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			ok, err := svc.AnalyseNextCoredump(ctx)
			if err != nil && ctx.Err() == nil {
				log.Warn("core dump worker", zap.Error(err))
			}
			if !ok || err != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-svc.CoredumpWake():
		case <-t.C:
		}
	}
}

// coredumpsDesc is named as SPEC §17 names it; it is a gauge (the dumps
// stored now), since deletions and retention take dumps away.
var coredumpsDesc = prometheus.NewDesc("espmdm_coredumps_total",
	"Core dumps stored now, by model and analysis status (pending, analysed, no_elf, failed).",
	[]string{"model", "status"}, nil)

// coredumpCollector reads the counts at scrape time (one GROUP BY), so
// every replica reports the database's truth.
type coredumpCollector struct{ repo ports.CoredumpRepo }

func registerCoredumpMetrics(m *Metrics, repo ports.CoredumpRepo) {
	m.Registry.MustRegister(coredumpCollector{repo})
}

func (c coredumpCollector) Describe(ch chan<- *prometheus.Desc) { ch <- coredumpsDesc }

func (c coredumpCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := c.repo.CoredumpCounts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(coredumpsDesc, err)
		return
	}
	for _, x := range counts {
		ch <- prometheus.MustNewConstMetric(coredumpsDesc, prometheus.GaugeValue, float64(x.Count), x.ModelCode, string(x.Status))
	}
}
