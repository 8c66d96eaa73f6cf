package postgres_test

import (
	"strings"
	"testing"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestAuditContract(t *testing.T) {
	portstest.RunAuditContract(t, func(t *testing.T) portstest.AuditEnv {
		db := migratedDB(t)
		return portstest.AuditEnv{
			Log:      postgres.NewAuditLog(db),
			Models:   postgres.NewModelRepo(db),
			Devices:  postgres.NewDeviceRepo(db),
			Firmware: postgres.NewFirmwareRepo(db),
			Schedule: postgres.NewScheduleRepo(db),
		}
	})
}

// The database itself refuses to change or remove an entry, whatever the
// statement: the log is append-only also for someone with SQL access as
// espmdm's role.
func TestAuditLogIsAppendOnly(t *testing.T) {
	db := migratedDB(t)
	log := postgres.NewAuditLog(db)
	e := model.AuditEntry{Kind: model.AuditDeviceDeleted, Actor: model.SystemActor("test"), DeviceID: 5, Outcome: model.OutcomeSuccess}
	if err := log.AppendAudit(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"UPDATE audit_log SET detail = 'rewritten'",
		"DELETE FROM audit_log",
		"TRUNCATE audit_log",
	} {
		_, err := db.Bun().ExecContext(t.Context(), stmt)
		switch {
		case err == nil:
			t.Errorf("%s: succeeded, want it refused", stmt)
		case !strings.Contains(err.Error(), "append-only"):
			t.Errorf("%s: %v, want the append-only refusal", stmt, err)
		}
	}
	p, err := log.ListAudit(t.Context(), ports.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Entries) != 1 || p.Entries[0].Detail != "" {
		t.Fatalf("after refused changes: %+v, want the one entry as written", p.Entries)
	}
}

// An over-long detail is shortened, never refused: the change it records
// must not fail for its description.
func TestAuditLongDetail(t *testing.T) {
	db := migratedDB(t)
	log := postgres.NewAuditLog(db)
	e := model.AuditEntry{Kind: model.AuditFirmwareUploaded, Actor: model.SystemActor("test"), Outcome: model.OutcomeSuccess, Detail: strings.Repeat("é", 3000)}
	if err := log.AppendAudit(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	p, err := log.ListAudit(t.Context(), ports.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len([]rune(p.Entries[0].Detail)); n != 1000 {
		t.Fatalf("detail of %d characters, want 1000", n)
	}
}
