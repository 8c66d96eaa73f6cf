// Package fleetrotation benchmarks credential rotation of a simulated
// ESP32 fleet (integration/devicesim) against a real espmdm started in this
// process on an integration stack, and compares its rate with the floor
// Keycloak itself sets for the same work.
package fleetrotation

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/integration/bench/launch"
	"github.com/espmdm/espmdm/integration/devicesim"
)

// Options configure Run. Zero values take the defaults named.
type Options struct {
	Mode              string  // "grace" (default) or "restore"
	Devices           int     // default 1000
	Concurrency       int     // ROTATION_CONCURRENCY, default 10
	Offline           float64 // fraction of devices offline throughout
	CrashAfterFetch   float64 // fraction crashing (once) after the fetch
	CrashAfterPersist float64 // fraction crashing (once) after persisting
	// Timeout, FetchTimeout and Retry are ROTATION_TIMEOUT_SECONDS,
	// ROTATION_FETCH_TIMEOUT_SECONDS and ROTATION_RETRY_SECONDS (whole
	// seconds); default 10 s, 3 s and 5 s.
	Timeout, FetchTimeout, Retry time.Duration
	// Wait bounds the rotation (trigger until every online device is OK);
	// default 10 min.
	Wait time.Duration
	// FloorClients is the number of raw Keycloak clients of the floor
	// measurement; default 300 (at most Devices).
	FloorClients int
	// CreateConcurrency is how many devices are created at once; default 4.
	CreateConcurrency int
	// Log receives progress lines; nil discards them. Lines never hold a
	// secret or a token.
	Log func(format string, args ...any)
	// Server, when set, is the espmdm to rotate with (started with the
	// settings above, which Run does not check beyond the mode) instead of
	// one of Run's own: the identities benchmark rotates among the devices
	// its server already holds. Run rotates only the devices of its own
	// model and counts them apart from the others.
	Server *launch.Server
}

// Result is one run's measurements.
type Result struct {
	Mode        string
	Devices     int
	Concurrency int
	Online      int     // devices expected to confirm
	Seconds     float64 // trigger until every online device is OK
	// RotationsPerS is Online / Seconds.
	RotationsPerS float64
	// Lockouts counts devices that at the end get no token with any
	// secret they hold (devicesim CheckAll).
	Lockouts int
	// LockoutDeviceS is the fleet's locked-out device-seconds of the run.
	LockoutDeviceS float64
	// AdminOpsPerRotation is espmdm's Keycloak operations (its
	// espmdm_keycloak_operations_total) from the trigger until done, per
	// online device; GrantsPerRotation the devices' token requests.
	AdminOpsPerRotation, GrantsPerRotation float64
	// StatementsPerRotation is the SQL statements espmdm's database ran
	// from the trigger until done (pg_stat_statements, BEGIN and COMMIT
	// included, the bench's status polling too), per online device; zero
	// when the module is not loaded.
	StatementsPerRotation float64
	// P50ms, P99ms are per-device confirm latencies (nudge → ack).
	P50ms, P99ms float64
	// KeycloakFloorPerS is the rate of the same Keycloak work per rotation
	// done directly against Keycloak at the same concurrency, over two
	// measurements: just before the fleet's rotation and just after it
	// (FloorBeforePerS, FloorAfterPerS alone).
	KeycloakFloorPerS               float64
	FloorBeforePerS, FloorAfterPerS float64
	Ratio                           float64 // RotationsPerS / KeycloakFloorPerS
	Projected100kH                  float64 // hours for 100,000 devices at RotationsPerS
	// Progress is devices confirmed against seconds since the trigger.
	Progress []Point
}

// Point is one progress sample.
type Point struct {
	Seconds   float64
	Confirmed int
}

// BenchLine is the result as one BENCH line.
func (r Result) BenchLine() string {
	return fmt.Sprintf("BENCH fleet_rotation mode=%s devices=%d concurrency=%d seconds=%.1f rotations_per_s=%.2f lockouts=%d lockout_device_s=%.1f p50_ms=%.0f p99_ms=%.0f keycloak_floor_per_s=%.2f ratio=%.3f projected_100k_h=%.2f",
		r.Mode, r.Devices, r.Concurrency, r.Seconds, r.RotationsPerS, r.Lockouts, r.LockoutDeviceS,
		r.P50ms, r.P99ms, r.KeycloakFloorPerS, r.Ratio, r.Projected100kH)
}

