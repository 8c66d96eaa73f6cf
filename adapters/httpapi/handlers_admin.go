package httpapi

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Admin API handlers (SPEC §2).

const (
	defaultNVSSize = 0x6000
	minNVSSize     = 0x3000
	maxNVSSize     = 0x100000
	nvsPageSize    = 0x1000
)

func (s *Server) listModels(c *fiber.Ctx) error {
	return respond(c, s.models.ListModels, func(ms []model.DeviceModel) deviceModelListDTO {
		return deviceModelListDTO{DeviceModels: listOf(ms, toModelDTO)}
	})
}

func (s *Server) createModel(c *fiber.Ctx) error {
	return create(s, c, fromCreateModelDTO, s.models.CreateModel, toModelDTO, func(m model.DeviceModel) string {
		return "/api/device-models/" + strconv.FormatInt(m.ID, 10)
	})
}

func (s *Server) getModel(c *fiber.Ctx) error {
	return respondTo(c, pathID, s.models.GetModel, toModelDTO)
}

func (s *Server) updateModel(c *fiber.Ctx) error {
	return update(s, c, func(in updateModelDTO) (ports.ModelUpdate, error) {
		upd, err := fromUpdateModelDTO(in)
		if err == nil {
			upd.Force, err = forceQuery(c)
		}
		return upd, err
	}, s.models.UpdateModel, toModelDTO)
}

func (s *Server) deleteModel(c *fiber.Ctx) error {
	return remove(c, s.models.DeleteModel)
}

// uploadFirmware accepts the image as the raw body
// (application/octet-stream) or as the multipart/form-data field "file".
func (s *Server) uploadFirmware(c *fiber.Ctx) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	if err := requireIdentityEncoding(c); err != nil {
		return err
	}
	opts, err := uploadOptions(c)
	if err != nil {
		return err
	}
	data, elf, err := s.firmwareBody(c)
	if err != nil {
		return err
	}
	var up model.FirmwareUpload
	if elf != nil {
		if s.coredumps == nil {
			return errNoCoredumps
		}
		up, err = s.coredumps.UploadFirmwareWithELF(c.UserContext(), id, data, opts, elf)
	} else {
		up, err = s.firmware.UploadFirmware(c.UserContext(), id, data, opts)
	}
	if err != nil {
		return err
	}
	c.Location(fmt.Sprintf("/api/device-models/%d/firmware", id))
	status := fiber.StatusCreated
	if up.Unchanged {
		status = fiber.StatusOK
	}
	return c.Status(status).JSON(toFirmwareUploadDTO(up))
}

// forceQuery reads the optional force=true|false query parameter.
func forceQuery(c *fiber.Ctx) (bool, error) {
	return boolQuery(c, "force", false)
}

// boolQuery reads an optional name=true|false query parameter.
func boolQuery(c *fiber.Ctx, name string, def bool) (bool, error) {
	switch c.Query(name) {
	case "":
		return def, nil
	case "false":
		return false, nil
	case "true":
		return true, nil
	}
	return false, model.Invalid(name, "must be true or false")
}

// uploadOptions reads a firmware upload's force= and release= (default
// true; false only stores the upload).
func uploadOptions(c *fiber.Ctx) (model.UploadOptions, error) {
	force, err := forceQuery(c)
	if err != nil {
		return model.UploadOptions{}, err
	}
	release, err := boolQuery(c, "release", true)
	if err != nil {
		return model.UploadOptions{}, err
	}
	return model.UploadOptions{Force: force, Store: !release}, nil
}

// releaseFirmware releases the model's upload {sha256}: 200 with it, also
// when it was released already (nothing changed).
func (s *Server) releaseFirmware(c *fiber.Ctx) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	sum := c.Params("sha256")
	if !model.SHA256Pattern.MatchString(sum) {
		return model.Invalid("sha256", "must be the upload's SHA-256 as 64 lower-case hex digits")
	}
	f, _, err := s.firmware.ReleaseFirmware(c.UserContext(), id, sum)
	if err != nil {
		return err
	}
	return c.JSON(toFirmwareDTO(f, true))
}

