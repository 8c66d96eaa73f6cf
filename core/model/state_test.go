package model_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/core/model"
)

func ptr[T any](v T) *T { return &v }

// fullReport has every member, as the device component sends them.
func fullReport() model.StateReport {
	return model.StateReport{
		FirmwareVersion: "1.4.2",
		SecureVersion:   ptr(uint32(3)),
		AppELFSHA256:    strings.Repeat("ab", 32),
		Partition:       "ota_0",
		OTAState:        model.OTAPendingVerify,
		OTA:             &model.OTAAttempt{Target: "1.4.2", Result: model.OTAInstalled},
		ResetReason:     "sw",
		UptimeS:         ptr(int64(12)),
		FreeHeap:        ptr(int64(180000)),
		RSSI:            ptr(-61),
		IDFVersion:      "v5.3.1",
	}
}

func TestStateReportValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*model.StateReport)
		field string // "" when valid
	}{
		{"every member", func(*model.StateReport) {}, ""},
		{"only the version", func(r *model.StateReport) { *r = model.StateReport{FirmwareVersion: "1"} }, ""},
		{"ota_state valid", func(r *model.StateReport) { r.OTAState = model.OTAValid }, ""},
		{"every ota result", func(r *model.StateReport) { r.OTA.Result = model.OTAVerifyFailed }, ""},
		{"rssi at int8's ends", func(r *model.StateReport) { r.RSSI = ptr(-128) }, ""},
		{"a 31-character version", func(r *model.StateReport) { r.FirmwareVersion = strings.Repeat("v", 31) }, ""},
		{"a short ELF hash prefix", func(r *model.StateReport) { r.AppELFSHA256 = "0a1b2c3d" }, ""},

		{"no version", func(r *model.StateReport) { r.FirmwareVersion = "" }, "firmware_version"},
		{"a 32-character version", func(r *model.StateReport) { r.FirmwareVersion = strings.Repeat("v", 32) }, "firmware_version"},
		{"a version with a newline", func(r *model.StateReport) { r.FirmwareVersion = "1.0\n" }, "firmware_version"},
		{"a version that is not ASCII", func(r *model.StateReport) { r.FirmwareVersion = "1.0-ß" }, "firmware_version"},
		{"ota_state outside the words", func(r *model.StateReport) { r.OTAState = "verified" }, "ota_state"},
		{"ota.result outside the words", func(r *model.StateReport) { r.OTA.Result = "failed" }, "ota.result"},
		{"ota without a target", func(r *model.StateReport) { r.OTA.Target = "" }, "ota.target"},
		{"ota without a result", func(r *model.StateReport) { r.OTA.Result = "" }, "ota.result"},
		{"a partition label of 17", func(r *model.StateReport) { r.Partition = strings.Repeat("p", 17) }, "partition"},
		{"upper-case ELF hash", func(r *model.StateReport) { r.AppELFSHA256 = strings.Repeat("AB", 32) }, "app_elf_sha256"},
		{"ELF hash too long", func(r *model.StateReport) { r.AppELFSHA256 = strings.Repeat("a", 65) }, "app_elf_sha256"},
		{"negative uptime", func(r *model.StateReport) { r.UptimeS = ptr(int64(-1)) }, "uptime_s"},
		{"negative free heap", func(r *model.StateReport) { r.FreeHeap = ptr(int64(-1)) }, "free_heap"},
		{"rssi below int8", func(r *model.StateReport) { r.RSSI = ptr(-129) }, "rssi"},
		{"reset_reason with a tab", func(r *model.StateReport) { r.ResetReason = "a\tb" }, "reset_reason"},
		{"idf_version too long", func(r *model.StateReport) { r.IDFVersion = strings.Repeat("x", 65) }, "idf_version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fullReport()
			tc.edit(&r)
			err := r.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			var ve *model.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want a *model.ValidationError on %s", err, tc.field)
			}
			if ve.Field != tc.field {
				t.Errorf("field = %q (%s), want %q", ve.Field, ve.Reason, tc.field)
			}
		})
	}
}

func TestOTAWordsMatchTheSpec(t *testing.T) {
	// SPEC §15 lists them; the OpenAPI document and the validation use
	// these lists.
	var states, results []string
	for _, s := range model.OTAStates {
		states = append(states, string(s))
	}
	for _, r := range model.OTAResults {
		results = append(results, string(r))
	}
	if got, want := strings.Join(states, ","), "valid,pending_verify"; got != want {
		t.Errorf("OTAStates = %s, want %s", got, want)
	}
	if got, want := strings.Join(results, ","), "installed,rolled_back,download_failed,verify_failed"; got != want {
		t.Errorf("OTAResults = %s, want %s", got, want)
	}
}
