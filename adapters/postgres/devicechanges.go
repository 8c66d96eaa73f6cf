package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/driver/pgdriver"
)

// DeviceChannel is the NOTIFY channel on which the devices table's trigger
// (migration 20261207000240) tells every committed change: a payload of
// comma-separated device ids, or "*" for a statement that changed more
// than 1,000 rows (or a TRUNCATE). The listener's own liveness pings
// travel on it too ("ping:...").
const DeviceChannel = "espmdm_devices"

const pingPrefix = "ping:"

// DeviceChangeSink is told what a DeviceChangeListener hears, from one
// goroutine, in order.
type DeviceChangeSink interface {
	// DevicesChanged: these devices changed (committed).
	DevicesChanged(ids []int64)
	// AllDevicesChanged: any device may have changed.
	AllDevicesChanged()
	// Listening(true): every change committed from now on will be told.
	// Listening(false): changes may go unheard from now on, until the
	// next Listening(true).
	Listening(up bool)
}

// Defaults of the listener's liveness check.
const (
	DefaultPingAfter    = 250 * time.Millisecond
	DefaultSilenceLimit = time.Second
)

// DeviceChangeListener listens on DeviceChannel on a connection of its own
// and tells a DeviceChangeSink. It says Listening(true) only once a
// notification came through the connection's LISTEN (its own ping, sent
// through the pool, or anything else), which proves the LISTEN is in
// force; and Listening(false) as soon as the connection fails, or stays
// silent for the silence limit although pings are sent whenever nothing
// was heard for a while (a connection cut without a word). It then
// connects again, with a growing pause (up to 5 s), on a new connection.
type DeviceChangeListener struct {
	db        *bun.DB
	sink      DeviceChangeSink
	pingAfter time.Duration
	silence   time.Duration
	onError   func(error)
}

// ListenerOption configures NewDeviceChangeListener.
type ListenerOption func(*DeviceChangeListener)

// WithPingAfter sets how long the listener waits without hearing anything
// before it sends a ping (DefaultPingAfter).
func WithPingAfter(d time.Duration) ListenerOption {
	return func(l *DeviceChangeListener) { l.pingAfter = d }
}

// WithSilenceLimit sets how long the listener may hear nothing, pings
// included, before it gives its connection up (DefaultSilenceLimit).
func WithSilenceLimit(d time.Duration) ListenerOption {
	return func(l *DeviceChangeListener) { l.silence = d }
}

// WithListenErrors receives why each listening session ended (or could not
// start); the listener itself logs nothing.
func WithListenErrors(fn func(error)) ListenerOption {
	return func(l *DeviceChangeListener) { l.onError = fn }
}

// NewDeviceChangeListener returns a listener of db's device changes for
// sink; Run starts it.
func NewDeviceChangeListener(db *DB, sink DeviceChangeSink, opts ...ListenerOption) *DeviceChangeListener {
	l := &DeviceChangeListener{db: db.bun, sink: sink, pingAfter: DefaultPingAfter, silence: DefaultSilenceLimit, onError: func(error) {}}
	for _, o := range opts {
		o(l)
	}
	return l
}

// errSilent ends a session whose connection stopped delivering.
var errSilent = errors.New("no notification heard within the silence limit: connection given up")

// Run listens until ctx ends, reconnecting as needed; the sink is told
// Listening(false) before it returns if it was told Listening(true).
func (l *DeviceChangeListener) Run(ctx context.Context) {
	const maxPause = 5 * time.Second
	pause := 100 * time.Millisecond
	for ctx.Err() == nil {
		began := time.Now()
		err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		l.onError(fmt.Errorf("listen for device changes: %w", err))
		if time.Since(began) > 10*time.Second {
			pause = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, maxPause)
	}
}

