package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"net/http"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
)

// Device state reports (SPEC §15): POST /iot/state, the report in the
// device answers, and the fleet by reported firmware version.

// reportTextPattern is a report's text as model.StateReport.Validate
// checks it: printable ASCII (it ends up in audit details, logs and metric
// labels). The members' tags spell it out; their lengths are in the oas
// tags.
const reportTextPattern = `^[ -~]+$`

// stateReportDTO is the POST /iot/state body. Every member is raw so that
// an absent member (left out of the report) is told from null, which is
// refused like a member sent empty: a report says what it knows, and
// leaves out the rest.
type stateReportDTO struct {
	FirmwareVersion json.RawMessage `json:"firmware_version" oas:"required,type=string,minLength=1,maxLength=31" pattern:"^[ -~]+$" desc:"the running app's version (its app descriptor's), printable ASCII"`
	SecureVersion   json.RawMessage `json:"secure_version" oas:"type=integer,minimum=0,maximum=4294967295" desc:"the running app's anti-rollback secure_version"`
	AppELFSHA256    json.RawMessage `json:"app_elf_sha256" oas:"type=string" pattern:"^[0-9a-f]{1,64}$" desc:"lower-case hex SHA-256 of the running app's ELF file, or a prefix of it"`
	Partition       json.RawMessage `json:"partition" oas:"type=string,minLength=1,maxLength=16" pattern:"^[ -~]+$" desc:"the running app partition's label (factory, ota_0, ...)"`
	OTAState        json.RawMessage `json:"ota_state" oas:"type=string,enum=valid|pending_verify" desc:"pending_verify: a new image on probation, rolled back at the next reset unless confirmed"`
	OTA             json.RawMessage `json:"ota" oas:"ref=OTAAttempt"`
	ResetReason     json.RawMessage `json:"reset_reason" oas:"type=string,minLength=1,maxLength=64" pattern:"^[ -~]+$"`
	UptimeS         json.RawMessage `json:"uptime_s" oas:"type=integer,format=int64,minimum=0,maximum=9223372036854775807"`
	FreeHeap        json.RawMessage `json:"free_heap" oas:"type=integer,format=int64,minimum=0,maximum=9223372036854775807" desc:"bytes"`
	RSSI            json.RawMessage `json:"rssi" oas:"type=integer,minimum=-128,maximum=127" desc:"dBm"`
	IDFVersion      json.RawMessage `json:"idf_version" oas:"type=string,minLength=1,maxLength=64" pattern:"^[ -~]+$"`
}

// otaAttemptDTO is a report's ota member: the last OTA attempt.
type otaAttemptDTO struct {
	Target json.RawMessage `json:"target" oas:"required,type=string,minLength=1,maxLength=31" pattern:"^[ -~]+$" desc:"the version the device tried to install"`
	Result json.RawMessage `json:"result" oas:"required,type=string,enum=installed|rolled_back|download_failed|verify_failed"`
}

// fromStateReportDTO converts and checks a report: the wire's part here
// (types, null, empty members, unknown members of ota), the rest by
// model.StateReport.Validate in the core.
func fromStateReportDTO(in stateReportDTO) (model.StateReport, error) {
	var r model.StateReport
	var err error
	if in.FirmwareVersion == nil {
		return r, model.Invalid("firmware_version", "is required")
	}
	texts := []struct {
		name string
		raw  json.RawMessage
		dst  *string
	}{
		{"firmware_version", in.FirmwareVersion, &r.FirmwareVersion},
		{"app_elf_sha256", in.AppELFSHA256, &r.AppELFSHA256},
		{"partition", in.Partition, &r.Partition},
		{"reset_reason", in.ResetReason, &r.ResetReason},
		{"idf_version", in.IDFVersion, &r.IDFVersion},
	}
	for _, t := range texts {
		if *t.dst, err = reportString(t.name, t.raw); err != nil {
			return r, err
		}
	}
	state, err := reportString("ota_state", in.OTAState)
	if err != nil {
		return r, err
	}
	r.OTAState = model.OTAState(state)
	if in.SecureVersion != nil {
		n, err := reportInt("secure_version", in.SecureVersion, 0, math.MaxUint32)
		if err != nil {
			return r, err
		}
		v := uint32(n)
		r.SecureVersion = &v
	}
	if r.UptimeS, err = optReportInt("uptime_s", in.UptimeS, 0, math.MaxInt64); err != nil {
		return r, err
	}
	if r.FreeHeap, err = optReportInt("free_heap", in.FreeHeap, 0, math.MaxInt64); err != nil {
		return r, err
	}
	if in.RSSI != nil {
		n, err := reportInt("rssi", in.RSSI, math.MinInt8, math.MaxInt8)
		if err != nil {
			return r, err
		}
		v := int(n)
		r.RSSI = &v
	}
	if in.OTA != nil {
		if r.OTA, err = fromOTAAttemptDTO(in.OTA); err != nil {
			return r, err
		}
	}
	return r, nil
}

