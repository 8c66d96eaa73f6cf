package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/gofiber/fiber/v2"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/core/model"
)

// This file is the one place where errors become HTTP responses.

// ContentTypeProblem is the media type of every error response (RFC 9457).
const ContentTypeProblem = "application/problem+json"

// problemTypePrefix starts every problem "type" URI. They are URNs: stable
// identifiers for clients to switch on, not links.
const problemTypePrefix = "urn:espmdm:problem:"

// Problem is the body of an error response.
type Problem struct {
	Type   string `json:"type" desc:"urn:espmdm:problem:<kind>"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	// Field is the invalid input field of a validation problem.
	Field string `json:"field,omitempty" desc:"the invalid input, for validation problems"`
	// FailedChecks names the readiness checks that failed (503 only).
	FailedChecks []string `json:"failed_checks,omitempty"`
	// RequestID repeats the X-Request-ID header, for support requests.
	RequestID string `json:"request_id,omitempty"`
}

// httpError is an error raised by this package with a status and a detail
// written here, hence safe to show.
type httpError struct {
	status int
	kind   string
	detail string
	field  string
	checks []string
	// header is set on the response (e.g. Allow, Content-Range).
	header, value string
}

func (e *httpError) Error() string { return e.detail }

func badRequest(kind, detail string) error {
	return &httpError{status: http.StatusBadRequest, kind: kind, detail: detail}
}

// errMalformedJSON is a body that is not the JSON the route expects.
func errMalformedJSON(detail string) error { return badRequest("malformed-request", detail) }

// problemFor maps err to a problem, and reports whether it is unexpected
// (logged as an error).
func problemFor(err error) (p Problem, unexpected bool) {
	var (
		ve *model.ValidationError
		ce *model.ConflictError
		he *httpError
		fe *fiber.Error
		ue *model.UnavailableError
	)
	switch {
	case errors.As(err, &he):
		p = newProblem(he.status, he.kind, he.detail)
		p.Field, p.FailedChecks = he.field, he.checks
	case errors.As(err, &ve):
		p = newProblem(http.StatusBadRequest, "validation", ve.Error())
		p.Field = ve.Field
	case errors.As(err, &ue) && ue.Service == model.ServiceBlobStore, errors.Is(err, model.ErrBlobNotFound):
		// espmdm's own storage, like the database: the store is down, or
		// a blob the database records is missing from it (the API reaches
		// blobs only through their records). Never a 404 that would tell
		// a device there is no firmware, and never a wrong body.
		p = newProblem(http.StatusServiceUnavailable, "blob-store-unavailable", "the blob store is unavailable; retry later")
		return p, true
	case errors.Is(err, model.ErrTooLarge):
		p = newProblem(http.StatusRequestEntityTooLarge, "too-large", "the request body exceeds the configured size limit")
	case errors.Is(err, model.ErrNotFound):
		p = newProblem(http.StatusNotFound, "not-found", "the requested resource does not exist")
	case errors.As(err, &ce):
		p = newProblem(http.StatusConflict, "conflict", ce.Reason)
		p.Field = ce.Field
	case errors.Is(err, model.ErrConflict):
		p = newProblem(http.StatusConflict, "conflict", "the request conflicts with the current state of the resource")
	case errors.Is(err, model.ErrUnauthenticated):
		p = newProblem(http.StatusUnauthorized, "unauthenticated", "a valid bearer token is required")
	case errors.Is(err, model.ErrForbidden):
		p = newProblem(http.StatusForbidden, "forbidden", "the caller is not allowed to do this")
	case errors.As(err, &ue) && ue.Service == model.ServiceDatabase:
		// espmdm's own store: not ready until it is back.
		p = newProblem(http.StatusServiceUnavailable, "database-unavailable", "the database is unavailable; retry later")
		return p, true
	case errors.Is(err, model.ErrUnavailable):
		p = newProblem(http.StatusBadGateway, "upstream-unavailable", "a dependency (identity provider, database or broker) failed; retry later")
		return p, true
	case errors.Is(err, context.DeadlineExceeded):
		p = newProblem(http.StatusGatewayTimeout, "timeout", "the request took too long and was abandoned")
		return p, true
	case errors.As(err, &fe):
		p = fiberProblem(fe.Code)
		return p, fe.Code >= 500
	default:
		p = newProblem(http.StatusInternalServerError, "internal", "an internal error occurred; the request id identifies it in the server logs")
		return p, true
	}
	return p, p.Status >= 500
}

// fiberProblem maps Fiber's and fasthttp's own errors by status only: their
// messages may quote request data and are never echoed.
func fiberProblem(code int) Problem {
	switch code {
	case http.StatusNotFound:
		return newProblem(code, "not-found", "no route matches this method and path")
	case http.StatusMethodNotAllowed:
		return newProblem(code, "method-not-allowed", "the route does not support this method")
	case http.StatusRequestEntityTooLarge:
		return newProblem(code, "too-large", "the request body exceeds the configured size limit")
	case http.StatusRequestHeaderFieldsTooLarge:
		return newProblem(code, "headers-too-large", "the request headers are too large")
	case http.StatusRequestTimeout:
		return newProblem(code, "timeout", "the request was not received in time")
	}
	if code < 400 || code > 599 {
		code = http.StatusInternalServerError
	}
	if code >= 500 {
		return newProblem(code, "internal", "an internal error occurred; the request id identifies it in the server logs")
	}
	return newProblem(code, "bad-request", "the request could not be processed")
}

// tokenProblem is the RFC 6750 error_description of a refused token: a
// fixed phrase for the kind of refusal, which tells the caller nothing its
// own token does not (never the token, nor an expected issuer or key).
func tokenProblem(err error) string {
	msg := strings.ToLower(err.Error())
	for _, k := range []struct{ has, say string }{
		{"expired", "the token has expired"},
		{"not valid yet", "the token is not valid yet"},
		{"issuer", "the token is from another issuer"},
		{"audience", "the token lacks the audience this API needs"},
		{"a device token", "a device token is not accepted by the admin API"},
		{"is a device", "a device token is not accepted by the admin API"},
		{"unknown device", "the token's device is not known"},
		{"another device model", "the token's device is not known"},
		{"malformed bearer", "the Authorization header is not Bearer <token>"},
	} {
		if strings.Contains(msg, k.has) {
			return k.say
		}
	}
	return "the token was refused"
}

func newProblem(status int, kind, detail string) Problem {
	return Problem{Type: problemTypePrefix + kind, Title: http.StatusText(status), Status: status, Detail: detail}
}

// handleError is the Fiber ErrorHandler: it writes err as problem+json.
func (s *Server) handleError(c *fiber.Ctx, err error) error {
	p, unexpected := problemFor(err)
	log := requestLogger(c, s.log)
	if unexpected {
		log.Error("request failed", zap.String("method", c.Method()), zap.String("path", c.Path()),
			zap.Int("status", p.Status), zap.Error(err))
	} else if p.Status == http.StatusUnauthorized || p.Status == http.StatusForbidden {
		log.Debug("request refused", zap.Int("status", p.Status), zap.Error(err))
	}
	if id, ok := c.Locals(localReqID).(string); ok {
		p.RequestID = id
	}

	var he *httpError
	if errors.As(err, &he) && he.header != "" {
		c.Set(he.header, he.value)
	}
	if p.Status == http.StatusServiceUnavailable {
		c.Set(fiber.HeaderRetryAfter, "5")
	}
	if p.Status == http.StatusUnauthorized {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="espmdm"`)
		if !errors.Is(err, errNoToken) {
			c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="espmdm", error="invalid_token", error_description="`+tokenProblem(err)+`"`)
		}
	}
	// Headers describing a body that is not sent any more.
	for _, h := range []string{fiber.HeaderETag, fiber.HeaderContentDisposition, fiber.HeaderLastModified, fiber.HeaderAcceptRanges} {
		c.Response().Header.Del(h)
	}
	body, merr := json.Marshal(p)
	if merr != nil {
		return merr
	}
	c.Status(p.Status)
	c.Set(fiber.HeaderContentType, ContentTypeProblem)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Send(body)
}
