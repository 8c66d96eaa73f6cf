package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/clock"
	"github.com/espmdm/espmdm/adapters/console"
	"github.com/espmdm/espmdm/adapters/fsstore"
	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/adapters/secretbox"
	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// StartTimeout bounds fx start-up: migrations and the first connection to
// a slow database need more than fx's 15 s default.
const StartTimeout = 2 * time.Minute

// New builds the espmdm server application: Core plus the HTTP server and
// the background reconciler. extra options are appended, so an embedding
// service can add modules or replace a binding with fx.Decorate.
func New(cfg Config, extra ...fx.Option) *fx.App {
	opts := []fx.Option{Core(cfg), Server(), fx.StartTimeout(StartTimeout), fx.StopTimeout(cfg.ShutdownTimeout + 10*time.Second)}
	return fx.New(append(opts, extra...)...)
}

// Lifetime is a context that lives from start-up until the end of shutdown
// (it is cancelled after the OnStop hooks of everything built on it): what
// long-running work (the MQTT connection, loops) runs under, since fx's
// OnStart context expires after the start timeout.
type Lifetime struct {
	Ctx context.Context
}

// Core provides the adapters bound to their ports and the use cases
// (*mdm.Service, ports.Catalog, ports.DeviceAPI), without the HTTP server.
// fx's own events go to the zap logger at debug level, for the whole
// application (a logger set inside the module would leave the options
// outside it printing to stderr).
func Core(cfg Config) fx.Option {
	return fx.Options(coreModule(cfg), fx.WithLogger(func(log *zap.Logger) fxevent.Logger {
		l := &fxevent.ZapLogger{Logger: log.Named("fx")}
		l.UseLogLevel(-1) // fx's own chatter at debug
		return l
	}))
}

func coreModule(cfg Config) fx.Option {
	return fx.Module("espmdm",
		fx.Supply(cfg),
		fx.Provide(
			newLifetime,
			func(cfg Config) (*zap.Logger, error) { return NewLogger(cfg.LogLevel, cfg.LogFormat) },
			newMetrics,
			newDB,
			fx.Annotate(postgres.NewModelRepo, fx.As(new(ports.ModelRepo))),
			fx.Annotate(postgres.NewDeviceRepo, fx.As(new(ports.DeviceRepo))),
			fx.Annotate(postgres.NewFirmwareRepo, fx.As(new(ports.FirmwareRepo))),
			fx.Annotate(postgres.NewAuditLog, fx.As(new(ports.AuditLog))),
			fx.Annotate(newFirmwareStore, fx.As(new(ports.FirmwareStore))),
			fx.Annotate(clock.New, fx.As(new(ports.Clock))),
			fx.Annotate(newSecretBox, fx.As(new(ports.SecretBox))),
			newKeycloakAdmin,
			func(a *keycloak.Admin) ports.IdentityProvider { return a },
			fx.Annotate(newVerifier, fx.As(new(ports.TokenVerifier))),
			newNotifier,
			newService,
			func(s *mdm.Service) ports.Catalog { return s },
			func(s *mdm.Service) ports.DeviceAPI { return s },
			func(s *mdm.Service) ports.Rotation { return s },
			func(s *mdm.Service) ports.AuditReader { return s },
		),
		rotationProviders(),
	)
}

// Server adds the HTTP server and the periodic reconciler to Core.
func Server() fx.Option {
	return fx.Options(
		fx.Provide(newHTTPServer),
		fx.Invoke(registerHTTP, registerReconciler, registerRotation, warnAuthDisabled),
		consoleModule(),
	)
}

func newLifetime(lc fx.Lifecycle) *Lifetime {
	ctx, cancel := context.WithCancel(context.Background())
	lt := &Lifetime{Ctx: ctx}
	// Appended before the hooks of everything that uses it, so it runs
	// after their OnStop hooks.
	lc.Append(fx.StopHook(cancel))
	return lt
}