// fromOTAAttemptDTO decodes the ota member as strictly as decodeJSON does
// the body: an object, its member names exact, no unknown ones.
func fromOTAAttemptDTO(raw json.RawMessage) (*model.OTAAttempt, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, model.Invalid("ota", "must be an object {\"target\": \"<version>\", \"result\": \"installed\" | \"rolled_back\" | \"download_failed\" | \"verify_failed\"}")
	}
	var in otaAttemptDTO
	if err := exactMembers(raw, &in); err != nil {
		return nil, prefixOTA(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, model.Invalid("ota", "%s", describeJSONError(err))
	}
	if in.Target == nil {
		return nil, model.Invalid("ota.target", "is required")
	}
	if in.Result == nil {
		return nil, model.Invalid("ota.result", "is required")
	}
	target, err := reportString("ota.target", in.Target)
	if err != nil {
		return nil, err
	}
	result, err := reportString("ota.result", in.Result)
	if err != nil {
		return nil, err
	}
	return &model.OTAAttempt{Target: target, Result: model.OTAResult(result)}, nil
}

// prefixOTA says that an error of exactMembers is about the ota member.
func prefixOTA(err error) error {
	var h *httpError
	if errors.As(err, &h) {
		return model.Invalid("ota", "%s", h.detail)
	}
	return err
}

// reportString decodes an optional string member ("" when absent); null,
// another JSON type and the empty string are refused.
func reportString(field string, raw json.RawMessage) (string, error) {
	if raw == nil {
		return "", nil
	}
	var s string
	if isJSONNull(raw) || json.Unmarshal(raw, &s) != nil {
		return "", model.Invalid(field, "must be a string (leave the member out when there is none)")
	}
	if s == "" {
		return "", model.Invalid(field, "must not be empty (leave the member out when there is none)")
	}
	return s, nil
}

// reportInt decodes an integer member from lo to hi, in any JSON spelling
// of an integer (see intText).
func reportInt(field string, raw json.RawMessage, lo, hi int64) (int64, error) {
	n, ok := intText(string(bytes.TrimSpace(raw)))
	if !ok || n < lo || n > hi {
		return 0, model.Invalid(field, "must be an integer from %d to %d", lo, hi)
	}
	return n, nil
}

func optReportInt(field string, raw json.RawMessage, lo, hi int64) (*int64, error) {
	if raw == nil {
		return nil, nil
	}
	n, err := reportInt(field, raw, lo, hi)
	if err != nil {
		return nil, err
	}
	return &n, nil
}

// reportedDTO is a device's latest state report as the device sent it:
// the members it left out are left out here too.
type reportedDTO struct {
	FirmwareVersion string          `json:"firmware_version"`
	SecureVersion   *uint32         `json:"secure_version,omitempty"`
	AppELFSHA256    string          `json:"app_elf_sha256,omitempty" pattern:"^[0-9a-f]{1,64}$"`
	Partition       string          `json:"partition,omitempty"`
	OTAState        string          `json:"ota_state,omitempty" oas:"enum=valid|pending_verify"`
	OTA             *reportedOTADTO `json:"ota,omitempty" desc:"the last OTA attempt"`
	ResetReason     string          `json:"reset_reason,omitempty"`
	UptimeS         *int64          `json:"uptime_s,omitempty"`
	FreeHeap        *int64          `json:"free_heap,omitempty"`
	RSSI            *int            `json:"rssi,omitempty" oas:"minimum=-128,maximum=127"`
	IDFVersion      string          `json:"idf_version,omitempty"`
}

