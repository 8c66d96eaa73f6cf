package httpapi

import (
	"bytes"
	"fmt"
	"net/http"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Core dumps (SPEC §17): POST /iot/coredump takes a device's raw dump; the
// admin routes list, show, download and delete them; PUT
// /api/device-models/{id}/firmware/{sha256}/elf takes an upload's ELF.

var errNoCoredumps = &httpError{status: http.StatusServiceUnavailable, kind: "not-ready", detail: "core dumps are not configured on this server"}

type coredumpFrameDTO struct {
	PC       string  `json:"pc" pattern:"^0x[0-9a-f]{8}$" desc:"the frame's program counter (outer frames: the return address), hex"`
	Function *string `json:"function" desc:"null when the ELF does not name it (ROM code, stripped symbols)"`
	File     *string `json:"file"`
	Line     *int    `json:"line"`
}

type coredumpAnalysisDTO struct {
	CrashedTask *string            `json:"crashed_task" desc:"the FreeRTOS task that crashed; null when the dump does not say"`
	PanicReason *string            `json:"panic_reason" desc:"ESP-IDF's panic message; null when the dump has none"`
	CrashFrame  *coredumpFrameDTO  `json:"crash_frame" desc:"the first frame outside ESP-IDF's abort and panic path: where a person would look first"`
	Frames      []coredumpFrameDTO `json:"frames" desc:"the crashed task's backtrace, innermost first"`
	Notes       []string           `json:"notes" desc:"what limited the analysis, one sentence each"`
	Text        string             `json:"text" desc:"the analysis tool's whole output"`
}

type coredumpDTO struct {
	ID              int64                `json:"id"`
	DeviceID        int64                `json:"device_id"`
	ClientID        string               `json:"client_id"`
	DeviceModelID   int64                `json:"device_model_id"`
	ReceivedAt      string               `json:"received_at" oas:"use=dateTime"`
	Size            int64                `json:"size"`
	SHA256          string               `json:"sha256" pattern:"^[0-9a-f]{64}$"`
	Chip            *string              `json:"chip" desc:"the chip the dump says it came from; null for bytes that are not a core dump"`
	Format          *string              `json:"format" oas:"enum=elf|binary" desc:"ESP-IDF's dump layout; null for bytes that are not a core dump"`
	ELFSHA256Prefix *string              `json:"elf_sha256_prefix" desc:"the start of the SHA-256 of the application ELF the dump names (CONFIG_APP_RETRIEVE_LEN_ELF_SHA characters); null when it names none"`
	Status          string               `json:"status" oas:"enum=pending|analysed|no_elf|failed"`
	Reason          *string              `json:"reason" desc:"why the status is what it is: failed, why; no_elf, which ELF is missing; pending, what holds the analysis up"`
	ELFSHA256       *string              `json:"elf_sha256" desc:"the ELF the dump was analysed against"`
	FirmwareVersion *string              `json:"firmware_version" desc:"that ELF's firmware version"`
	AnalysedAt      *string              `json:"analysed_at" oas:"use=optDateTime"`
	Analysis        *coredumpAnalysisDTO `json:"analysis" desc:"set when status is analysed"`
}

type coredumpListDTO struct {
	Coredumps  []coredumpDTO `json:"coredumps"`
	NextCursor *string       `json:"next_cursor" oas:"use=nextCursor"`
}

type crashGroupDTO struct {
	Function        *string `json:"function" desc:"the crash frame's function (the first outside ESP-IDF's abort and panic path); null when the analysis found none"`
	FirmwareVersion string  `json:"firmware_version"`
	Count           int     `json:"count"`
	LastReceivedAt  string  `json:"last_received_at" oas:"use=dateTime"`
	LastCoredumpID  int64   `json:"last_coredump_id" desc:"the group's newest dump"`
}

type crashListDTO struct {
	Days    int             `json:"days"`
	Crashes []crashGroupDTO `json:"crashes" desc:"the largest group first"`
}

type coredumpCreatedDTO struct {
	ID int64 `json:"id"`
}

func toFrameDTO(f model.CoredumpFrame) coredumpFrameDTO {
	out := coredumpFrameDTO{PC: fmt.Sprintf("0x%08x", f.PC), Function: optString(f.Function), File: optString(f.File)}
	if f.Line > 0 {
		line := f.Line
		out.Line = &line
	}
	return out
}

func toCoredumpDTO(c model.Coredump) coredumpDTO {
	out := coredumpDTO{
		ID: c.ID, DeviceID: c.DeviceID, ClientID: c.ClientID, DeviceModelID: c.DeviceModelID,
		ReceivedAt: timestamp(c.ReceivedAt), Size: c.Size, SHA256: c.SHA256,
		Chip: optString(c.Info.Chip), Format: optString(string(c.Info.Format)),
		ELFSHA256Prefix: optString(c.Info.ELFSHA256Prefix),
		Status:          string(c.Status), Reason: optString(c.Reason),
		ELFSHA256: optString(c.ELFSHA256), FirmwareVersion: optString(c.FirmwareVersion),
		AnalysedAt: optTimestamp(c.AnalysedAt),
	}
	if a := c.Analysis; a != nil {
		d := &coredumpAnalysisDTO{
			CrashedTask: optString(a.CrashedTask), PanicReason: optString(a.PanicReason),
			Frames: listOf(a.Frames, toFrameDTO), Notes: listOf(a.Notes, func(n string) string { return n }), Text: a.Text,
		}
		if f, ok := a.CrashFrame(); ok {
			cf := toFrameDTO(f)
			d.CrashFrame = &cf
		}
		out.Analysis = d
	}
	return out
}

func (s *Server) modelCrashes(c *fiber.Ctx) error {
	if s.coredumps == nil {
		return errNoCoredumps
	}
	id, err := pathID(c)
	if err != nil {
		return err
	}
	days := 30
	if v := c.Query("days"); v != "" {
		n, ok := intText(v)
		if !ok || n < 1 || n > 366 {
			return model.Invalid("days", "must be an integer from 1 to 366")
		}
		days = int(n)
	}
	groups, err := s.coredumps.ModelCrashes(c.UserContext(), id, days)
	if err != nil {
		return err
	}
	return c.JSON(crashListDTO{Days: days, Crashes: listOf(groups, func(g model.CrashGroup) crashGroupDTO {
		return crashGroupDTO{Function: optString(g.Function), FirmwareVersion: g.FirmwareVersion,
			Count: g.Count, LastReceivedAt: timestamp(g.LastAt), LastCoredumpID: g.LastID}
	})})
}

func (s *Server) iotCoredump(c *fiber.Ctx) error {
	if s.coredumps == nil {
		return errNoCoredumps
	}
	if err := requireIdentityEncoding(c); err != nil {
		return err
	}
	data, err := readBody(c, s.cfg.CoredumpMaxBytes)
	if err != nil {
		return err
	}
	d, _ := deviceOf(c)
	cd, err := s.coredumps.UploadCoredump(c.UserContext(), d, bytes.NewReader(data))
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(coredumpCreatedDTO{ID: cd.ID})
}

func (s *Server) listCoredumps(c *fiber.Ctx) error {
	if s.coredumps == nil {
		return errNoCoredumps
	}
	id, err := pathID(c)
	if err != nil {
		return err
	}
	limit, before, err := pageQuery(c)
	if err != nil {
		return err
	}
	page, err := s.coredumps.ListCoredumps(c.UserContext(), id, limit, before)
	if err != nil {
		return err
	}
	return c.JSON(coredumpListDTO{Coredumps: listOf(page.Coredumps, toCoredumpDTO), NextCursor: pageCursor(page.NextBeforeID)})
}

func (s *Server) getCoredump(c *fiber.Ctx) error {
	if s.coredumps == nil {
		return errNoCoredumps
	}
	return respondTo(c, pathID, s.coredumps.GetCoredump, toCoredumpDTO)
}

func (s *Server) downloadCoredump(c *fiber.Ctx) error {
	if s.coredumps == nil {
		return errNoCoredumps
	}
	id, err := pathID(c)
	if err != nil {
		return err
	}
	cd, blob, err := s.coredumps.OpenCoredump(c.UserContext(), id)
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderETag, `"`+cd.SHA256+`"`)
	c.Set(fiber.HeaderContentType, fiber.MIMEOctetStream)
	c.Set(fiber.HeaderContentDisposition, fmt.Sprintf(`attachment; filename="%s-%d.core"`, cd.ClientID, cd.ID))
	c.Set(fiber.HeaderCacheControl, "private, max-age=0")
	// fasthttp closes the stream once the response is written.
	c.Context().SetBodyStream(blob, int(blob.Size()))
	return nil
}

