package httpapi

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Credential rotation handlers (SPEC §4): the device's fetch and ack, and
// the admin's queue controls and views.

// errNoRotation answers the rotation routes of a server built without the
// rotation use case.
var errNoRotation = &httpError{status: http.StatusServiceUnavailable, kind: "not-ready", detail: "credential rotation is not configured on this server"}

// ackDTO is the body of POST /iot/provisioning/ack.
type ackDTO struct {
	ClientSecretSHA256 *string `json:"client_secret_sha256" oas:"required" pattern:"^[0-9a-fA-F]{64}$" desc:"hex SHA-256 of the new client secret"`
}

func (s *Server) iotProvisioning(c *fiber.Ctx) error {
	d, _ := deviceOf(c)
	p, err := s.devices.FetchCredentials(c.UserContext(), d)
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(toProvisioningDTO(p))
}

func (s *Server) iotProvisioningAck(c *fiber.Ctx) error {
	d, _ := deviceOf(c)
	var in ackDTO
	if err := s.decodeJSON(c, &in); err != nil {
		return err
	}
	if in.ClientSecretSHA256 == nil {
		return model.Invalid("client_secret_sha256", "is required")
	}
	if err := s.devices.AckCredentials(c.UserContext(), d, *in.ClientSecretSHA256); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

type rotateDTO struct {
	Status string `json:"status" oas:"enum=queued|already_pending"`
}

func (s *Server) rotateDevice(c *fiber.Ctx) error {
	if s.rotation == nil {
		return errNoRotation
	}
	id, err := pathID(c)
	if err != nil {
		return err
	}
	res, err := s.rotation.RotateDevice(c.UserContext(), id)
	if err != nil {
		return err
	}
	status := fiber.StatusAccepted
	if res == ports.RotateAlreadyPending {
		status = fiber.StatusOK
	}
	return c.Status(status).JSON(rotateDTO{Status: string(res)})
}

type triggerDTO struct {
	QueuedCount int `json:"queued_count" oas:"minimum=0"`
}

func (s *Server) triggerRotation(c *fiber.Ctx) error {
	if s.rotation == nil {
		return errNoRotation
	}
	var modelID int64
	if v := c.Query("device_model_id"); v != "" {
		n, ok := intText(v)
		if !ok || n <= 0 {
			return model.Invalid("device_model_id", "must be a positive integer")
		}
		modelID = n
	}
	n, err := s.rotation.TriggerRotation(c.UserContext(), modelID)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusAccepted).JSON(triggerDTO{QueuedCount: n})
}

type rotationCountsDTO struct {
	OK      int `json:"OK" oas:"minimum=0"`
	Queued  int `json:"QUEUED" oas:"minimum=0"`
	Pending int `json:"PENDING" oas:"minimum=0"`
	Timeout int `json:"TIMEOUT" oas:"minimum=0"`
}

type rotationStatusDTO struct {
	Mode                    string            `json:"mode" oas:"enum=grace|restore|" desc:"the mode in force; empty until resolved at start"`
	CountsByState           rotationCountsDTO `json:"counts_by_state" desc:"active devices by rotation state"`
	Inactive                int               `json:"inactive" oas:"minimum=0"`
	InFlight                []int64           `json:"in_flight" desc:"ids of PENDING devices"`
	LastRotationCompletedAt *string           `json:"last_rotation_completed_at" oas:"use=optDateTime"`
	NextScheduledRotation   *string           `json:"next_scheduled_rotation" oas:"use=optDateTime"`
	LeaseHolder             *string           `json:"lease_holder" desc:"the espmdm process working the rotation queue; null when none"`
}

func toCountsDTO(c model.RotationCounts) rotationCountsDTO {
	return rotationCountsDTO{
		OK: c.ByState[model.RotationOK], Queued: c.ByState[model.RotationQueued],
		Pending: c.ByState[model.RotationPending], Timeout: c.ByState[model.RotationTimeout],
	}
}

