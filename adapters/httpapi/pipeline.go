package httpapi

import (
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/url"

	"github.com/gofiber/fiber/v2"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The CI pipeline's routes (SPEC §18): firmware by model code, for tokens
// holding the pipeline role (and for nothing else).

// DefaultPipelineRole is Config.PipelineRole's default.
const DefaultPipelineRole = "mdm-pipeline"

// elfFactor is how much larger than FirmwareMaxBytes an ELF may be: it
// carries the debug information the image does not.
const elfFactor = 4

// pipelineRoutes registers the pipeline's routes.
func (s *Server) pipelineRoutes() {
	small := bodyLimit(s.cfg.IoTMaxBytes)
	upload := bodyLimit((1+elfFactor)*s.cfg.FirmwareMaxBytes + multipartOverhead)
	s.app.Post("/api/pipeline/models/:code/firmware", upload, s.requirePipelineRole, s.pipelineUpload)
	s.app.Get("/api/pipeline/models/:code/firmware", small, s.requirePipelineRole, s.pipelineCurrent)
}

// requirePipelineRole authenticates a pipeline: its token must hold the
// pipeline role; admin and viewer tokens without it are refused too.
func (s *Server) requirePipelineRole(c *fiber.Ctx) error {
	if s.pipeline == nil {
		return &httpError{status: fiber.StatusServiceUnavailable, kind: "not-configured", detail: "the pipeline routes are not configured on this server"}
	}
	if s.cfg.AuthDisabled {
		c.SetUserContext(model.WithActor(c.UserContext(), model.Actor{Type: model.ActorAdmin, Name: "(admin auth disabled)"}))
		return s.checkQueryNext(c)
	}
	if err := s.checkAddress(c); err != nil {
		return err
	}
	token, err := bearerToken(c)
	if err != nil {
		return s.authFailure(c, err)
	}
	p, err := s.verify.VerifyAdmin(c.UserContext(), token)
	if err != nil {
		return s.authFailure(c, err)
	}
	c.Locals(localSubject, subjectOf(p))
	c.SetUserContext(model.WithActor(c.UserContext(), model.AdminActor(p)))
	if !p.HasRole(s.cfg.PipelineRole) {
		requestLogger(c, s.log).Info("pipeline caller lacks the role", zap.String("subject", subjectOf(p)))
		return &httpError{status: fiber.StatusForbidden, kind: "forbidden",
			detail: "this needs the realm role " + s.cfg.PipelineRole + " (the admin and viewer roles do not include it)"}
	}
	return s.checkQueryNext(c)
}

func (s *Server) checkQueryNext(c *fiber.Ctx) error {
	if err := s.checkQuery(c); err != nil {
		return err
	}
	return c.Next()
}

// pipelineOnly is the 403 detail for a pipeline token on another route.
func (s *Server) pipelineOnly(need string) string {
	return "a token with the realm role " + s.cfg.PipelineRole + " may only upload and read firmware by model code " +
		"(/api/pipeline/models/{code}/firmware); this needs " + need
}

// pathCode reads the {code} path parameter.
func pathCode(c *fiber.Ctx) (string, error) {
	code, err := url.PathUnescape(c.Params("code"))
	if err != nil || !model.ModelCodePattern.MatchString(code) {
		return "", model.Invalid("code", "must be a device model code (%s)", model.ModelCodePattern)
	}
	return code, nil
}

// pipelineUpload takes the image as the raw body or as the multipart field
// "file", with the optional field "elf"; the answer is the admin upload's.
func (s *Server) pipelineUpload(c *fiber.Ctx) error {
	code, err := pathCode(c)
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
	up := ports.PipelineUpload{Opts: opts}
	ct := c.Get(fiber.HeaderContentType)
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = ""
	}
	switch mt {
	case fiber.MIMEOctetStream:
		up.Image, err = readBody(c, s.cfg.FirmwareMaxBytes)
	case fiber.MIMEMultipartForm:
		up.Image, up.ELF, err = s.imageAndELF(c, params["boundary"])
	default:
		err = unsupportedMediaType("send the image as the body with Content-Type: application/octet-stream, " +
			"or as the field \"file\" (and its ELF as the field \"elf\") of a multipart/form-data body")
	}
	if err != nil {
		return err
	}
	res, err := s.pipeline.UploadFirmwareByCode(c.UserContext(), code, up)
	if err != nil {
		return err
	}
	c.Location("/api/pipeline/models/" + code + "/firmware")
	status := fiber.StatusCreated
	if res.Unchanged {
		status = fiber.StatusOK
	}
	return c.Status(status).JSON(toFirmwareUploadDTO(res))
}

