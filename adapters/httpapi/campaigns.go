package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Firmware campaigns (SPEC §16): POST /api/campaigns (admin), the list,
// one campaign with its waves, its devices, pause, resume and abort.

var errNoCampaigns = &httpError{status: http.StatusServiceUnavailable, kind: "not-ready", detail: "campaigns are not configured on this server"}

// createCampaignDTO is POST /api/campaigns's body. Members are raw so that
// an absent member (its default) is told from null (refused), and an
// integer is read in any JSON spelling (7, 7.0, 7e0).
type createCampaignDTO struct {
	DeviceModelID        json.RawMessage `json:"device_model_id" oas:"required,type=integer,format=int64,minimum=1" desc:"an existing device model; one that does not exist is a 409 naming this field"`
	FirmwareSHA256       json.RawMessage `json:"firmware_sha256" oas:"required,type=string" pattern:"^[0-9a-f]{64}$" desc:"the SHA-256 of one of the model's uploads (its firmware history, released or stored); another is a 409 naming this field"`
	Selector             json.RawMessage `json:"selector" oas:"ref=CampaignSelector" desc:"which of the model's active devices are members; left out: all of them"`
	Waves                json.RawMessage `json:"waves" oas:"use=campaignWaves"`
	WaveSoakSeconds      json.RawMessage `json:"wave_soak_seconds" oas:"type=integer,minimum=0,maximum=2592000,default=600" desc:"how long a finished wave waits after its last success (or its start when none succeeded) before the next starts"`
	MaxFailureRatio      json.RawMessage `json:"max_failure_ratio" oas:"type=number,minimum=0,maximum=1,default=0.1" desc:"the campaign aborts as soon as a wave's failed members are more than this share of its members (exactly at it does not abort)"`
	DeviceTimeoutSeconds json.RawMessage `json:"device_timeout_seconds" oas:"type=integer,minimum=0,maximum=2592000,default=3600" desc:"a member that has not succeeded or failed this long after its assignment is timed out (or failed when it reports the target still pending_verify)"`
	RollbackOnAbort      json.RawMessage `json:"rollback_on_abort" oas:"type=boolean,default=true" desc:"on abort, the failed and still-pending members lose the target and are nudged back to the released firmware"`
	ReleaseOnComplete    json.RawMessage `json:"release_on_complete" oas:"type=boolean,default=false" desc:"on completion, the target becomes the model's released firmware"`
}

// campaignSelectorDTO is a campaign's selector, in requests and answers.
type campaignSelectorDTO struct {
	Tags []string `json:"tags" oas:"use=selectorTags"`
}

// campaignSelectorInDTO decodes a request's selector.
type campaignSelectorInDTO struct {
	Tags json.RawMessage `json:"tags" oas:"use=selectorTags"`
}

type campaignDTO struct {
	ID                   int64               `json:"id"`
	DeviceModelID        int64               `json:"device_model_id"`
	FirmwareSHA256       string              `json:"firmware_sha256" pattern:"^[0-9a-f]{64}$"`
	FirmwareVersion      string              `json:"firmware_version" desc:"the target's version"`
	Selector             campaignSelectorDTO `json:"selector"`
	Waves                []int               `json:"waves" desc:"cumulative percentages of the members"`
	WaveSoakSeconds      int64               `json:"wave_soak_seconds"`
	MaxFailureRatio      float64             `json:"max_failure_ratio"`
	DeviceTimeoutSeconds int64               `json:"device_timeout_seconds"`
	RollbackOnAbort      bool                `json:"rollback_on_abort"`
	ReleaseOnComplete    bool                `json:"release_on_complete"`
	State                string              `json:"state" oas:"use=campaignState"`
	CurrentWave          *int                `json:"current_wave" desc:"the index (from 0) of the wave started last; null before the first starts"`
	AbortReason          *string             `json:"abort_reason" desc:"why the campaign was aborted: an admin, or the failure ratio of a wave; null unless aborted"`
	Members              int                 `json:"members" desc:"how many devices the campaign has (fixed at creation)"`
	CreatedBy            string              `json:"created_by" desc:"the admin who created it"`
	CreatedAt            string              `json:"created_at" oas:"use=dateTime"`
	UpdatedAt            string              `json:"updated_at" oas:"use=dateTime"`
	FinishedAt           *string             `json:"finished_at" oas:"use=optDateTime" desc:"when it completed or was aborted; null while running or paused"`
}

