package ports

import (
	"context"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// CoredumpPage is one page of a device's core dumps, newest first;
// NextBeforeID is 0 on the last page.
type CoredumpPage struct {
	Coredumps    []model.Coredump
	NextBeforeID int64
}

// CoredumpCount is how many core dumps of a model have a status.
type CoredumpCount struct {
	ModelCode string
	Status    model.CoredumpStatus
	Count     int
}

// CoredumpRepo keeps the records of device core dumps (SPEC §17); their
// bytes are blobs. Every returned Coredump has ModelCode and ClientID set.
type CoredumpRepo interface {
	// CreateCoredump inserts c (setting ID), appends audit (DeviceID,
	// ClientID and ModelID set to c's) and deletes the device's dumps
	// beyond the newest keep, in one transaction; it returns the deleted
	// ones (their blobs are the caller's to delete). An unknown device is
	// model.ErrNotFound.
	CreateCoredump(ctx context.Context, c *model.Coredump, keep int, audit []model.AuditEntry) (evicted []model.Coredump, err error)
	GetCoredump(ctx context.Context, id int64) (model.Coredump, error)
	// ListCoredumps is a page of the device's dumps, newest first: those
	// with an ID below beforeID (0: from the newest), at most
	// PageLimit(limit).
	ListCoredumps(ctx context.Context, deviceID int64, limit int, beforeID int64) (CoredumpPage, error)
	// DeleteCoredump removes the record and appends audit, in one
	// transaction, and returns what it removed.
	DeleteCoredump(ctx context.Context, id int64, audit []model.AuditEntry) (model.Coredump, error)
	// CoredumpBlobInUse reports whether a record still names the blob of
	// the model's dump with this SHA-256 (two dumps may have the same
	// bytes), so the caller deletes a blob only when none does.
	CoredumpBlobInUse(ctx context.Context, modelCode, sha256 string) (bool, error)
	// ClaimCoredumps claims up to n pending dumps whose claim has ended
	// (or never began) at now, oldest first, each row locked FOR UPDATE
	// SKIP LOCKED so that replicas never claim one dump together: it sets
	// ClaimedUntil to until, counts an attempt, and returns them.
	ClaimCoredumps(ctx context.Context, now, until time.Time, n int) ([]model.Coredump, error)
	// UpdateCoredump runs fn on the locked current record and stores the
	// status, reason, ELF, analysis, analysed-at and claim fn leaves; fn
	// may run again.
	UpdateCoredump(ctx context.Context, id int64, fn func(*model.Coredump) error) (model.Coredump, error)
	// RequeueCoredumps makes the model's no_elf dumps that name elfSHA256
	// (their ELF prefix is its start) pending again, unclaimed, and
	// returns how many.
	RequeueCoredumps(ctx context.Context, modelID int64, elfSHA256 string) (int, error)
	// CrashGroups groups the model's analysed dumps received at or after
	// since by crash function and firmware version, the largest group
	// first (then the newest).
	CrashGroups(ctx context.Context, modelID int64, since time.Time) ([]model.CrashGroup, error)
	// CoredumpCounts counts the dumps by model and status (only the
	// pairs that have dumps).
	CoredumpCounts(ctx context.Context) ([]CoredumpCount, error)
}

// FirmwareELFs records which firmware uploads have their ELF stored and
// finds the one a core dump names. The FirmwareRepo adapters implement it.
type FirmwareELFs interface {
	// MarkELFStored sets HasELF on every upload of the model whose
	// ELFSHA256 is elfSHA256 (the same ELF may be behind several uploads
	// of one image) and returns how many it changed.
	MarkELFStored(ctx context.Context, modelID int64, elfSHA256 string) (int, error)
	// FirmwareByELF is the model's newest upload whose ELF is stored
	// (HasELF) and whose ELFSHA256 starts with prefix; model.ErrNotFound
	// when none. An empty prefix is the model's newest upload with a
	// stored ELF (for a binary dump, which names none).
	FirmwareByELF(ctx context.Context, modelID int64, prefix string) (model.Firmware, error)
}
