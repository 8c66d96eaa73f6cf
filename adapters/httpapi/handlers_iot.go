package httpapi

import (
	"errors"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
)

// Device API handlers (SPEC §3). requireDevice has put the authenticated
// device and its claims into the locals.

func deviceOf(c *fiber.Ctx) (model.Device, model.DeviceClaims) {
	d, _ := c.Locals(localDevice).(model.Device)
	cl, _ := c.Locals(localClaims).(model.DeviceClaims)
	return d, cl
}

func (s *Server) iotConfig(c *fiber.Ctx) error {
	d, claims := deviceOf(c)
	cfg, err := s.devices.DeviceConfig(c.UserContext(), d, claims)
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(rawOrNull(cfg))
}

func (s *Server) iotFirmware(c *fiber.Ctx) error {
	d, _ := deviceOf(c)
	fw, blob, err := s.devices.DeviceFirmware(c.UserContext(), d)
	if err != nil {
		return err
	}
	return serveFirmware(c, d.ModelCode, fw, blob)
}

func (s *Server) iotFirmwareVersion(c *fiber.Ctx) error {
	d, _ := deviceOf(c)
	var out firmwareVersionDTO
	fw, err := s.devices.OfferedFirmware(c.UserContext(), d)
	switch {
	case errors.Is(err, model.ErrNotFound):
	case err != nil:
		return err
	default:
		out.FirmwareVersion, out.SHA256 = &fw.Version, &fw.SHA256
	}
	c.Set(fiber.HeaderCacheControl, "no-cache")
	return c.JSON(out)
}
