package httpapi

import (
	"archive/zip"
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// POST /api/devices/batch (SPEC §18): devices by the hundred, answered as a
// ZIP streamed while they are made.

// batchBodyFactor times JSONMaxBytes bounds a batch request's body: a thousand devices with
// configs of a few hundred bytes each.
const batchBodyFactor = 4

func (s *Server) batchRoutes() {
	limit := bodyLimit(batchBodyFactor * s.cfg.JSONMaxBytes)
	s.app.Post("/api/devices/batch", limit, s.requireAdminRole(true), s.createDeviceBatch)
}

// batchDTO is the POST /api/devices/batch body.
type batchDTO struct {
	DeviceModelID json.RawMessage  `json:"device_model_id" oas:"required,type=integer,format=int64,minimum=1" desc:"an existing device model; one that does not exist is a 400"`
	Count         json.RawMessage  `json:"count" oas:"type=integer,minimum=1,maximum=1000" desc:"how many devices to make, each with config; give count or devices"`
	Config        json.RawMessage  `json:"config" oas:"ref=Config" desc:"with count: every device's config, checked against the model's config_schema (default {})"`
	Devices       []batchDeviceDTO `json:"devices" desc:"the devices to make (1 to 1000), one config each; give count or devices"`
	Size          json.RawMessage  `json:"size" oas:"type=integer|string" desc:"the NVS partition size, as ?size= of GET /api/devices/{id}/provisioning takes it: a multiple of 0x1000 from 0x3000 to 0x100000, an integer or a string (hex with 0x, or decimal); default 0x6000"`
}

type batchDeviceDTO struct {
	Config json.RawMessage `json:"config" oas:"required,ref=Config" desc:"checked against the model's config_schema"`
	Tags   []string        `json:"tags" oas:"use=tags"`
}

func init() {
	wireTypes = append(wireTypes, input[batchDTO]("NewDeviceBatch"))
}

// fromBatchDTO checks the body's shape; the core checks the rest.
func fromBatchDTO(in batchDTO) (nb ports.NewDeviceBatch, countMode bool, err error) {
	if in.DeviceModelID == nil || isJSONNull(in.DeviceModelID) {
		return nb, false, model.Invalid("device_model_id", "required")
	}
	id, ok := jsonID(in.DeviceModelID)
	if !ok {
		return nb, false, model.Invalid("device_model_id", "must be a device model id (an integer from 1)")
	}
	nb.DeviceModelID = id
	hasCount := in.Count != nil && !isJSONNull(in.Count)
	switch {
	case hasCount && in.Devices != nil:
		return nb, false, model.Invalid("count", "give count or devices, not both")
	case hasCount:
		n, ok := intText(string(in.Count))
		if !ok || n < ports.MinBatchDevices || n > ports.MaxBatchDevices {
			return nb, false, model.Invalid("count", "must be an integer from %d to %d", ports.MinBatchDevices, ports.MaxBatchDevices)
		}
		config := json.RawMessage(`{}`)
		if in.Config != nil && !isJSONNull(in.Config) {
			config = in.Config
		}
		nb.Devices = make([]ports.BatchDevice, n)
		for i := range nb.Devices {
			nb.Devices[i].Config = config
		}
		countMode = true
	case in.Devices != nil:
		if in.Config != nil {
			return nb, false, model.Invalid("config", "with devices, each device has its own config")
		}
		if len(in.Devices) < ports.MinBatchDevices || len(in.Devices) > ports.MaxBatchDevices {
			return nb, false, model.Invalid("devices", "must hold from %d to %d devices", ports.MinBatchDevices, ports.MaxBatchDevices)
		}
		nb.Devices = make([]ports.BatchDevice, len(in.Devices))
		for i, d := range in.Devices {
			if d.Config == nil || isJSONNull(d.Config) {
				return nb, false, model.Invalid(fmt.Sprintf("devices[%d].config", i), "required: a JSON object")
			}
			nb.Devices[i] = ports.BatchDevice{Config: d.Config, Tags: d.Tags}
		}
	default:
		return nb, false, model.Invalid("count", "give count (1 to 1000) or devices")
	}
	size := ""
	if in.Size != nil && !isJSONNull(in.Size) {
		size = string(in.Size)
		if unq, err := strconv.Unquote(size); err == nil {
			size = unq
		}
	}
	if nb.Size, err = nvsSize(size); err != nil {
		return nb, false, err
	}
	return nb, countMode, nil
}

// createDeviceBatch checks the batch (a 400 before anything is made), then
// answers 200 with a ZIP written while the devices are made: one
// <key>.bin per device, then devices.csv, and errors.csv when some failed.
func (s *Server) createDeviceBatch(c *fiber.Ctx) error {
	if s.batch == nil {
		return &httpError{status: fiber.StatusServiceUnavailable, kind: "not-configured", detail: "batch provisioning is not configured on this server"}
	}
	var in batchDTO
	if err := s.decodeJSON(c, &in); err != nil {
		return err
	}
	nb, countMode, err := fromBatchDTO(in)
	if err != nil {
		return err
	}
	if err := s.batch.CheckDeviceBatch(c.UserContext(), nb); err != nil {
		return countField(err, countMode)
	}
	// The ZIP is written after the handler returns: the batch gets a
	// context of its own (the request's values: actor, request id),
	// cancelled when the client goes away.
	ctx, cancel := context.WithCancel(context.WithoutCancel(c.UserContext()))
	log := requestLogger(c, s.log)
	reqID, _ := c.Locals(localReqID).(string)
	c.Set(fiber.HeaderContentType, "application/zip")
	c.Set(fiber.HeaderContentDisposition, fmt.Sprintf(`attachment; filename="devices-%s.zip"`, time.Now().UTC().Format("20060102T150405Z")))
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Status(fiber.StatusOK)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		s.writeBatch(ctx, cancel, w, nb, log, reqID)
	})
	return nil
}

