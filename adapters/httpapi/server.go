package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/recover"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/ports"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultAdminRole        = "mdm-admin"
	DefaultViewerRole       = "mdm-viewer"
	DefaultFirmwareMaxBytes = 16 << 20
	DefaultCoredumpMaxBytes = 1 << 20
	DefaultELFMaxBytes      = 512 << 20
	DefaultJSONMaxBytes     = 1 << 20
	DefaultIoTMaxBytes      = 4 << 10
	DefaultDrainTimeout     = 5 * time.Second
	DefaultRequestTimeout   = 30 * time.Second
	DefaultReadyTimeout     = 3 * time.Second
	DefaultReadTimeout      = 2 * time.Minute
	DefaultWriteTimeout     = 5 * time.Minute
	DefaultIdleTimeout      = 2 * time.Minute

	// multipartOverhead is what BodyLimit allows beyond FirmwareMaxBytes
	// for multipart boundaries and part headers.
	multipartOverhead = 64 << 10
)

// Config tunes the HTTP server. Zero values take the defaults above.
type Config struct {
	// AdminRole is required for writes and for provisioning data.
	AdminRole string
	// ViewerRole (or AdminRole) is required for reads.
	ViewerRole string
	// PipelineRole is required on the pipeline's routes, and a token
	// holding it (without AdminRole or ViewerRole) is refused elsewhere.
	PipelineRole string
	// AuthDisabled turns admin authentication off (trusted networks only;
	// the application logs a warning). The device API is always checked.
	AuthDisabled bool
	// FirmwareMaxBytes caps firmware uploads (413 beyond it).
	FirmwareMaxBytes int64
	// CoredumpMaxBytes caps a device's core dump (POST /iot/coredump),
	// ELFMaxBytes an uploaded ELF (413 beyond them).
	CoredumpMaxBytes int64
	ELFMaxBytes      int64
	// BaseURL, when set, is the OpenAPI document's server.
	BaseURL string
	// JSONMaxBytes caps the admin API's JSON request bodies (413 beyond
	// it).
	JSONMaxBytes int64
	// IoTMaxBytes caps request bodies on /iot/* and on admin routes that
	// take no body (413 beyond it).
	IoTMaxBytes int64
	// DrainMaxBytes and DrainTimeout bound what is read and discarded of a
	// body the server did not use (a refused or too-large request) before
	// the response, so that the client can read it; beyond them the
	// connection is closed. DrainMaxBytes defaults to twice the largest
	// body any route accepts, so that an upload somewhat over the limit
	// still gets its 413.
	DrainMaxBytes int64
	DrainTimeout  time.Duration
	// DeviceRate limits each device (by the client id of its verified
	// token) on /iot/*; UnauthRate limits each client address by its
	// refused (401) requests, and refuses an address that spent its
	// budget before checking its token. Either answers 429 with
	// Retry-After.
	DeviceRate RateLimit
	UnauthRate RateLimit
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client address (for UnauthRate and the access log); from any
	// other peer the header is ignored.
	TrustedProxies []netip.Prefix
	// RequestTimeout bounds the context every handler gets.
	RequestTimeout time.Duration
	// ReadyTimeout bounds the readiness checks as a whole.
	ReadyTimeout time.Duration
	// ReadTimeout, WriteTimeout and IdleTimeout are the connection
	// timeouts of the underlying server.
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	IdleTimeout  time.Duration
}