// reportedOTADTO is a report's last OTA attempt.
type reportedOTADTO struct {
	Target string `json:"target"`
	Result string `json:"result" oas:"enum=installed|rolled_back|download_failed|verify_failed"`
}

func toReportedDTO(r *model.StateReport) *reportedDTO {
	if r == nil {
		return nil
	}
	out := &reportedDTO{
		FirmwareVersion: r.FirmwareVersion,
		SecureVersion:   r.SecureVersion,
		AppELFSHA256:    r.AppELFSHA256,
		Partition:       r.Partition,
		OTAState:        string(r.OTAState),
		ResetReason:     r.ResetReason,
		UptimeS:         r.UptimeS,
		FreeHeap:        r.FreeHeap,
		RSSI:            r.RSSI,
		IDFVersion:      r.IDFVersion,
	}
	if r.OTA != nil {
		out.OTA = &reportedOTADTO{Target: r.OTA.Target, Result: string(r.OTA.Result)}
	}
	return out
}

// reportedAt is when espmdm received d's latest report; nil before the
// first.
func reportedAt(d model.Device) *string {
	if d.Reported == nil {
		return nil
	}
	return optTimestamp(&d.Reported.At)
}

func (s *Server) iotState(c *fiber.Ctx) error {
	d, _ := deviceOf(c)
	var in stateReportDTO
	if err := s.decodeJSON(c, &in); err != nil {
		return err
	}
	r, err := fromStateReportDTO(in)
	if err != nil {
		return err
	}
	if err := s.devices.ReportState(c.UserContext(), d, r); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// fleetFirmwareDTO is GET /api/fleet/firmware: the active devices of each
// model by reported firmware version.
type fleetFirmwareDTO struct {
	Models []fleetModelDTO `json:"models" desc:"the models with active devices, by code"`
}

type fleetModelDTO struct {
	DeviceModelID int64             `json:"device_model_id"`
	Code          string            `json:"code" oas:"use=modelCode"`
	Devices       int               `json:"devices" desc:"the model's active devices"`
	Versions      []fleetVersionDTO `json:"versions" desc:"by version; the devices that have not reported last"`
}

type fleetVersionDTO struct {
	FirmwareVersion *string `json:"firmware_version" desc:"the reported firmware version; null for the devices that have not reported yet"`
	Devices         int     `json:"devices"`
}

func toFleetFirmwareDTO(counts []model.FirmwareCount) fleetFirmwareDTO {
	out := fleetFirmwareDTO{Models: []fleetModelDTO{}}
	for _, c := range counts {
		if n := len(out.Models); n == 0 || out.Models[n-1].DeviceModelID != c.ModelID {
			out.Models = append(out.Models, fleetModelDTO{DeviceModelID: c.ModelID, Code: c.ModelCode, Versions: []fleetVersionDTO{}})
		}
		m := &out.Models[len(out.Models)-1]
		m.Devices += c.Devices
		m.Versions = append(m.Versions, fleetVersionDTO{FirmwareVersion: optString(c.Version), Devices: c.Devices})
	}
	// The devices without a report (sorted first, as the empty version)
	// go last.
	for i := range out.Models {
		v := out.Models[i].Versions
		if len(v) > 1 && v[0].FirmwareVersion == nil {
			unreported := v[0]
			copy(v, v[1:])
			v[len(v)-1] = unreported
		}
	}
	return out
}

var errNoFleet = &httpError{status: http.StatusServiceUnavailable, kind: "not-ready", detail: "the fleet view is not configured on this server"}

func (s *Server) fleetFirmware(c *fiber.Ctx) error {
	if s.fleet == nil {
		return errNoFleet
	}
	counts, err := s.fleet.FirmwareCounts(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(toFleetFirmwareDTO(counts))
}