// imageAndELF reads the multipart fields "file" (required) and "elf"
// (optional); other fields are skipped.
func (s *Server) imageAndELF(c *fiber.Ctx, boundary string) (image, elf []byte, err error) {
	if boundary == "" {
		return nil, nil, badRequest("malformed-request", "the multipart/form-data Content-Type has no boundary")
	}
	limits := map[string]int64{"file": s.cfg.FirmwareMaxBytes, "elf": elfFactor * s.cfg.FirmwareMaxBytes}
	total := (1+elfFactor)*s.cfg.FirmwareMaxBytes + multipartOverhead
	body := &countingReader{r: io.LimitReader(bodyReader(c), total+1)}
	mr := multipart.NewReader(body, boundary)
	got := map[string][]byte{}
	for {
		part, err := mr.NextPart()
		switch {
		case errors.Is(err, io.EOF):
			if got["file"] == nil {
				return nil, nil, model.Invalid("file", "the multipart form needs a file field named \"file\"")
			}
			return got["file"], got["elf"], nil
		case err != nil && body.n > total:
			return nil, nil, tooLarge(total)
		case err != nil:
			return nil, nil, badRequest("malformed-request", "the multipart/form-data body is malformed")
		}
		name := part.FormName()
		limit, known := limits[name]
		if !known || got[name] != nil {
			if _, err := io.Copy(io.Discard, part); err != nil {
				return nil, nil, badRequest("malformed-request", "the multipart/form-data body is malformed")
			}
			continue
		}
		data, err := io.ReadAll(io.LimitReader(part, limit+1))
		switch {
		case err != nil && body.n > total:
			return nil, nil, tooLarge(total)
		case err != nil:
			return nil, nil, badRequest("malformed-request", "the multipart/form-data body is malformed")
		case int64(len(data)) > limit:
			return nil, nil, model.Invalid(name, "larger than the limit of %d bytes", limit)
		}
		if data == nil {
			data = []byte{}
		}
		got[name] = data
	}
}

// pipelineCurrent answers the model's released firmware (null while none
// is).
func (s *Server) pipelineCurrent(c *fiber.Ctx) error {
	code, err := pathCode(c)
	if err != nil {
		return err
	}
	m, fw, err := s.pipeline.CurrentFirmwareByCode(c.UserContext(), code)
	if err != nil {
		return err
	}
	out := pipelineFirmwareDTO{ModelCode: m.Code}
	if fw != nil {
		uploaded := fw.UploadedAt
		out.FirmwareVersion, out.SHA256, out.UploadedAt = &fw.Version, &fw.SHA256, optTimestamp(&uploaded)
		out.SecureVersion = &fw.SecureVersion
	}
	return c.JSON(out)
}

// pipelineFirmwareDTO is GET /api/pipeline/models/{code}/firmware.
type pipelineFirmwareDTO struct {
	ModelCode       string  `json:"model_code" oas:"use=modelCode"`
	FirmwareVersion *string `json:"firmware_version" desc:"the released firmware's version; null while none is released"`
	SHA256          *string `json:"sha256" pattern:"^[0-9a-f]{64}$" desc:"the released image's SHA-256; null while none is released"`
	SecureVersion   *uint32 `json:"secure_version" desc:"the released image's secure_version; null while none is released"`
	UploadedAt      *string `json:"uploaded_at" oas:"use=optDateTime"`
}

func init() {
	wireTypes = append(wireTypes, output[pipelineFirmwareDTO]("PipelineFirmware"))
}

var codeParam = obj{
	"name": "code", "in": "path", "required": true,
	"schema": obj{"type": "string", "pattern": model.ModelCodePattern.String()},
}

// pipelineOperations documents the pipeline's routes.
func pipelineOperations() []operation {
	return []operation{
		{method: "POST", path: "/api/pipeline/models/{code}/firmware", id: "pipelineUploadFirmware", tag: "pipeline", auth: "pipeline",
			summary: "CI: upload the model's firmware by the model's code",
			description: "The same upload as POST /api/device-models/{id}/firmware (validation, idempotency, the secure_version rule, " +
				"release or, with release=false, storage only, warnings, audit with the pipeline's client as the actor), for tokens holding the pipeline role. The image is the raw " +
				"body (application/octet-stream) or the multipart/form-data field \"file\"; the field \"elf\" carries the application's " +
				"ELF for core-dump analysis, kept when its SHA-256 is the image's app_elf_sha256 (else 400 naming both, nothing stored).",
			params: []obj{codeParam, forceUploadParam, releaseParam},
			body: obj{
				"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary"}},
				"multipart/form-data": obj{"schema": obj{
					"type": "object", "required": []string{"file"},
					"properties": obj{"file": obj{"type": "string", "format": "binary"}, "elf": obj{"type": "string", "format": "binary"}},
				}},
			},
			responses: obj{
				"201": withLocation(jsonResponse("recorded: released (devices told) or stored, as released says", refTo[firmwareUploadDTO]())),
				"200": jsonResponse("the image changes nothing (the released one already, or stored again): its record", refTo[firmwareUploadDTO]()),
			},
			errorCodes: []int{400, 404, 409, 413, 415}},
		{method: "GET", path: "/api/pipeline/models/{code}/firmware", id: "pipelineCurrentFirmware", tag: "pipeline", auth: "pipeline",
			summary: "CI: the model's released firmware version", params: []obj{codeParam},
			responses:  obj{"200": jsonResponse("the released firmware, or null while none is released", refTo[pipelineFirmwareDTO]())},
			errorCodes: []int{400, 404}},
	}
}

// factoryOperations are the operations of SPEC §18.
func factoryOperations() []operation {
	return append(pipelineOperations(), batchOperations()...)
}

// allOperations is every documented route.
func allOperations() []operation {
	return append(append(operations(), factoryOperations()...), campaignOperations()...)
}
