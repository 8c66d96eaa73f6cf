package model

import (
	"errors"
	"fmt"
	"time"
)

// CoredumpStatus is where a stored core dump is in its analysis (SPEC §17).
type CoredumpStatus string

// Core dump statuses. A dump starts pending; the worker moves it to
// analysed, no_elf or failed. A no_elf dump becomes pending again when the
// ELF it names is uploaded.
const (
	// CoredumpPending: not analysed yet (waiting for a worker, or for the
	// analysis tools to be configured).
	CoredumpPending CoredumpStatus = "pending"
	// CoredumpAnalysed: the analysis is stored.
	CoredumpAnalysed CoredumpStatus = "analysed"
	// CoredumpNoELF: none of the model's firmware uploads has the ELF
	// whose SHA-256 the dump names.
	CoredumpNoELF CoredumpStatus = "no_elf"
	// CoredumpFailed: the dump (or its ELF) could not be analysed; the
	// reason says why.
	CoredumpFailed CoredumpStatus = "failed"
)

// Valid reports whether s is one of the four statuses.
func (s CoredumpStatus) Valid() bool {
	switch s {
	case CoredumpPending, CoredumpAnalysed, CoredumpNoELF, CoredumpFailed:
		return true
	}
	return false
}

// CoredumpFrame is one frame of the crashed task's backtrace, innermost
// first. PC is the frame's program counter (for outer frames the return
// address, as GDB shows it); Function, File and Line are empty or zero
// when the ELF does not say (ROM code, stripped symbols).
type CoredumpFrame struct {
	PC       uint32
	Function string
	File     string
	Line     int
}

// CoredumpAnalysis is what the analysis of one core dump found.
type CoredumpAnalysis struct {
	// Chip is the chip the dump says it came from ("esp32c3").
	Chip string
	// CrashedTask is the FreeRTOS name of the task that crashed; empty when
	// the dump does not say.
	CrashedTask string
	// PanicReason is ESP-IDF's panic message ("abort() was called at PC
	// 0x42009351 on core 0"); empty when the dump has none.
	PanicReason string
	// Frames is the crashed task's backtrace, innermost first.
	Frames []CoredumpFrame
	// Text is the analysis as text: the tool's whole output, and for the
	// Xtensa chips the backtrace espmdm computed itself before it.
	Text string
	// Notes say what limited the analysis (a tool that stopped early, a
	// backtrace read from the stack instead of GDB), one sentence each.
	Notes []string
}

// panicPlumbing are ESP-IDF functions that every abort, assert or panic
// passes through on its way to the core dump: the crash site is below them.
var panicPlumbing = map[string]bool{
	"panic_abort": true, "esp_system_abort": true, "abort": true,
	"__assert_func": true, "__assert": true, "esp_panic_handler": true,
	"panic_handler": true, "xt_unhandled_exception": true,
	"_esp_error_check_failed": true, "vApplicationStackOverflowHook": true,
	"esp_panic_handler_reconfigure_wdts": true, "panicHandler": true,
	"xt_highint4": true, "_xt_panic": true, "esp_abort": true,
}

// CrashFrame is the frame a person would call the crash site: the first
// frame that has a function name and is not part of ESP-IDF's abort and
// panic path (panic_abort, esp_system_abort, abort, __assert_func, ...).
// For the ESP32-C3 test dump that is fail_once. ok is false when no frame
// qualifies.
func (a CoredumpAnalysis) CrashFrame() (f CoredumpFrame, ok bool) {
	for _, fr := range a.Frames {
		if fr.Function != "" && !panicPlumbing[fr.Function] {
			return fr, true
		}
	}
	return CoredumpFrame{}, false
}

// Errors of core dump parsing and analysis. Test them with errors.Is.
var (
	// ErrCoredumpFormat is matched by every error that describes malformed
	// core dump bytes (a *CoredumpFormatError).
	ErrCoredumpFormat = errors.New("invalid core dump")
	// ErrCoredumpToolMissing means the analysis tools (esp-coredump, GDB)
	// are not installed or not configured: the dump should stay pending.
	ErrCoredumpToolMissing = errors.New("core dump analysis tools missing")
	// ErrCoredumpFailed is matched by a *CoredumpFailedError: the dump was
	// analysed and could not be made sense of (status failed).
	ErrCoredumpFailed = errors.New("core dump analysis failed")
	// ErrCoredumpWrongELF means the ELF given for a dump is not the one
	// whose SHA-256 the dump names. A *CoredumpFailedError wraps it.
	ErrCoredumpWrongELF = errors.New("the ELF is not the one the core dump names")
)

