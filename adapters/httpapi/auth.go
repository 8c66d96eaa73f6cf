package httpapi

import (
	"errors"
	"fmt"
	"strings"

	"github.com/gofiber/fiber/v2"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/core/model"
)

const (
	localSubject = "espmdm.subject"
	localDevice  = "espmdm.device"
	localClaims  = "espmdm.claims"
)

// errNoToken is a request without a bearer token.
var errNoToken = fmt.Errorf("no bearer token: %w", model.ErrUnauthenticated)

// bearerToken extracts the token of an "Authorization: Bearer" header.
func bearerToken(c *fiber.Ctx) (string, error) {
	h := strings.TrimSpace(c.Get(fiber.HeaderAuthorization))
	if h == "" {
		return "", errNoToken
	}
	scheme, token, ok := strings.Cut(h, " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" || strings.ContainsAny(token, " \t") {
		return "", fmt.Errorf("malformed bearer credentials (want: Bearer <token>): %w", model.ErrUnauthenticated)
	}
	// Copied: the verifier may keep it (a cache key) beyond this request.
	return strings.Clone(token), nil
}

// authFailure narrows a verifier or authentication error to what a client
// may see: unavailable stays a 502, forbidden a 403, anything else is a 401
// (never a 500: a device must not mistake a refusal for a server fault).
// Unexpected causes are logged here, since the client only sees the 401.
//
// A refusal's reason (expired, bad signature, wrong issuer or audience, a
// device token on the admin API, an unknown or inactive device — a few
// words, never the token) is logged at info with the request id, so that
// an admin can tell why a client gets its 401 or 403.
func (s *Server) authFailure(c *fiber.Ctx, err error) error {
	switch {
	case errors.Is(err, model.ErrUnavailable):
		return err
	case errors.Is(err, model.ErrForbidden), errors.Is(err, model.ErrUnauthenticated):
		if errors.Is(err, model.ErrUnauthenticated) {
			s.addrLimit.take(s.clientAddr(c))
		}
		lvl := requestLogger(c, s.log).Info
		if errors.Is(err, errNoToken) {
			lvl = requestLogger(c, s.log).Debug // probes and browsers, mostly
		}
		lvl("authentication refused", zap.String("reason", err.Error()), zap.String("route", routeTemplate(c.Route().Path)))
		return err
	}
	requestLogger(c, s.log).Warn("authentication failed unexpectedly", zap.Error(err))
	s.addrLimit.take(s.clientAddr(c))
	return fmt.Errorf("%w: %w", model.ErrUnauthenticated, err)
}

// requireAdminRole authenticates an admin API caller: write routes need
// the admin role, read routes the viewer or the admin role.
func (s *Server) requireAdminRole(write bool) fiber.Handler {
	return func(c *fiber.Ctx) error {
		if s.cfg.AuthDisabled {
			c.SetUserContext(model.WithActor(c.UserContext(), model.Actor{Type: model.ActorAdmin, Name: "(admin auth disabled)"}))
			if err := s.checkQuery(c); err != nil {
				return err
			}
			return c.Next()
		}
		if err := s.checkAddress(c); err != nil {
			return err
		}
		token, err := bearerToken(c)
		if err != nil {
			return s.authFailure(c, err)
		}
		p, err := s.verify.VerifyAdmin(c.UserContext(), token)
		if err != nil {
			return s.authFailure(c, err)
		}
		c.Locals(localSubject, subjectOf(p))
		c.SetUserContext(model.WithActor(c.UserContext(), model.AdminActor(p)))
		allowed := p.HasRole(s.cfg.AdminRole) || (!write && p.HasRole(s.cfg.ViewerRole))
		if !allowed {
			requestLogger(c, s.log).Info("admin API caller lacks the role",
				zap.String("subject", subjectOf(p)), zap.Bool("write", write))
			need := "the realm role " + s.cfg.AdminRole
			if !write {
				need = "the realm role " + s.cfg.ViewerRole + " or " + s.cfg.AdminRole
			}
			detail := "this needs " + need
			if p.HasRole(s.cfg.PipelineRole) {
				detail = s.pipelineOnly(need)
			}
			return &httpError{status: fiber.StatusForbidden, kind: "forbidden", detail: detail}
		}
		if err := s.checkQuery(c); err != nil {
			return err
		}
		return c.Next()
	}
}

func subjectOf(p model.Principal) string {
	if p.ClientID != "" && p.Subject == "" {
		return p.ClientID
	}
	return p.Subject
}

// requireDevice authenticates a device: token verification, then the
// device must exist, be active and match the token's model.
func (s *Server) requireDevice(c *fiber.Ctx) error {
	if err := s.checkAddress(c); err != nil {
		return err
	}
	token, err := bearerToken(c)
	if err != nil {
		return s.authFailure(c, err)
	}
	claims, err := s.verify.VerifyDevice(c.UserContext(), token)
	if err != nil {
		return s.authFailure(c, err)
	}
	if ok, retry := s.deviceLimit.take(claims.ClientID); !ok {
		s.metrics.rateLimited.WithLabelValues("device").Inc()
		requestLogger(c, s.log).Info("device over its request rate", zap.String("client_id", claims.ClientID))
		return rateLimited("from this device", retry)
	}
	d, err := s.devices.AuthenticateDevice(c.UserContext(), claims)
	if err != nil {
		return s.authFailure(c, err)
	}
	c.Locals(localSubject, claims.ClientID)
	c.Locals(localDevice, d)
	c.Locals(localClaims, claims)
	return c.Next()
}

// checkAddress refuses, before its token is verified, a request from an
// address that has spent its budget of refused requests.
func (s *Server) checkAddress(c *fiber.Ctx) error {
	if ok, retry := s.addrLimit.check(s.clientAddr(c)); !ok {
		s.metrics.rateLimited.WithLabelValues("address").Inc()
		return rateLimited("refused from this address", retry)
	}
	return nil
}
