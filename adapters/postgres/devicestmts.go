package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"strconv"
	"strings"
	"time"

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
// waiting the same way.
func (r *DeviceRepo) prepared(ctx context.Context, s *deviceStmt) (*sql.Stmt, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.stmt != nil {
		return s.stmt, nil
	}
	stmt, err := r.db.DB.PrepareContext(ctx, s.query)
	if err != nil {
		return nil, err
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

// updateArgs are the arguments of the update statement for row, its
// audit entries (auditJSON) and its id, in deviceMutableColumns' order.
func updateArgs(row *deviceRow, audit []byte) []any {
	args := []any{string(audit)}
	for _, c := range deviceMutableColumns {
		var v any
		switch c {
		case "config":
			v = string(row.Config)
		case "active":
			v = row.Active
		case "rotation_state":
			v = row.RotationState
		case "secret_created_at":
			v = timeArg(row.SecretCreatedAt)
		case "last_rotation_attempt_at":
			v = timeArg(row.LastRotationAttemptAt)
		case "last_rotation_fetch_at":
			v = timeArg(row.LastRotationFetchAt)
		case "last_rotation_renudge_at":
			v = timeArg(row.LastRotationRenudgeAt)
		case "last_rotation_completed_at":
			v = timeArg(row.LastRotationCompletedAt)
		case "last_seen_at":
			v = timeArg(row.LastSeenAt)
		case "new_secret_at":
			v = timeArg(row.NewSecretAt)
		case "new_secret_iat_after":
			v = timeArg(row.NewSecretIATAfter)
		case "previous_secret":
			v = bytesArg(row.PreviousSecret)
		case "secret_sha256":
			if row.SecretSHA256 != nil {
				v = *row.SecretSHA256
			}
		case "generation_intent_at":
			v = timeArg(row.GenerationIntentAt)
		case "client_covered":
			v = row.ClientCovered
		case "mqtt_password":
			v = bytesArg(row.MQTTPassword)
		case "tags":
			v = textArray(row.Tags)
		default:
			panic("postgres: updateArgs: no argument for devices column " + c)
		}
		args = append(args, v)
	}
	return append(args, row.ID)
}

// timeArg is t as a statement argument: NULL for nil.
func timeArg(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UTC()
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

// auditJSONRow is an audit entry as the update statement's
// jsonb_to_recordset reads it.
type auditJSONRow struct {
	At           *string `json:"at"` // null: now()
	Kind         string  `json:"kind"`
	ActorType    string  `json:"actor_type"`
	ActorSubject string  `json:"actor_subject"`
	ActorClient  string  `json:"actor_client"`
	ActorName    string  `json:"actor_name"`
	DeviceID     *int64  `json:"device_id"`
	ClientID     string  `json:"client_id"`
	ModelID      *int64  `json:"model_id"`
	Outcome      string  `json:"outcome"`
	Detail       string  `json:"detail"`
}

// noNUL drops NUL characters, which no text column can hold (and jsonb
// refuses as \u0000), as bun drops them from the strings it formats.
func noNUL(s string) string { return strings.ReplaceAll(s, "\x00", "") }

// auditJSON is entries (with deviceID and modelID where an entry names
// none) as the update statement's JSON array; times keep microseconds, as
// the column does.
func auditJSON(entries []model.AuditEntry, deviceID, modelID int64) ([]byte, error) {
	rows := auditRows(entries, deviceID, modelID)
	out := make([]auditJSONRow, len(rows))
	for i, a := range rows {
		out[i] = auditJSONRow{Kind: noNUL(a.Kind), ActorType: noNUL(a.ActorType), ActorSubject: noNUL(a.ActorSubject),
			ActorClient: noNUL(a.ActorClient), ActorName: noNUL(a.ActorName), DeviceID: a.DeviceID, ClientID: noNUL(a.ClientID),
			ModelID: a.ModelID, Outcome: noNUL(a.Outcome), Detail: noNUL(a.Detail)}
		if !a.At.IsZero() {
			at := a.At.UTC().Format("2006-01-02T15:04:05.999999Z07:00")
			out[i].At = &at
		}
	}
	return json.Marshal(out)
}