// campaignWaveDTO is one wave's progress.
type campaignWaveDTO struct {
	Index     int     `json:"index"`
	Percent   int     `json:"percent" oas:"minimum=1,maximum=100" desc:"the wave's cumulative percentage"`
	Members   int     `json:"members"`
	Pending   int     `json:"pending"`
	Succeeded int     `json:"succeeded"`
	Failed    int     `json:"failed"`
	TimedOut  int     `json:"timed_out"`
	StartedAt *string `json:"started_at" oas:"use=optDateTime"`
}

// campaignDetailDTO is a campaign with its waves' progress.
type campaignDetailDTO struct {
	campaignDTO
	Progress []campaignWaveDTO `json:"progress" desc:"per wave, in order: its members by state and when it started"`
}

type campaignListDTO struct {
	Campaigns  []campaignDTO `json:"campaigns"`
	NextCursor *string       `json:"next_cursor" oas:"use=nextCursor"`
}

// campaignReportedDTO is what a member last reported since the campaign
// began.
type campaignReportedDTO struct {
	FirmwareVersion string          `json:"firmware_version"`
	OTAState        *string         `json:"ota_state" oas:"enum=valid|pending_verify"`
	OTA             *reportedOTADTO `json:"ota" desc:"the last OTA attempt the report names"`
	ReportedAt      string          `json:"reported_at" oas:"use=dateTime"`
}

type campaignMemberDTO struct {
	DeviceID   int64                `json:"device_id"`
	Key        string               `json:"key" oas:"use=deviceKey"`
	ClientID   string               `json:"client_id"`
	Wave       int                  `json:"wave" desc:"the member's wave (index from 0), from a stable hash of the campaign id and the device key"`
	State      string               `json:"state" oas:"use=memberState"`
	AssignedAt *string              `json:"assigned_at" oas:"use=optDateTime" desc:"when its wave assigned it the target; null before"`
	ResolvedAt *string              `json:"resolved_at" oas:"use=optDateTime"`
	Reported   *campaignReportedDTO `json:"reported" desc:"its latest state report while in the campaign; null before its first"`
}

type campaignMemberListDTO struct {
	Devices    []campaignMemberDTO `json:"devices"`
	NextCursor *string             `json:"next_cursor" oas:"use=nextCursor"`
}

func toCampaignDTO(c model.Campaign) campaignDTO {
	out := campaignDTO{
		ID: c.ID, DeviceModelID: c.DeviceModelID, FirmwareSHA256: c.FirmwareSHA256, FirmwareVersion: c.FirmwareVersion,
		Selector: campaignSelectorDTO{Tags: listOf(c.SelectorTags, func(s string) string { return s })},
		Waves:    listOf(c.Waves, func(w int) int { return w }), WaveSoakSeconds: c.WaveSoakSeconds,
		MaxFailureRatio: c.MaxFailureRatio, DeviceTimeoutSeconds: c.DeviceTimeoutSeconds,
		RollbackOnAbort: c.RollbackOnAbort, ReleaseOnComplete: c.ReleaseOnComplete,
		State: string(c.State), AbortReason: optString(c.AbortReason), Members: c.Members, CreatedBy: c.CreatedBy,
		CreatedAt: timestamp(c.CreatedAt), UpdatedAt: timestamp(c.UpdatedAt), FinishedAt: optTimestamp(c.FinishedAt),
	}
	if c.CurrentWave >= 0 {
		w := c.CurrentWave
		out.CurrentWave = &w
	}
	return out
}

func toCampaignDetailDTO(v ports.CampaignView) campaignDetailDTO {
	out := campaignDetailDTO{campaignDTO: toCampaignDTO(v.Campaign), Progress: make([]campaignWaveDTO, 0, len(v.Waves))}
	for i, w := range v.Waves {
		d := campaignWaveDTO{Index: i, Members: w.Members, Pending: w.Pending, Succeeded: w.Succeeded, Failed: w.Failed, TimedOut: w.TimedOut}
		if i < len(v.Campaign.Waves) {
			d.Percent = v.Campaign.Waves[i]
		}
		if i < len(v.Campaign.WaveStartedAt) {
			d.StartedAt = optTimestamp(&v.Campaign.WaveStartedAt[i])
		}
		out.Progress = append(out.Progress, d)
	}
	return out
}

