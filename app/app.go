package app

import (
	"context"
	"fmt"
	"net/url"
	"runtime"
	"time"

	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/clock"
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
// (*mdm.Service and each inbound port it implements), without the HTTP
// server.
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
			postgres.NewDeviceRepo,
			newDeviceRepo,
			fx.Annotate(postgres.NewFirmwareRepo, fx.As(new(ports.FirmwareRepo)), fx.As(new(ports.FirmwareELFs))),
			fx.Annotate(postgres.NewAuditLog, fx.As(new(ports.AuditLog))),
			newBlobStore,
			fx.Annotate(clock.New, fx.As(new(ports.Clock))),
			fx.Annotate(newSecretBox, fx.As(new(ports.SecretBox))),
			fx.Annotate(newKeycloakAdmin, fx.As(fx.Self()), fx.As(new(ports.DeviceClients)), fx.As(new(ports.ClientDirectory)),
				fx.As(new(ports.SecretRotator)), fx.As(new(ports.RotationPolicyReader))),
			fx.Annotate(newVerifier, fx.As(new(ports.TokenVerifier))),
			newNotifier,
			newBrokerAccounts,
			fx.Annotate(newService, fx.As(fx.Self()),
				fx.As(new(ports.ModelAdmin)), fx.As(new(ports.FirmwareAdmin)), fx.As(new(ports.DeviceAdmin)),
				fx.As(new(ports.ProvisioningAdmin)), fx.As(new(ports.IdentityAdmin)), fx.As(new(ports.Reconciler)),
				fx.As(new(ports.DeviceAPI)), fx.As(new(ports.Rotation)), fx.As(new(ports.AuditReader)), fx.As(new(ports.FleetReader)),
				fx.As(new(ports.Coredumps)), fx.As(new(ports.PipelineFirmware)), fx.As(new(ports.DeviceBatch)),
				fx.As(new(ports.CampaignAdmin))),
		),
		rotationProviders(),
		coredumpProviders(),
		campaignProviders(),
		fx.Invoke(registerFleetMetrics),
	)
}

// Server adds the HTTP server and the periodic reconciler to Core.
func Server() fx.Option {
	return fx.Options(
		fx.Provide(newHTTPServer),
		fx.Invoke(registerHTTP, registerReconciler, registerRotation, registerCoredumpWorkers, registerCampaignWorker, warnAuthDisabled),
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

// dbPoolSize is the database pool's size: 4 per CPU (the adapter's
// default), and at least twice KEYCLOAK_MAX_CONCURRENCY plus 4. A
// rotation step calls Keycloak with its device row locked (so that a
// secret is never generated twice), holding a connection for the call and
// its wait for a Keycloak slot: a pool no larger than the Keycloak slots
// would leave the device API's lookups waiting behind them.
func dbPoolSize(cfg Config) int {
	return max(4*runtime.GOMAXPROCS(0), 2*cfg.KeycloakMaxConcurrency+4)
}

func newDB(lc fx.Lifecycle, cfg Config, log *zap.Logger) (*postgres.DB, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.WithMaxOpenConns(dbPoolSize(cfg)))
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
func (silentNotifier) FirmwareAssigned(context.Context, string, string, string) error {
	return nil
}

type serviceParams struct {
	fx.In
	Cfg       Config
	Log       *zap.Logger
	Metrics   *Metrics
	Models    ports.ModelRepo
	Devices   ports.DeviceRepo
	Firmware  ports.FirmwareRepo
	Blobs     ports.BlobStore
	Coredumps ports.CoredumpRepo
	ELFs      ports.FirmwareELFs
	Analyzer  ports.CoredumpAnalyzer
	Clients   ports.DeviceClients
	Directory ports.ClientDirectory
	Rotator   ports.SecretRotator
	Policy    ports.RotationPolicyReader
	Notifier  ports.Notifier
	Broker    ports.BrokerAccounts
	Clock     ports.Clock
	Box       ports.SecretBox
	Schedule  ports.Schedule
	Fires     ports.ScheduleRepo
	Lease     ports.Lease
	Audit     ports.AuditLog
	Rotation  *RotationMetrics
	Campaigns ports.CampaignRepo
	Campaign  *CampaignMetrics
}

func newService(p serviceParams) *mdm.Service {
	log := p.Log.Named("core")
	return mdm.New(mdm.Deps{
		Models: p.Models, Devices: p.Devices, Firmware: p.Firmware, Blobs: p.Blobs,
		Coredumps: p.Coredumps, ELFs: p.ELFs, Analyzer: p.Analyzer,
		Clients: p.Clients, Directory: p.Directory, Rotator: p.Rotator, Policy: p.Policy,
		Notifier: p.Notifier, Broker: p.Broker, Clock: p.Clock,
		SecretBox: p.Box, Schedule: p.Schedule, ScheduleRepo: p.Fires, Lease: p.Lease, Audit: p.Audit,
		OnRotation: p.Rotation.onRotation(p.Log.Named("rotation")),
		Campaigns:  p.Campaigns, OnCampaign: p.Campaign.onCampaign(p.Log.Named("campaign")),
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
		FirmwareMaxBytes: p.Cfg.FirmwareMaxBytes,
		CoredumpMaxBytes: p.Cfg.CoredumpMaxBytes, CoredumpKeep: p.Cfg.CoredumpKeep,
		CoredumpTimeout: p.Cfg.CoredumpTimeout, ELFMaxBytes: p.Cfg.ELFMaxBytes, CoredumpRetry: p.Cfg.CoredumpPoll,
		RotationMode:        model.RotationMode(p.Cfg.RotationMode),
		RotationConcurrency: p.Cfg.RotationConcurrency, RotationTimeout: p.Cfg.RotationTimeout,
		RotationFetchTimeout: p.Cfg.RotationFetchTimeout,
		RotationRetry:        p.Cfg.RotationRetry, RotationGrace: p.Cfg.RotationGrace,
		RotationWarningAge: p.Cfg.RotationWarningAge, RotationCriticalAge: p.Cfg.RotationCriticalAge,
		// Keycloak's requests are bounded by its adapter (KEYCLOAK_MAX_CONCURRENCY
		// in flight, shared with rotation and the reconciler); twice as many
		// devices in progress let their broker and database steps overlap
		// Keycloak's.
		BatchConcurrency: 2 * p.Cfg.KeycloakMaxConcurrency,
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

func warnAuthDisabled(cfg Config, log *zap.Logger) {
	if cfg.AuthDisabled {
		log.Warn("AUTH_DISABLED=true: the admin API accepts requests without a token; use only on a trusted network")
	}
}
