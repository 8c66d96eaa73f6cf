package ports

import (
	"context"
	"io"

	"github.com/espmdm/espmdm/core/model"
)

// CoredumpAnalyzer turns a device's core dump and the application ELF it
// names into a backtrace (SPEC §17). Its consumer is the background worker
// that has the dump's bytes (at most COREDUMP_MAX_BYTES) and opens the ELF
// from the firmware store; it finds that ELF beforehand with
// model.ReadCoredumpInfo (no_elf when none matches).
type CoredumpAnalyzer interface {
	// Analyze analyses dump against elf, read to its end. Its errors:
	//   - a *model.CoredumpToolError (model.ErrCoredumpToolMissing) when
	//     the tools cannot be run: the dump stays pending;
	//   - a *model.CoredumpFailedError (model.ErrCoredumpFailed) when the
	//     dump is garbage, elf is not the ELF it names
	//     (model.ErrCoredumpWrongELF), or the tool gave up or ran out of
	//     its time: the dump is failed with the error's Reason;
	//   - ctx's error when ctx ended first, and I/O errors reading elf:
	//     the dump stays pending and is tried again.
	Analyze(ctx context.Context, dump []byte, elf io.Reader) (model.CoredumpAnalysis, error)
	// Check reports whether the tools can be run: nil, or a
	// *model.CoredumpToolError saying which cannot (for a line at start).
	Check(ctx context.Context) error
}
