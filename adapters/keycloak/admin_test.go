package keycloak_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestIdentityProviderContract(t *testing.T) {
	st := integration.Shared(t)
	portstest.RunIdentityProviderContract(t, func(t *testing.T) ports.IdentityProvider {
		return authenticating{Admin: newAdmin(t, adminConfig(st)), t: t, st: st}
	})
}

// authenticating is an Admin that tells the contract whether a secret
// authenticates a client by a client_credentials grant at the token
// endpoint.
type authenticating struct {
	*keycloak.Admin
	t  *testing.T
	st *integration.Stack
}

func (a authenticating) Authenticates(clientID, secret string) bool {
	a.t.Helper()
	tok, _ := clientToken(a.t, a.st, clientID, secret)
	return tok != ""
}

func TestCreateClientMakesAWorkingDeviceIdentity(t *testing.T) {
	st := integration.Shared(t)
	a := newAdmin(t, adminConfig(st))
	before := time.Now().Add(-2 * time.Second).Truncate(time.Second)
	id, secret := createClient(t, a)

	got, err := a.ClientStatus(t.Context(), id)
	mustNoErr(t, "ClientStatus", err)
	want := model.IdentityStatus{ClientID: id, Exists: true, Enabled: true, ServiceAccount: true}
	if got.ClientID != want.ClientID || got.Exists != want.Exists || got.Enabled != want.Enabled ||
		got.ServiceAccount != want.ServiceAccount || len(got.Problems) != 0 {
		t.Errorf("ClientStatus: got %+v, want %+v", got, want)
	}

	// The representation Keycloak keeps is SPEC §1's.
	rep := rawClient(t, st, id)
	for field, want := range map[string]any{
		"enabled": true, "publicClient": false, "bearerOnly": false, "protocol": "openid-connect",
		"clientAuthenticatorType": "client-secret", "serviceAccountsEnabled": true,
		"standardFlowEnabled": false, "implicitFlowEnabled": false, "directAccessGrantsEnabled": false,
	} {
		if rep[field] != want {
			t.Errorf("client %s: %s = %v, want %v", id, field, rep[field], want)
		}
	}
	var mappers []struct {
		ProtocolMapper string            `json:"protocolMapper"`
		Config         map[string]string `json:"config"`
	}
	b, _ := json.Marshal(rep["protocolMappers"])
	if err := json.Unmarshal(b, &mappers); err != nil {
		t.Fatalf("protocol mappers: %v", err)
	}
	var haveRole, haveAud bool
	for _, m := range mappers {
		haveRole = haveRole || (m.ProtocolMapper == "oidc-hardcoded-role-mapper" && m.Config["role"] == "iotdevice")
		haveAud = haveAud || (m.ProtocolMapper == "oidc-audience-mapper" &&
			m.Config["included.custom.audience"] == st.DeviceAudience && m.Config["access.token.claim"] == "true")
	}
	if !haveRole || !haveAud {
		t.Errorf("client %s mappers: hardcoded role %v, audience %v; want both", id, haveRole, haveAud)
	}

	// A device token from the returned secret carries what VerifyDevice needs.
	raw := mustToken(t, st, id, secret)
	claims, _ := unverifiedClaims(t, raw)
	if claims["azp"] != id {
		t.Errorf("token azp = %v, want %s", claims["azp"], id)
	}
	ra, _ := claims["realm_access"].(map[string]any)
	roles, _ := ra["roles"].([]any)
	if !slices.Contains(roles, any("iotdevice")) {
		t.Errorf("token realm_access.roles = %v, want iotdevice among them", roles)
	}
	aud, _ := claims.GetAudience()
	if !slices.Contains(aud, st.DeviceAudience) {
		t.Errorf("token aud = %v, want %s among them", aud, st.DeviceAudience)
	}
	dc, err := newVerifier(t, verifierConfig(st)).VerifyDevice(t.Context(), raw)
	mustNoErr(t, "VerifyDevice", err)
	code, key, _ := model.ParseClientID(id)
	if dc.ClientID != id || dc.ModelCode != code || dc.Key != key || dc.IssuedAt.IsZero() || !dc.ExpiresAt.After(dc.IssuedAt) {
		t.Errorf("VerifyDevice: got %+v, want client %s (model %s, key %s) with iat < exp", dc, id, code, key)
	}

	// The creation time is recorded and listed.
	list, err := a.ListDeviceClients(t.Context())
	mustNoErr(t, "ListDeviceClients", err)
	i := slices.IndexFunc(list, func(c model.ClientInfo) bool { return c.ClientID == id })
	if i < 0 {
		t.Fatalf("ListDeviceClients: %s missing", id)
	}
	if ca := list[i].CreatedAt; ca.Before(before) || ca.After(time.Now().Add(2*time.Second)) {
		t.Errorf("CreatedAt = %v, want between %v and now", ca, before)
	}
}

