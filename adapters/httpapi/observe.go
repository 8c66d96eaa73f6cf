package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// HeaderRequestID carries the request id in both directions.
const HeaderRequestID = "X-Request-ID"

// routeUnmatched labels requests no route matched, so that raw paths never
// become metric labels.
const routeUnmatched = "unmatched"

type ctxKey int

const requestIDKey ctxKey = iota

const (
	localLogger = "espmdm.logger"
	localReqID  = "espmdm.request_id"
)

// RequestID returns the request id that the server put into a handler's
// context, or "" outside a request.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

// validRequestID accepts a client's id only when it is short and harmless
// in logs and headers.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		ch := id[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9':
		case ch == '-' || ch == '_' || ch == '.' || ch == ':' || ch == '/' || ch == '+' || ch == '=':
		default:
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go >= 1.24)
	return hex.EncodeToString(b[:])
}

// observe is the outermost middleware: request id, per-request logger and
// timeout context, error rendering (so the status is final when it is
// measured), metrics and the access log.
func (s *Server) observe(c *fiber.Ctx) error {
	start := time.Now()
	id := c.Get(HeaderRequestID)
	if !validRequestID(id) {
		id = newRequestID()
	}
	c.Set(HeaderRequestID, id)
	c.Locals(localReqID, id)
	log := s.log.With(zap.String("request_id", id))
	c.Locals(localLogger, log)

	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), requestIDKey, id), s.cfg.RequestTimeout)
	defer cancel()
	c.SetUserContext(ctx)

	if err := c.Next(); err != nil {
		if herr := s.handleError(c, err); herr != nil {
			log.Error("writing error response", zap.Error(herr))
			c.Status(fiber.StatusInternalServerError)
		}
	}
	s.drainBody(c)

	status := c.Response().StatusCode()
	method := c.Method()
	route := routeUnmatched
	// After an unmatched request c.Route() is the last middleware passed
	// (path "/"): only registered routes become labels.
	if r := c.Route(); r != nil && s.routeSet[method+" "+r.Path] {
		route = routeTemplate(r.Path)
	}
	elapsed := time.Since(start)
	s.metrics.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
	s.metrics.duration.WithLabelValues(method, route).Observe(elapsed.Seconds())

	level := zap.InfoLevel
	switch {
	case route == "/health/live" || route == "/health/ready" || route == "/metrics":
		level = zap.DebugLevel
	case status >= 500:
		level = zap.WarnLevel
	}
	if ce := log.Check(level, "http request"); ce != nil {
		fields := []zap.Field{
			zap.String("method", method),
			zap.String("route", route),
			zap.String("path", c.Path()),
			zap.Int("status", status),
			zap.Duration("duration", elapsed),
			zap.Int("request_bytes", max(c.Request().Header.ContentLength(), 0)),
			zap.String("remote", s.clientAddr(c)),
		}
		if sub, ok := c.Locals(localSubject).(string); ok && sub != "" {
			fields = append(fields, zap.String("subject", sub))
		}
		ce.Write(fields...)
	}
	return nil
}

// logPanic records a recovered panic with its stack; the client gets the
// generic 500 from the error handler.
func (s *Server) logPanic(c *fiber.Ctx, v any) {
	requestLogger(c, s.log).Error("panic in handler",
		zap.String("panic", fmt.Sprint(v)), zap.ByteString("stack", debug.Stack()))
}

func requestLogger(c *fiber.Ctx, fallback *zap.Logger) *zap.Logger {
	if l, ok := c.Locals(localLogger).(*zap.Logger); ok {
		return l
	}
	return fallback
}

// routeTemplate writes a Fiber route in the OpenAPI document's form:
// /api/devices/:id is /api/devices/{id}, the label dashboards and the
// document share.
func routeTemplate(path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if name, ok := strings.CutPrefix(p, ":"); ok {
			parts[i] = "{" + name + "}"
		}
	}
	return strings.Join(parts, "/")
}

// httpMetrics are the per-route request metrics.
type httpMetrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	rateLimited *prometheus.CounterVec
}

func newHTTPMetrics(reg prometheus.Registerer) (*httpMetrics, error) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "espmdm_http_requests_total",
		Help: "HTTP requests by method, route template and status code.",
	}, []string{"method", "route", "status"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "espmdm_http_request_duration_seconds",
		Help:    "HTTP request latency by method and route template.",
		Buckets: prometheus.DefBuckets,
	}, []string{"method", "route"})
	limited := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "espmdm_http_rate_limited_total",
		Help: "Requests refused with 429, by limit (device, address).",
	}, []string{"limit"})
	var err error
	if limited, err = register(reg, limited); err != nil {
		return nil, err
	}
	limited.WithLabelValues("device")
	limited.WithLabelValues("address")
	if requests, err = register(reg, requests); err != nil {
		return nil, err
	}
	if duration, err = register(reg, duration); err != nil {
		return nil, err
	}
	return &httpMetrics{requests: requests, duration: duration, rateLimited: limited}, nil
}

// register registers c, or reuses the collector already registered under
// the same description (a second Server on the same registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("httpapi: registering metrics: %w", err)
	}
	return c, nil
}