func (s *Server) rotationStatus(c *fiber.Ctx) error {
	if s.rotation == nil {
		return errNoRotation
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return respond(c, s.rotation.RotationStatus, toRotationStatusDTO)
}

func toRotationStatusDTO(st ports.RotationStatus) rotationStatusDTO {
	out := rotationStatusDTO{
		Mode:                    string(st.Mode),
		CountsByState:           toCountsDTO(st.Counts),
		Inactive:                st.Counts.Inactive,
		InFlight:                st.InFlight,
		LastRotationCompletedAt: optTimestamp(st.LastCompletedAt),
		NextScheduledRotation:   optTimestamp(st.NextScheduled),
		LeaseHolder:             optString(st.LeaseHolder),
	}
	if out.InFlight == nil {
		out.InFlight = []int64{}
	}
	return out
}

type dashboardCountsDTO struct {
	Healthy  int `json:"healthy" oas:"minimum=0"`
	Warning  int `json:"warning" oas:"minimum=0"`
	Critical int `json:"critical" oas:"minimum=0"`
	Inactive int `json:"inactive" oas:"minimum=0"`
}

type dashboardDeviceDTO struct {
	ID                    int64   `json:"id"`
	ClientID              string  `json:"client_id"`
	RotationState         string  `json:"rotation_state" oas:"use=rotationState"`
	SecretCreatedAt       *string `json:"secret_created_at" oas:"use=optDateTime"`
	SecretAgeDays         float64 `json:"secret_age_days" oas:"minimum=0"`
	LastRotationAttemptAt *string `json:"last_rotation_attempt_at" oas:"use=optDateTime"`
	LastSeenAt            *string `json:"last_seen_at" oas:"use=optDateTime"`
}

type dashboardDTO struct {
	Counts     dashboardCountsDTO   `json:"counts"`
	Group      string               `json:"group" oas:"use=dashboardGroup"`
	Devices    []dashboardDeviceDTO `json:"devices"`
	NextCursor *string              `json:"next_cursor" oas:"use=nextCursor"`
}

func (s *Server) rotationDashboard(c *fiber.Ctx) error {
	if s.rotation == nil {
		return errNoRotation
	}
	g := model.DashboardGroup(strings.ToLower(c.Query("group", string(model.DashboardCritical))))
	limit, after, err := pageQuery(c)
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return respond(c, func(ctx context.Context) (ports.Dashboard, error) {
		return s.rotation.RotationDashboard(ctx, g, limit, after)
	}, toDashboardDTO)
}

// toDashboardDTO converts a dashboard page; secret ages are counted to now.
func toDashboardDTO(db ports.Dashboard) dashboardDTO {
	now := time.Now()
	out := dashboardDTO{
		Counts: dashboardCountsDTO{
			Healthy: db.Counts[model.DashboardHealthy], Warning: db.Counts[model.DashboardWarning],
			Critical: db.Counts[model.DashboardCritical], Inactive: db.Counts[model.DashboardInactive],
		},
		Group:      string(db.Group),
		NextCursor: pageCursor(db.Page.NextAfterID),
	}
	out.Devices = listOf(db.Page.Devices, func(d model.Device) dashboardDeviceDTO {
		since := d.CreatedAt
		if d.SecretCreatedAt != nil {
			since = *d.SecretCreatedAt
		}
		return dashboardDeviceDTO{
			ID: d.ID, ClientID: d.ClientID(), RotationState: string(d.RotationState),
			SecretCreatedAt:       optTimestamp(d.SecretCreatedAt),
			SecretAgeDays:         float64(now.Sub(since).Round(time.Minute)) / float64(24*time.Hour),
			LastRotationAttemptAt: optTimestamp(d.LastRotationAttemptAt),
			LastSeenAt:            optTimestamp(d.LastSeenAt),
		}
	})
	return out
}