// firmwareBody is an upload's image and, in a multipart form, the ELF that
// follows it (nil when none).
func (s *Server) firmwareBody(c *fiber.Ctx) ([]byte, io.Reader, error) {
	limit := s.cfg.FirmwareMaxBytes
	ct := c.Get(fiber.HeaderContentType)
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = ""
	}
	switch mt {
	case fiber.MIMEOctetStream:
		data, err := readBody(c, limit)
		return data, nil, err
	case fiber.MIMEMultipartForm:
		return multipartFirmware(c, ct, limit, s.cfg.ELFMaxBytes)
	}
	return nil, nil, unsupportedMediaType("send the image as the body with Content-Type: application/octet-stream, " +
		"or as the field \"file\" of a multipart/form-data body (with its ELF as the field \"elf\" after it)")
}

func (s *Server) downloadFirmware(c *fiber.Ctx) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	m, err := s.models.GetModel(c.UserContext(), id)
	if err != nil {
		return err
	}
	fw, blob, err := s.firmware.OpenFirmware(c.UserContext(), id)
	if err != nil {
		return err
	}
	return serveFirmware(c, m.Code, fw, blob)
}

func (s *Server) listFirmware(c *fiber.Ctx) error {
	return respondTo(c, pathID, s.firmware.ListFirmware, toFirmwareListDTO)
}

func (s *Server) listDevices(c *fiber.Ctx) error {
	return respondTo(c, deviceFilter, s.deviceAdmin.ListDevices, func(page ports.DevicePage) deviceListDTO {
		return deviceListDTO{Devices: listOf(page.Devices, toDeviceDTO), NextCursor: pageCursor(page.NextAfterID)}
	})
}

// pageQuery parses the paging parameters every list route shares: limit
// (1..ports.MaxPageSize, default ports.DefaultPageSize) and cursor (the next_cursor of
// the previous page; none: from the start).
func pageQuery(c *fiber.Ctx) (limit int, after int64, err error) {
	limit = ports.DefaultPageSize
	if v := c.Query("limit"); v != "" {
		n, ok := intText(v)
		if !ok || n < 1 || n > ports.MaxPageSize {
			return 0, 0, model.Invalid("limit", "must be an integer from 1 to %d", ports.MaxPageSize)
		}
		limit = int(n)
	}
	if v := c.Query("cursor"); v != "" {
		if after, err = decodeCursor(v); err != nil {
			return 0, 0, err
		}
	}
	return limit, after, nil
}

// deviceFilter parses the device list query: limit, cursor, model_id,
// rotation_state, active, firmware_version (the reported one), seen_before,
// tag (repeatable: every one). Unknown parameters are ignored; invalid values
// of known ones are a 400.
func deviceFilter(c *fiber.Ctx) (ports.DeviceFilter, error) {
	f := ports.DeviceFilter{Limit: ports.DefaultPageSize}
	var err error
	if f.Limit, f.AfterID, err = pageQuery(c); err != nil {
		return f, err
	}
	if v := c.Query("model_id"); v != "" {
		n, ok := intText(v)
		if !ok || n <= 0 {
			return f, model.Invalid("model_id", "must be a positive integer")
		}
		f.ModelID = &n
	}
	if v := c.Query("rotation_state"); v != "" {
		st := model.RotationState(strings.ToUpper(v))
		if !st.Valid() {
			return f, model.Invalid("rotation_state", "must be one of OK, QUEUED, PENDING, TIMEOUT")
		}
		f.RotationState = &st
	}
	if v := c.Query("active"); v != "" {
		var b bool
		switch strings.ToLower(v) {
		case "true", "1":
			b = true
		case "false", "0":
			b = false
		default:
			return f, model.Invalid("active", "must be true or false")
		}
		f.Active = &b
	}
	if v := c.Query("firmware_version"); v != "" {
		if err := model.CheckReportedVersion("firmware_version", v); err != nil {
			return f, err
		}
		f.FirmwareVersion = &v
	}
	if v := c.Query("seen_before"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return f, model.Invalid("seen_before", "must be an RFC 3339 time such as 2025-06-01T00:00:00Z")
		}
		f.SeenBefore = &t
	}
	for _, v := range c.Context().QueryArgs().PeekMulti("tag") {
		f.Tags = append(f.Tags, string(v)) // copied: fasthttp reuses the bytes
	}
	if len(f.Tags) > 0 {
		if _, err := model.CheckTags("tag", f.Tags); err != nil {
			return f, err
		}
	}
	return f, nil
}

