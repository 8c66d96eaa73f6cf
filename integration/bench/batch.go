package bench

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/espmdm/espmdm/integration/bench/launch"
)

// batchDevices is the size of the measured batch (SPEC §18's benchmark);
// batchWarmUp how many devices each side makes first.
const (
	batchDevices = 200
	batchWarmUp  = 40
)

// Batch measures POST /api/devices/batch against creating the same clients
// with Keycloak's Admin REST API directly, at the same concurrency.
func Batch() Scenario {
	return Scenario{
		Name: "batch",
		Doc: fmt.Sprintf("One `POST /api/devices/batch` of %d devices (count mode, NVS partitions of 0x6000), timed from the request "+
			"to the last byte of the ZIP: espmdm checks the batch, then creates each device (Keycloak client and its secret, broker "+
			"account, sealed password, row, NVS partition, two audit entries) with at most %d Keycloak requests in flight (KEYCLOAK_MAX_CONCURRENCY's default; twice as many devices in progress), "+
			"against creating %d clients of the same representation directly with Keycloak's Admin REST API (`POST .../clients`, then "+
			"`GET .../client-secret`) by %d workers, same run, after a warm-up of %d devices on each side. Every client is "+
			"deleted afterwards. `ratio` = devices_per_s / keycloak_raw_per_s (goal ≥ 0.8).", batchDevices, provWorkers, batchDevices, provWorkers, batchWarmUp),
		Run: runBatch,
	}
}

func runBatch(ctx context.Context, env *Env) (res Result, err error) {
	st := env.Stack
	srv, err := env.startInProcess(ctx, map[string]string{"KEYCLOAK_MAX_CONCURRENCY": strconv.Itoa(provWorkers)})
	if err != nil {
		return res, err
	}
	defer func() {
		if serr := srv.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stop espmdm: %w", serr)
		}
	}()
	opTok, err := env.token(ctx, st.OperatorClientID, st.OperatorClientSecret)
	if err != nil {
		return res, err
	}
	adm := admin{base: srv.Base, tok: opTok, c: newClient(provWorkers)}
	adm.c.Timeout = 10 * time.Minute
	modelID, err := adm.createModel(ctx)
	if err != nil {
		return res, err
	}
	adminTok, err := env.token(ctx, st.AdminClientID, st.AdminClientSecret)
	if err != nil {
		return res, err
	}
	kc := &rawKeycloak{base: st.KeycloakURL + "/admin/realms/" + st.Realm, tok: adminTok, audience: st.DeviceAudience, c: newClient(provWorkers)}
	run := launch.RandHex(4)
	defer func() {
		if derr := kc.deleteAll(context.WithoutCancel(ctx)); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	var ids []int64
	defer func() {
		var n atomic.Int64
		_, _, _ = parallel(context.WithoutCancel(ctx), len(ids), provWorkers, func(ctx context.Context, i int) error {
			if adm.deleteDevice(ctx, ids[i]) != nil {
				n.Add(1)
			}
			return nil
		})
		if n.Load() > 0 {
			err = errors.Join(err, fmt.Errorf("could not delete %d bench devices", n.Load()))
		}
	}()

	// Both sides warm up (Keycloak's JIT most of all): raw clients, and a
	// small batch through espmdm.
	env.logf("batch: warm-up")
	if _, _, err := parallel(ctx, batchWarmUp, provWorkers, func(ctx context.Context, i int) error {
		return kc.create(ctx, fmt.Sprintf("%s%s-bwarm-%d", rawPrefix, run, i))
	}); err != nil {
		return res, err
	}
	batch := func(n int) ([]int64, time.Duration, int, error) {
		began := time.Now()
		body, err := postBatch(ctx, adm.c, srv.Base, opTok, modelID, n, map[string]any{"interval": 60}, "0x6000")
		took := time.Since(began)
		if err != nil {
			return nil, 0, 0, err
		}
		made, failed, err := batchIDs(body)
		ids = append(ids, made...)
		if err == nil && (failed > 0 || len(made) != n) {
			err = fmt.Errorf("batch: %d devices made, %d failed, want %d made", len(made), failed, n)
		}
		return made, took, len(body), err
	}
	if _, _, _, err := batch(batchWarmUp); err != nil {
		return res, err
	}
	env.logf("batch: %d devices in one POST /api/devices/batch", batchDevices)
	_, batchTime, zipBytes, err := batch(batchDevices)
	if err != nil {
		return res, err
	}
	env.logf("batch: %d clients directly in Keycloak", batchDevices)
	_, rawTime, err := parallel(ctx, batchDevices, provWorkers, func(ctx context.Context, i int) error {
		return kc.create(ctx, fmt.Sprintf("%s%s-b%d", rawPrefix, run, i))
	})
	if err != nil {
		return res, err
	}
	perS := float64(batchDevices) / batchTime.Seconds()
	rawPerS := float64(batchDevices) / rawTime.Seconds()
	res.Add("devices", batchDevices, "devices in the batch (and raw clients created)")
	res.Add("seconds", batchTime.Seconds(), "wall time of the batch request, to the ZIP's last byte")
	res.Add("devices_per_s", perS, "espmdm: devices created per second by the batch")
	res.Add("keycloak_raw_per_s", rawPerS, "Keycloak Admin REST API: clients created (with secret read) per second")
	res.Add("ratio", perS/rawPerS, "devices_per_s / keycloak_raw_per_s (goal ≥ 0.8)")
	res.Add("zip_kb", zipBytes/1024, "size of the answer, KiB")
	res.Add("workers", provWorkers, "concurrent creations on both sides")
	return res, nil
}

// postBatch makes n devices of modelID with one POST /api/devices/batch
// (each with config and a partition of size) and returns the ZIP; a
// transport failure or a status other than 200 is an error.
func postBatch(ctx context.Context, c *http.Client, base, tok string, modelID int64, n int, config map[string]any, size string) ([]byte, error) {
	status, _, body, err := call(ctx, c, http.MethodPost, base+"/api/devices/batch", tok,
		map[string]any{"device_model_id": modelID, "count": n, "config": config, "size": size})
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("batch: status %d: %.300s", status, body)
	}
	return body, nil
}

// batchIDs reads the device ids from a batch ZIP's devices.csv and counts
// the rows of its errors.csv.
func batchIDs(body []byte) (ids []int64, failed int, err error) {
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil {
		return nil, 0, fmt.Errorf("batch: the answer is not a ZIP: %w", err)
	}
	for _, f := range zr.File {
		if f.Name != "devices.csv" && f.Name != "errors.csv" {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return nil, 0, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, 0, err
		}
		recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
		if err != nil {
			return nil, 0, fmt.Errorf("batch: %s: %w", f.Name, err)
		}
		if len(recs) == 0 {
			return nil, 0, fmt.Errorf("batch: %s has no header", f.Name)
		}
		if f.Name == "errors.csv" {
			failed = len(recs) - 1
			continue
		}
		for _, r := range recs[1:] {
			id, err := strconv.ParseInt(r[0], 10, 64)
			if err != nil {
				return nil, 0, fmt.Errorf("batch: devices.csv id %q", r[0])
			}
			ids = append(ids, id)
		}
	}
	return ids, failed, nil
}
