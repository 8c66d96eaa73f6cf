package integration_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/integration"
)

// With MIGRATE_ON_START=false the server starts but is not ready until the
// migrations are applied (by `espmdm migrate` or, here, the same call).
func TestE2EMigrateOnStartFalse(t *testing.T) {
	s := startServerUnready(t, map[string]string{"MIGRATE_ON_START": "false"})
	s.request(http.MethodGet, "/health/ready", "", nil).wantProblem(t, http.StatusServiceUnavailable)
	ctx := ctxT(t, time.Minute)
	db, err := postgres.Open(ctx, s.cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	s.waitReady(time.Minute)
	newModel(t, s, nil)
}

// The reconciler runs at start-up: a device client without a device row,
// left by a crash between Keycloak and the database, is gone soon after.
func TestE2EReconcilesAtStart(t *testing.T) {
	st := integration.Shared(t)
	orphan := fmt.Sprintf("iotdevice-e2e_orphan-%s", randKey())
	tok := token(t, st, st.AdminClientID, st.AdminClientSecret)
	resp, body := adminCall(t, st, tok, http.MethodPost, "/clients", map[string]any{
		"clientId": orphan, "enabled": true, "publicClient": false, "serviceAccountsEnabled": true,
	})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create the orphan client: %s %s", resp.Status, body)
	}
	s := startServer(t, nil)
	waitClientGone(t, st, orphan, 30*time.Second)
	// Devices created through the API keep their clients.
	m := newModel(t, s, nil)
	d := newDevice(t, s, m.ID, `{}`)
	if len(keycloakClients(t, st, d.ClientID)) != 1 {
		t.Errorf("client of device %s missing", d.ClientID)
	}
}

// randKey returns a device key: 8 characters of [a-z0-9].
func randKey() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := []byte(randHex(8))
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:8])
}
