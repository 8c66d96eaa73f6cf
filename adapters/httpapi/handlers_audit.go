package httpapi

import (
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The audit log (SPEC §12): GET /api/audit.

// errNoAudit answers GET /api/audit on a server built without the log.
var errNoAudit = &httpError{status: http.StatusServiceUnavailable, kind: "not-ready", detail: "the audit log is not configured on this server"}

type auditActorDTO struct {
	Type     string `json:"type" oas:"enum=admin|device|system"`
	Subject  string `json:"subject" desc:"admin: the token's sub; system: what acted (rotation worker, reconciler)"`
	ClientID string `json:"client_id" desc:"admin: the token's azp; device: its client id"`
	Name     string `json:"name" desc:"admin: the token's preferred_username"`
}

// auditEntryDTO is one entry. The device, client and model it concerns
// are left out when there is none (a schedule fire, a firmware upload):
// a member that is there always names one, so a client (or a tool that
// follows device_id to /api/devices/{id}) never meets a null id.
type auditEntryDTO struct {
	ID       int64         `json:"id" oas:"minimum=1"`
	At       string        `json:"at" oas:"use=dateTime"`
	Kind     string        `json:"kind" oas:"use=auditKind"`
	Actor    auditActorDTO `json:"actor"`
	DeviceID *int64        `json:"device_id,omitempty" oas:"minimum=1" desc:"the device concerned; absent when none is (never null)"`
	ClientID *string       `json:"client_id,omitempty" desc:"the device client concerned; absent when none is"`
	ModelID  *int64        `json:"device_model_id,omitempty" oas:"minimum=1" desc:"the device model concerned; absent when none is (never null)"`
	Outcome  string        `json:"outcome" oas:"enum=success|failure"`
	Detail   string        `json:"detail" oas:"maxLength=1000" desc:"what changed, in a few words; never a secret"`
}

type auditListDTO struct {
	Entries    []auditEntryDTO `json:"entries"`
	NextCursor *string         `json:"next_cursor" oas:"use=nextCursor"`
}

func toAuditEntryDTO(e model.AuditEntry) auditEntryDTO {
	out := auditEntryDTO{
		ID: e.ID, At: timestamp(e.At), Kind: string(e.Kind),
		Actor:   auditActorDTO{Type: string(e.Actor.Type), Subject: e.Actor.Subject, ClientID: e.Actor.ClientID, Name: e.Actor.Name},
		Outcome: string(e.Outcome), Detail: e.Detail,
	}
	if e.DeviceID > 0 {
		out.DeviceID = &e.DeviceID
	}
	if e.ClientID != "" {
		out.ClientID = &e.ClientID
	}
	if e.ModelID > 0 {
		out.ModelID = &e.ModelID
	}
	return out
}

func (s *Server) listAudit(c *fiber.Ctx) error {
	if s.audit == nil {
		return errNoAudit
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return respondTo(c, auditFilter, s.audit.ListAudit, func(page ports.AuditPage) auditListDTO {
		return auditListDTO{Entries: listOf(page.Entries, toAuditEntryDTO), NextCursor: pageCursor(page.NextAfterID)}
	})
}

// maxActorLen bounds the actor filter (subjects, client ids and usernames
// are far shorter).
const maxActorLen = 255

// auditFilter parses the audit query: limit, cursor or after (an entry id:
// SPEC §12's after=), device_id, kind, actor, since. Invalid values of
// known parameters are a 400.
func auditFilter(c *fiber.Ctx) (ports.AuditFilter, error) {
	f := ports.AuditFilter{Limit: ports.DefaultPageSize}
	var err error
	// cursor and after both bound the page from below: with both, the
	// larger holds.
	if f.Limit, f.AfterID, err = pageQuery(c); err != nil {
		return f, err
	}
	if v := c.Query("after"); v != "" {
		id, ok := intText(v)
		if !ok || id < 0 {
			return f, model.Invalid("after", "must be an audit entry id (an integer from 0)")
		}
		f.AfterID = max(f.AfterID, id)
	}
	if v := c.Query("device_id"); v != "" {
		id, ok := intText(v)
		if !ok || id <= 0 {
			return f, model.Invalid("device_id", "must be a positive integer")
		}
		f.DeviceID = id
	}
	if v := c.Query("kind"); v != "" {
		k := model.AuditKind(v)
		if !k.Valid() {
			return f, model.Invalid("kind", "not an audit event kind (see the OpenAPI document for the list)")
		}
		f.Kind = k
	}
	if v := c.Query("actor"); v != "" {
		// Characters, as the document's maxLength counts them; the
		// database stores no U+0000.
		if utf8.RuneCountInString(v) > maxActorLen {
			return f, model.Invalid("actor", "at most %d characters", maxActorLen)
		}
		if strings.ContainsRune(v, 0) {
			return f, model.Invalid("actor", "must not contain U+0000")
		}
		f.Actor = v
	}
	if v := c.Query("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return f, model.Invalid("since", "must be an RFC 3339 time such as 2025-06-01T00:00:00Z")
		}
		f.Since = t
	}
	return f, nil
}
