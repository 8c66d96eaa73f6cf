package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espmdm/espmdm/integration/bench/launch"
)

const (
	provDevices = 100
	// provWorkers is espmdm's Keycloak client concurrency (the default of
	// KEYCLOAK_MAX_CONCURRENCY), used for both sides.
	provWorkers = 8
	// rawPrefix names the clients made directly in Keycloak: not
	// iotdevice-*, so no espmdm reconciler deletes them meanwhile.
	rawPrefix = "benchraw-"
)

// Provisioning measures device creation through espmdm against creating the
// same clients with Keycloak's Admin REST API directly.
func Provisioning() Scenario {
	return Scenario{
		Name: "provisioning",
		Doc: fmt.Sprintf("%d device creations through espmdm's `POST /api/devices` (espmdm creates the Keycloak client, reads "+
			"its secret, seals it and inserts the row) by %d workers, the concurrency espmdm's Keycloak client allows, against "+
			"creating %d clients of the same representation (flags, attributes and the two protocol mappers of "+
			"adapters/keycloak) directly with Keycloak's Admin REST API (`POST /admin/realms/{realm}/clients`, then `GET "+
			".../client-secret`) with the stack's admin service account, same concurrency, same run. As many raw clients "+
			"as workers are created first as a warm-up. Every client is deleted afterwards (espmdm's through `DELETE /api/devices/{id}`). "+
			"`ratio` = devices_per_s / keycloak_raw_per_s.", provDevices, provWorkers, provDevices),
		Run: runProvisioning,
	}
}

// rawClient is the representation adapters/keycloak's newClient posts for
// a device client, under another client id.
func rawClient(clientID, audience string, now time.Time) map[string]any {
	return map[string]any{
		"clientId":                  clientID,
		"enabled":                   true,
		"protocol":                  "openid-connect",
		"publicClient":              false,
		"bearerOnly":                false,
		"clientAuthenticatorType":   "client-secret",
		"serviceAccountsEnabled":    true,
		"standardFlowEnabled":       false,
		"implicitFlowEnabled":       false,
		"directAccessGrantsEnabled": false,
		"attributes": map[string]string{
			"espmdm.created": strconv.FormatInt(now.Unix(), 10),
			"oauth2.device.authorization.grant.enabled": "false",
			"oidc.ciba.grant.enabled":                   "false",
		},
		"protocolMappers": []map[string]any{
			{
				"name": "espmdm-device-role", "protocol": "openid-connect", "protocolMapper": "oidc-hardcoded-role-mapper",
				"config": map[string]string{"role": "iotdevice"},
			},
			{
				"name": "espmdm-device-audience", "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
				"config": map[string]string{
					"included.custom.audience":  audience,
					"access.token.claim":        "true",
					"id.token.claim":            "false",
					"introspection.token.claim": "true",
				},
			},
		},
	}
}

// rawKeycloak creates and deletes clients directly.
type rawKeycloak struct {
	base, tok, audience string
	c                   *http.Client
	mu                  sync.Mutex
	uuids               []string
}

func (k *rawKeycloak) create(ctx context.Context, clientID string) error {
	status, loc, b, err := call(ctx, k.c, http.MethodPost, k.base+"/clients", k.tok, rawClient(clientID, k.audience, time.Now()))
	if err != nil {
		return fmt.Errorf("create client %s: %w", clientID, err)
	}
	if status != http.StatusCreated {
		return fmt.Errorf("create client %s: status %d: %.200s", clientID, status, b)
	}
	uuid := loc[strings.LastIndex(loc, "/")+1:]
	if uuid == "" {
		return fmt.Errorf("create client %s: no Location", clientID)
	}
	k.mu.Lock()
	k.uuids = append(k.uuids, uuid)
	k.mu.Unlock()
	var cred struct {
		Value string `json:"value"`
	}
	if err := callJSON(ctx, k.c, http.MethodGet, k.base+"/clients/"+uuid+"/client-secret", k.tok, nil, http.StatusOK, &cred); err != nil {
		return err
	}
	if cred.Value == "" {
		return fmt.Errorf("client %s has no secret", clientID)
	}
	return nil
}

// deleteAll deletes every client created.
func (k *rawKeycloak) deleteAll(ctx context.Context) error {
	k.mu.Lock()
	uuids := k.uuids
	k.uuids = nil
	k.mu.Unlock()
	var failed []string
	var mu sync.Mutex
	_, _, _ = parallel(ctx, len(uuids), provWorkers, func(ctx context.Context, i int) error {
		status, _, _, err := call(ctx, k.c, http.MethodDelete, k.base+"/clients/"+uuids[i], k.tok, nil)
		if err != nil || (status != http.StatusNoContent && status != http.StatusNotFound) {
			mu.Lock()
			failed = append(failed, uuids[i])
			mu.Unlock()
		}
		return nil
	})
	if len(failed) > 0 {
		return fmt.Errorf("could not delete %d raw clients (%s…): delete the %s* clients of realm by hand", len(failed), failed[0], rawPrefix)
	}
	return nil
}

func runProvisioning(ctx context.Context, env *Env) (res Result, err error) {
	st := env.Stack
	srv, err := env.startInProcess(ctx, nil)
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

	// espmdm's devices, deleted at the end.
	ids := make([]int64, provDevices)
	defer func() {
		var n atomic.Int64
		_, _, _ = parallel(context.WithoutCancel(ctx), len(ids), provWorkers, func(ctx context.Context, i int) error {
			if ids[i] != 0 && adm.deleteDevice(ctx, ids[i]) != nil {
				n.Add(1)
			}
			return nil
		})
		if n.Load() > 0 {
			err = errors.Join(err, fmt.Errorf("could not delete %d bench devices", n.Load()))
		}
	}()

	env.logf("provisioning: warm-up")
	if _, _, err := parallel(ctx, provWorkers, provWorkers, func(ctx context.Context, i int) error {
		return kc.create(ctx, fmt.Sprintf("%s%s-warm-%d", rawPrefix, run, i))
	}); err != nil {
		return res, err
	}
	env.logf("provisioning: %d devices through espmdm", provDevices)
	mdmLat, mdmTime, err := parallel(ctx, provDevices, provWorkers, func(ctx context.Context, i int) error {
		d, err := adm.createDevice(ctx, modelID, i)
		ids[i] = d.ID
		return err
	})
	if err != nil {
		return res, err
	}
	env.logf("provisioning: %d clients directly in Keycloak", provDevices)
	rawLat, rawTime, err := parallel(ctx, provDevices, provWorkers, func(ctx context.Context, i int) error {
		return kc.create(ctx, fmt.Sprintf("%s%s-%d", rawPrefix, run, i))
	})
	if err != nil {
		return res, err
	}
	perS := float64(provDevices) / mdmTime.Seconds()
	rawPerS := float64(provDevices) / rawTime.Seconds()
	res.Add("devices", provDevices, "devices created through espmdm (and raw clients created)")
	res.Add("seconds", mdmTime.Seconds(), "wall time of espmdm's creations")
	res.Add("devices_per_s", perS, "espmdm: devices created per second")
	res.Add("keycloak_raw_per_s", rawPerS, "Keycloak Admin REST API: clients created (with secret read) per second")
	res.Add("ratio", perS/rawPerS, "devices_per_s / keycloak_raw_per_s")
	res.Add("create_p99_ms", Percentile(mdmLat, 99), "espmdm: 99th percentile of one POST /api/devices, ms")
	res.Add("raw_p99_ms", Percentile(rawLat, 99), "raw: 99th percentile of one create + secret read, ms")
	res.Add("workers", provWorkers, "concurrent creations on both sides")
	return res, nil
}
