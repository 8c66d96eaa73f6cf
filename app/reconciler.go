package app

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"go.uber.org/fx"
	"go.uber.org/zap"
)

// The reconciler loop: Keycloak clients against device rows, at start-up
// and every RECONCILE_INTERVAL.

// registerReconciler runs the reconciler at start-up and every
// RECONCILE_INTERVAL until shutdown. It runs under a context of its own:
// cancelling the application Lifetime here would cut the MQTT connection
// before the HTTP server has drained and the notifier has flushed.
func registerReconciler(lc fx.Lifecycle, lt *Lifetime, cfg Config, svc *mdm.Service, log *zap.Logger) {
	var wg sync.WaitGroup
	log = log.Named("reconcile")
	ctx, cancel := context.WithCancel(lt.Ctx)
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t := time.NewTicker(cfg.ReconcileInterval)
				defer t.Stop()
				for {
					_, _ = RunReconcile(ctx, svc, log) // it logs what it found
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
				}
			}()
			return nil
		},
		OnStop: func(stopCtx context.Context) error {
			cancel()
			return waitGroup(stopCtx, &wg)
		},
	})
}

// waitGroup waits for wg, or until ctx ends.
func waitGroup(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RunReconcile runs one reconciliation and logs what it found.
func RunReconcile(ctx context.Context, svc ports.Reconciler, log *zap.Logger) (ports.ReconcileReport, error) {
	rep, err := svc.Reconcile(model.WithActor(ctx, model.SystemActor("reconciler")))
	switch {
	case errors.Is(err, context.Canceled):
	case err != nil:
		log.Warn("reconcile failed", zap.Error(err))
	default:
		lvl := log.Debug
		if len(rep.DeletedOrphans)+len(rep.MissingClients)+len(rep.Failed)+
			len(rep.AccountsMade)+len(rep.AccountsRepaired)+len(rep.AccountsDeleted)+len(rep.AccountsFailed)+
			len(rep.Covered)+len(rep.CoverFailed)+len(rep.Regenerated) > 0 {
			lvl = log.Info
		}
		lvl("reconciled", zap.Strings("deleted_orphans", rep.DeletedOrphans),
			zap.Strings("missing_clients", rep.MissingClients), zap.Strings("failed", rep.Failed),
			zap.Strings("accounts_made", rep.AccountsMade), zap.Strings("accounts_repaired", rep.AccountsRepaired),
			zap.Strings("accounts_deleted", rep.AccountsDeleted), zap.Strings("accounts_failed", rep.AccountsFailed),
			zap.Strings("covered", rep.Covered), zap.Strings("cover_failed", rep.CoverFailed),
			zap.Strings("regenerated", rep.Regenerated))
	}
	return rep, err
}
