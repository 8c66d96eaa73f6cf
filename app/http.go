package app

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/espmdm/espmdm/adapters/console"
	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/ports"
	"go.uber.org/fx"
	"go.uber.org/zap"
)

// The HTTP server: its construction from the configuration and its
// listener's lifecycle.

type httpParams struct {
	fx.In
	Cfg          Config
	Log          *zap.Logger
	Metrics      *Metrics
	Models       ports.ModelAdmin
	Firmware     ports.FirmwareAdmin
	DeviceAdmin  ports.DeviceAdmin
	Provisioning ports.ProvisioningAdmin
	Identity     ports.IdentityAdmin
	Devices      ports.DeviceAPI
	Rotation     ports.Rotation
	Audit        ports.AuditReader
	Pipeline     ports.PipelineFirmware
	Batch        ports.DeviceBatch
	Fleet        ports.FleetReader
	Campaigns    ports.CampaignAdmin
	Coredumps    ports.Coredumps
	Verifier     ports.TokenVerifier
	DB           *postgres.DB
	Keycloak     *keycloak.Admin
	Blobs        ports.BlobStore
	Console      *console.Handler
}

func newHTTPServer(p httpParams) (*httpapi.Server, error) {
	return httpapi.New(httpapi.Config{
		AdminRole:        p.Cfg.AdminRole,
		ViewerRole:       p.Cfg.ViewerRole,
		PipelineRole:     p.Cfg.PipelineRole,
		AuthDisabled:     p.Cfg.AuthDisabled,
		FirmwareMaxBytes: p.Cfg.FirmwareMaxBytes,
		CoredumpMaxBytes: p.Cfg.CoredumpMaxBytes,
		ELFMaxBytes:      p.Cfg.ELFMaxBytes,
		JSONMaxBytes:     p.Cfg.JSONMaxBytes,
		IoTMaxBytes:      p.Cfg.IoTMaxBytes,
		DeviceRate:       rateLimit(p.Cfg.DeviceRateLimit, p.Cfg.DeviceRateBurst),
		UnauthRate:       rateLimit(p.Cfg.UnauthRateLimit, p.Cfg.UnauthRateBurst),
		TrustedProxies:   p.Cfg.TrustedProxies,
		BaseURL:          p.Cfg.BaseURL,
	}, httpapi.Deps{
		Models: p.Models, Firmware: p.Firmware, DeviceAdmin: p.DeviceAdmin, Provisioning: p.Provisioning, Identity: p.Identity,
		Devices: p.Devices, Verifier: p.Verifier, Rotation: p.Rotation, Audit: p.Audit, Fleet: p.Fleet, Campaigns: p.Campaigns,
		Coredumps: p.Coredumps, Pipeline: p.Pipeline, Batch: p.Batch,
		Logger: p.Log.Named("http"), Registerer: p.Metrics.Registry, Gatherer: p.Metrics.Registry,
		Docs:        p.Console.DocsPage(),
		ReadyChecks: readyChecks(p.DB, p.Keycloak, p.Blobs),
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
