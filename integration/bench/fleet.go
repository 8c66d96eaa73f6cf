package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/espmdm/espmdm/integration/bench/fleetrotation"
)

// fleetConcurrency is ROTATION_CONCURRENCY of the fleet runs: at 10 the
// offline devices' timeouts dominate (141 s for 1000 devices), at 50 the
// queue drains in about half a minute while Keycloak is far from busy.
const fleetConcurrency = 50

// FleetRotation returns the fleet_rotation scenario of mode (grace or
// restore). The restore run, which comes second, also draws the chart of
// both runs' progress into Env.ChartPath.
func FleetRotation(mode string, done *[]fleetrotation.Result) Scenario {
	return Scenario{
		Name: "fleet_rotation",
		Doc: fmt.Sprintf("Mode **%s**. 1000 devices are created through espmdm and booted from their NVS partitions in "+
			"`integration/devicesim` (one HTTP pool and one MQTT connection; two secret slots); the online ones get their first "+
			"token before the trigger, as running devices hold one. 5%% are offline, 2%% crash after the fetch, 1%% after "+
			"persisting the new secret; a crashed device reboots from its slots and asks for its config, which espmdm answers with "+
			"a second nudge (once per attempt) when the device fetched without confirming. The attempt timeout is 8 s, an attempt "+
			"not even fetched times out after 3 s (`ROTATION_FETCH_TIMEOUT_SECONDS`: offline devices free their slots early), "+
			"retries wait 2 s. `seconds` runs from `POST /api/rotation/trigger` until every online device is OK; `lockouts` "+
			"counts devices that at the end get no token with any secret they hold, `lockout_device_s` the device-seconds "+
			"during which a device needed a token and had none that worked. `keycloak_floor_per_s` is the same Keycloak work "+
			"per rotation (generate, the device's token grant, invalidate; restore: no invalidate) done directly against "+
			"Keycloak's API at the same concurrency in the same run, on 300 raw clients after an untimed warm-up pass over them, "+
			"timed just before the trigger and again just after the fleet is done (Keycloak keeps getting faster through a run "+
			"and its pace swings with the machine: the ratio is taken against both, 600 rotations over the two passes' time); "+
			"`ratio` = rotations_per_s / keycloak_floor_per_s. `admin_ops` and `grants` are the Keycloak work espmdm and the "+
			"devices did per confirmed device (espmdm's `espmdm_keycloak_operations_total`; the floor does 2 and 1 in grace "+
			"mode, 1 and 1 in restore mode). `sql_statements` is what espmdm's database ran from the trigger until done per "+
			"confirmed device (PostgreSQL's `pg_stat_statements`, BEGIN and COMMIT included, the benchmark's own status polling "+
			"too).", mode),
		Run: func(ctx context.Context, env *Env) (Result, error) {
			r, err := fleetrotation.Run(ctx, env.Stack, fleetrotation.Options{
				Mode: mode, Devices: 1000, Concurrency: fleetConcurrency,
				Offline: 0.05, CrashAfterFetch: 0.02, CrashAfterPersist: 0.01,
				Timeout: 8 * time.Second, FetchTimeout: 3 * time.Second, Retry: 2 * time.Second,
				Log: env.logf,
			})
			if err != nil {
				return Result{}, err
			}
			*done = append(*done, r)
			var res Result
			res.Add("mode", mode, "rotation mode")
			res.Add("devices", r.Devices, "devices in the fleet")
			res.Add("concurrency", r.Concurrency, "ROTATION_CONCURRENCY")
			res.Add("seconds", r.Seconds, "trigger until every online device is confirmed")
			res.Add("rotations_per_s", r.RotationsPerS, "online devices / seconds")
			res.Add("lockouts", r.Lockouts, "devices with no working secret at the end")
			res.Add("lockout_device_s", r.LockoutDeviceS, "locked-out device-seconds during the run")
			res.Add("p50_ms", r.P50ms, "median per-device latency, nudge to ack")
			res.Add("p99_ms", r.P99ms, "99th percentile of that latency")
			res.Add("keycloak_floor_per_s", r.KeycloakFloorPerS, "the same Keycloak work done directly, per second (over the measurements before and after the rotation)")
			res.Add("floor_before_per_s", r.FloorBeforePerS, "the floor measured just before the rotation alone")
			res.Add("floor_after_per_s", r.FloorAfterPerS, "the floor measured just after the rotation alone")
			res.Add("ratio", r.Ratio, "rotations_per_s / keycloak_floor_per_s")
			res.Add("projected_100k_h", r.Projected100kH, "hours to rotate 100,000 devices at this rate")
			res.Add("admin_ops", r.AdminOpsPerRotation, "espmdm's Keycloak admin operations per confirmed device")
			res.Add("grants", r.GrantsPerRotation, "the devices' token grants per confirmed device")
			if r.StatementsPerRotation > 0 {
				res.Add("sql_statements", r.StatementsPerRotation, "SQL statements espmdm's database ran per confirmed device (pg_stat_statements)")
			}
			if env.ChartPath != "" && len(*done) == 2 {
				f, err := os.Create(env.ChartPath)
				if err != nil {
					return res, err
				}
				defer f.Close()
				if err := fleetrotation.WriteChart(f, *done); err != nil {
					return res, err
				}
				res.Note("![devices confirmed vs seconds, both modes](%s)", filepath.Base(env.ChartPath))
			}
			return res, nil
		},
	}
}