// CoredumpFormatError reports a problem with core dump bytes at an offset.
// It matches ErrCoredumpFormat.
type CoredumpFormatError struct {
	Off int64  // offset in the dump of the offending field or structure
	Msg string // what is wrong
}

func (e *CoredumpFormatError) Error() string {
	return fmt.Sprintf("core dump: at offset 0x%x: %s", e.Off, e.Msg)
}

// Is reports whether target is ErrCoredumpFormat.
func (e *CoredumpFormatError) Is(target error) bool { return target == ErrCoredumpFormat }

// CoredumpToolError reports an analysis tool that cannot be run. It matches
// ErrCoredumpToolMissing.
type CoredumpToolError struct {
	Tool string // "esp-coredump" or "gdb"
	Path string // as configured
	Err  error
}

func (e *CoredumpToolError) Error() string {
	return fmt.Sprintf("core dump analysis: %s (%s) cannot be run: %v", e.Tool, e.Path, e.Err)
}

func (e *CoredumpToolError) Unwrap() error { return e.Err }

// Is reports whether target is ErrCoredumpToolMissing.
func (e *CoredumpToolError) Is(target error) bool { return target == ErrCoredumpToolMissing }

// CoredumpFailedError is an analysis that failed for a reason of the dump or
// its ELF (garbage, a wrong ELF, a tool that gave up or ran out of time).
// Reason is safe to show to an admin; Text holds what the tool printed, if
// anything. It matches ErrCoredumpFailed and whatever Err matches.
type CoredumpFailedError struct {
	Reason string
	Text   string
	Err    error
}

func (e *CoredumpFailedError) Error() string { return "core dump analysis failed: " + e.Reason }

func (e *CoredumpFailedError) Unwrap() error { return e.Err }

// Is reports whether target is ErrCoredumpFailed.
func (e *CoredumpFailedError) Is(target error) bool { return target == ErrCoredumpFailed }

// Coredump is a core dump a device uploaded (SPEC §17): its record; the
// bytes are a blob (kind coredump, namespace the model's code, the dump's
// SHA-256).
type Coredump struct {
	ID            int64
	DeviceID      int64
	DeviceModelID int64
	// ModelCode is the device's model's code, the namespace of the blob.
	ModelCode string
	// ClientID is the device's client id, for the audit log and the API.
	ClientID string
	// SHA256 is the dump's SHA-256 (lower-case hex), its blob's digest.
	SHA256 string
	Size   int64
	// Info is what the dump says about itself (chip, format, the ELF it
	// names), read at upload; zero for bytes that are not a core dump.
	Info       CoredumpInfo
	ReceivedAt time.Time
	Status     CoredumpStatus
	// Reason says why the status is what it is when that is not the
	// obvious (failed: why; pending: the tools are missing; no_elf: which
	// ELF is missing).
	Reason string
	// ELFSHA256 is the SHA-256 of the ELF the dump was analysed against;
	// FirmwareVersion that ELF's firmware version.
	ELFSHA256       string
	FirmwareVersion string
	// Analysis is set when Status is analysed.
	Analysis   *CoredumpAnalysis
	AnalysedAt *time.Time
	// Attempts counts the analyses begun (a worker that died mid-analysis
	// counts too); ClaimedUntil is when a worker's claim on a pending dump
	// ends.
	Attempts     int
	ClaimedUntil *time.Time
}

// CrashGroup is a model's analysed core dumps that crashed in one function
// (their CrashFrame's) in one firmware version: what an operator looks at
// first after a release.
type CrashGroup struct {
	// Function is the crash frame's function; "" when the analysis found
	// none.
	Function        string
	FirmwareVersion string
	Count           int
	// LastAt and LastID are the newest dump of the group.
	LastAt time.Time
	LastID int64
}
