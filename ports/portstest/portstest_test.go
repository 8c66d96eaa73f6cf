package portstest_test

import (
	"testing"

	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestStoreContract(t *testing.T) {
	portstest.RunRepoContract(t, func(t *testing.T) (ports.ModelRepo, ports.DeviceRepo, ports.FirmwareRepo) {
		s := portstest.NewStore(nil)
		return s, s, s
	})
}

func TestCoredumpRepoContract(t *testing.T) {
	portstest.RunCoredumpRepoContract(t, func(t *testing.T) portstest.CoredumpEnv {
		s := portstest.NewStore(nil)
		return portstest.CoredumpEnv{Models: s, Devices: s, Firmware: s, ELFs: s, Coredumps: s}
	})
}

func TestIdentityProviderContract(t *testing.T) {
	portstest.RunIdentityProviderContract(t, func(t *testing.T) ports.IdentityProvider {
		return portstest.NewIdentityProvider(nil)
	})
}

func TestSecretBoxContract(t *testing.T) {
	portstest.RunSecretBoxContract(t, func(t *testing.T) ports.SecretBox {
		return portstest.NewSecretBox()
	})
}

func TestScheduleContract(t *testing.T) {
	s := portstest.NewSchedule()
	portstest.RunScheduleRepoContract(t, func(t *testing.T) ports.ScheduleRepo { return s })
}

func TestLeaseContract(t *testing.T) {
	portstest.RunLeaseContract(t, func(t *testing.T) portstest.LeaseEnv {
		ls := portstest.NewLeases()
		return portstest.LeaseEnv{New: func(h string) ports.Lease { return ls.For(h) }, Kill: ls.Kill}
	})
}

func TestAuditContract(t *testing.T) {
	portstest.RunAuditContract(t, func(t *testing.T) portstest.AuditEnv {
		s := portstest.NewStore(nil)
		sched := portstest.NewSchedule()
		sched.Audit = s.Audit()
		return portstest.AuditEnv{Log: s, Models: s, Devices: s, Firmware: s, Schedule: sched}
	})
}

func TestCampaignRepoContract(t *testing.T) {
	portstest.RunCampaignRepoContract(t, func(t *testing.T) portstest.CampaignEnv {
		s := portstest.NewStore(nil)
		return portstest.CampaignEnv{Models: s, Devices: s, Firmware: s, Campaigns: s,
			SetTags:  func(_ *testing.T, id int64, tags ...string) { s.SetDeviceTags(id, tags...) },
			Assigned: func(_ *testing.T, id int64) int64 { return s.AssignedFirmware(id) },
		}
	})
}
