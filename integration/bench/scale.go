package bench

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/espmdm/espmdm/adapters/postgres/postgrestest"
)

const scaleDevices = 100000

// Scale measures the admin API's read paths with 100,000 devices.
func Scale() Scenario {
	return Scenario{
		Name: "scale",
		Doc: fmt.Sprintf("%d device rows (10 models; 5%% inactive; ten PENDING, otherwise 70%% OK, 25%% QUEUED, 5%% TIMEOUT; "+
			"secrets aged evenly over 0–95 days, 2%% never rotated; half the PENDING and TIMEOUT ones with an unconfirmed "+
			"secret, so every dashboard group is populated) inserted directly into the database of an `espmdm serve` "+
			"subprocess (built with `go build ./app/cmd/espmdm`; no Keycloak clients), then `VACUUM ANALYZE`. The rows are "+
			"inserted after espmdm has started, so its start-up reconciliation and first rotation cycle ran on an empty "+
			"database (RECONCILE_INTERVAL=24h, ROTATION_TICK_SECONDS=3600, a long ROTATION_TIMEOUT_SECONDS: nothing runs in "+
			"the background during the measurement). Then, one request at a time with a viewer token, N requests each "+
			"(N = `samples`) of: a page of 100 of `/api/devices` first, deep (cursor at device 90,000), filtered by "+
			"`rotation_state=QUEUED` and by `model_id`; `/api/rotation/status`; a page of 100 of `/api/rotation/dashboard` "+
			"for each group. `list_p99_ms` and `dashboard_p99_ms` are over all their variants together. `rss_mb` is the "+
			"espmdm process's VmRSS (from /proc/<pid>/status) after the requests, `peak_rss_mb` its VmHWM.", scaleDevices),
		Run: runScale,
	}
}

func loadFleet(ctx context.Context, dsn string) (modelID int64, err error) {
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
	defer db.Close()
	if _, err := db.ExecContext(ctx, `INSERT INTO device_models (code, name)
		SELECT 'scale_' || chr(97 + i), 'Scale model ' || i FROM generate_series(0, 9) AS i`); err != nil {
		return 0, fmt.Errorf("insert models: %w", err)
	}
	if err := postgrestest.InsertFleet(ctx, db, scaleDevices); err != nil {
		return 0, err
	}
	err = db.QueryRowContext(ctx, "SELECT id FROM device_models ORDER BY id OFFSET 3 LIMIT 1").Scan(&modelID)
	return modelID, err
}

func runScale(ctx context.Context, env *Env) (res Result, err error) {
	st := env.Stack
	env.logf("scale: building and starting espmdm serve")
	srv, err := env.startProcess(ctx, map[string]string{
		"LOG_LEVEL":                "warn",
		"ROTATION_TICK_SECONDS":    "3600",
		"ROTATION_TIMEOUT_SECONDS": "31536000",
	})
	if err != nil {
		return res, err
	}
	defer func() {
		if serr := srv.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stop espmdm: %w", serr)
		}
	}()
	// Let the start-up reconciliation and rotation cycle pass on the empty
	// database.
	time.Sleep(2 * time.Second)
	env.logf("scale: inserting %d devices", scaleDevices)
	t0 := time.Now()
	modelID, err := loadFleet(ctx, srv.DatabaseURL)
	if err != nil {
		return res, err
	}
	loadTime := time.Since(t0)

	tok, err := env.token(ctx, st.ViewerClientID, st.ViewerClientSecret)
	if err != nil {
		return res, err
	}
	c := newClient(1)
	// The cursor at device 90,000, by walking pages of 1000.
	var cursor string
	for seen := 0; seen < 90000; {
		var page struct {
			Devices    []struct{} `json:"devices"`
			NextCursor *string    `json:"next_cursor"`
		}
		u := srv.Base + "/api/devices?limit=1000"
		if cursor != "" {
			u += "&cursor=" + url.QueryEscape(cursor)
		}
		if err := callJSON(ctx, c, http.MethodGet, u, tok, nil, http.StatusOK, &page); err != nil {
			return res, err
		}
		if page.NextCursor == nil {
			return res, fmt.Errorf("scale: only %d devices listed", seen+len(page.Devices))
		}
		seen += len(page.Devices)
		cursor = *page.NextCursor
	}

	measure := func(path string) ([]time.Duration, error) {
		newReq := func(ctx context.Context) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.Base+path, nil)
			if err == nil {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			return req, err
		}
		if _, err := Sequential(ctx, c, 3, newReq); err != nil { // warm-up
			return nil, err
		}
		return Sequential(ctx, c, env.samples(), newReq)
	}
	type variant struct{ key, path, help string }
	lists := []variant{
		{"list_first_p99_ms", "/api/devices?limit=100", "first page of 100"},
		{"list_deep_p99_ms", "/api/devices?limit=100&cursor=" + url.QueryEscape(cursor), "page of 100 after device 90,000"},
		{"list_state_p99_ms", "/api/devices?limit=100&rotation_state=QUEUED", "first page of 100 QUEUED"},
		{"list_model_p99_ms", fmt.Sprintf("/api/devices?limit=100&model_id=%d", modelID), "first page of 100 of one model"},
	}
	var groups []variant
	for _, g := range []string{"healthy", "warning", "critical", "inactive"} {
		groups = append(groups, variant{"dashboard_" + g + "_p99_ms", "/api/rotation/dashboard?limit=100&group=" + g, "counts and first page of 100 of " + g})
	}
	env.logf("scale: %d requests per endpoint", env.samples())
	var all = map[string][]time.Duration{}
	var per []Figure
	for _, set := range []struct {
		name string
		vs   []variant
	}{{"list", lists}, {"dashboard", groups}} {
		for _, v := range set.vs {
			lat, err := measure(v.path)
			if err != nil {
				return res, fmt.Errorf("scale: %s: %w", v.path, err)
			}
			all[set.name] = append(all[set.name], lat...)
			per = append(per, Figure{Key: v.key, Value: FormatValue(Percentile(lat, 99)), Help: "p99 of " + v.help + ", ms"})
		}
	}
	statusLat, err := measure("/api/rotation/status")
	if err != nil {
		return res, fmt.Errorf("scale: /api/rotation/status: %w", err)
	}
	rss, err := rssKB(srv.Pid, "VmRSS")
	if err != nil {
		return res, err
	}
	hwm, err := rssKB(srv.Pid, "VmHWM")
	if err != nil {
		return res, err
	}

	res.Add("devices", scaleDevices, "device rows")
	res.Add("list_p99_ms", Percentile(all["list"], 99), "p99 of a page of /api/devices (all four variants), ms")
	res.Add("status_p99_ms", Percentile(statusLat, 99), "p99 of /api/rotation/status, ms")
	res.Add("dashboard_p99_ms", Percentile(all["dashboard"], 99), "p99 of a page of /api/rotation/dashboard (all four groups), ms")
	res.Add("rss_mb", float64(rss)/1024, "espmdm subprocess VmRSS after the requests, MiB")
	res.Add("peak_rss_mb", float64(hwm)/1024, "espmdm subprocess VmHWM (peak RSS), MiB")
	res.Figures = append(res.Figures, per...)
	res.Add("samples", env.samples(), "sequential requests per variant")
	res.Add("insert_s", loadTime.Seconds(), "time to insert the rows and VACUUM ANALYZE, s")
	return res, nil
}
