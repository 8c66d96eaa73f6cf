// Package postgres implements espmdm's repositories (ports.ModelRepo,
// ports.DeviceRepo with its rotation queue, ports.FirmwareRepo,
// ports.ScheduleRepo) and the rotation worker's ports.Lease on PostgreSQL
// with uptrace/bun over pgdriver, and carries the schema as embedded
// migrations.
//
// The rotation queue serialises StartRotations across processes with a
// transaction-level advisory lock and claims devices with FOR UPDATE SKIP
// LOCKED in the same transaction; Lease is a session-level advisory lock
// held on a connection of its own, released by PostgreSQL when its holder's
// session ends.
//
// Every committed change of a devices row is NOTIFYed on DeviceChannel by
// a trigger, in the changing transaction; DeviceChangeListener hears it on
// a connection of its own and says when it can be relied on (the device
// cache of adapters/devicecache is on only then).
//
// Open connects and pings; Migrate applies the embedded migrations under a
// PostgreSQL advisory lock, so replicas starting together do not race;
// MigrationStatus tells a readiness probe whether any are pending.
//
// Errors are translated at this boundary: a missing row is model.ErrNotFound,
// a unique or foreign-key violation model.ErrConflict (or ErrNotFound for a
// device of a missing model), a connection failure or timeout a
// *model.UnavailableError for "postgres". Other database errors are reported
// by SQLSTATE and constraint name only, never with SQL text or values.
//
// Timestamps are stored as timestamptz and always returned in UTC, at the
// microsecond precision PostgreSQL keeps.
package postgres