func (s *Server) createDevice(c *fiber.Ctx) error {
	return create(s, c, fromCreateDeviceDTO, s.deviceAdmin.CreateDevice, toDeviceDTO, func(d model.Device) string {
		return "/api/devices/" + strconv.FormatInt(d.ID, 10)
	})
}

func (s *Server) getDevice(c *fiber.Ctx) error {
	return respondTo(c, pathID, s.deviceAdmin.GetDevice, toDeviceDTO)
}

func (s *Server) updateDevice(c *fiber.Ctx) error {
	return update(s, c, fromUpdateDeviceDTO, s.deviceAdmin.UpdateDevice, toDeviceDTO)
}

func (s *Server) deleteDevice(c *fiber.Ctx) error {
	return remove(c, s.deviceAdmin.DeleteDevice)
}

// provisioning returns the device's NVS partition image (default) or, with
// ?format=json, its plain fields. Both carry the client secret: no-store.
func (s *Server) provisioning(c *fiber.Ctx) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	format := c.Query("format")
	switch format {
	case "", "nvs", "json", "bin":
	default:
		return model.Invalid("format", "must be nvs, bin or json")
	}
	// size is checked with every format; format=json has no use for it.
	size, err := nvsSize(c.Query("size"))
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	if format == "json" {
		p, err := s.provisioner.Provisioning(c.UserContext(), id)
		if err != nil {
			return err
		}
		return c.JSON(toProvisioningDTO(p))
	}
	img, err := s.provisioner.ProvisioningNVS(c.UserContext(), id, size)
	if err != nil {
		return err
	}
	if format == "bin" {
		// The partition itself, ready for esptool: an error is a problem
		// document with a 4xx/5xx status, never a short file.
		c.Set(fiber.HeaderContentType, fiber.MIMEOctetStream)
		c.Set(fiber.HeaderContentDisposition, fmt.Sprintf(`attachment; filename="device-%d-nvs.bin"`, id))
		return c.Send(img)
	}
	return c.JSON(provisioningNVSDTO{Partition: "nvs", Size: size, Data: img})
}

// nvsSizeRE is what a hexadecimal ?size= looks like; a decimal one is an
// integer as JSON writes numbers (intText: 24576, 24576.0).
var nvsSizeRE = regexp.MustCompile(`^0[xX][0-9a-fA-F]{1,8}$`)

// nvsSize parses ?size=: hexadecimal with 0x, or decimal.
func nvsSize(v string) (int, error) {
	if v == "" {
		return defaultNVSSize, nil
	}
	var (
		n   int64
		err = errors.New("malformed")
	)
	if nvsSizeRE.MatchString(v) {
		n, err = strconv.ParseInt(strings.ToLower(v)[2:], 16, 64)
	} else if d, ok := intText(v); ok {
		n, err = d, nil
	}
	if err != nil || n < minNVSSize || n > maxNVSSize || n%nvsPageSize != 0 {
		return 0, model.Invalid("size", "must be a multiple of 0x%x from 0x%x to 0x%x (hex with 0x, or decimal)",
			nvsPageSize, minNVSSize, maxNVSSize)
	}
	return int(n), nil
}

func (s *Server) identityStatus(c *fiber.Ctx) error {
	return respondTo(c, pathID, s.identity.IdentityStatus, toIdentityDTO)
}

func (s *Server) syncIdentity(c *fiber.Ctx) error {
	return respondTo(c, pathID, s.identity.SyncIdentity, toIdentityDTO)
}
