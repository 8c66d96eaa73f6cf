package app

import (
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/console"
	"github.com/espmdm/espmdm/adapters/httpapi"
)

// consoleModule serves the web console (adapters/console) on the HTTP
// server's router, beside the API.
func consoleModule() fx.Option {
	return fx.Options(
		fx.Provide(func(cfg Config) (*console.Handler, error) {
			return console.New(console.Config{IssuerURL: cfg.OIDCIssuerURL, AdminRole: cfg.AdminRole, ViewerRole: cfg.ViewerRole})
		}),
		fx.Invoke(func(srv *httpapi.Server, h *console.Handler, log *zap.Logger) {
			h.Register(srv.App())
			if !h.Built() {
				log.Warn("this binary has no console built in: /console/ says so; make build builds it")
			}
		}),
	)
}
