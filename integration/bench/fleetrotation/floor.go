package fleetrotation

import (
	"context"
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

// keycloakFloor creates k raw clients, rotates each once untimed (so
// Keycloak's code paths are as warm as in the fleet run before), then
// times, at concurrency c, the Keycloak work of one rotation per client
// (grace: generate a secret, a client-credentials grant with it,
// invalidate the rotated secret; restore: generate, grant) and returns
// rotations per second. The clients are deleted again.
func keycloakFloor(ctx context.Context, st *integration.Stack, hc *http.Client, mode string, k, c int, logf func(string, ...any)) (perS float64, err error) {
	kc := &api{http: hc, base: st.KeycloakURL + "/admin/realms/" + st.Realm,
		tok: newTokenSource(hc, st.TokenURL, st.AdminClientID, st.AdminClientSecret)}
	type client struct{ id, uuid string }
	clients := make([]*client, k)
	for i := range clients {
		clients[i] = &client{id: floorPrefix + launch.RandHex(6)}
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		e := forEach(cctx, clients, 4, func(ctx context.Context, cl *client) error {
			if cl.uuid == "" {
				return nil
			}
			_, err := kc.call(ctx, http.MethodDelete, "/clients/"+cl.uuid, nil, nil, http.StatusNoContent, http.StatusNotFound)
			return err
		})
		if e != nil && err == nil {
			err = fmt.Errorf("fleetrotation: delete floor clients: %w", e)
		}
	}()
	err = forEach(ctx, clients, 4, func(ctx context.Context, cl *client) error {
		h, err := kc.call(ctx, http.MethodPost, "/clients", floorClient(cl.id, st.DeviceAudience), nil, http.StatusCreated)
		if err != nil {
			return err
		}
		cl.uuid = path.Base(h.Get("Location"))
		if cl.uuid == "" || cl.uuid == "." || cl.uuid == "/" {
			return fmt.Errorf("fleetrotation: create client %s: no Location", cl.id)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	rotate := func(ctx context.Context, cl *client) error {
		var cred struct {
			Value string `json:"value"`
		}
		if _, err := kc.call(ctx, http.MethodPost, "/clients/"+cl.uuid+"/client-secret", nil, &cred, http.StatusOK); err != nil {
			return err
		}
		if cred.Value == "" {
			return fmt.Errorf("fleetrotation: client %s: generated secret is empty", cl.id)
		}
		_, _, status, err := grant(ctx, hc, st.TokenURL, cl.id, cred.Value)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("fleetrotation: token with the new secret of %s: status %d", cl.id, status)
		}
		if mode == "grace" {
			if _, err := kc.call(ctx, http.MethodDelete, "/clients/"+cl.uuid+"/client-secret/rotated", nil, nil, http.StatusNoContent); err != nil {
				return err
			}
		}
		return nil
	}
	if err := forEach(ctx, clients, c, rotate); err != nil {
		return 0, err
	}
	began := time.Now()
	err = forEach(ctx, clients, c, rotate)
	took := time.Since(began)
	if err != nil {
		return 0, err
	}
	perS = float64(k) / took.Seconds()
	logf("fleetrotation: %s: Keycloak floor: %d rotations of raw clients at concurrency %d in %s (%.1f/s)", mode, k, c, took.Round(time.Millisecond), perS)
	return perS, nil
}
