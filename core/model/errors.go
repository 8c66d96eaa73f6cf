package model

import (
	"errors"
	"fmt"
)

// Domain error sentinels. Adapters translate infrastructure errors into these
// at their boundary; callers test them with errors.Is.
var (
	// ErrNotFound means the addressed entity does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict means the request conflicts with the current state
	// (duplicate code or key, a model that still has devices, ...).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable means a dependency (database, identity provider,
	// broker) could not be reached or failed.
	ErrUnavailable = errors.New("dependency unavailable")
	// ErrUnauthenticated means credentials are missing, malformed, forged
	// or expired.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrForbidden means the caller is known but not allowed (missing role,
	// inactive device).
	ErrForbidden = errors.New("forbidden")
	// ErrTooLarge means an input exceeds a configured size limit.
	ErrTooLarge = errors.New("too large")
)

// ValidationError reports one invalid input field. It is safe to show to the
// client: Reason never contains secrets.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return fmt.Sprintf("%s: %s", e.Field, e.Reason)
}

// Invalid returns a *ValidationError for field.
func Invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// UnavailableError wraps a dependency failure with the name of the
// dependency ("keycloak", "postgres", "mqtt"). It matches ErrUnavailable.
type UnavailableError struct {
	Service string
	Err     error
}

func (e *UnavailableError) Error() string { return e.Service + " unavailable: " + e.Err.Error() }
func (e *UnavailableError) Unwrap() error { return e.Err }

// ServiceDatabase is the Service of a database failure: espmdm's own
// store, so the HTTP API answers 503 (not ready) rather than 502.
const ServiceDatabase = "postgres"

// Is reports ErrUnavailable as matching.
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }

// ConflictError is a conflict with a reason that is safe to show to the
// client (it names ids and codes, never a secret). It matches ErrConflict.
// Field, when set, names the input that conflicts with the current state:
// a well-formed value that the state refuses (a referenced resource that
// does not exist, a config that the model's schema does not accept).
type ConflictError struct {
	Reason string
	Field  string
}

func (e *ConflictError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// Is reports ErrConflict as matching.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Conflict returns a *ConflictError with the formatted reason.
func Conflict(format string, args ...any) error {
	return &ConflictError{Reason: fmt.Sprintf(format, args...)}
}

// ConflictOn returns a *ConflictError about the input field.
func ConflictOn(field, format string, args ...any) error {
	return &ConflictError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
