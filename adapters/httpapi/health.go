package httpapi

import (
	"context"
	_ "embed"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

type statusDTO struct {
	Status string `json:"status"`
}

func (s *Server) live(c *fiber.Ctx) error {
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(statusDTO{Status: "live"})
}

// readyHandler runs every ReadyCheck concurrently under ReadyTimeout. The
// failed check names are reported; their errors are only logged.
func (s *Server) readyHandler(c *fiber.Ctx) error {
	c.Set(fiber.HeaderCacheControl, "no-store")
	if s.draining.Load() {
		return &httpError{status: http.StatusServiceUnavailable, kind: "not-ready", detail: "the server is shutting down"}
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), s.cfg.ReadyTimeout)
	defer cancel()

	var (
		mu     sync.Mutex
		failed []string
		wg     sync.WaitGroup
	)
	log := requestLogger(c, s.log)
	for _, rc := range s.ready {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := runCheck(ctx, rc)
			if err == nil {
				return
			}
			log.Warn("readiness check failed", zap.String("check", rc.Name), zap.Error(err))
			mu.Lock()
			failed = append(failed, rc.Name)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		sort.Strings(failed)
		return &httpError{
			status: http.StatusServiceUnavailable, kind: "not-ready",
			detail: "not ready: " + strings.Join(failed, ", "), checks: failed,
		}
	}
	return c.JSON(statusDTO{Status: "ready"})
}

// runCheck runs one check, giving up when ctx expires even if the check
// ignores its context, and turning a panic into a failure.
func runCheck(ctx context.Context, rc ReadyCheck) error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- errPanicked
			}
		}()
		done <- rc.Check(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type checkError string

func (e checkError) Error() string { return string(e) }

const errPanicked = checkError("readiness check panicked")

func (s *Server) metricsHandler() fiber.Handler {
	return adaptor.HTTPHandler(promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{}))
}

func (s *Server) openAPIHandler(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(s.openAPI)
}

//go:embed docs.html
var docsPage []byte

func (s *Server) docsHandler(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	c.Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
	return c.Send(docsPage)
}