func TestCreateClientRefusesANonDeviceID(t *testing.T) {
	st := integration.Shared(t)
	a := newAdmin(t, adminConfig(st))
	for _, id := range []string{"", "account", "iotdevice-x", "iotdevice-Model-abcdefgh", "iotdevice-m-abcdefg"} {
		_, err := a.CreateClient(t.Context(), id)
		var ve *model.ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("CreateClient(%q): got %v, want a *model.ValidationError", id, err)
		}
		_, err = a.RepairClient(t.Context(), id)
		if !errors.As(err, &ve) {
			t.Errorf("RepairClient(%q): got %v, want a *model.ValidationError", id, err)
		}
	}
}

func TestDuplicateCreateAndDoubleDelete(t *testing.T) {
	st := integration.Shared(t)
	a := newAdmin(t, adminConfig(st))
	id, secret := createClient(t, a)

	_, err := a.CreateClient(t.Context(), id)
	wantErrIs(t, "CreateClient(duplicate)", err, model.ErrConflict)
	if errors.Is(err, model.ErrUnavailable) {
		t.Errorf("CreateClient(duplicate): %v also matches ErrUnavailable", err)
	}
	got, err := a.ClientSecret(t.Context(), id)
	mustNoErr(t, "ClientSecret", err)
	if got != secret {
		t.Errorf("the refused duplicate changed the secret")
	}

	mustNoErr(t, "DeleteClient", a.DeleteClient(t.Context(), id))
	mustNoErr(t, "DeleteClient(again)", a.DeleteClient(t.Context(), id))
	if _, code := clientToken(t, st, id, secret); code == http.StatusOK {
		t.Errorf("token endpoint still serves the deleted client")
	}
	stat, err := a.ClientStatus(t.Context(), id)
	mustNoErr(t, "ClientStatus(deleted)", err)
	if stat.Exists || len(stat.Problems) == 0 {
		t.Errorf("ClientStatus(deleted): got %+v, want Exists false and a problem saying so", stat)
	}
	_, err = a.ClientSecret(t.Context(), id)
	wantErrIs(t, "ClientSecret(deleted)", err, model.ErrNotFound)
	_, err = a.RegenerateSecret(t.Context(), id)
	wantErrIs(t, "RegenerateSecret(deleted)", err, model.ErrNotFound)
	wantErrIs(t, "SetSecret(deleted)", a.SetSecret(t.Context(), id, "some-secret"), model.ErrNotFound)
	_, err = a.Secrets(t.Context(), id)
	wantErrIs(t, "Secrets(deleted)", err, model.ErrNotFound)
	wantErrIs(t, "InvalidateRotatedSecret(deleted)", a.InvalidateRotatedSecret(t.Context(), id), model.ErrNotFound)
	_, err = a.CoverClient(t.Context(), id)
	wantErrIs(t, "CoverClient(deleted)", err, model.ErrNotFound)
}