func (o *Options) defaults() error {
	if o.Mode == "" {
		o.Mode = "grace"
	}
	if o.Mode != "grace" && o.Mode != "restore" {
		return fmt.Errorf("fleetrotation: mode %q is neither grace nor restore", o.Mode)
	}
	if o.Devices <= 0 {
		o.Devices = 1000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 10
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Retry <= 0 {
		o.Retry = 5 * time.Second
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 3 * time.Second
	}
	if o.Wait <= 0 {
		o.Wait = 10 * time.Minute
	}
	if o.FloorClients <= 0 {
		o.FloorClients = 300
	}
	o.FloorClients = min(o.FloorClients, o.Devices)
	if o.CreateConcurrency <= 0 {
		o.CreateConcurrency = 4
	}
	for _, f := range []float64{o.Offline, o.CrashAfterFetch, o.CrashAfterPersist} {
		if f < 0 || f > 1 {
			return fmt.Errorf("fleetrotation: fraction %v outside [0, 1]", f)
		}
	}
	if o.Offline+o.CrashAfterFetch+o.CrashAfterPersist > 1 {
		return fmt.Errorf("fleetrotation: behaviour fractions add up to more than 1")
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	return nil
}

// behaviours assigns the behaviours to n devices in a fixed pseudo-random
// order, so offline and crashing devices are spread through the queue.
func behaviours(o Options) []devicesim.Behaviour {
	n := o.Devices
	bs := make([]devicesim.Behaviour, n)
	perm := rand.New(rand.NewPCG(1, 2)).Perm(n)
	k := 0
	assign := func(frac float64, b devicesim.Behaviour) {
		for c := int(math.Round(frac * float64(n))); c > 0 && k < n; c-- {
			bs[perm[k]] = b
			k++
		}
	}
	assign(o.Offline, devicesim.Behaviour{Offline: true})
	assign(o.CrashAfterFetch, devicesim.Behaviour{Crash: devicesim.CrashAfterFetch})
	assign(o.CrashAfterPersist, devicesim.Behaviour{Crash: devicesim.CrashAfterPersist})
	return bs
}

type deviceDTO struct {
	ID       int64  `json:"id"`
	Key      string `json:"key"`
	ClientID string `json:"client_id"`
}

type statusDTO struct {
	Mode          string         `json:"mode"`
	CountsByState map[string]int `json:"counts_by_state"`
}

// startServer starts espmdm in this process with a database of its own
// (launch.InProcess), logging warnings only; env (ServerEnv's rotation
// settings, with its one-second tick) overrides single variables.
func startServer(ctx context.Context, st *integration.Stack, env map[string]string) (*launch.Server, error) {
	vars := map[string]string{
		"WIFI_SSID":     "bench-net",
		"WIFI_PASSWORD": "wifi-" + launch.RandHex(8),
		"LOG_LEVEL":     "warn",
		"INSTANCE_NAME": "bench-" + launch.RandHex(3),
	}
	maps.Copy(vars, env)
	return launch.InProcess(ctx, st, launch.Options{Env: vars})
}

// ServerEnv is the rotation settings of o as espmdm's environment.
func ServerEnv(o Options) map[string]string {
	_ = o.defaults()
	secs := func(d time.Duration) string { return fmt.Sprint(int64(math.Max(1, math.Round(d.Seconds())))) }
	return map[string]string{
		"ROTATION_MODE":                  o.Mode,
		"ROTATION_CONCURRENCY":           fmt.Sprint(o.Concurrency),
		"ROTATION_TIMEOUT_SECONDS":       secs(o.Timeout),
		"ROTATION_RETRY_SECONDS":         secs(o.Retry),
		"ROTATION_FETCH_TIMEOUT_SECONDS": secs(o.FetchTimeout),
		// Timeouts are found by the rotation cycle: at the default tick
		// (30 s) the offline devices would hold their slots for up to
		// 30 s past their 3 s fetch timeout.
		"ROTATION_TICK_SECONDS": "1",
	}
}

// Run provisions a fleet through espmdm's admin API, rotates it, checks it
// for lockouts, measures the Keycloak floor and removes everything it
// created.
func Run(ctx context.Context, st *integration.Stack, o Options) (res Result, err error) {
	if err := o.defaults(); err != nil {
		return Result{}, err
	}
	if st == nil {
		return Result{}, errors.New("fleetrotation: no stack")
	}
	res = Result{Mode: o.Mode, Devices: o.Devices, Concurrency: o.Concurrency}
	logf := o.Log
	srv := o.Server
	if srv == nil {
		// The floor makes its Keycloak requests at o.Concurrency, so
		// espmdm's own bound (KEYCLOAK_MAX_CONCURRENCY, default 8) is
		// raised to the same figure: both sides run the same Keycloak
		// concurrency.
		env := ServerEnv(o)
		env["KEYCLOAK_MAX_CONCURRENCY"] = fmt.Sprint(o.Concurrency)
		if srv, err = startServer(ctx, st, env); err != nil {
			return res, err
		}
		defer func() {
			if e := srv.Stop(); e != nil && err == nil {
				err = e
			}
		}()
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxIdleConns: 128}}
	defer hc.CloseIdleConnections()
	c := &api{http: hc, base: srv.Base, tok: newTokenSource(hc, st.TokenURL, st.OperatorClientID, st.OperatorClientSecret)}

	var status statusDTO
	if _, err := c.call(ctx, http.MethodGet, "/api/rotation/status", nil, &status, http.StatusOK); err != nil {
		return res, err
	}
	if status.Mode != o.Mode {
		return res, fmt.Errorf("fleetrotation: espmdm rotates in mode %q, want %q", status.Mode, o.Mode)
	}

	var model struct {
		ID int64 `json:"id"`
	}
	if _, err := c.call(ctx, http.MethodPost, "/api/device-models", map[string]any{"code": "bench_" + launch.RandHex(4), "name": "Bench sensor"}, &model, http.StatusCreated); err != nil {
		return res, err
	}
	var (
		mu      sync.Mutex
		created []int64
	)
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		began := time.Now()
		e := forEach(cctx, created, o.CreateConcurrency, func(ctx context.Context, id int64) error {
			_, err := c.call(ctx, http.MethodDelete, "/api/devices/"+itoa(id), nil, nil, http.StatusNoContent, http.StatusNotFound)
			return err
		})
		if e == nil {
			_, e = c.call(cctx, http.MethodDelete, "/api/device-models/"+itoa(model.ID), nil, nil, http.StatusNoContent, http.StatusNotFound)
		}
		logf("fleetrotation: deleted %d devices in %s", len(created), time.Since(began).Round(time.Millisecond))
		if e != nil && err == nil {
			err = fmt.Errorf("fleetrotation: clean up: %w", e)
		}
	}()

	// One shared connection for the whole fleet, as espmdm's own account
	// (which may read iotsupport/#): a thousand device connections would
	// measure the broker, not the rotation. The per-device accounts are
	// exercised by the end-to-end tests (devicesim's DeviceAccounts).
	fleet, err := devicesim.NewFleet(ctx, devicesim.Config{
		BrokerURL: st.MQTTAdminURL(), Concurrency: 2*o.Concurrency + 8, LockoutRetry: 500 * time.Millisecond,
		HTTPTimeout: 30 * time.Second,
		Logf:        func(format string, args ...any) { logf(format, args...) },
	})
	if err != nil {
		return res, err
	}
	defer fleet.Close(context.WithoutCancel(ctx))

	// Provision: create each device and boot it from its partition.
	bs := behaviours(o)
	began := time.Now()
	var done atomic.Int64
	idx := make([]int, o.Devices)
	for i := range idx {
		idx[i] = i
	}
	err = forEach(ctx, idx, o.CreateConcurrency, func(ctx context.Context, i int) error {
		var d deviceDTO
		if _, err := c.call(ctx, http.MethodPost, "/api/devices", map[string]any{"device_model_id": model.ID, "config": map[string]any{}}, &d, http.StatusCreated); err != nil {
			return err
		}
		mu.Lock()
		created = append(created, d.ID)
		mu.Unlock()
		var body []byte
		if _, err := c.call(ctx, http.MethodGet, "/api/devices/"+itoa(d.ID)+"/provisioning", nil, &body, http.StatusOK); err != nil {
			return err
		}
		part, err := devicesim.PartitionFromJSON(body)
		if err != nil {
			return err
		}
		sim, err := fleet.Add(part)
		if err != nil {
			return err
		}
		if sim.ClientID() != d.ClientID {
			return fmt.Errorf("fleetrotation: partition of %s holds %s", d.ClientID, sim.ClientID())
		}
		// A running device holds a token before the rotation: boot it
		// now, so the rotation's figures hold only the rotation's work.
		if !bs[i].Offline {
			if err := sim.Boot(ctx); err != nil {
				return fmt.Errorf("fleetrotation: boot %s: %w", d.ClientID, err)
			}
		}
		sim.SetBehaviour(bs[i])
		if n := done.Add(1); n%100 == 0 || int(n) == o.Devices {
			logf("fleetrotation: %s: %d/%d devices created (%.1f/s)", o.Mode, n, o.Devices, float64(n)/time.Since(began).Seconds())
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	online := 0
	for _, b := range bs {
		if !b.Offline {
			online++
		}
	}
	res.Online = online

	// The floor is measured just before the rotation and again after it.
	fl, err := newFloor(ctx, st, hc, o.Mode, o.FloorClients, o.Concurrency, logf)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, fl.close(ctx)) }()
	floorBefore, err := fl.measure(ctx, "before")
	if err != nil {
		return res, err
	}

	// Rotate.
	var trig struct {
		QueuedCount int `json:"queued_count"`
	}
	stmts := openStatements(ctx, srv.DatabaseURL, logf)
	defer stmts.close()
	opsBefore, err := keycloakOps(ctx, c)
	if err != nil {
		return res, err
	}
	// The server's other devices (Options.Server) stay OK throughout:
	// this fleet's confirmed devices are the OK ones above them.
	var before statusDTO
	if _, err := c.call(ctx, http.MethodGet, "/api/rotation/status", nil, &before, http.StatusOK); err != nil {
		return res, err
	}
	others := before.CountsByState["OK"] - o.Devices
	if err := stmts.reset(ctx); err != nil {
		return res, err
	}
	updBefore, hotBefore, err := stmts.rowUpdates(ctx)
	if err != nil {
		return res, err
	}
	grantsBefore := fleet.Stats().Total.TokenRequests
	trigAt := time.Now()
	if _, err := c.call(ctx, http.MethodPost, "/api/rotation/trigger?device_model_id="+itoa(model.ID), nil, &trig, http.StatusAccepted); err != nil {
		return res, err
	}
	if trig.QueuedCount != o.Devices {
		return res, fmt.Errorf("fleetrotation: trigger queued %d devices, want %d", trig.QueuedCount, o.Devices)
	}
	logf("fleetrotation: %s: triggered, %d devices queued, %d online", o.Mode, trig.QueuedCount, online)
	res.Progress = []Point{{0, 0}}
	wctx, cancel := context.WithTimeout(ctx, o.Wait)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastLog := time.Now()
	stall := newStallDump(os.Getenv(StallDumpEnv))
	for {
		select {
		case <-wctx.Done():
			fs := fleet.Stats()
			return res, fmt.Errorf("fleetrotation: rotation not done after %s: %d of %d online devices OK; fleet: %d nudges, %d fetches, %d acks, %d crashes, %d errors (%w)",
				o.Wait, res.Progress[len(res.Progress)-1].Confirmed, online, fs.Total.Nudges, fs.Total.Fetches, fs.Total.Acks, fs.Total.Crashes, fs.Total.Errors, wctx.Err())
		case <-tick.C:
		}
		var s statusDTO
		if _, err := c.call(wctx, http.MethodGet, "/api/rotation/status", nil, &s, http.StatusOK); err != nil {
			if wctx.Err() != nil {
				continue
			}
			return res, err
		}
		ok := s.CountsByState["OK"] - others
		el := time.Since(trigAt)
		res.Progress = append(res.Progress, Point{Seconds: el.Seconds(), Confirmed: ok})
		if time.Since(lastLog) > 5*time.Second {
			logf("fleetrotation: %s: %.0f s: %d/%d confirmed, states %v", o.Mode, el.Seconds(), ok, online, s.CountsByState)
			lastLog = time.Now()
		}
		if ok >= online {
			res.Seconds = el.Seconds()
			break
		}
		stall.observe(ok, logf)
	}
	res.RotationsPerS = float64(online) / res.Seconds
	res.Projected100kH = 100000 / res.RotationsPerS / 3600
	fs := fleet.Stats()
	res.P50ms = float64(fs.ConfirmLatency.P50) / float64(time.Millisecond)
	res.P99ms = float64(fs.ConfirmLatency.P99) / float64(time.Millisecond)
	logf("fleetrotation: %s: %d online devices confirmed in %.1f s (%.1f/s); %d nudges, %d fetches, %d acks, %d crashes, %d errors",
		o.Mode, online, res.Seconds, res.RotationsPerS, fs.Total.Nudges, fs.Total.Fetches, fs.Total.Acks, fs.Total.Crashes, fs.Total.Errors)
	total, top, err := stmts.counts(ctx)
	if err != nil {
		return res, err
	}
	if stmts != nil {
		res.StatementsPerRotation = float64(total) / float64(max(online, 1))
		logf("fleetrotation: %s: %.1f SQL statements per rotation (%d in all); the most run:", o.Mode, res.StatementsPerRotation, total)
		upd, hot, err := stmts.rowUpdates(ctx)
		if err != nil {
			return res, err
		}
		logf("fleetrotation: %s: %.2f device row updates per rotation, %.0f%% of them HOT (no index entries written)",
			o.Mode, float64(upd-updBefore)/float64(max(online, 1)), 100*float64(hot-hotBefore)/float64(max(upd-updBefore, 1)))
		for _, q := range top[:min(len(top), 20)] {
			logf("fleetrotation:   %7d  %5.2f/rot  %6.3f ms/rot  %s", q.calls, float64(q.calls)/float64(max(online, 1)),
				q.execMS/float64(max(online, 1)), oneLine(q.query, 160))
		}
	}
	opsAfter, err := keycloakOps(ctx, c)
	if err != nil {
		return res, err
	}
	perOp, perRot := opsPerRotation(opsBefore, opsAfter, online)
	res.AdminOpsPerRotation = perRot
	res.GrantsPerRotation = float64(fs.Total.TokenRequests-grantsBefore) / float64(max(online, 1))
	logf("fleetrotation: %s: Keycloak work per rotation: %.2f token grants by devices, %.2f espmdm operations (%s)",
		o.Mode, res.GrantsPerRotation, perRot, perOp)

	cctx, ccancel := context.WithTimeout(ctx, 3*time.Minute)
	rep, err := fleet.CheckAll(cctx)
	ccancel()
	if err != nil {
		return res, fmt.Errorf("fleetrotation: CheckAll: %w", err)
	}
	if rep.Unchecked > 0 {
		return res, fmt.Errorf("fleetrotation: CheckAll: %d devices unchecked: %w", rep.Unchecked, rep.Err)
	}
	res.Lockouts = len(rep.LockedOut)
	res.LockoutDeviceS = rep.LockedOutSeconds
	logf("fleetrotation: %s: CheckAll of %d devices: %d locked out, %d lockout periods, %.1f device-seconds",
		o.Mode, rep.Devices, res.Lockouts, rep.Lockouts, rep.LockedOutSeconds)

	floorAfter, err := fl.measure(ctx, "after")
	if err != nil {
		return res, err
	}
	k := float64(len(fl.clients))
	res.FloorBeforePerS, res.FloorAfterPerS = k/floorBefore.Seconds(), k/floorAfter.Seconds()
	res.KeycloakFloorPerS = 2 * k / (floorBefore + floorAfter).Seconds()
	res.Ratio = res.RotationsPerS / res.KeycloakFloorPerS
	return res, nil
}

// forEach runs fn for every item, n at a time; the first error stops the
// rest and is returned.
func forEach[T any](ctx context.Context, items []T, n int, fn func(context.Context, T) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, max(n, 1))
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, it); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}