// session is one connection's listening: it returns why it ended, having
// told the sink Listening(false) if it had told it Listening(true).
func (l *DeviceChangeListener) session(ctx context.Context) error {
	ln := pgdriver.NewListener(l.db)
	if err := ln.Listen(ctx, DeviceChannel); err != nil {
		_ = ln.Close()
		return translate("listen", err, fkNone)
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	ping := pingPrefix + hex.EncodeToString(nonce[:])

	// state: 0 not yet listening, 1 listening, 2 over. Its changes and
	// the sink's Listening calls happen under mu, so that the sink hears
	// them in order whichever goroutine ends the session.
	var (
		mu    sync.Mutex
		state int
	)
	setUp := func() {
		mu.Lock()
		defer mu.Unlock()
		if state == 0 {
			state = 1
			l.sink.Listening(true)
		}
	}
	setDown := func() {
		mu.Lock()
		defer mu.Unlock()
		if state == 1 {
			l.sink.Listening(false)
		}
		state = 2
	}

	start := time.Now()
	var heard atomic.Int64 // since start, when the connection last delivered
	done := make(chan error, 1)
	go func() {
		for {
			_, payload, err := ln.Receive(ctx)
			if err != nil {
				setDown() // before anything else: changes may go unheard now
				done <- err
				return
			}
			heard.Store(int64(time.Since(start)))
			setUp()
			l.tell(payload)
		}
	}()
	// end says the sink may miss changes from now on, then closes the
	// connection (which may wait for a reconnection pgdriver attempts)
	// and waits for the receiver.
	end := func(reason error, received bool) error {
		setDown()
		_ = ln.Close()
		if !received {
			if err := <-done; err != nil && reason == nil {
				reason = err
			}
		}
		return reason
	}

	tick := time.NewTicker(l.pingAfter / 2)
	defer tick.Stop()
	lastPing := time.Duration(-1)
	pingFailed := false // reported once a session: the session's end says the rest
	for {
		select {
		case <-ctx.Done():
			return end(ctx.Err(), false)
		case err := <-done:
			return end(translate("receive", err, fkNone), true)
		case <-tick.C:
		}
		now := time.Since(start)
		silent := now - time.Duration(heard.Load())
		if silent >= l.silence {
			return end(errSilent, false)
		}
		if silent >= l.pingAfter && (lastPing < 0 || now-lastPing >= l.pingAfter) {
			lastPing = now
			pctx, cancel := context.WithTimeout(ctx, l.silence)
			_, err := l.db.ExecContext(pctx, pingQuery, DeviceChannel, ping)
			cancel()
			if err != nil && ctx.Err() == nil && !pingFailed {
				pingFailed = true
				l.onError(fmt.Errorf("listen for device changes: ping: %w", translate("ping", err, fkNone)))
			}
		}
	}
}

// pingQuery NOTIFYs a ping only while the devices table has its change
// triggers, enabled: a database whose migrations are not applied yet
// (MIGRATE_ON_START=false before espmdm migrate), or whose triggers were
// disabled, gets no ping through, so the listener never says it listens
// (and stops saying so within the silence limit).
const pingQuery = `SELECT pg_notify(?, ?) FROM (
	SELECT count(*) AS n FROM pg_trigger
	WHERE tgrelid = 'devices'::regclass AND tgenabled <> 'D'
	  AND tgname IN ('devices_changed_update', 'devices_changed_delete', 'devices_changed_truncate')
) AS t WHERE t.n = 3`

// tell hands a payload to the sink: ids, "*", or a ping (nothing to do).
// Anything it cannot read counts as "*": never miss a change.
func (l *DeviceChangeListener) tell(payload string) {
	if strings.HasPrefix(payload, pingPrefix) {
		return
	}
	if payload == "*" {
		l.sink.AllDevicesChanged()
		return
	}
	parts := strings.Split(payload, ",")
	ids := make([]int64, 0, len(parts))
	for _, p := range parts {
		id, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			l.sink.AllDevicesChanged()
			return
		}
		ids = append(ids, id)
	}
	l.sink.DevicesChanged(ids)
}