func (c Config) withDefaults() Config {
	if c.AdminRole == "" {
		c.AdminRole = DefaultAdminRole
	}
	if c.ViewerRole == "" {
		c.ViewerRole = DefaultViewerRole
	}
	if c.PipelineRole == "" {
		c.PipelineRole = DefaultPipelineRole
	}
	if c.FirmwareMaxBytes <= 0 {
		c.FirmwareMaxBytes = DefaultFirmwareMaxBytes
	}
	if c.CoredumpMaxBytes <= 0 {
		c.CoredumpMaxBytes = DefaultCoredumpMaxBytes
	}
	if c.ELFMaxBytes <= 0 {
		c.ELFMaxBytes = DefaultELFMaxBytes
	}
	if c.JSONMaxBytes <= 0 {
		c.JSONMaxBytes = DefaultJSONMaxBytes
	}
	if c.IoTMaxBytes <= 0 {
		c.IoTMaxBytes = DefaultIoTMaxBytes
	}
	if c.DrainMaxBytes <= 0 {
		c.DrainMaxBytes = 2 * (c.FirmwareMaxBytes + multipartOverhead)
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	c.DeviceRate = c.DeviceRate.withDefault(DefaultDeviceRate)
	c.UnauthRate = c.UnauthRate.withDefault(DefaultUnauthRate)
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	return c
}

// ReadyCheck is one readiness condition (database reachable, migrations
// applied, identity provider reachable, ...). Its error text is logged,
// never shown to the client.
type ReadyCheck struct {
	Name  string
	Check func(ctx context.Context) error
}

// Deps are the ports and infrastructure the server uses.
type Deps struct {
	// The admin use cases, a port per group of routes: device models,
	// their firmware, devices, a device's provisioning data and its
	// identity-provider client. All are required.
	Models       ports.ModelAdmin
	Firmware     ports.FirmwareAdmin
	DeviceAdmin  ports.DeviceAdmin
	Provisioning ports.ProvisioningAdmin
	Identity     ports.IdentityAdmin
	// Devices is the device API (/iot); required.
	Devices  ports.DeviceAPI
	Verifier ports.TokenVerifier
	// Rotation serves the admin rotation routes; nil answers them 503.
	Rotation ports.Rotation
	// Audit serves GET /api/audit; nil answers it 503.
	Audit ports.AuditReader
	// Coredumps serves the core dump routes and the ELF upload (SPEC §17);
	// nil answers them 503.
	Coredumps ports.Coredumps
	// Pipeline serves the CI pipeline's routes and Batch POST
	// /api/devices/batch (SPEC §18); nil answers them 503.
	Pipeline ports.PipelineFirmware
	Batch    ports.DeviceBatch
	// Fleet serves GET /api/fleet/firmware; nil answers it 503.
	Fleet ports.FleetReader
	// Campaigns serves the campaign routes (SPEC §16); nil answers them
	// 503.
	Campaigns ports.CampaignAdmin
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
	// Registerer receives the HTTP metrics; Gatherer is what /metrics
	// exposes. Both nil: a private registry serves both. Registerer nil
	// alone: the Gatherer's registry if it is one.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// ReadyChecks are run by /health/ready.
	ReadyChecks []ReadyCheck
	// Docs, when set, serves /api/docs instead of the built-in page (the
	// console's interactive Swagger UI).
	Docs fiber.Handler
}

// Server is the HTTP adapter. Create it with New.
type Server struct {
	cfg         Config
	models      ports.ModelAdmin
	firmware    ports.FirmwareAdmin
	deviceAdmin ports.DeviceAdmin
	provisioner ports.ProvisioningAdmin
	identity    ports.IdentityAdmin
	devices     ports.DeviceAPI
	rotation    ports.Rotation
	coredumps   ports.Coredumps
	audit       ports.AuditReader
	pipeline    ports.PipelineFirmware
	batch       ports.DeviceBatch
	fleet       ports.FleetReader
	campaigns   ports.CampaignAdmin
	verify      ports.TokenVerifier
	log         *zap.Logger
	gather      prometheus.Gatherer
	metrics     *httpMetrics
	ready       []ReadyCheck
	docs        fiber.Handler
	app         *fiber.App

	deviceLimit, addrLimit *limiter

	openAPI []byte
	// routeSet holds "METHOD /template" of every registered route.
	routeSet map[string]bool
	// query holds the declared query parameters of each route.
	query map[string]map[string]bool
	// draining is set by Shutdown: readiness fails from then on.
	draining atomic.Bool
}

// New builds the server and registers every route.
func New(cfg Config, deps Deps) (*Server, error) {
	cfg = cfg.withDefaults()
	if deps.Models == nil || deps.Firmware == nil || deps.DeviceAdmin == nil || deps.Provisioning == nil ||
		deps.Identity == nil || deps.Devices == nil {
		return nil, errors.New("httpapi: Models, Firmware, DeviceAdmin, Provisioning, Identity and Devices are required")
	}
	if deps.Verifier == nil {
		return nil, errors.New("httpapi: Verifier is required (the device API is always authenticated)")
	}
	for _, rc := range deps.ReadyChecks {
		if rc.Name == "" || rc.Check == nil {
			return nil, errors.New("httpapi: every ReadyCheck needs a Name and a Check")
		}
	}
	log := deps.Logger
	if log == nil {
		log = zap.NewNop()
	}
	reg, gat := deps.Registerer, deps.Gatherer
	switch {
	case reg == nil && gat == nil:
		r := prometheus.NewRegistry()
		reg, gat = r, r
	case reg == nil:
		r, ok := gat.(prometheus.Registerer)
		if !ok {
			return nil, errors.New("httpapi: Registerer is required when the Gatherer is not a registry")
		}
		reg = r
	case gat == nil:
		g, ok := reg.(prometheus.Gatherer)
		if !ok {
			return nil, errors.New("httpapi: Gatherer is required when the Registerer is not a registry")
		}
		gat = g
	}
	m, err := newHTTPMetrics(reg)
	if err != nil {
		return nil, err
	}

	s := &Server{
		cfg:         cfg,
		models:      deps.Models,
		firmware:    deps.Firmware,
		deviceAdmin: deps.DeviceAdmin,
		provisioner: deps.Provisioning,
		identity:    deps.Identity,
		devices:     deps.Devices,
		rotation:    deps.Rotation,
		coredumps:   deps.Coredumps,
		campaigns:   deps.Campaigns,
		audit:       deps.Audit,
		pipeline:    deps.Pipeline,
		batch:       deps.Batch,
		fleet:       deps.Fleet,
		verify:      deps.Verifier,
		log:         log.Named("http"),
		gather:      gat,
		metrics:     m,
		ready:       append([]ReadyCheck(nil), deps.ReadyChecks...),

		deviceLimit: newLimiter(cfg.DeviceRate),
		addrLimit:   newLimiter(cfg.UnauthRate),
		docs:        deps.Docs,
		query:       queryParams(),
	}
	if s.docs == nil {
		s.docs = s.docsHandler
	}
	spec, err := json.Marshal(openAPIDocument(cfg))
	if err != nil {
		return nil, err
	}
	s.openAPI = spec

	s.app = fiber.New(fiber.Config{
		AppName:      "espmdm",
		ErrorHandler: s.handleError,
		// Bodies are streamed: fasthttp reads at most 8 KiB of one before
		// the handler runs (and enforces no limit itself); routes declare
		// their limits with bodyLimit and read through readBody. Multipart
		// forms are parsed by the upload handler, never before it.
		StreamRequestBody:            true,
		DisablePreParseMultipartForm: true,
		BodyLimit:                    int(cfg.FirmwareMaxBytes + cfg.ELFMaxBytes + multipartOverhead),
		ReadTimeout:                  cfg.ReadTimeout,
		WriteTimeout:                 cfg.WriteTimeout,
		IdleTimeout:                  cfg.IdleTimeout,
		DisableStartupMessage:        true,
		// Strings from Params, Query and Get are copies, so nothing a
		// handler passes on aliases fasthttp's reused buffers. Raw bodies
		// are copied explicitly where they escape.
		Immutable:      true,
		StrictRouting:  true,
		CaseSensitive:  true,
		JSONEncoder:    json.Marshal,
		JSONDecoder:    json.Unmarshal,
		ReadBufferSize: 16 << 10,
	})
	s.app.Use(s.observe)
	s.app.Use(recover.New(recover.Config{EnableStackTrace: true, StackTraceHandler: s.logPanic}))
	s.routes()
	s.routeSet = map[string]bool{}
	for _, r := range s.app.GetRoutes(true) {
		s.routeSet[r.Method+" "+r.Path] = true
	}
	return s, nil
}

// App returns the underlying Fiber app (for tests and embedding).
func (s *Server) App() *fiber.App { return s.app }

// Serve serves HTTP on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	return s.app.Listener(ln)
}

