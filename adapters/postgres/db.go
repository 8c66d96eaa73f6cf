package postgres

import (
	"context"
	"database/sql"
	"errors"
	"runtime"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"
)

// DB is a connection pool to espmdm's PostgreSQL database.
type DB struct {
	bun *bun.DB
}

// Option configures Open.
type Option func(*options)

type options struct {
	maxOpenConns    int
	connMaxLifetime time.Duration
	connMaxIdleTime time.Duration
	dialTimeout     time.Duration
	readTimeout     time.Duration
	writeTimeout    time.Duration
	appName         string
}

func defaultOptions() options {
	return options{
		// bun's own advice for pgdriver: a few connections per CPU.
		maxOpenConns:    max(4, 4*runtime.GOMAXPROCS(0)),
		connMaxLifetime: 30 * time.Minute,
		connMaxIdleTime: 5 * time.Minute,
		dialTimeout:     5 * time.Second,
		readTimeout:     30 * time.Second,
		writeTimeout:    10 * time.Second,
		appName:         "espmdm",
	}
}

// WithMaxOpenConns caps the pool size (default 4 per CPU, at least 4).
// Values below 2 are raised to 2: Migrate holds one connection for its lock
// while it migrates over another.
func WithMaxOpenConns(n int) Option {
	return func(o *options) { o.maxOpenConns = max(2, n) }
}

// WithConnMaxLifetime closes pooled connections older than d (default 30 min).
func WithConnMaxLifetime(d time.Duration) Option {
	return func(o *options) { o.connMaxLifetime = d }
}

// WithDialTimeout bounds establishing a connection (default 5 s).
func WithDialTimeout(d time.Duration) Option {
	return func(o *options) { o.dialTimeout = d }
}

// WithReadTimeout bounds each socket read, that is how long one statement
// may run before it fails as unavailable (default 30 s).
func WithReadTimeout(d time.Duration) Option {
	return func(o *options) { o.readTimeout = d }
}

// WithWriteTimeout bounds each socket write (default 10 s).
func WithWriteTimeout(d time.Duration) Option {
	return func(o *options) { o.writeTimeout = d }
}

// WithApplicationName sets application_name, shown in pg_stat_activity
// (default "espmdm").
func WithApplicationName(name string) Option {
	return func(o *options) { o.appName = name }
}

// Open connects to the database at dsn (postgres://user:pass@host:port/db?
// sslmode=disable) and pings it. An unreachable server is a
// *model.UnavailableError; a malformed dsn is an error that does not repeat
// it (it may hold a password).
func Open(ctx context.Context, dsn string, opts ...Option) (*DB, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	connector, err := newConnector(dsn, o)
	if err != nil {
		return nil, err
	}
	sqldb := sql.OpenDB(connector)
	sqldb.SetMaxOpenConns(o.maxOpenConns)
	sqldb.SetMaxIdleConns(o.maxOpenConns)
	sqldb.SetConnMaxLifetime(o.connMaxLifetime)
	sqldb.SetConnMaxIdleTime(o.connMaxIdleTime)
	db := &DB{bun: bun.NewDB(sqldb, pgdialect.New())}
	if err := db.Ping(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// newConnector builds the pgdriver connector. pgdriver.WithDSN panics on a
// DSN it cannot parse, with a message that quotes the DSN: recover and
// report without it.
func newConnector(dsn string, o options) (c *pgdriver.Connector, err error) {
	if dsn == "" {
		return nil, errors.New("postgres: empty database URL")
	}
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, errors.New("postgres: the database URL cannot be parsed (value withheld: it may contain a password)")
		}
	}()
	return pgdriver.NewConnector(
		pgdriver.WithDSN(dsn),
		pgdriver.WithDialTimeout(o.dialTimeout),
		pgdriver.WithReadTimeout(o.readTimeout),
		pgdriver.WithWriteTimeout(o.writeTimeout),
		pgdriver.WithApplicationName(o.appName),
		// bun's tracing spans are not wired anywhere; skip their cost.
		pgdriver.WithTracing(false),
	), nil
}

// Close closes the pool.
func (db *DB) Close() error { return db.bun.Close() }

// Ping checks that the database answers a query (not just that a pooled
// connection exists).
func (db *DB) Ping(ctx context.Context) error {
	var one int
	if err := db.bun.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return translate("ping", err, fkNone)
	}
	return nil
}

// Bun returns the underlying bun.DB, for adapters in this package's family
// that need queries of their own (the rotation queue). Callers must
// translate errors themselves.
func (db *DB) Bun() *bun.DB { return db.bun }
