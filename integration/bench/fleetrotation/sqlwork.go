package fleetrotation

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/uptrace/bun/driver/pgdriver"
)

// statements reads PostgreSQL's pg_stat_statements for espmdm's database:
// the statements espmdm ran (BEGIN and COMMIT included) while the fleet
// rotated, to set against the rotations. It needs the module preloaded
// (the integration stack's PostgreSQL does it where the module is
// installed); without it the figures are absent, not an error.
type statements struct {
	db *sql.DB
}

// openStatements enables pg_stat_statements in the database of dsn; nil
// when the module is not loaded.
func openStatements(ctx context.Context, dsn string, logf func(string, ...any)) *statements {
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		logf("fleetrotation: no statement counts (pg_stat_statements: %v)", err)
		_ = db.Close()
		return nil
	}
	if _, err := db.ExecContext(ctx, "SELECT 1 FROM pg_stat_statements LIMIT 1"); err != nil {
		logf("fleetrotation: no statement counts (pg_stat_statements not preloaded: %v)", err)
		_ = db.Close()
		return nil
	}
	return &statements{db: db}
}

func (s *statements) close() {
	if s != nil {
		_ = s.db.Close()
	}
}

// reset starts the count afresh (every database's: the bench's stack is
// its own).
func (s *statements) reset(ctx context.Context) error {
	if s == nil {
		return nil
	}
	_, err := s.db.ExecContext(ctx, "SELECT pg_stat_statements_reset()")
	return err
}

// stmtCount is one statement's calls and the time PostgreSQL spent
// executing them.
type stmtCount struct {
	calls  int64
	execMS float64
	query  string
}

// counts returns the calls of every statement run in this database since
// the reset, most called first, and their total, leaving out this
// reader's own.
func (s *statements) counts(ctx context.Context) (total int64, top []stmtCount, err error) {
	if s == nil {
		return 0, nil, nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT calls, total_exec_time, query FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND query NOT LIKE '%pg_stat_statements%'
		ORDER BY calls DESC`)
	if err != nil {
		return 0, nil, fmt.Errorf("fleetrotation: pg_stat_statements: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var c stmtCount
		if err := rows.Scan(&c.calls, &c.execMS, &c.query); err != nil {
			return 0, nil, err
		}
		total += c.calls
		top = append(top, c)
	}
	return total, top, rows.Err()
}

// rowUpdates returns how many device rows were updated in this database
// since its statistics began, and how many of those were HOT (no index
// entry written).
func (s *statements) rowUpdates(ctx context.Context) (upd, hot int64, err error) {
	if s == nil {
		return 0, 0, nil
	}
	err = s.db.QueryRowContext(ctx, `SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'devices'`).Scan(&upd, &hot)
	if err != nil {
		err = fmt.Errorf("fleetrotation: pg_stat_user_tables: %w", err)
	}
	return upd, hot, err
}

// oneLine shortens a statement for a log line.
func oneLine(q string, n int) string {
	q = strings.Join(strings.Fields(q), " ")
	if len(q) > n {
		q = q[:n] + "…"
	}
	return q
}