// Shutdown stops accepting connections, fails readiness, and waits for
// in-flight requests to finish or ctx to expire.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	return s.app.ShutdownWithContext(ctx)
}

// routes registers every route. Each route names its own middleware so that
// unmatched paths are a plain 404 and the OpenAPI test sees every route.
func (s *Server) routes() {
	a := s.app
	read, write := s.requireAdminRole(false), s.requireAdminRole(true)

	a.Get("/health/live", s.live)
	a.Get("/health/ready", s.readyHandler)
	a.Get("/metrics", s.metricsHandler())

	a.Get("/api/openapi.json", s.openAPIHandler)
	a.Get("/api/docs", s.docs)

	// Every API route states the largest body it takes, checked against
	// Content-Length before the token is.
	small, js := bodyLimit(s.cfg.IoTMaxBytes), bodyLimit(s.cfg.JSONMaxBytes)
	// A firmware upload's multipart form may carry the ELF after the image.
	upload := bodyLimit(s.cfg.FirmwareMaxBytes + s.cfg.ELFMaxBytes + multipartOverhead)

	a.Get("/api/device-models", small, read, s.listModels)
	a.Post("/api/device-models", js, write, s.createModel)
	a.Get("/api/device-models/:id", small, read, s.getModel)
	a.Put("/api/device-models/:id", js, write, s.updateModel)
	a.Delete("/api/device-models/:id", small, write, s.deleteModel)
	a.Post("/api/device-models/:id/firmware", upload, write, s.uploadFirmware)
	a.Get("/api/device-models/:id/firmware", small, read, s.downloadFirmware)
	a.Get("/api/device-models/:id/firmware/versions", small, read, s.listFirmware)
	a.Post("/api/device-models/:id/firmware/:sha256/release", small, write, s.releaseFirmware)

	a.Get("/api/devices", small, read, s.listDevices)
	a.Post("/api/devices", js, write, s.createDevice)
	a.Get("/api/devices/:id", small, read, s.getDevice)
	a.Put("/api/devices/:id", js, write, s.updateDevice)
	a.Delete("/api/devices/:id", small, write, s.deleteDevice)
	// Provisioning data carries the device's client secret: admin only.
	a.Get("/api/devices/:id/provisioning", small, write, s.provisioning)
	a.Get("/api/devices/:id/identity", small, read, s.identityStatus)
	a.Post("/api/devices/:id/identity/sync", small, write, s.syncIdentity)
	a.Post("/api/devices/:id/rotate", small, write, s.rotateDevice)

	a.Post("/api/rotation/trigger", small, write, s.triggerRotation)
	a.Get("/api/rotation/status", small, read, s.rotationStatus)
	a.Get("/api/rotation/dashboard", small, read, s.rotationDashboard)

	a.Get("/api/audit", small, read, s.listAudit)

	a.Put("/api/device-models/:id/firmware/:sha256/elf", bodyLimit(s.cfg.ELFMaxBytes), write, s.uploadELF)
	a.Get("/api/devices/:id/coredumps", small, read, s.listCoredumps)
	a.Get("/api/device-models/:id/crashes", small, read, s.modelCrashes)
	a.Get("/api/coredumps/:id", small, read, s.getCoredump)
	a.Get("/api/coredumps/:id/download", small, read, s.downloadCoredump)
	a.Delete("/api/coredumps/:id", small, write, s.deleteCoredump)
	a.Post("/iot/coredump", bodyLimit(s.cfg.CoredumpMaxBytes), s.requireDevice, s.iotCoredump)
	a.Get("/api/fleet/firmware", small, read, s.fleetFirmware)
	s.pipelineRoutes()
	s.batchRoutes()
	s.campaignRoutes()

	a.Get("/iot/config", small, s.requireDevice, s.iotConfig)
	a.Get("/iot/firmware", small, s.requireDevice, s.iotFirmware)
	a.Get("/iot/firmware-version", small, s.requireDevice, s.iotFirmwareVersion)
	a.Get("/iot/provisioning", small, s.requireDevice, s.iotProvisioning)
	a.Post("/iot/provisioning/ack", small, s.requireDevice, s.iotProvisioningAck)
	a.Post("/iot/state", small, s.requireDevice, s.iotState)
}
