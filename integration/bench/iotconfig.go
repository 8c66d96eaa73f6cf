package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/integration/bench/launch"
)

// iotWorkers is the closed-loop concurrency of iot_config.
const iotWorkers = 8

// IOTConfig measures GET /iot/config against a bare Fiber handler serving
// the same bytes.
func IOTConfig() Scenario {
	return Scenario{
		Name: "iot_config",
		Doc: fmt.Sprintf("`GET /iot/config` of one device with a real Keycloak token: espmdm (app.New, in the bench process, "+
			"logging at info level into a discarding encoder) verifies the token's signature against the realm's JWKS and looks the "+
			"device up in its device cache (DEVICE_CACHE=on, the default: PostgreSQL only for the first request, the cache being kept "+
			"coherent by LISTEN/NOTIFY). The same closed-loop generator (%d workers, one shared keep-alive "+
			"`http.Client`, a 1 s warm-up, then a fixed duration) then loads a bare Fiber handler on another loopback port that "+
			"returns the same bytes. `ratio` = rps / bare_rps. Generator and servers share the machine's cores.", iotWorkers),
		Run: runIOTConfig,
	}
}

// admin is espmdm's admin API with an operator token.
type admin struct {
	base, tok string
	c         *http.Client
}

func (a admin) createModel(ctx context.Context) (int64, error) {
	var m struct {
		ID int64 `json:"id"`
	}
	code := "bench_" + launch.RandHex(4)
	err := callJSON(ctx, a.c, http.MethodPost, a.base+"/api/device-models", a.tok,
		map[string]any{"code": code, "name": "Bench " + code}, http.StatusCreated, &m)
	return m.ID, err
}

type createdDevice struct {
	ID       int64  `json:"id"`
	ClientID string `json:"client_id"`
}

func (a admin) createDevice(ctx context.Context, modelID int64, i int) (createdDevice, error) {
	var d createdDevice
	err := callJSON(ctx, a.c, http.MethodPost, a.base+"/api/devices", a.tok,
		map[string]any{"device_model_id": modelID, "config": map[string]any{"interval": 60, "name": fmt.Sprintf("bench device %d", i)}},
		http.StatusCreated, &d)
	return d, err
}

func (a admin) deleteDevice(ctx context.Context, id int64) error {
	status, _, b, err := call(ctx, a.c, http.MethodDelete, fmt.Sprintf("%s/api/devices/%d", a.base, id), a.tok, nil)
	if err != nil {
		return err
	}
	if status != http.StatusNoContent && status != http.StatusOK {
		return fmt.Errorf("delete device %d: status %d: %.200s", id, status, b)
	}
	return nil
}

func (a admin) secret(ctx context.Context, id int64) (string, error) {
	var p struct {
		ClientSecret string `json:"client_secret"`
	}
	err := callJSON(ctx, a.c, http.MethodGet, fmt.Sprintf("%s/api/devices/%d/provisioning?format=json", a.base, id), a.tok, nil, http.StatusOK, &p)
	if err == nil && p.ClientSecret == "" {
		err = errors.New("provisioning without a client_secret")
	}
	return p.ClientSecret, err
}

func runIOTConfig(ctx context.Context, env *Env) (res Result, err error) {
	srv, err := env.startInProcess(ctx, nil)
	if err != nil {
		return res, err
	}
	defer func() {
		if serr := srv.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stop espmdm: %w", serr)
		}
	}()
	return iotConfigOn(ctx, env, srv)
}

// iotConfigOn measures GET /iot/config of a device of a new model on srv
// against the bare handler; the device and its model are deleted after.
func iotConfigOn(ctx context.Context, env *Env, srv *launch.Server) (res Result, err error) {
	st := env.Stack
	opTok, err := env.token(ctx, st.OperatorClientID, st.OperatorClientSecret)
	if err != nil {
		return res, err
	}
	adm := admin{base: srv.Base, tok: opTok, c: newClient(1)}
	modelID, err := adm.createModel(ctx)
	if err != nil {
		return res, err
	}
	dev, err := adm.createDevice(ctx, modelID, 1)
	if err != nil {
		return res, err
	}
	defer func() {
		if derr := adm.deleteDevice(context.WithoutCancel(ctx), dev.ID); derr != nil && err == nil {
			err = derr
		}
	}()
	secret, err := adm.secret(ctx, dev.ID)
	if err != nil {
		return res, err
	}
	devTok, err := env.token(ctx, dev.ClientID, secret)
	if err != nil {
		return res, err
	}

	// The bytes espmdm serves, for the bare handler.
	c := newClient(iotWorkers)
	status, _, body, err := call(ctx, c, http.MethodGet, srv.Base+"/iot/config", devTok, nil)
	if err != nil || status != http.StatusOK {
		return res, fmt.Errorf("GET /iot/config: status %d, %w: %.200s", status, err, body)
	}
	bare := fiber.New(fiber.Config{DisableStartupMessage: true})
	bare.Get("/iot/config", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderCacheControl, "no-store")
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.Send(body)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	go func() { _ = bare.Listener(ln) }()
	defer func() { _ = bare.ShutdownWithTimeout(5 * time.Second) }()
	bareURL := "http://" + ln.Addr().String() + "/iot/config"

	load := func(u string) LoadResult {
		newReq := func(ctx context.Context) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err == nil {
				req.Header.Set("Authorization", "Bearer "+devTok)
			}
			return req, err
		}
		_ = ClosedLoop(ctx, c, iotWorkers, time.Second, newReq) // warm-up
		return ClosedLoop(ctx, c, iotWorkers, env.duration(), newReq)
	}
	env.logf("iot_config: loading espmdm for %s", env.duration())
	mdm := load(srv.Base + "/iot/config")
	env.logf("iot_config: loading the bare handler for %s", env.duration())
	raw := load(bareURL)
	for _, r := range []LoadResult{mdm, raw} {
		if r.Errors > 0 {
			return res, fmt.Errorf("iot_config: %d failed requests, first: %w", r.Errors, r.FirstErr)
		}
	}

	res.Add("rps", mdm.RPS(), "espmdm: requests per second")
	res.Add("p50_ms", Percentile(mdm.Latencies, 50), "espmdm: median latency, ms")
	res.Add("p99_ms", Percentile(mdm.Latencies, 99), "espmdm: 99th percentile latency, ms")
	res.Add("bare_rps", raw.RPS(), "bare Fiber handler: requests per second")
	res.Add("bare_p99_ms", Percentile(raw.Latencies, 99), "bare Fiber handler: 99th percentile latency, ms")
	res.Add("ratio", mdm.RPS()/raw.RPS(), "rps / bare_rps")
	res.Add("workers", iotWorkers, "closed-loop workers")
	res.Add("seconds", env.duration().Seconds(), "measured duration of each load")
	res.Add("bytes", len(body), "response body size")
	return res, nil
}
