package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/espmdm/espmdm/core/model"
)

// fkMeaning says what a foreign-key violation (23503) means for the
// statement at hand.
type fkMeaning int

const (
	fkNone       fkMeaning = iota // not expected: report as a database error
	fkMissingRef                  // insert referring to a missing row: ErrNotFound
	fkInUse                       // delete of a row still referred to: ErrConflict
)

// translate maps a database error to a domain error, prefixed with op
// ("get device 12"). nil stays nil. Messages carry SQLSTATE, constraint,
// table and column names only: no SQL and no values.
func translate(op string, err error, fk fkMeaning) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("postgres: %s: %w", op, model.ErrNotFound)
	}
	var pgErr pgdriver.Error
	if errors.As(err, &pgErr) {
		return translatePG(op, pgErr, fk)
	}
	if errors.Is(err, context.Canceled) {
		// The caller gave up; the database is not at fault.
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	if isConnectionError(err) {
		return &model.UnavailableError{Service: model.ServiceDatabase, Err: fmt.Errorf("%s: %w", op, err)}
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

func translatePG(op string, e pgdriver.Error, fk fkMeaning) error {
	code := e.Field('C')
	constraint := e.Field('n')
	switch {
	case code == "23505": // unique_violation
		return fmt.Errorf("postgres: %s: %s already exists (%s): %w", op, uniqueSubject(constraint), constraint, model.ErrConflict)
	case code == "23503" && fk == fkMissingRef: // foreign_key_violation
		return fmt.Errorf("postgres: %s: referenced row does not exist (%s): %w", op, constraint, model.ErrNotFound)
	case code == "23503" && fk == fkInUse:
		return fmt.Errorf("postgres: %s: still referenced (%s): %w", op, constraint, model.ErrConflict)
	case code == "23514" || code == "23502": // check_violation, not_null_violation
		return &model.ValidationError{Field: constraintField(constraint, e.Field('c')), Reason: "rejected by the database (" + sqlStateName(code) + ")"}
	case code == "22P02" || code == "22021" || code == "22P05": // invalid_text_representation, character_not_in_repertoire, untranslatable_character
		// Text or JSON the database cannot store, such as a lone UTF-16
		// surrogate escape ("\ud800") in a JSON string: the client's input.
		return &model.ValidationError{Field: constraintField(constraint, e.Field('c')),
			Reason: "the input holds text the database cannot store (invalid UTF-8, a NUL, or a lone UTF-16 surrogate escape)"}
	case strings.HasPrefix(code, "08"), // connection_exception
		code == "57P01", code == "57P02", code == "57P03", // admin/crash shutdown, cannot connect now
		code == "53300", // too_many_connections
		code == "57014": // query_canceled (statement_timeout)
		return &model.UnavailableError{Service: model.ServiceDatabase, Err: &dbError{op: op, e: e}}
	}
	return &dbError{op: op, e: e}
}

// dbError is an unexpected PostgreSQL error, described without its message
// (which may quote values). It unwraps to the pgdriver.Error for callers
// that need more.
type dbError struct {
	op string
	e  pgdriver.Error
}

func (d *dbError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "postgres: %s: SQLSTATE %s", d.op, d.e.Field('C'))
	for _, f := range []struct {
		name string
		code byte
	}{{"table", 't'}, {"column", 'c'}, {"constraint", 'n'}} {
		if v := d.e.Field(f.code); v != "" {
			fmt.Fprintf(&b, " %s=%s", f.name, v)
		}
	}
	return b.String()
}

func (d *dbError) Unwrap() error { return d.e }

// SQLState returns the five-character SQLSTATE code.
func (d *dbError) SQLState() string { return d.e.Field('C') }

func uniqueSubject(constraint string) string {
	switch constraint {
	case "device_models_code_key":
		return "device model code"
	case "devices_key_key":
		return "device key"
	}
	return "row"
}

// constraintField names the API field a check constraint guards.
func constraintField(constraint, column string) string {
	switch constraint {
	case "device_models_code_format":
		return "code"
	case "device_models_name_length":
		return "name"
	case "devices_key_format":
		return "key"
	case "devices_config_object":
		return "config"
	case "devices_rotation_state_valid":
		return "rotation_state"
	case "devices_secret_sha256_format":
		return "secret_sha256"
	case "firmware_sha256_format":
		return "sha256"
	case "firmware_size_nonnegative":
		return "size"
	}
	return column
}

func sqlStateName(code string) string {
	switch code {
	case "23514":
		return "check constraint"
	case "23502":
		return "missing required value"
	}
	return "SQLSTATE " + code
}

// isConnectionError reports errors that mean the server could not be
// reached or the connection broke or timed out.
func isConnectionError(err error) bool {
	var netErr net.Error
	switch {
	case errors.As(err, &netErr),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, driver.ErrBadConn),
		errors.Is(err, sql.ErrConnDone),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE):
		return true
	}
	return false
}
