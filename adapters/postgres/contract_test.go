package postgres_test

import (
	"testing"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// TestRepoContract runs the suite on one database of its own: its subtests
// run one after the other and each removes its devices, which the rotation
// queue subtests need (they work on every device).
func TestRepoContract(t *testing.T) {
	db := migratedDB(t)
	portstest.RunRepoContract(t, func(t *testing.T) (ports.ModelRepo, ports.DeviceRepo, ports.FirmwareRepo) {
		return postgres.NewModelRepo(db), postgres.NewDeviceRepo(db), postgres.NewFirmwareRepo(db)
	})
}

// TestCoredumpRepoContract has a database of its own: claims see every
// pending dump.
func TestCoredumpRepoContract(t *testing.T) {
	db := migratedDB(t)
	portstest.RunCoredumpRepoContract(t, func(t *testing.T) portstest.CoredumpEnv {
		f := postgres.NewFirmwareRepo(db)
		return portstest.CoredumpEnv{Models: postgres.NewModelRepo(db), Devices: postgres.NewDeviceRepo(db),
			Firmware: f, ELFs: f, Coredumps: postgres.NewCoredumpRepo(db)}
	})
}

func TestScheduleRepoContract(t *testing.T) {
	db := migratedDB(t)
	portstest.RunScheduleRepoContract(t, func(t *testing.T) ports.ScheduleRepo {
		return postgres.NewScheduleRepo(db)
	})
}

// TestLeaseContract gives each subtest a database of its own (advisory
// locks are per database); a killed holder's backend is terminated.
func TestLeaseContract(t *testing.T) {
	portstest.RunLeaseContract(t, func(t *testing.T) portstest.LeaseEnv {
		db, _ := openDB(t)
		return portstest.LeaseEnv{
			New:  func(holder string) ports.Lease { return postgres.NewLease(db, holder) },
			Kill: func(holder string) { terminateSessions(t, db, holder) },
		}
	})
}
