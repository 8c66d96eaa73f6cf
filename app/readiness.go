package app

import (
	"context"
	"fmt"

	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/ports"
)

// readyChecks are what /health/ready checks: the database answers and is
// migrated, the identity provider answers, and so does the broker's
// dynamic security plugin when espmdm manages device accounts (no device
// can be made without it).
func readyChecks(db *postgres.DB, kc *keycloak.Admin, broker ports.BrokerAccounts) []httpapi.ReadyCheck {
	checks := []httpapi.ReadyCheck{
		{Name: "postgres", Check: db.Ping},
		{Name: "migrations", Check: func(ctx context.Context) error {
			pending, err := db.MigrationStatus(ctx)
			if err != nil {
				return err
			}
			if pending > 0 {
				return fmt.Errorf("%d migrations pending", pending)
			}
			return nil
		}},
		{Name: "keycloak", Check: kc.Ping},
	}
	if broker != nil {
		checks = append(checks, httpapi.ReadyCheck{Name: "mqtt_accounts", Check: broker.Ping})
	}
	return checks
}