// Metrics holds the process registry and the adapters' operation counters.
type Metrics struct {
	Registry *prometheus.Registry
	keycloak *prometheus.CounterVec
	mqtt     *prometheus.CounterVec
	db       *prometheus.CounterVec
}

func newMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: reg,
		keycloak: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "espmdm_keycloak_operations_total", Help: "Keycloak Admin REST operations by operation and result.",
		}, []string{"op", "result"}),
		mqtt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "espmdm_mqtt_operations_total", Help: "MQTT operations by operation and result.",
		}, []string{"op", "result"}),
		db: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "espmdm_core_errors_total", Help: "Errors the core handled without failing the request (cleanups, notifications), by operation.",
		}, []string{"op"}),
	}
	reg.MustRegister(m.keycloak, m.mqtt, m.db)
	// Every known operation is exported from the start, at 0, so that
	// dashboards and alerts (rate of errors) see it before it first runs.
	for _, op := range keycloak.Operations {
		m.keycloak.WithLabelValues(op, "ok")
		m.keycloak.WithLabelValues(op, "error")
	}
	for _, op := range []string{mqtt.OpConnect, mqtt.OpConnectionLost, mqtt.OpRotationNudge, mqtt.OpConfigChanged, mqtt.OpFirmwareReleased} {
		m.mqtt.WithLabelValues(op, "ok")
		m.mqtt.WithLabelValues(op, "error")
	}
	return m
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

func newDB(lc fx.Lifecycle, cfg Config, log *zap.Logger) (*postgres.DB, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	lc.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			if !cfg.MigrateOnStart {
				return nil
			}
			if err := db.Migrate(ctx); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
			log.Info("database migrated")
			return nil
		},
		OnStop: func(context.Context) error { return db.Close() },
	})
	return db, nil
}

func newFirmwareStore(cfg Config) (*fsstore.Store, error) {
	return fsstore.New(cfg.FirmwareDir)
}

// newSecretBox seals under SECRET_KEY and also opens what was sealed under
// SECRET_KEY_PREVIOUS.
func newSecretBox(cfg Config) (*secretbox.Ring, error) {
	cur, err := secretbox.NewFromString(cfg.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("invalid SECRET_KEY: %w", err)
	}
	var prev *secretbox.Box
	if cfg.SecretKeyPrevious != "" {
		if prev, err = secretbox.NewFromString(cfg.SecretKeyPrevious); err != nil {
			return nil, fmt.Errorf("invalid SECRET_KEY_PREVIOUS: %w", err)
		}
	}
	return secretbox.NewRing(cur, prev), nil
}

func newKeycloakAdmin(lc fx.Lifecycle, cfg Config, m *Metrics) (*keycloak.Admin, error) {
	a, err := keycloak.NewAdmin(keycloak.AdminConfig{
		BaseURL:        cfg.KeycloakURL,
		Realm:          cfg.KeycloakRealm,
		ClientID:       cfg.KeycloakAdminClientID,
		ClientSecret:   cfg.KeycloakAdminClientSecret,
		DeviceAudience: cfg.DeviceAudience,
		MaxConcurrent:  cfg.KeycloakMaxConcurrency,
		Observe: func(op string, err error, _ time.Duration) {
			m.keycloak.WithLabelValues(op, result(err)).Inc()
		},
	})
	if err != nil {
		return nil, err
	}
	// Registered before what uses it, so stopped after it.
	lc.Append(fx.Hook{OnStop: func(context.Context) error { a.Close(); return nil }})
	return a, nil
}

func newVerifier(cfg Config) (*keycloak.Verifier, error) {
	return keycloak.NewVerifier(keycloak.VerifierConfig{
		IssuerURL:      cfg.OIDCIssuerURL,
		DeviceAudience: cfg.DeviceAudience,
	})
}

