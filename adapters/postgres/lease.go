package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync"
	"time"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/ports"
)

// rotationLeaseKey is the session-level advisory lock key of the rotation
// worker's lease ("espmdmle" in ASCII). Advisory locks are per database, so
// processes share the lease exactly when they share the database.
const rotationLeaseKey int64 = 0x6573706d646d6c65

// CampaignLeaseKey is the advisory lock key of the campaign worker's lease
// ("espmdmca"): a lease of its own, so that the replica working the
// rotation queue and the one advancing campaigns may differ.
const CampaignLeaseKey int64 = 0x6573706d646d6361

// Lease is the rotation worker's lease as a PostgreSQL session-level
// advisory lock (pg_try_advisory_lock), held on one connection of its own
// for as long as the lease is held. Since the lock belongs to that session,
// it ends with it: a holder that stops, crashes or is killed loses its
// connection and PostgreSQL releases the lock at once; a database restart
// ends every session, so every holder loses it. The holding session also
// asks the server for TCP keepalives every few seconds, so that a holder
// whose host vanishes without closing its connection is noticed within
// about 20 seconds rather than the operating system's two hours.
//
// The holding session's application_name is the holder's name, which is
// how Holder finds it (pg_locks joined with pg_stat_activity). PostgreSQL
// keeps at most 63 bytes of it and replaces characters outside printable
// ASCII with '?': give each process a short ASCII name (host and pid).
//
// A Lease is safe for concurrent use; its methods run one at a time.
type Lease struct {
	db     *bun.DB
	holder string
	key    int64

	mu   sync.Mutex
	conn *bun.Conn // the session holding the lock; nil when not held
}

var _ ports.Lease = (*Lease)(nil)

// NewLease returns the lease of db for the process named holder. It holds
// nothing until Hold.
func NewLease(db *DB, holder string) *Lease {
	return &Lease{db: db.bun, holder: holder, key: rotationLeaseKey}
}

// NewKeyedLease is NewLease on another advisory lock key: another lease of
// the same database (CampaignLeaseKey).
func NewKeyedLease(db *DB, holder string, key int64) *Lease {
	return &Lease{db: db.bun, holder: holder, key: key}
}

// The key split as pg_locks shows a bigint advisory lock: classid the high
// 32 bits, objid the low ones, objsubid 1.
const leaseLockWhere = `l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
	AND l.classid = ?::oid AND l.objid = ?::oid
	AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`

func (l *Lease) keyParts() (classid, objid uint32) {
	key := uint64(l.key)
	return uint32(key >> 32), uint32(key & 0xffffffff)
}

// Hold implements ports.Lease. While holding it checks on its own session
// that the session is alive and still holds the lock; when it is not (the
// database restarted, the backend was terminated, the connection broke) it
// drops the session and reports false, so the caller learns that the lease
// was lost and may have been someone else's meanwhile; the next Hold tries
// to take it again. When not holding it tries to take the lock
// (pg_try_advisory_lock, never waiting) on a connection from the pool,
// which it keeps when it gets the lock and returns to the pool otherwise.
func (l *Lease) Hold(ctx context.Context) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		held, err := l.stillHeld(ctx)
		switch {
		case err == nil && held:
			return true, nil
		case err != nil && ctx.Err() != nil:
			// The caller gave up before the answer came: whether the
			// session still holds the lock is unknown. Report it as
			// not held and let the next Hold look again.
			return false, translate("hold lease", err, fkNone)
		}
		discard(*l.conn)
		l.conn = nil
		return false, nil
	}
	return l.take(ctx)
}

func (l *Lease) stillHeld(ctx context.Context) (bool, error) {
	classid, objid := l.keyParts()
	var held bool
	err := l.conn.QueryRowContext(ctx,
		"SELECT EXISTS (SELECT 1 FROM pg_locks AS l WHERE "+leaseLockWhere+" AND l.pid = pg_backend_pid())",
		classid, objid).Scan(&held)
	return held, err
}

func (l *Lease) take(ctx context.Context) (bool, error) {
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return false, translate("take lease", err, fkNone)
	}
	// Lock and name the session in one statement, so that whoever sees the
	// lock also sees whose it is.
	var got bool
	err = conn.QueryRowContext(ctx, `SELECT CASE WHEN pg_try_advisory_lock(?)
		THEN set_config('application_name', ?, false) IS NOT NULL
		ELSE false END`, l.key, l.holder).Scan(&got)
	if err != nil {
		// The lock may have been granted before the failure: end the
		// session rather than return it to the pool holding the lock.
		discard(conn)
		return false, translate("take lease", err, fkNone)
	}
	if !got {
		_ = conn.Close() // unchanged: back to the pool
		return false, nil
	}
	// Server-side keepalives (idle 5 s, then every 5 s, 3 probes), so that
	// a vanished holder host frees the lock in about 20 s. They apply to
	// TCP sessions only; a failure here is noticed by the next Hold.
	_, _ = conn.ExecContext(ctx, `SELECT set_config('tcp_keepalives_idle', '5', false),
		set_config('tcp_keepalives_interval', '5', false),
		set_config('tcp_keepalives_count', '3', false)`)
	l.conn = &conn
	return true, nil
}

// Release implements ports.Lease: it unlocks and ends the holding session
// (its application_name names the holder, so it does not go back to the
// pool). Ending the session releases the lock even when the unlock fails,
// so Release reports no error; not holding the lease is none either.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return nil
	}
	conn := *l.conn
	l.conn = nil
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = conn.ExecContext(uctx, "SELECT pg_advisory_unlock(?)", l.key)
	discard(conn)
	return nil
}

// Holder implements ports.Lease: the application_name of the session
// holding the lock in this database, "" when none does. It asks over the
// pool, so it answers for any process, holding or not.
func (l *Lease) Holder(ctx context.Context) (string, error) {
	classid, objid := l.keyParts()
	var name string
	err := l.db.QueryRowContext(ctx, `SELECT a.application_name
		FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
		WHERE `+leaseLockWhere+` LIMIT 1`, classid, objid).Scan(&name)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", nil
	case err != nil:
		return "", translate("lease holder", err, fkNone)
	}
	return name, nil
}

// discard closes conn's session instead of returning it to the pool.
func discard(conn bun.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}