func TestListDeviceClientsPagesAndFilters(t *testing.T) {
	st := integration.Shared(t)
	a := newAdmin(t, adminConfig(st))

	// More than one page (100) of clients of this test.
	const n = 105
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newClientID(t, a)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, id := range ids {
		wg.Go(func() {
			if _, err := a.CreateClient(t.Context(), id); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("CreateClient: %v", err)
	}

	list, err := a.ListDeviceClients(t.Context())
	mustNoErr(t, "ListDeviceClients", err)
	seen := map[string]int{}
	for _, c := range list {
		seen[c.ClientID]++
		if !strings.HasPrefix(c.ClientID, model.ClientIDPrefix) {
			t.Errorf("ListDeviceClients returned %q, which is not a device client", c.ClientID)
		}
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("ListDeviceClients: %s listed %d times, want once", id, seen[id])
		}
	}
	for _, builtin := range []string{"account", "realm-management", "admin-cli", st.AdminClientID, st.OperatorClientID} {
		if seen[builtin] > 0 {
			t.Errorf("ListDeviceClients lists %s", builtin)
		}
	}
}

func TestRepairClient(t *testing.T) {
	st := integration.Shared(t)
	a := newAdmin(t, adminConfig(st))

	t.Run("fixes mappers and flags changed by hand, keeping the secret", func(t *testing.T) {
		id, secret := createClient(t, a)
		rep := rawClient(t, st, id)
		uuid := rep["id"].(string)
		mappers, _ := rep["protocolMappers"].([]any)
		for _, m := range mappers {
			m := m.(map[string]any)
			switch m["protocolMapper"] {
			case "oidc-hardcoded-role-mapper":
				if code, _ := adminAPI(t, st, http.MethodDelete, "/clients/"+uuid+"/protocol-mappers/models/"+m["id"].(string), nil); code != http.StatusNoContent {
					t.Fatalf("delete role mapper: HTTP %d", code)
				}
			case "oidc-audience-mapper":
				m["config"].(map[string]any)["included.custom.audience"] = "somebody-else"
				if code, _ := adminAPI(t, st, http.MethodPut, "/clients/"+uuid+"/protocol-mappers/models/"+m["id"].(string), m); code != http.StatusNoContent {
					t.Fatalf("change audience mapper: HTTP %d", code)
				}
			}
		}
		delete(rep, "secret")
		delete(rep, "protocolMappers")
		rep["directAccessGrantsEnabled"] = true
		rep["standardFlowEnabled"] = true
		if code, body := adminAPI(t, st, http.MethodPut, "/clients/"+uuid, rep); code != http.StatusNoContent {
			t.Fatalf("change flags: HTTP %d %s", code, body)
		}

		broken, err := a.ClientStatus(t.Context(), id)
		mustNoErr(t, "ClientStatus(broken)", err)
		if len(broken.Problems) != 4 {
			t.Errorf("ClientStatus(broken): problems %q, want 4 (role mapper, audience mapper, two flows)", broken.Problems)
		}
		tok := mustToken(t, st, id, secret)
		if _, err := newVerifier(t, verifierConfig(st)).VerifyDevice(t.Context(), tok); !errors.Is(err, model.ErrUnauthenticated) {
			t.Errorf("VerifyDevice of a token without the device audience: got %v, want ErrUnauthenticated", err)
		}

		fixed, err := a.RepairClient(t.Context(), id)
		mustNoErr(t, "RepairClient", err)
		if !fixed.Exists || !fixed.Enabled || !fixed.ServiceAccount || len(fixed.Problems) != 0 {
			t.Errorf("RepairClient: got %+v, want a healthy client", fixed)
		}
		again, err := a.ClientStatus(t.Context(), id)
		mustNoErr(t, "ClientStatus(repaired)", err)
		if len(again.Problems) != 0 {
			t.Errorf("ClientStatus(repaired): problems %q", again.Problems)
		}
		after := rawClient(t, st, id)
		if after["directAccessGrantsEnabled"] != false || after["standardFlowEnabled"] != false {
			t.Errorf("repaired flows: direct %v, standard %v; want both false", after["directAccessGrantsEnabled"], after["standardFlowEnabled"])
		}
		if after["attributes"].(map[string]any)["espmdm.created"] != rep["attributes"].(map[string]any)["espmdm.created"] {
			t.Errorf("repair lost or changed the creation attribute")
		}
		got, err := a.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret", err)
		if got != secret {
			t.Errorf("RepairClient changed the secret")
		}
		tok = mustToken(t, st, id, secret)
		if _, err := newVerifier(t, verifierConfig(st)).VerifyDevice(t.Context(), tok); err != nil {
			t.Errorf("VerifyDevice after repair: %v", err)
		}
		claims, _ := unverifiedClaims(t, tok)
		if ra, _ := claims["realm_access"].(map[string]any); !slices.Contains(ra["roles"].([]any), any("iotdevice")) {
			t.Errorf("token after repair lacks the iotdevice role: %v", ra)
		}
	})

	t.Run("re-enables a disabled client", func(t *testing.T) {
		id, secret := createClient(t, a)
		rep := rawClient(t, st, id)
		delete(rep, "secret")
		rep["enabled"] = false
		if code, _ := adminAPI(t, st, http.MethodPut, "/clients/"+rep["id"].(string), rep); code != http.StatusNoContent {
			t.Fatalf("disable: HTTP %d", code)
		}
		got, err := a.ClientStatus(t.Context(), id)
		mustNoErr(t, "ClientStatus(disabled)", err)
		if got.Enabled || len(got.Problems) != 1 {
			t.Errorf("ClientStatus(disabled): got %+v, want Enabled false and one problem", got)
		}
		got, err = a.RepairClient(t.Context(), id)
		mustNoErr(t, "RepairClient", err)
		if !got.Enabled || len(got.Problems) != 0 {
			t.Errorf("RepairClient(disabled): got %+v", got)
		}
		mustToken(t, st, id, secret)
	})

	t.Run("makes a public client confidential again", func(t *testing.T) {
		id, _ := createClient(t, a)
		rep := rawClient(t, st, id)
		delete(rep, "secret")
		rep["publicClient"] = true
		if code, _ := adminAPI(t, st, http.MethodPut, "/clients/"+rep["id"].(string), rep); code != http.StatusNoContent {
			t.Fatalf("make public: HTTP %d", code)
		}
		got, err := a.ClientStatus(t.Context(), id)
		mustNoErr(t, "ClientStatus(public)", err)
		if len(got.Problems) != 1 {
			t.Errorf("ClientStatus(public): problems %q, want one", got.Problems)
		}
		got, err = a.RepairClient(t.Context(), id)
		mustNoErr(t, "RepairClient(public)", err)
		if len(got.Problems) != 0 {
			t.Errorf("RepairClient(public): problems %q", got.Problems)
		}
		secret, err := a.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret(repaired)", err)
		mustToken(t, st, id, secret)
	})

	t.Run("gives a client created public by hand a secret", func(t *testing.T) {
		id := newClientID(t, a)
		if code, body := adminAPI(t, st, http.MethodPost, "/clients", map[string]any{"clientId": id, "publicClient": true}); code != http.StatusCreated {
			t.Fatalf("create public client: HTTP %d %s", code, body)
		}
		got, err := a.RepairClient(t.Context(), id)
		mustNoErr(t, "RepairClient(created public)", err)
		if !got.ServiceAccount || len(got.Problems) != 0 {
			t.Errorf("RepairClient(created public): got %+v", got)
		}
		secret, err := a.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret(repaired)", err)
		tok := mustToken(t, st, id, secret)
		if _, err := newVerifier(t, verifierConfig(st)).VerifyDevice(t.Context(), tok); err != nil {
			t.Errorf("VerifyDevice of the repaired client's token: %v", err)
		}
	})

	t.Run("recreates a client deleted by hand", func(t *testing.T) {
		id, _ := createClient(t, a)
		uuid := rawClient(t, st, id)["id"].(string)
		if code, _ := adminAPI(t, st, http.MethodDelete, "/clients/"+uuid, nil); code != http.StatusNoContent {
			t.Fatalf("delete by hand: HTTP %d", code)
		}
		got, err := a.RepairClient(t.Context(), id)
		mustNoErr(t, "RepairClient(deleted)", err)
		if !got.Exists || !got.Enabled || !got.ServiceAccount || len(got.Problems) != 0 {
			t.Errorf("RepairClient(deleted): got %+v, want a healthy client", got)
		}
		secret, err := a.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret(recreated)", err)
		tok := mustToken(t, st, id, secret)
		if _, err := newVerifier(t, verifierConfig(st)).VerifyDevice(t.Context(), tok); err != nil {
			t.Errorf("VerifyDevice of the recreated client's token: %v", err)
		}
	})
}

func TestPingAndObserve(t *testing.T) {
	st := integration.Shared(t)
	var mu sync.Mutex
	var ops []string
	var errs []error
	cfg := adminConfig(st)
	cfg.Observe = func(op string, err error, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		ops = append(ops, op)
		errs = append(errs, err)
		if d <= 0 {
			t.Errorf("Observe(%s): duration %v", op, d)
		}
	}
	a := newAdmin(t, cfg)
	mustNoErr(t, "Ping", a.Ping(t.Context()))
	_, err := a.ClientSecret(t.Context(), model.ClientID("kc_test", randomKey()))
	wantErrIs(t, "ClientSecret(missing)", err, model.ErrNotFound)

	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(ops, []string{"Ping", "ClientSecret"}) {
		t.Fatalf("observed %v, want [Ping ClientSecret]", ops)
	}
	if errs[0] != nil || !errors.Is(errs[1], model.ErrNotFound) {
		t.Errorf("observed errors %v, want [nil, not found]", errs)
	}
}

func TestKeycloakUnreachable(t *testing.T) {
	st := integration.Shared(t)
	cfg := adminConfig(st)
	cfg.BaseURL = closedURL(t)
	a := newAdmin(t, cfg)
	id := model.ClientID("kc_test", randomKey())

	calls := map[string]func(context.Context) error{
		"Ping":                    a.Ping,
		"CreateClient":            func(ctx context.Context) error { _, err := a.CreateClient(ctx, id); return err },
		"DeleteClient":            func(ctx context.Context) error { return a.DeleteClient(ctx, id) },
		"ClientStatus":            func(ctx context.Context) error { _, err := a.ClientStatus(ctx, id); return err },
		"RepairClient":            func(ctx context.Context) error { _, err := a.RepairClient(ctx, id); return err },
		"ClientSecret":            func(ctx context.Context) error { _, err := a.ClientSecret(ctx, id); return err },
		"RegenerateSecret":        func(ctx context.Context) error { _, err := a.RegenerateSecret(ctx, id); return err },
		"SetSecret":               func(ctx context.Context) error { return a.SetSecret(ctx, id, "a-secret") },
		"ListDeviceClients":       func(ctx context.Context) error { _, err := a.ListDeviceClients(ctx); return err },
		"Secrets":                 func(ctx context.Context) error { _, err := a.Secrets(ctx, id); return err },
		"InvalidateRotatedSecret": func(ctx context.Context) error { return a.InvalidateRotatedSecret(ctx, id) },
		"CoverClient":             func(ctx context.Context) error { _, err := a.CoverClient(ctx, id); return err },
		"RotationPolicy":          func(ctx context.Context) error { _, err := a.RotationPolicy(ctx); return err },
		"SecretState":             func(ctx context.Context) error { _, err := a.SecretState(ctx, id); return err },
		"Now":                     func(ctx context.Context) error { _, err := a.Now(ctx); return err },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// The adapter gives up by itself (a refused connection, two
			// quick retries) long before this deadline.
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			err := call(ctx)
			var ue *model.UnavailableError
			if !errors.As(err, &ue) || ue.Service != "keycloak" || !errors.Is(err, model.ErrUnavailable) {
				t.Fatalf("got %v, want a keycloak *model.UnavailableError", err)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("got %v: the caller's deadline ended it, not the adapter", err)
			}
		})
	}
}

