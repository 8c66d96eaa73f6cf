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
			"`GET .../client-secret`) by %d workers, same run, after a warm-up of %d devices on each side. Keycloak keeps getting faster "+
			"through a run (its JIT: the raw rate can double between two passes a few seconds apart), so the raw clients are timed "+
			"before and after each batch and the batch is set against both (`keycloak_raw_per_s`: %d clients over the two passes' time). "+
			"The same is then done by a second espmdm with `MQTT_AUTH=none` (no broker accounts: `ratio_no_broker`), which shows what "+
			"the broker accounts cost: Mosquitto 2.0's dynamic security rewrites its whole state file after every command, two per device. "+
			"Every client is deleted afterwards. `ratio` = devices_per_s / keycloak_raw_per_s (goal ≥ 0.8).",
			batchDevices, provWorkers, batchDevices, provWorkers, batchWarmUp, 2*batchDevices),
		Run: runBatch,
	}
}

// batchServer is an espmdm the batch benchmark posts to, with a model of
// its own, and the devices it made (deleted by cleanUp).
type batchServer struct {
	mqttAuth string
	srv      *launch.Server
	adm      admin
	modelID  int64
	ids      []int64
}

// batchServer starts an espmdm with MQTT_AUTH=mqttAuth and the benchmark's
// Keycloak bound.
func (e *Env) batchServer(ctx context.Context, mqttAuth string) (*batchServer, error) {
	srv, err := e.startInProcess(ctx, map[string]string{"MQTT_AUTH": mqttAuth, "KEYCLOAK_MAX_CONCURRENCY": strconv.Itoa(provWorkers)})
	if err != nil {
		return nil, err
	}
	b := &batchServer{mqttAuth: mqttAuth, srv: srv}
	opTok, err := e.token(ctx, e.Stack.OperatorClientID, e.Stack.OperatorClientSecret)
	if err == nil {
		b.adm = admin{base: srv.Base, tok: opTok, c: newClient(provWorkers)}
		b.adm.c.Timeout = 10 * time.Minute
		b.modelID, err = b.adm.createModel(ctx)
	}
	if err != nil {
		return nil, errors.Join(err, srv.Stop())
	}
	return b, nil
}

// batch makes n devices in one request and returns how long it took and
// the size of the ZIP.
func (b *batchServer) batch(ctx context.Context, n int) (time.Duration, int, error) {
	began := time.Now()
	body, err := postBatch(ctx, b.adm.c, b.srv.Base, b.adm.tok, b.modelID, n, map[string]any{"interval": 60}, "0x6000")
	took := time.Since(began)
	if err != nil {
		return 0, 0, err
	}
	made, failed, err := batchIDs(body)
	b.ids = append(b.ids, made...)
	if err == nil && (failed > 0 || len(made) != n) {
		err = fmt.Errorf("batch: %d devices made, %d failed, want %d made", len(made), failed, n)
	}
	return took, len(body), err
}

// cleanUp deletes the devices made and stops the server.
func (b *batchServer) cleanUp(ctx context.Context) error {
	var n atomic.Int64
	_, _, _ = parallel(ctx, len(b.ids), provWorkers, func(ctx context.Context, i int) error {
		if b.adm.deleteDevice(ctx, b.ids[i]) != nil {
			n.Add(1)
		}
		return nil
	})
	var err error
	if n.Load() > 0 {
		err = fmt.Errorf("could not delete %d bench devices", n.Load())
	}
	if serr := b.srv.Stop(); serr != nil {
		err = errors.Join(err, fmt.Errorf("stop espmdm: %w", serr))
	}
	return err
}

func runBatch(ctx context.Context, env *Env) (res Result, err error) {
	st := env.Stack
	// The measured espmdm (broker accounts, the default), then one without.
	var servers []*batchServer
	defer func() {
		for _, b := range servers {
			err = errors.Join(err, b.cleanUp(context.WithoutCancel(ctx)))
		}
	}()
	for _, auth := range []string{"dynsec", "none"} {
		b, err := env.batchServer(ctx, auth)
		if err != nil {
			return res, err
		}
		servers = append(servers, b)
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
	raw := func(n int, name string) (time.Duration, error) {
		_, took, err := parallel(ctx, n, provWorkers, func(ctx context.Context, i int) error {
			return kc.create(ctx, fmt.Sprintf("%s%s-%s%d", rawPrefix, run, name, i))
		})
		return took, err
	}

	// Every side warms up (Keycloak's JIT most of all): raw clients, and a
	// small batch through each espmdm.
	env.logf("batch: warm-up")
	if _, err := raw(batchWarmUp, "w"); err != nil {
		return res, err
	}
	for _, b := range servers {
		if _, _, err := b.batch(ctx, batchWarmUp); err != nil {
			return res, err
		}
	}
	// raw, batch (broker accounts), raw, batch (none), raw: each batch
	// between two raw passes.
	rawTimes := make([]time.Duration, len(servers)+1)
	batchTimes := make([]time.Duration, len(servers))
	zipBytes := make([]int, len(servers))
	rawPass := func(i int) error {
		env.logf("batch: %d clients directly in Keycloak", batchDevices)
		took, err := raw(batchDevices, strconv.Itoa(i)+"-")
		rawTimes[i] = took
		return err
	}
	if err := rawPass(0); err != nil {
		return res, err
	}
	for i, b := range servers {
		env.logf("batch: %d devices in one POST /api/devices/batch (MQTT_AUTH=%s)", batchDevices, b.mqttAuth)
		if batchTimes[i], zipBytes[i], err = b.batch(ctx, batchDevices); err != nil {
			return res, err
		}
		if err := rawPass(i + 1); err != nil {
			return res, err
		}
	}
	rate := func(d time.Duration) float64 { return float64(batchDevices) / d.Seconds() }
	around := func(i int) float64 { return float64(2*batchDevices) / (rawTimes[i] + rawTimes[i+1]).Seconds() }
	perS, rawPerS := rate(batchTimes[0]), around(0)
	res.Add("devices", batchDevices, "devices in the batch (and raw clients created in each pass)")
	res.Add("seconds", batchTimes[0].Seconds(), "wall time of the batch request, to the ZIP's last byte")
	res.Add("devices_per_s", perS, "espmdm: devices created per second by the batch")
	res.Add("keycloak_raw_per_s", rawPerS, "Keycloak Admin REST API: clients created (with secret read) per second, over the passes before and after the batch")
	res.Add("raw_before_per_s", rate(rawTimes[0]), "the raw pass before the batch alone")
	res.Add("raw_after_per_s", rate(rawTimes[1]), "the raw pass after the batch alone")
	res.Add("ratio", perS/rawPerS, "devices_per_s / keycloak_raw_per_s (goal ≥ 0.8)")
	res.Add("no_broker_per_s", rate(batchTimes[1]), "the same batch by an espmdm with MQTT_AUTH=none (no broker accounts)")
	res.Add("ratio_no_broker", rate(batchTimes[1])/around(1), "no_broker_per_s / the raw passes before and after it")
	res.Add("zip_kb", zipBytes[0]/1024, "size of the answer, KiB")
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
