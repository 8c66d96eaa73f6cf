// Package devicecache is a ports.DeviceRepo that serves GetDeviceByKey,
// the device API's lookup on every request, from memory, and passes
// everything else to the repository it wraps.
//
// It is coherent across replicas by being told, not by guessing: every
// committed change of a device row reaches every replica as a change
// notification (adapters/postgres: a trigger NOTIFYs in the changing
// transaction, a listener per replica hears it), and the cache drops the
// device at once (DevicesChanged, AllDevicesChanged). A replica that is
// not sure to hear every change does not use its cache at all: it starts
// off, turns on only when its listener confirms that it listens
// (Listening(true), which also drops everything, since changes before it
// were not heard), and turns off and drops everything the moment the
// listener loses its connection (Listening(false)). So a change made on
// any replica is seen by every other after the notification's own delay
// (milliseconds), and a lost notification can never leave a stale entry.
//
// A lookup that misses reads the database and keeps the result only if no
// change was told (and the cache was not turned off) while it read: a
// generation counter, bumped by every change told, decides. Devices whose
// rotation is PENDING are never kept: a device request may then change the
// row itself (a restore-mode confirmation by the token's iat, a second
// nudge, the fetch's generation), so those requests read the row as they
// did before the cache. The writes this repository makes itself drop the
// device locally as well, before they return, so that a replica reads its
// own writes without waiting for its notification.
//
// last_seen_at is the one column the cache may hold older than the
// database: the notification trigger ignores updates that change only it
// (one a minute per device), and TouchLastSeen through this repository
// moves the cached value, which is all AuthenticateDevice reads it for.
//
// The cache is bounded (least recently used entries go first) and each
// entry lives at most a TTL, a safety net only.
package devicecache
