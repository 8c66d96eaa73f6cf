package fleetrotation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/integration/bench/launch"
)

// floorPrefix names the raw clients of the floor measurement: not
// iotdevice-, whose unknown clients espmdm's reconciler deletes.
const floorPrefix = "benchfloor-"

// floorClient is the create representation espmdm uses for a device client
// (adapters/keycloak newClient): confidential, client-secret, a service
// account, no browser or password flows, the role and audience mappers.
func floorClient(clientID, audience string) map[string]any {
	return map[string]any{
		"clientId": clientID, "enabled": true, "protocol": "openid-connect", "publicClient": false,
		"bearerOnly": false, "clientAuthenticatorType": "client-secret", "serviceAccountsEnabled": true,
		"standardFlowEnabled": false, "implicitFlowEnabled": false, "directAccessGrantsEnabled": false,
		"attributes": map[string]string{
			"espmdm.created": strconv.FormatInt(time.Now().Unix(), 10),
			"oauth2.device.authorization.grant.enabled": "false",
			"oidc.ciba.grant.enabled":                   "false",
		},
		"protocolMappers": []map[string]any{
			{"name": "espmdm-device-role", "protocol": "openid-connect", "protocolMapper": "oidc-hardcoded-role-mapper",
				"config": map[string]string{"role": "iotdevice"}},
			{"name": "espmdm-device-audience", "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
				"config": map[string]string{"included.custom.audience": audience, "access.token.claim": "true",
					"id.token.claim": "false", "introspection.token.claim": "true"}},
		},
	}
}

// floor is the Keycloak floor, the benchmark's own yardstick: k raw
// clients of a device's representation whose rotations are timed
// directly against Keycloak.
type floor struct {
	kc      *api
	hc      *http.Client
	st      *integration.Stack
	mode    string
	c       int
	clients []*floorClientRef
	logf    func(string, ...any)
}

type floorClientRef struct{ id, uuid string }

// newFloor creates k raw clients and rotates each once untimed (so
// Keycloak's code paths are as warm as in the fleet run); measure then
// times one rotation per client at concurrency c (grace: generate a
// secret, a client-credentials grant with it, invalidate the rotated
// secret; restore: generate, grant). Keycloak keeps getting faster through
// a run (its JIT) and its pace swings with the machine, so the fleet run
// is timed between two measurements. close deletes the clients.
func newFloor(ctx context.Context, st *integration.Stack, hc *http.Client, mode string, k, c int, logf func(string, ...any)) (*floor, error) {
	f := &floor{hc: hc, st: st, mode: mode, c: c, logf: logf,
		kc: &api{http: hc, base: st.KeycloakURL + "/admin/realms/" + st.Realm,
			tok: newTokenSource(hc, st.TokenURL, st.AdminClientID, st.AdminClientSecret)}}
	f.clients = make([]*floorClientRef, k)
	for i := range f.clients {
		f.clients[i] = &floorClientRef{id: floorPrefix + launch.RandHex(6)}
	}
	err := forEach(ctx, f.clients, 4, func(ctx context.Context, cl *floorClientRef) error {
		h, err := f.kc.call(ctx, http.MethodPost, "/clients", floorClient(cl.id, st.DeviceAudience), nil, http.StatusCreated)
		if err != nil {
			return err
		}
		cl.uuid = path.Base(h.Get("Location"))
		if cl.uuid == "" || cl.uuid == "." || cl.uuid == "/" {
			return fmt.Errorf("fleetrotation: create client %s: no Location", cl.id)
		}
		return nil
	})
	if err == nil {
		err = forEach(ctx, f.clients, c, f.rotate)
	}
	if err != nil {
		return nil, errors.Join(err, f.close(ctx))
	}
	return f, nil
}

// rotate does one rotation's Keycloak work for cl.
func (f *floor) rotate(ctx context.Context, cl *floorClientRef) error {
	var cred struct {
		Value string `json:"value"`
	}
	if _, err := f.kc.call(ctx, http.MethodPost, "/clients/"+cl.uuid+"/client-secret", nil, &cred, http.StatusOK); err != nil {
		return err
	}
	if cred.Value == "" {
		return fmt.Errorf("fleetrotation: client %s: generated secret is empty", cl.id)
	}
	_, _, status, err := grant(ctx, f.hc, f.st.TokenURL, cl.id, cred.Value)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("fleetrotation: token with the new secret of %s: status %d", cl.id, status)
	}
	if f.mode == "grace" {
		if _, err := f.kc.call(ctx, http.MethodDelete, "/clients/"+cl.uuid+"/client-secret/rotated", nil, nil, http.StatusNoContent); err != nil {
			return err
		}
	}
	return nil
}

// measure times one rotation of every client.
func (f *floor) measure(ctx context.Context, when string) (time.Duration, error) {
	began := time.Now()
	err := forEach(ctx, f.clients, f.c, f.rotate)
	took := time.Since(began)
	if err != nil {
		return 0, err
	}
	f.logf("fleetrotation: %s: Keycloak floor %s: %d rotations of raw clients at concurrency %d in %s (%.1f/s)",
		f.mode, when, len(f.clients), f.c, took.Round(time.Millisecond), float64(len(f.clients))/took.Seconds())
	return took, nil
}

// close deletes the clients.
func (f *floor) close(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	if err := forEach(cctx, f.clients, 4, func(ctx context.Context, cl *floorClientRef) error {
		if cl.uuid == "" {
			return nil
		}
		_, err := f.kc.call(ctx, http.MethodDelete, "/clients/"+cl.uuid, nil, nil, http.StatusNoContent, http.StatusNotFound)
		return err
	}); err != nil {
		return fmt.Errorf("fleetrotation: delete floor clients: %w", err)
	}
	return nil
}
