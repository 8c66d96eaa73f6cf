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
// migrated, the identity provider answers, and the blob store answers
// (firmware uploads and downloads need it). Not the broker: devices
// keep polling without it (and device creation, which needs its account
// plugin, answers 502 meanwhile, as with Keycloak down).
func readyChecks(db *postgres.DB, kc *keycloak.Admin, blobs ports.BlobStore) []httpapi.ReadyCheck {
	return []httpapi.ReadyCheck{
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
		{Name: "blobstore", Check: blobs.Ping},
	}
}
