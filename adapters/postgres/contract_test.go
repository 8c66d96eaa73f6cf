package postgres_test

import (
	"testing"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestRepoContract(t *testing.T) {
	db := migratedDB(t)
	portstest.RunRepoContract(t, func(t *testing.T) (ports.ModelRepo, ports.DeviceRepo, ports.FirmwareRepo) {
		return postgres.NewModelRepo(db), postgres.NewDeviceRepo(db), postgres.NewFirmwareRepo(db)
	})
}