// newNotifier connects to the broker in the background; with no MQTT_URL
// devices get no push notifications (they still poll) and a warning says so.
func newNotifier(lc fx.Lifecycle, lt *Lifetime, cfg Config, m *Metrics, log *zap.Logger) (ports.Notifier, error) {
	if cfg.MQTTURL == "" {
		log.Warn("MQTT_URL is not set: devices get no rotation, config or firmware notifications")
		return silentNotifier{}, nil
	}
	n, err := mqtt.New(mqtt.Config{
		BrokerURL: cfg.MQTTURL,
		ClientID:  cfg.MQTTClientID,
		Observe:   func(op string, err error) { m.mqtt.WithLabelValues(op, result(err)).Inc() },
	})
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error { return n.Start(lt.Ctx) },
		OnStop:  n.Stop,
	})
	return n, nil
}

// silentNotifier is the Notifier when no broker is configured: devices
// learn about changes by polling.
type silentNotifier struct{}

func (silentNotifier) RotationNudge(context.Context, string) error            { return nil }
func (silentNotifier) ConfigChanged(context.Context, string) error            { return nil }
func (silentNotifier) FirmwareReleased(context.Context, string, string) error { return nil }

type serviceParams struct {
	fx.In
	Cfg      Config
	Log      *zap.Logger
	Metrics  *Metrics
	Models   ports.ModelRepo
	Devices  ports.DeviceRepo
	Firmware ports.FirmwareRepo
	Store    ports.FirmwareStore
	Identity ports.IdentityProvider
	Notifier ports.Notifier
	Clock    ports.Clock
	Box      ports.SecretBox
	Schedule ports.Schedule
	Fires    ports.ScheduleRepo
	Lease    ports.Lease
	Audit    ports.AuditLog
	Rotation *RotationMetrics
}

func newService(p serviceParams) *mdm.Service {
	log := p.Log.Named("core")
	return mdm.New(mdm.Deps{
		Models: p.Models, Devices: p.Devices, Firmware: p.Firmware, Store: p.Store,
		Identity: p.Identity, Notifier: p.Notifier, Clock: p.Clock,
		SecretBox: p.Box, Schedule: p.Schedule, ScheduleRepo: p.Fires, Lease: p.Lease, Audit: p.Audit,
		OnRotation: p.Rotation.onRotation(p.Log.Named("rotation")),
		OnError: func(ctx context.Context, op string, err error) {
			p.Metrics.db.WithLabelValues(op).Inc()
			fields := []zap.Field{zap.String("op", op), zap.Error(err)}
			if id := httpapi.RequestID(ctx); id != "" {
				fields = append(fields, zap.String("request_id", id))
			}
			log.Warn("handled error", fields...)
		},
	}, mdm.Config{
		TokenURL: p.Cfg.OIDCTokenURL, BaseURL: p.Cfg.BaseURL, MQTTURL: DeviceMQTTURL(p.Cfg.MQTTURL),
		WiFiSSID: p.Cfg.WiFiSSID, WiFiPassword: p.Cfg.WiFiPassword,
		FirmwareMaxBytes:    p.Cfg.FirmwareMaxBytes,
		RotationMode:        model.RotationMode(p.Cfg.RotationMode),
		RotationConcurrency: p.Cfg.RotationConcurrency, RotationTimeout: p.Cfg.RotationTimeout,
		RotationFetchTimeout: p.Cfg.RotationFetchTimeout,
		RotationRetry:        p.Cfg.RotationRetry, RotationGrace: p.Cfg.RotationGrace,
		RotationWarningAge: p.Cfg.RotationWarningAge, RotationCriticalAge: p.Cfg.RotationCriticalAge,
	})
}

// DeviceMQTTURL is MQTT_URL as devices get it in their provisioning data:
// without the user name and password, which are espmdm's own broker
// credentials, not the device's.
func DeviceMQTTURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	u.User = nil
	return u.String()
}

