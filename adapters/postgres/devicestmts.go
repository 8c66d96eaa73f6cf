package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/core/model"
)

// The device API's hot statements are prepared: a rotation runs
// UpdateDevice three times and each device request looks its device up,
// and as text each statement would be parsed and planned again every time
// (bun formats its queries with their arguments; a profile of a fleet
// rotation put PostgreSQL's parsing and planning at a third of its CPU).
// Prepared, PostgreSQL parses a statement once per connection and plans
// it once (a generic plan after its first executions), and espmdm builds
// no query text. The columns are named, never *: a column added by a later
// migration does not change a prepared statement's result.

// deviceStmt is one prepared statement of DeviceRepo, prepared at its
// first use (a failure is not kept: the next use tries again).
type deviceStmt struct {
	query string
	stmt  *sql.Stmt
}

// prepared returns s prepared on r's pool; run it in a transaction with
// queryDevice, which prepares it on the transaction's connection (once
// per connection). Call it before the transaction begins: preparing on the
// pool takes a connection of its own, which a transaction holding one
// could wait for while every other connection is held by transactions
// waiting the same way. Nor is r.mu held while preparing: callers racing
// at the first use each prepare, and all but the first close theirs.
func (r *DeviceRepo) prepared(ctx context.Context, s *deviceStmt) (*sql.Stmt, error) {
	r.mu.Lock()
	stmt := s.stmt
	r.mu.Unlock()
	if stmt != nil {
		return stmt, nil
	}
	stmt, err := r.db.DB.PrepareContext(ctx, s.query)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.stmt != nil {
		_ = stmt.Close()
		return s.stmt, nil
	}
	s.stmt = stmt
	return stmt, nil
}

// queryDevice runs stmt (from prepared; in tx when tx is not nil) with
// args and scans its one row into row; no row is sql.ErrNoRows.
func (r *DeviceRepo) queryDevice(ctx context.Context, tx *bun.Tx, stmt *sql.Stmt, row *deviceRow, args ...any) error {
	if tx != nil {
		stmt = tx.StmtContext(ctx, stmt)
	}
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return err
	}
	*row = deviceRow{}
	if err := r.db.ScanRows(ctx, rows, row); err != nil {
		return err
	}
	if row.ID == 0 {
		return sql.ErrNoRows
	}
	return nil
}

func newDeviceStmts() deviceStmts {
	cols := strings.Join(deviceSelectColumns, ", ")
	set := make([]string, len(deviceMutableColumns))
	for i, c := range deviceMutableColumns {
		set[i] = c + " = $" + strconv.Itoa(i+2)
	}
	return deviceStmts{
		byKey: deviceStmt{query: "SELECT " + cols + " FROM devices WHERE key = $1"},
		lock:  deviceStmt{query: "SELECT " + cols + " FROM devices WHERE id = $1 FOR UPDATE"},
		// $1 is the audit entries as a JSON array (auditJSON), inserted in
		// the same statement (a data-modifying WITH query; none for []).
		update: deviceStmt{query: "WITH audit_insert AS (" +
			"INSERT INTO audit_log (at, kind, actor_type, actor_subject, actor_client, actor_name, device_id, client_id, model_id, outcome, detail) " +
			"SELECT COALESCE(e.at, now()), e.kind, e.actor_type, e.actor_subject, e.actor_client, e.actor_name, e.device_id, e.client_id, e.model_id, e.outcome, e.detail " +
			"FROM jsonb_to_recordset($1::jsonb) AS e(at timestamptz, kind text, actor_type text, actor_subject text, actor_client text, " +
			"actor_name text, device_id bigint, client_id text, model_id bigint, outcome text, detail text)) " +
			"UPDATE devices SET " + strings.Join(set, ", ") + ", updated_at = now() " +
			"WHERE id = $" + strconv.Itoa(len(deviceMutableColumns)+2) + " RETURNING " + cols},
	}
}

// deviceStmts are DeviceRepo's prepared statements.
type deviceStmts struct {
	byKey, lock, update deviceStmt
}

// mutableArgs are the update statement's arguments for the columns of
// deviceMutableColumns, by column (TestUpdateDeviceStoresEveryColumn
// writes every one). Pointers go as they are: database/sql passes a nil
// one as NULL and the value of another (deviceToRow made the times UTC).
var mutableArgs = map[string]func(*deviceRow) any{
	"config":                     func(r *deviceRow) any { return string(r.Config) },
	"active":                     func(r *deviceRow) any { return r.Active },
	"rotation_state":             func(r *deviceRow) any { return r.RotationState },
	"secret_created_at":          func(r *deviceRow) any { return r.SecretCreatedAt },
	"last_rotation_attempt_at":   func(r *deviceRow) any { return r.LastRotationAttemptAt },
	"last_rotation_fetch_at":     func(r *deviceRow) any { return r.LastRotationFetchAt },
	"last_rotation_renudge_at":   func(r *deviceRow) any { return r.LastRotationRenudgeAt },
	"last_rotation_completed_at": func(r *deviceRow) any { return r.LastRotationCompletedAt },
	"last_seen_at":               func(r *deviceRow) any { return r.LastSeenAt },
	"new_secret_at":              func(r *deviceRow) any { return r.NewSecretAt },
	"new_secret_iat_after":       func(r *deviceRow) any { return r.NewSecretIATAfter },
	"previous_secret":            func(r *deviceRow) any { return bytesArg(r.PreviousSecret) },
	"secret_sha256":              func(r *deviceRow) any { return r.SecretSHA256 },
	"generation_intent_at":       func(r *deviceRow) any { return r.GenerationIntentAt },
	"client_covered":             func(r *deviceRow) any { return r.ClientCovered },
	"mqtt_password":              func(r *deviceRow) any { return bytesArg(r.MQTTPassword) },
	"tags":                       func(r *deviceRow) any { return textArray(r.Tags) },
}

// updateArgs are the arguments of the update statement for row and its
// audit entries (auditJSON): $1 the entries, then deviceMutableColumns in
// order, then the id.
func updateArgs(row *deviceRow, audit []byte) []any {
	args := []any{string(audit)}
	for _, c := range deviceMutableColumns {
		arg, ok := mutableArgs[c]
		if !ok {
			panic("postgres: updateArgs: no argument for devices column " + c)
		}
		args = append(args, arg(row))
	}
	return append(args, row.ID)
}

// bytesArg is b as a bytea argument: NULL for nil or empty, as the rows'
// nullzero columns store them.
func bytesArg(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// textArray is ss as a PostgreSQL text[] literal, every element quoted.
func textArray(ss []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, r := range s {
			if r == '"' || r == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// auditJSON is entries (with deviceID and modelID where an entry names
// none) as the update statement's JSON array of audit rows.
func auditJSON(entries []model.AuditEntry, deviceID, modelID int64) ([]byte, error) {
	return json.Marshal(auditRows(entries, deviceID, modelID))
}