func toCampaignMemberDTO(m model.CampaignMember) campaignMemberDTO {
	out := campaignMemberDTO{
		DeviceID: m.DeviceID, Key: m.Key, ClientID: m.ClientID, Wave: m.Wave, State: string(m.State),
		AssignedAt: optTimestamp(m.AssignedAt), ResolvedAt: optTimestamp(m.ResolvedAt),
	}
	if m.ReportedAt != nil {
		r := &campaignReportedDTO{FirmwareVersion: m.ReportedVersion, OTAState: optString(string(m.ReportedOTAState)),
			ReportedAt: timestamp(*m.ReportedAt)}
		if m.ReportedOTA != nil {
			r.OTA = &reportedOTADTO{Target: m.ReportedOTA.Target, Result: string(m.ReportedOTA.Result)}
		}
		out.Reported = r
	}
	return out
}

func fromCreateCampaignDTO(in createCampaignDTO) (ports.NewCampaign, error) {
	var out ports.NewCampaign
	if in.DeviceModelID == nil || isJSONNull(in.DeviceModelID) {
		return out, model.Invalid("device_model_id", "required")
	}
	id, ok := jsonID(in.DeviceModelID)
	if !ok {
		return out, model.Invalid("device_model_id", "must be a device model id (an integer from 1)")
	}
	out.DeviceModelID = id
	if in.FirmwareSHA256 == nil || isJSONNull(in.FirmwareSHA256) {
		return out, model.Invalid("firmware_sha256", "required")
	}
	if json.Unmarshal(in.FirmwareSHA256, &out.FirmwareSHA256) != nil || !model.SHA256Pattern.MatchString(out.FirmwareSHA256) {
		return out, model.Invalid("firmware_sha256", "must be 64 lower-case hex digits")
	}
	if in.Selector != nil {
		var sel campaignSelectorInDTO
		dec := json.NewDecoder(bytes.NewReader(in.Selector))
		dec.DisallowUnknownFields()
		if isJSONNull(in.Selector) || dec.Decode(&sel) != nil {
			return out, model.Invalid("selector", `must be an object {"tags": [...]}`)
		}
		if sel.Tags != nil {
			tags, err := stringList("selector.tags", sel.Tags)
			if err != nil {
				return out, err
			}
			out.SelectorTags = tags
		}
	}
	if in.Waves != nil {
		var raw []json.RawMessage
		if isJSONNull(in.Waves) || json.Unmarshal(in.Waves, &raw) != nil {
			return out, model.Invalid("waves", "must be an array of integers")
		}
		out.Waves = make([]int, len(raw))
		for i, r := range raw {
			n, ok := intText(string(bytes.TrimSpace(r)))
			if !ok || n < 1 || n > 100 {
				return out, model.Invalid("waves", "entry %d must be an integer from 1 to 100", i)
			}
			out.Waves[i] = int(n)
		}
	}
	var err error
	if out.WaveSoakSeconds, err = optReportInt("wave_soak_seconds", in.WaveSoakSeconds, 0, model.MaxWaveSoakSeconds); err != nil {
		return out, err
	}
	if out.DeviceTimeoutSeconds, err = optReportInt("device_timeout_seconds", in.DeviceTimeoutSeconds, 0, model.MaxDeviceTimeoutSeconds); err != nil {
		return out, err
	}
	if in.MaxFailureRatio != nil {
		var r float64
		if isJSONNull(in.MaxFailureRatio) || json.Unmarshal(in.MaxFailureRatio, &r) != nil || r < 0 || r > 1 {
			return out, model.Invalid("max_failure_ratio", "must be a number from 0 to 1")
		}
		out.MaxFailureRatio = &r
	}
	if out.RollbackOnAbort, err = optBool("rollback_on_abort", in.RollbackOnAbort); err != nil {
		return out, err
	}
	if out.ReleaseOnComplete, err = optBool("release_on_complete", in.ReleaseOnComplete); err != nil {
		return out, err
	}
	return out, nil
}

// stringList decodes an array of strings.
func stringList(field string, raw json.RawMessage) ([]string, error) {
	var out []string
	if isJSONNull(raw) || json.Unmarshal(raw, &out) != nil || out == nil {
		return nil, model.Invalid(field, "must be an array of strings")
	}
	return out, nil
}

// campaignFilter parses the campaign list query: limit, cursor,
// device_model_id, state.
func campaignFilter(c *fiber.Ctx) (ports.CampaignFilter, error) {
	var f ports.CampaignFilter
	var err error
	if f.Limit, f.AfterID, err = pageQuery(c); err != nil {
		return f, err
	}
	if v := c.Query("device_model_id"); v != "" {
		n, ok := intText(v)
		if !ok || n <= 0 {
			return f, model.Invalid("device_model_id", "must be a positive integer")
		}
		f.ModelID = &n
	}
	if v := c.Query("state"); v != "" {
		st := model.CampaignState(strings.ToLower(v))
		if !st.Valid() {
			return f, model.Invalid("state", "must be one of running, paused, aborted, completed")
		}
		f.State = &st
	}
	return f, nil
}