// countField names count's config as "config" (not devices[0].config).
func countField(err error, countMode bool) error {
	var ve *model.ValidationError
	if countMode && errors.As(err, &ve) && strings.HasPrefix(ve.Field, "devices[0].") {
		return model.Invalid(strings.TrimPrefix(ve.Field, "devices[0]."), "%s", ve.Reason)
	}
	return err
}

type batchRow struct {
	index int
	rec   []string
}

// writeBatch makes the devices and writes the ZIP. A failed write (the
// client went away) cancels the devices not started; those made stand
// (each is whole) and are in the audit log.
func (s *Server) writeBatch(ctx context.Context, cancel context.CancelFunc, w *bufio.Writer, nb ports.NewDeviceBatch,
	log *zap.Logger, reqID string) {
	zw := zip.NewWriter(w)
	var made, failed []batchRow
	broken := false
	err := s.batch.CreateDeviceBatch(ctx, nb, func(r ports.BatchResult) {
		if r.Err != nil {
			p, unexpected := problemFor(r.Err)
			lvl := log.Warn
			if !unexpected {
				lvl = log.Info
			}
			if broken && errors.Is(r.Err, context.Canceled) {
				lvl = log.Debug // not started (or cut short) because the client went away: counted below
			}
			lvl("batch device failed", zap.Int("index", r.Index), zap.Int("status", p.Status), zap.Error(r.Err))
			detail := p.Detail
			if p.Field != "" {
				detail = p.Field + ": " + detail
			}
			failed = append(failed, batchRow{r.Index, []string{strconv.Itoa(r.Index), strconv.Itoa(p.Status), detail}})
			return
		}
		name := r.Device.Key + ".bin"
		made = append(made, batchRow{r.Index, []string{strconv.FormatInt(r.Device.ID, 10), r.Device.Key, r.Device.ClientID(), name}})
		if broken {
			return
		}
		if err := writeZipFile(zw, name, r.NVS); err != nil || w.Flush() != nil {
			broken = true
			cancel()
		}
	})
	if err != nil { // the model changed since the check
		p, _ := problemFor(err)
		failed = append(failed, batchRow{-1, []string{"", strconv.Itoa(p.Status), p.Detail}})
	}
	log.Info("device batch", zap.Int("requested", len(nb.Devices)), zap.Int("created", len(made)), zap.Int("failed", len(failed)),
		zap.Bool("client_gone", broken))
	if broken {
		return
	}
	byIndex := func(a, b batchRow) int { return a.index - b.index }
	slices.SortFunc(made, byIndex)
	slices.SortFunc(failed, byIndex)
	if err := writeCSV(zw, "devices.csv", []string{"id", "key", "client_id", "nvs_file"}, made); err != nil {
		return
	}
	if len(failed) > 0 {
		hdr := []string{"index", "status", "error"}
		if reqID != "" {
			for i := range failed {
				failed[i].rec[2] += " (request " + reqID + ")"
			}
		}
		if err := writeCSV(zw, "errors.csv", hdr, failed); err != nil {
			return
		}
	}
	if zw.Close() == nil {
		_ = w.Flush()
	}
}

func writeZipFile(zw *zip.Writer, name string, data []byte) error {
	f, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate, Modified: time.Now().UTC()})
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return err
}

func writeCSV(zw *zip.Writer, name string, header []string, rows []batchRow) error {
	f, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate, Modified: time.Now().UTC()})
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	_ = cw.Write(header)
	for _, r := range rows {
		_ = cw.Write(r.rec)
	}
	cw.Flush()
	return cw.Error()
}

// batchOperations documents POST /api/devices/batch.
func batchOperations() []operation {
	return []operation{
		{method: "POST", path: "/api/devices/batch", id: "createDeviceBatch", tag: "devices", auth: "write",
			summary: "Create devices by the hundred, answered as a ZIP of their NVS partitions",
			description: "count devices with one config, or one per entry of devices. The whole batch is checked before anything is " +
				"made (400: a count out of 1..1000, a model that does not exist, a config the model's config_schema refuses, a size out " +
				"of range or too small). Then the devices are made, each all or nothing, with at most KEYCLOAK_MAX_CONCURRENCY " +
				"Keycloak requests in flight, and " +
				"the answer (200, application/zip, streamed while they are made) holds one NVS partition <key>.bin per device made, " +
				"devices.csv (id,key,client_id,nvs_file, in request order) and, when some failed, errors.csv (index,status,error): " +
				"those made stand. Each device is audited as made and as its partition handed out.",
			body: refTo[batchDTO](),
			responses: obj{"200": obj{"description": "the ZIP, written while the devices are made",
				"headers": obj{"Content-Disposition": obj{"schema": obj{"type": "string"}, "description": `attachment; filename="devices-<time>.zip"`}},
				"content": obj{"application/zip": obj{"schema": obj{"type": "string", "format": "binary"}}}}},
			errorCodes: []int{400, 413, 415, 502}},
	}
}
