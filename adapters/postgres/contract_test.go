package postgres_test

import (
	"database/sql"
	"testing"

	"github.com/uptrace/bun/dialect/pgdialect"

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

// TestCampaignRepoContract has a database of its own; tags are set and
// assignments read with SQL of their own.
func TestCampaignRepoContract(t *testing.T) {
	db := migratedDB(t)
	portstest.RunCampaignRepoContract(t, func(t *testing.T) portstest.CampaignEnv {
		return portstest.CampaignEnv{Models: postgres.NewModelRepo(db), Devices: postgres.NewDeviceRepo(db),
			Firmware: postgres.NewFirmwareRepo(db), Campaigns: postgres.NewCampaignRepo(db),
			SetTags: func(t *testing.T, id int64, tags ...string) {
				if _, err := db.Bun().ExecContext(t.Context(), "UPDATE devices SET tags = ? WHERE id = ?", pgdialect.Array(tags), id); err != nil {
					t.Fatalf("set tags: %v", err)
				}
			},
			Assigned: func(t *testing.T, id int64) int64 {
				var a sql.NullInt64
				if err := db.Bun().QueryRowContext(t.Context(), "SELECT assigned_firmware_id FROM devices WHERE id = ?", id).Scan(&a); err != nil {
					t.Fatalf("read assignment: %v", err)
				}
				return a.Int64
			},
		}
	})
}