// memberFilter parses a campaign's device list query: the path id, limit,
// cursor, state.
func memberFilter(c *fiber.Ctx) (ports.MemberFilter, error) {
	var f ports.MemberFilter
	var err error
	if f.CampaignID, err = pathID(c); err != nil {
		return f, err
	}
	if f.Limit, f.AfterID, err = pageQuery(c); err != nil {
		return f, err
	}
	if v := c.Query("state"); v != "" {
		st := model.MemberState(strings.ToLower(v))
		if !st.Valid() {
			return f, model.Invalid("state", "must be one of pending, succeeded, failed, timed_out")
		}
		f.State = &st
	}
	return f, nil
}

func (s *Server) campaignRoutes() {
	small, js := bodyLimit(s.cfg.IoTMaxBytes), bodyLimit(s.cfg.JSONMaxBytes)
	read, write := s.requireAdminRole(false), s.requireAdminRole(true)
	a := s.app
	a.Post("/api/campaigns", js, write, s.createCampaign)
	a.Get("/api/campaigns", small, read, s.listCampaigns)
	a.Get("/api/campaigns/:id", small, read, s.getCampaign)
	a.Get("/api/campaigns/:id/devices", small, read, s.listCampaignDevices)
	a.Post("/api/campaigns/:id/pause", small, write, s.campaignStep(func(p ports.CampaignAdmin) campaignCall { return p.PauseCampaign }))
	a.Post("/api/campaigns/:id/resume", small, write, s.campaignStep(func(p ports.CampaignAdmin) campaignCall { return p.ResumeCampaign }))
	a.Post("/api/campaigns/:id/abort", small, write, s.campaignStep(func(p ports.CampaignAdmin) campaignCall { return p.AbortCampaign }))
}

func (s *Server) createCampaign(c *fiber.Ctx) error {
	if s.campaigns == nil {
		return errNoCampaigns
	}
	// The answer is the campaign with its waves counted, like every other
	// campaign answer.
	call := func(ctx context.Context, in ports.NewCampaign) (ports.CampaignView, error) {
		cp, err := s.campaigns.CreateCampaign(ctx, in)
		if err != nil {
			return ports.CampaignView{}, err
		}
		return s.campaigns.GetCampaign(ctx, cp.ID)
	}
	return create(s, c, fromCreateCampaignDTO, call, toCampaignDetailDTO,
		func(v ports.CampaignView) string { return fmt.Sprintf("/api/campaigns/%d", v.Campaign.ID) })
}

func (s *Server) listCampaigns(c *fiber.Ctx) error {
	if s.campaigns == nil {
		return errNoCampaigns
	}
	return respondTo(c, campaignFilter, s.campaigns.ListCampaigns, func(p ports.CampaignPage) campaignListDTO {
		return campaignListDTO{Campaigns: listOf(p.Campaigns, toCampaignDTO), NextCursor: pageCursor(p.NextAfterID)}
	})
}

func (s *Server) getCampaign(c *fiber.Ctx) error {
	if s.campaigns == nil {
		return errNoCampaigns
	}
	return respondTo(c, pathID, s.campaigns.GetCampaign, toCampaignDetailDTO)
}

func (s *Server) listCampaignDevices(c *fiber.Ctx) error {
	if s.campaigns == nil {
		return errNoCampaigns
	}
	return respondTo(c, memberFilter, s.campaigns.ListCampaignMembers, func(p ports.MemberPage) campaignMemberListDTO {
		return campaignMemberListDTO{Devices: listOf(p.Members, toCampaignMemberDTO), NextCursor: pageCursor(p.NextAfterID)}
	})
}

type campaignCall = func(ctx context.Context, id int64) (ports.CampaignView, error)

// campaignStep is the handler of a transition (pause, resume, abort).
func (s *Server) campaignStep(pick func(ports.CampaignAdmin) campaignCall) fiber.Handler {
	return func(c *fiber.Ctx) error {
		if s.campaigns == nil {
			return errNoCampaigns
		}
		return respondTo(c, pathID, pick(s.campaigns), toCampaignDetailDTO)
	}
}