func TestKeycloakNotAnswering(t *testing.T) {
	st := integration.Shared(t)
	// A port that accepts connections and never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})

	cfg := adminConfig(st)
	cfg.BaseURL = "http://" + l.Addr().String()
	cfg.Timeout = 300 * time.Millisecond
	cfg.RetryBackoff = 10 * time.Millisecond
	a := newAdmin(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for name, err := range map[string]error{
		"Ping":         a.Ping(ctx),
		"ClientStatus": func() error { _, err := a.ClientStatus(ctx, model.ClientID("kc_test", randomKey())); return err }(),
	} {
		if !errors.Is(err, model.ErrUnavailable) || !strings.Contains(err.Error(), "timed out") {
			t.Errorf("%s: got %v, want ErrUnavailable saying it timed out", name, err)
		}
	}
	if ctx.Err() != nil {
		t.Errorf("the per-request timeout did not end the calls")
	}
}

func TestWrongAdminCredentials(t *testing.T) {
	st := integration.Shared(t)
	cfg := adminConfig(st)
	cfg.ClientSecret = "wrong-" + randomKey() + "-secret"
	a := newAdmin(t, cfg)
	_, err := a.ListDeviceClients(t.Context())
	if !errors.Is(err, model.ErrUnavailable) {
		t.Fatalf("ListDeviceClients with a wrong admin secret: got %v, want ErrUnavailable", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "credentials") || strings.Contains(msg, cfg.ClientSecret) {
		t.Errorf("error %q: want it to blame the credentials without quoting the secret", msg)
	}
	// Readiness fails too: espmdm cannot manage devices with these.
	if err := a.Ping(t.Context()); !errors.Is(err, model.ErrUnavailable) || !strings.Contains(err.Error(), "credentials") {
		t.Errorf("Ping with a wrong admin secret: got %v, want ErrUnavailable blaming the credentials", err)
	}

	cfg = adminConfig(st)
	cfg.Realm = "no-such-realm-" + randomKey()
	a = newAdmin(t, cfg)
	if err := a.Ping(t.Context()); !errors.Is(err, model.ErrUnavailable) || errors.Is(err, model.ErrNotFound) {
		t.Errorf("Ping of a missing realm: got %v, want ErrUnavailable only", err)
	}
	if _, err := a.ClientStatus(t.Context(), model.ClientID("kc_test", randomKey())); !errors.Is(err, model.ErrUnavailable) || errors.Is(err, model.ErrNotFound) {
		t.Errorf("ClientStatus in a missing realm: got %v, want ErrUnavailable only", err)
	}
}

// A service account without the realm-management client roles is caught by
// Ping, not taken for an empty realm.
func TestPingRefusesAnAdminClientWithoutClientRoles(t *testing.T) {
	st := integration.Shared(t)
	cfg := adminConfig(st)
	cfg.ClientID, cfg.ClientSecret = st.OperatorClientID, st.OperatorClientSecret // mdm-admin only
	a := newAdmin(t, cfg)
	err := a.Ping(t.Context())
	if !errors.Is(err, model.ErrUnavailable) || !strings.Contains(err.Error(), "query-clients") {
		t.Fatalf("Ping as a client without realm-management roles: got %v, want ErrUnavailable naming the roles", err)
	}
	mustNoErr(t, "Ping as the real admin client", newAdmin(t, adminConfig(st)).Ping(t.Context()))
}

func TestNewAdminChecksItsConfig(t *testing.T) {
	good := keycloak.AdminConfig{BaseURL: "http://127.0.0.1:1", Realm: "iot", ClientID: "c", ClientSecret: "s", DeviceAudience: "aud"}
	tests := []struct {
		name   string
		change func(*keycloak.AdminConfig)
	}{
		{"no base URL", func(c *keycloak.AdminConfig) { c.BaseURL = "" }},
		{"not http", func(c *keycloak.AdminConfig) { c.BaseURL = "ftp://kc" }},
		{"credentials in the URL", func(c *keycloak.AdminConfig) { c.BaseURL = "http://u:p@kc" }},
		{"no realm", func(c *keycloak.AdminConfig) { c.Realm = "" }},
		{"no client id", func(c *keycloak.AdminConfig) { c.ClientID = "" }},
		{"no secret", func(c *keycloak.AdminConfig) { c.ClientSecret = "" }},
		{"no audience", func(c *keycloak.AdminConfig) { c.DeviceAudience = "" }},
		{"negative timeout", func(c *keycloak.AdminConfig) { c.Timeout = -time.Second }},
	}
	if _, err := keycloak.NewAdmin(good); err != nil {
		t.Fatalf("NewAdmin(good): %v", err)
	}
	for _, tt := range tests {
		cfg := good
		tt.change(&cfg)
		if _, err := keycloak.NewAdmin(cfg); err == nil {
			t.Errorf("NewAdmin(%s): got no error", tt.name)
		}
	}
}

// TestClientUUIDIsRemembered: the secret calls of a rotation look the
// client up once, and a client deleted and recreated behind the adapter's
// back (a new UUID) is found again.
func TestClientUUIDIsRemembered(t *testing.T) {
	st := integration.Shared(t)
	calls := &adminCalls{}
	cfg := adminConfig(st)
	cfg.HTTPClient = &http.Client{Transport: calls}
	a := newAdmin(t, cfg)
	id, secret := createClient(t, a)

	lookups := func() int { return calls.count(http.MethodGet) }
	before := lookups()
	for range 3 {
		got, err := a.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret", err)
		if got != secret {
			t.Fatal("ClientSecret returned another secret")
		}
	}
	fresh, err := a.RegenerateSecret(t.Context(), id)
	mustNoErr(t, "RegenerateSecret", err)
	mustNoErr(t, "InvalidateRotatedSecret", a.InvalidateRotatedSecret(t.Context(), id))
	// Three secret reads are three GETs: no lookup by clientId among them.
	if n := lookups() - before; n != 3 {
		t.Errorf("GET requests for 3 secret reads, a regeneration and an invalidation = %d, want 3 (the UUID remembered since creation)", n)
	}

	// Recreated behind the adapter's back: same clientId, new UUID.
	uuid, _ := rawClient(t, st, id)["id"].(string)
	if code, _ := adminAPI(t, st, http.MethodDelete, "/clients/"+uuid, nil); code != http.StatusNoContent {
		t.Fatalf("delete %s by hand: %d", id, code)
	}
	if code, body := adminAPI(t, st, http.MethodPost, "/clients", map[string]any{"clientId": id, "publicClient": false,
		"serviceAccountsEnabled": true, "secret": "by-hand-" + randomKey()}); code != http.StatusCreated {
		t.Fatalf("recreate %s by hand: %d %s", id, code, body)
	}
	got, err := a.ClientSecret(t.Context(), id)
	mustNoErr(t, "ClientSecret after the client was recreated", err)
	if got == fresh || !strings.HasPrefix(got, "by-hand-") {
		t.Error("ClientSecret read the old client's secret after it was recreated")
	}
	// Deleted for good: not found, from the remembered UUID too.
	mustNoErr(t, "DeleteClient", a.DeleteClient(t.Context(), id))
	_, err = a.RegenerateSecret(t.Context(), id)
	wantErrIs(t, "RegenerateSecret of a deleted client", err, model.ErrNotFound)
}