type httpParams struct {
	fx.In
	Cfg      Config
	Log      *zap.Logger
	Metrics  *Metrics
	Catalog  ports.Catalog
	Devices  ports.DeviceAPI
	Rotation ports.Rotation
	Audit    ports.AuditReader
	Verifier ports.TokenVerifier
	DB       *postgres.DB
	Identity ports.IdentityProvider
	Console  *console.Handler
}

func newHTTPServer(p httpParams) (*httpapi.Server, error) {
	return httpapi.New(httpapi.Config{
		AdminRole:        p.Cfg.AdminRole,
		ViewerRole:       p.Cfg.ViewerRole,
		AuthDisabled:     p.Cfg.AuthDisabled,
		FirmwareMaxBytes: p.Cfg.FirmwareMaxBytes,
		JSONMaxBytes:     p.Cfg.JSONMaxBytes,
		IoTMaxBytes:      p.Cfg.IoTMaxBytes,
		DeviceRate:       rateLimit(p.Cfg.DeviceRateLimit, p.Cfg.DeviceRateBurst),
		UnauthRate:       rateLimit(p.Cfg.UnauthRateLimit, p.Cfg.UnauthRateBurst),
		TrustedProxies:   p.Cfg.TrustedProxies,
		BaseURL:          p.Cfg.BaseURL,
	}, httpapi.Deps{
		Catalog: p.Catalog, Devices: p.Devices, Verifier: p.Verifier, Rotation: p.Rotation, Audit: p.Audit,
		Logger: p.Log.Named("http"), Registerer: p.Metrics.Registry, Gatherer: p.Metrics.Registry,
		Docs: p.Console.DocsPage(),
		ReadyChecks: []httpapi.ReadyCheck{
			{Name: "postgres", Check: p.DB.Ping},
			{Name: "migrations", Check: func(ctx context.Context) error {
				pending, err := p.DB.MigrationStatus(ctx)
				if err != nil {
					return err
				}
				if pending > 0 {
					return fmt.Errorf("%d migrations pending", pending)
				}
				return nil
			}},
			{Name: "keycloak", Check: p.Identity.Ping},
		},
	})
}

// rateLimit converts a configured limit: 0 a minute is no limit.
func rateLimit(perMinute, burst int) httpapi.RateLimit {
	if perMinute == 0 {
		return httpapi.RateLimit{PerMinute: -1}
	}
	return httpapi.RateLimit{PerMinute: float64(perMinute), Burst: burst}
}

// registerHTTP binds the listener in OnStart, so a taken port fails
// start-up, and drains requests on stop.
func registerHTTP(lc fx.Lifecycle, cfg Config, srv *httpapi.Server, log *zap.Logger) {
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			ln, err := net.Listen("tcp", cfg.HTTPAddr)
			if err != nil {
				return fmt.Errorf("listen on HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
			}
			log.Info("serving", zap.String("addr", ln.Addr().String()))
			go func() {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
					log.Error("http server stopped", zap.Error(err))
				}
			}()
			return nil
		},
		OnStop: srv.Shutdown,
	})
}

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
func RunReconcile(ctx context.Context, svc ports.Catalog, log *zap.Logger) (ports.ReconcileReport, error) {
	rep, err := svc.Reconcile(model.WithActor(ctx, model.SystemActor("reconciler")))
	switch {
	case errors.Is(err, context.Canceled):
	case err != nil:
		log.Warn("reconcile failed", zap.Error(err))
	default:
		lvl := log.Debug
		if len(rep.DeletedOrphans)+len(rep.MissingClients)+len(rep.Failed) > 0 {
			lvl = log.Info
		}
		lvl("reconciled", zap.Strings("deleted_orphans", rep.DeletedOrphans),
			zap.Strings("missing_clients", rep.MissingClients), zap.Strings("failed", rep.Failed))
	}
	return rep, err
}

func warnAuthDisabled(cfg Config, log *zap.Logger) {
	if cfg.AuthDisabled {
		log.Warn("AUTH_DISABLED=true: the admin API accepts requests without a token; use only on a trusted network")
	}
}