func (s *Server) deleteCoredump(c *fiber.Ctx) error {
	if s.coredumps == nil {
		return errNoCoredumps
	}
	return remove(c, s.coredumps.DeleteCoredump)
}

func (s *Server) uploadELF(c *fiber.Ctx) error {
	if s.coredumps == nil {
		return errNoCoredumps
	}
	id, err := pathID(c)
	if err != nil {
		return err
	}
	sum := c.Params("sha256")
	if !model.SHA256Pattern.MatchString(sum) {
		return model.Invalid("sha256", "must be the image's SHA-256 as 64 lower-case hex digits")
	}
	if err := requireIdentityEncoding(c); err != nil {
		return err
	}
	size := ports.UnknownSize
	if n := c.Request().Header.ContentLength(); n >= 0 {
		size = int64(n)
	}
	if size > s.cfg.ELFMaxBytes {
		return tooLarge(s.cfg.ELFMaxBytes)
	}
	// Streamed to the blob store, which stops at ELFMaxBytes (a 413) and
	// keeps nothing of a refused ELF.
	f, err := s.coredumps.UploadELF(c.UserContext(), id, sum, bodyReader(c), size)
	if err != nil {
		return err
	}
	return c.JSON(toFirmwareDTO(f, s.isReleased(c, f)))
}

// isReleased reports whether f is its model's released firmware, for an
// answer that shows one upload (false when the history cannot be read: the
// call itself succeeded).
func (s *Server) isReleased(c *fiber.Ctx, f model.Firmware) bool {
	hist, err := s.firmware.ListFirmware(c.UserContext(), f.DeviceModelID)
	if err != nil {
		return false
	}
	rel, ok := model.ReleasedIn(hist)
	return ok && rel.ID == f.ID
}
