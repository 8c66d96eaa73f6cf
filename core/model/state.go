package model

import (
	"math"
	"regexp"
	"time"
)

// OTAState is whether the running image is confirmed (SPEC §15).
type OTAState string

// OTA states of the running image.
const (
	// OTAValid: the image is confirmed (or was never on probation).
	OTAValid OTAState = "valid"
	// OTAPendingVerify: a new image runs on probation; the bootloader rolls
	// it back at the next reset unless it is confirmed.
	OTAPendingVerify OTAState = "pending_verify"
)

// OTAStates lists the OTA states a report may name.
var OTAStates = []OTAState{OTAValid, OTAPendingVerify}

// Valid reports whether s is one of OTAStates.
func (s OTAState) Valid() bool { return s == OTAValid || s == OTAPendingVerify }

// OTAResult is how a device's last OTA attempt ended (SPEC §15).
type OTAResult string

// OTA results.
const (
	OTAInstalled      OTAResult = "installed"
	OTARolledBack     OTAResult = "rolled_back"
	OTADownloadFailed OTAResult = "download_failed"
	OTAVerifyFailed   OTAResult = "verify_failed"
)

// OTAResults lists the OTA results a report may name.
var OTAResults = []OTAResult{OTAInstalled, OTARolledBack, OTADownloadFailed, OTAVerifyFailed}

// Valid reports whether r is one of OTAResults.
func (r OTAResult) Valid() bool {
	for _, x := range OTAResults {
		if x == r {
			return true
		}
	}
	return false
}

// OTAAttempt is a device's last OTA attempt: the version it tried to
// install and how that ended.
type OTAAttempt struct {
	Target string
	Result OTAResult
}

// StateReport is what a device last said about itself (POST /iot/state,
// SPEC §15). Optional members the device left out are empty (strings,
// OTAState) or nil.
type StateReport struct {
	// FirmwareVersion is the running app's version (its app descriptor's).
	FirmwareVersion string
	// SecureVersion is the running app's anti-rollback secure_version.
	SecureVersion *uint32
	// AppELFSHA256 is the lower-case hex SHA-256 (or a prefix of it) of the
	// running app's ELF file.
	AppELFSHA256 string
	// Partition is the label of the running app partition.
	Partition string
	OTAState  OTAState
	// OTA is the last OTA attempt; nil when the device reports none.
	OTA         *OTAAttempt
	ResetReason string
	UptimeS     *int64
	FreeHeap    *int64
	RSSI        *int
	IDFVersion  string
	// At is when espmdm received the report (reported_at); set by the
	// core, never by the device.
	At time.Time
}

// Limits of a state report's members. A report's strings are printable
// ASCII: they end up in audit details, logs and metric labels.
const (
	// MaxReportVersionLen bounds firmware_version and ota.target: the app
	// descriptor's version field is 32 bytes with its terminating NUL.
	MaxReportVersionLen = 31
	// MaxReportPartitionLen bounds partition: a partition label is 16
	// bytes.
	MaxReportPartitionLen = 16
	// MaxReportTextLen bounds the other free-text members (reset_reason,
	// idf_version).
	MaxReportTextLen = 64
)

var elfSHA256Pattern = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// Validate checks r as SPEC §15 describes it, returning a
// *ValidationError naming the first member that is wrong (nested members
// as "ota.target"). At is not checked: the device does not send it.
func (r StateReport) Validate() error {
	if err := CheckReportedVersion("firmware_version", r.FirmwareVersion); err != nil {
		return err
	}
	if err := optionalText("partition", r.Partition, MaxReportPartitionLen); err != nil {
		return err
	}
	if err := optionalText("reset_reason", r.ResetReason, MaxReportTextLen); err != nil {
		return err
	}
	if err := optionalText("idf_version", r.IDFVersion, MaxReportTextLen); err != nil {
		return err
	}
	if r.AppELFSHA256 != "" && !elfSHA256Pattern.MatchString(r.AppELFSHA256) {
		return Invalid("app_elf_sha256", "must be 1 to 64 lower-case hex digits")
	}
	if r.OTAState != "" && !r.OTAState.Valid() {
		return Invalid("ota_state", "must be valid or pending_verify")
	}
	if r.OTA != nil {
		if err := CheckReportedVersion("ota.target", r.OTA.Target); err != nil {
			return err
		}
		if !r.OTA.Result.Valid() {
			return Invalid("ota.result", "must be installed, rolled_back, download_failed or verify_failed")
		}
	}
	if r.UptimeS != nil && *r.UptimeS < 0 {
		return Invalid("uptime_s", "must not be negative")
	}
	if r.FreeHeap != nil && *r.FreeHeap < 0 {
		return Invalid("free_heap", "must not be negative")
	}
	if r.RSSI != nil && (*r.RSSI < math.MinInt8 || *r.RSSI > math.MaxInt8) {
		return Invalid("rssi", "must be a dBm value from -128 to 127")
	}
	return nil
}

// CheckReportedVersion checks a firmware version as a report may name it
// (field names it in the *ValidationError): 1 to MaxReportVersionLen
// printable ASCII characters.
func CheckReportedVersion(field, v string) error {
	if v == "" {
		return Invalid(field, "is required")
	}
	return reportText(field, v, MaxReportVersionLen)
}

// optionalText is reportText for a member that may be left out (empty
// here: the adapter that decodes a report refuses a member sent empty).
func optionalText(field, v string, maxLen int) error {
	if v == "" {
		return nil
	}
	return reportText(field, v, maxLen)
}

// reportText checks that v is printable ASCII of at most maxLen bytes.
func reportText(field, v string, maxLen int) error {
	if len(v) > maxLen {
		return Invalid(field, "must be at most %d characters", maxLen)
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return Invalid(field, "must be printable ASCII")
		}
	}
	return nil
}

// FirmwareCount is how many devices of a model report one firmware version.
type FirmwareCount struct {
	ModelID   int64
	ModelCode string
	// Version is the reported firmware version; empty for the devices
	// that have not reported yet.
	Version string
	Devices int
}