// campaignOperations documents the campaign routes.
func campaignOperations() []operation {
	withID := []obj{idParam}
	page := []obj{
		{"name": "limit", "in": "query", "schema": obj{"type": "integer", "minimum": 1, "maximum": ports.MaxPageSize, "default": ports.DefaultPageSize}},
		{"name": "cursor", "in": "query", "schema": cursorSchema, "description": "next_cursor of the previous page"},
	}
	step := func(word, id, summary string) operation {
		return operation{method: "POST", path: "/api/campaigns/{id}/" + word, id: id, tag: "campaigns", auth: "write",
			summary: summary, params: withID,
			description: "A campaign that has completed or was aborted answers 409.",
			responses:   obj{"200": jsonResponse("the campaign", refTo[campaignDetailDTO]())}, errorCodes: []int{400, 404, 409, 503}}
	}
	return []operation{
		{method: "POST", path: "/api/campaigns", id: "createCampaign", tag: "campaigns", auth: "write",
			summary: "Start a firmware campaign: a staged rollout of one upload to the model's devices, in waves",
			description: "The members are the model's active devices whose tags include all of the selector's, fixed now; a member's wave " +
				"comes from a stable hash of the campaign id and its key. The first wave starts at the worker's next tick. A member " +
				"succeeds when it reports (POST /iot/state) the target version with ota_state valid, fails when it reports an OTA of the " +
				"target that did not end installed (or the target still pending_verify at its timeout), and times out when it reports " +
				"neither within device_timeout_seconds. waves must be strictly ascending and end at 100 (400 otherwise, which no schema " +
				"keyword says). A model that has a running or paused campaign is a 409; so are a device_model_id that names no model " +
				"and a firmware_sha256 that is not one of its uploads (field names the member).",
			body:       refTo[createCampaignDTO](),
			responses:  obj{"201": jsonResponse("created; Location names it", refTo[campaignDetailDTO]())},
			errorCodes: []int{400, 409, 413, 415, 503}},
		{method: "GET", path: "/api/campaigns", id: "listCampaigns", tag: "campaigns", auth: "read",
			summary: "List campaigns by id, paginated by cursor",
			params: append(append([]obj{}, page...),
				obj{"name": "device_model_id", "in": "query", "schema": obj{"type": "integer", "format": "int64", "minimum": 1}},
				obj{"name": "state", "in": "query", "schema": caselessEnum(campaignStates()...), "description": "case-insensitive"}),
			responses: obj{"200": jsonResponse("one page", refTo[campaignListDTO]())}, errorCodes: []int{400, 503}},
		{method: "GET", path: "/api/campaigns/{id}", id: "getCampaign", tag: "campaigns", auth: "read",
			summary: "A campaign with its waves' progress", params: withID,
			responses: obj{"200": jsonResponse("the campaign", refTo[campaignDetailDTO]())}, errorCodes: []int{400, 404, 503}},
		{method: "GET", path: "/api/campaigns/{id}/devices", id: "listCampaignDevices", tag: "campaigns", auth: "read",
			summary: "The campaign's members by device id, paginated by cursor",
			params: append(append([]obj{idParam}, page...),
				obj{"name": "state", "in": "query", "schema": caselessEnum(memberStates()...), "description": "case-insensitive"}),
			responses: obj{"200": jsonResponse("one page", refTo[campaignMemberListDTO]())}, errorCodes: []int{400, 404, 503}},
		step("pause", "pauseCampaign", "Pause a running campaign: no wave starts and no member times out until it resumes; reports are still recorded, and a failure ratio over the maximum still aborts it"),
		step("resume", "resumeCampaign", "Resume a paused campaign"),
		step("abort", "abortCampaign", "Abort a running or paused campaign; with rollback_on_abort its failed and still-pending members lose the target"),
	}
}

func campaignStates() []string {
	return listOf(model.CampaignStates, func(s model.CampaignState) string { return string(s) })
}

func memberStates() []string {
	return listOf(model.MemberStates, func(s model.MemberState) string { return string(s) })
}

// campaignFragments are the schema fragments of the campaign DTOs.
func campaignFragments() map[string]obj {
	return map[string]obj{
		"campaignState": {"enum": campaignStates()},
		"memberState":   {"enum": memberStates()},
		"campaignWaves": {"type": "array", "minItems": 1, "maxItems": model.MaxCampaignWaves, "uniqueItems": true,
			"items": obj{"type": "integer", "minimum": 1, "maximum": 100}, "default": model.DefaultWaves(),
			"description": "cumulative percentages of the members, strictly ascending, ending at 100"},
		"selectorTags": {"type": "array", "maxItems": model.MaxSelectorTags, "uniqueItems": true,
			"items":       obj{"type": "string", "pattern": model.TagPattern.String()},
			"description": "a device is a member when its tags include all of these"},
	}
}
