package httpapi

import (
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"strings"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The OpenAPI 3.1 description of every route, built in Go so that it is
// checked by the compiler and, by TestOpenAPIMatchesRoutes, against the
// routes the app registers. The schemas of request and response bodies
// are derived from the DTO types (wireTypes, openapi_schema.go), and the
// operations name them by type (refTo); routes, parameters, headers and
// the arbitrary JSON of configs and config schemas are written here.

type obj = map[string]any

func ref(name string) obj { return obj{"$ref": "#/components/schemas/" + name} }

func respRef(name string) obj { return obj{"$ref": "#/components/responses/" + name} }

func jsonContent(schema obj) obj {
	return obj{"application/json": obj{"schema": schema}}
}

func jsonResponse(desc string, schema obj) obj {
	return obj{"description": desc, "content": jsonContent(schema)}
}

var (
	// cursorSchema is the form of next_cursor values (see encodeCursor).
	cursorSchema = obj{"type": "string", "pattern": cursorPattern}
	// nvsSizeSchema is ?size= exactly: a multiple of 0x1000 from 0x3000 to
	// 0x100000, in decimal or in hex with 0x.
	nvsSizeSchema = obj{
		"anyOf": []obj{
			{"type": "integer", "minimum": 0x3000, "maximum": 0x100000, "multipleOf": 0x1000},
			{"type": "string", "pattern": "^0[xX](0{0,4}[3-9a-fA-F]000|0{0,3}[1-9a-fA-F][0-9a-fA-F]000|0{0,2}100000)$"},
		},
		"default": "0x6000",
	}
	idParam = obj{
		"name": "id", "in": "path", "required": true,
		"schema": obj{"type": "integer", "format": "int64", "minimum": 1},
	}
	// noNUL is a string the database can store: PostgreSQL's text and
	// jsonb hold no U+0000.
	noNUL = obj{"type": "string", "pattern": noNULPattern}
	// nameSchema is a device model's name: 1 to 255 characters, not blank
	// (the server trims white space as Go's unicode.IsSpace defines it:
	// TestNamePatternIsExact), no U+0000.
	nameSchema = obj{"type": "string", "minLength": 1, "maxLength": 255, "pattern": namePattern,
		"description": "1 to 255 characters, not only white space, no U+0000"}
)

// noNULPattern matches a string without U+0000.
const noNULPattern = `^[^\u0000]*$`

// spaceClass lists the characters Go's unicode.IsSpace reports (the
// server's strings.TrimSpace), as a character class body in the syntax
// ECMA-262, Python and Rust regular expressions share.
const spaceClass = `\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000`

// namePattern matches a non-blank string without U+0000.
const namePattern = `^[^\u0000]*[^\u0000` + spaceClass + `][^\u0000]*$`

// operation is one documented route.
type operation struct {
	method, path string // path in OpenAPI form: /api/devices/{id}
	id, tag      string
	summary      string
	description  string
	// auth: "read", "write" (admin API), "device", or "" (public).
	auth       string
	params     []obj
	body       obj
	responses  obj
	errorCodes []int
}

// errorResponseNames maps each error status to its components/responses
// entry.
var errorResponseNames = map[int]string{
	http.StatusBadRequest:                   "BadRequest",
	http.StatusUnauthorized:                 "Unauthorized",
	http.StatusForbidden:                    "Forbidden",
	http.StatusNotFound:                     "NotFound",
	http.StatusConflict:                     "Conflict",
	http.StatusRequestEntityTooLarge:        "TooLarge",
	http.StatusUnsupportedMediaType:         "UnsupportedMediaType",
	http.StatusRequestedRangeNotSatisfiable: "RangeNotSatisfiable",
	http.StatusTooManyRequests:              "TooManyRequests",
	http.StatusInternalServerError:          "InternalError",
	http.StatusBadGateway:                   "BadGateway",
	http.StatusServiceUnavailable:           "NotReady",
	http.StatusGatewayTimeout:               "Timeout",
}

func firmwareDownload(summary string) obj {
	return obj{
		"200": obj{
			"description": summary,
			"headers": obj{
				"ETag":                obj{"description": "the quoted SHA-256 of the file", "schema": obj{"type": "string"}},
				"Accept-Ranges":       obj{"schema": obj{"type": "string", "const": "bytes"}},
				"Content-Disposition": obj{"schema": obj{"type": "string"}, "description": `attachment; filename="<model code>-<version>.bin"`},
			},
			"content": obj{"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary"}}},
		},
		"206": obj{
			"description": "the requested byte range (single range only; several ranges get the whole file)",
			"headers":     obj{"Content-Range": obj{"schema": obj{"type": "string"}}},
			"content":     obj{"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary"}}},
		},
		"304": obj{"description": "If-None-Match matched the current ETag"},
	}
}

var (
	forceUploadParam = obj{"name": "force", "in": "query", "schema": obj{"type": "boolean", "default": false},
		"description": "accept an image whose secure_version is lower than the released firmware's"}
	releaseParam = obj{"name": "release", "in": "query", "schema": obj{"type": "boolean", "default": true},
		"description": "false: only store the upload (history and binary; no device is offered it or told)"}
)

var firmwareDownloadParams = []obj{
	{"name": "Range", "in": "header", "schema": obj{"type": "string"}, "description": "bytes=first-last, bytes=first- or bytes=-suffix: " +
		"one range, answered 206; a Range that is not honoured (several ranges, malformed, past the end of the file, or a stale If-Range) " +
		"is ignored and the whole file sent with 200"},
	{"name": "If-Range", "in": "header", "schema": obj{"type": "string"}, "description": "an ETag or the Last-Modified date"},
	{"name": "If-None-Match", "in": "header", "schema": obj{"type": "string"}},
}

func operations() []operation {
	withID := []obj{idParam}
	return []operation{
		{method: "GET", path: "/health/live", id: "live", tag: "operations", summary: "Liveness: 200 while the process serves",
			responses: obj{"200": jsonResponse("alive", refTo[statusDTO]())}},
		{method: "GET", path: "/health/ready", id: "ready", tag: "operations",
			summary:     "Readiness: database, migrations and identity provider",
			description: "503 lists the names of the failed checks in failed_checks.",
			responses:   obj{"200": jsonResponse("ready", refTo[statusDTO]())}, errorCodes: []int{503}},
		{method: "GET", path: "/metrics", id: "metrics", tag: "operations", summary: "Prometheus metrics",
			responses: obj{"200": obj{"description": "text exposition format", "content": obj{"text/plain": obj{"schema": obj{"type": "string"}}}}}},
		{method: "GET", path: "/api/openapi.json", id: "openapi", tag: "operations", summary: "This OpenAPI document",
			responses: obj{"200": jsonResponse("the document", obj{"type": "object"})}},
		{method: "GET", path: "/api/docs", id: "docs", tag: "operations", summary: "API documentation page (HTML, no external assets)",
			responses: obj{"200": obj{"description": "HTML page", "content": obj{"text/html": obj{"schema": obj{"type": "string"}}}}}},

		{method: "GET", path: "/api/device-models", id: "listDeviceModels", tag: "device models", auth: "read",
			summary:   "List device models",
			responses: obj{"200": jsonResponse("all device models", refTo[deviceModelListDTO]())}},
		{method: "POST", path: "/api/device-models", id: "createDeviceModel", tag: "device models", auth: "write",
			summary: "Create a device model", body: refTo[createModelDTO](),
			responses:  obj{"201": withLocation(jsonResponse("created; Location names it", refTo[deviceModelDTO]()))},
			errorCodes: []int{400, 409, 413, 415}},
		{method: "GET", path: "/api/device-models/{id}", id: "getDeviceModel", tag: "device models", auth: "read",
			summary: "Get a device model", params: withID,
			responses: obj{"200": jsonResponse("the model", refTo[deviceModelDTO]())}, errorCodes: []int{400, 404}},
		{method: "PUT", path: "/api/device-models/{id}", id: "updateDeviceModel", tag: "device models", auth: "write",
			summary: "Change a model's name and config schema",
			description: "Absent members are unchanged; \"config_schema\": null removes the schema. A new schema that configs of " +
				"existing devices do not match is refused (409, naming the first devices) unless force=true.",
			params: []obj{idParam, {"name": "force", "in": "query", "schema": obj{"type": "boolean", "default": false},
				"description": "apply a new config_schema even when existing device configs do not match it"}},
			body:      refTo[updateModelDTO](),
			responses: obj{"200": jsonResponse("the updated model", refTo[deviceModelDTO]())}, errorCodes: []int{400, 404, 409, 413, 415}},
		{method: "DELETE", path: "/api/device-models/{id}", id: "deleteDeviceModel", tag: "device models", auth: "write",
			summary: "Delete a device model (409 while devices use it)", params: withID,
			responses: obj{"204": obj{"description": "deleted"}}, errorCodes: []int{400, 404, 409}},
		{method: "POST", path: "/api/device-models/{id}/firmware", id: "uploadFirmware", tag: "firmware", auth: "write",
			summary: "Upload an ESP32 application image: released to the model's devices at once, or only stored (release=false)",
			description: "The image is the raw body (application/octet-stream) or the multipart/form-data field \"file\". It is parsed and validated; the response is its metadata. " +
				"By default the upload becomes the model's released firmware and its devices are told; with release=false it is only stored " +
				"(history and binary, released later with POST .../firmware/{sha256}/release or staged by a campaign), and an upload may be " +
				"stored instead of released for another reason, which its warnings say. " +
				"The model's released image again (or, with release=false, its released or newest image) changes nothing (200, the existing record, no notification). " +
				"The image must be for the chip of the model's released firmware (of its newest upload when none is released). An image whose secure_version is lower " +
				"than the released firmware's is refused (409) unless force=true, since devices with anti-rollback would refuse it; " +
				"warnings say where an accepted upload goes backwards against the released firmware. " +
				"No schema can say which bytes are an ESP32 application image: validity depends on the content as a whole (magic, " +
				"segment headers and lengths, the checksum over the segments, the SHA-256 appended over everything before it, the " +
				"app descriptor inside the first segment), so the body is declared as any binary, and one that is not a valid image " +
				"is a 400 saying what is wrong.",
			params: []obj{idParam, forceUploadParam, releaseParam},
			body: obj{
				"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary"}},
				"multipart/form-data": obj{"schema": obj{
					"type": "object", "required": []string{"file"},
					"properties": obj{
						"file": obj{"type": "string", "format": "binary"},
						"elf": obj{"type": "string", "format": "binary", "description": "the ELF the image was built from, after file, " +
							"for core dump analysis: kept only when its SHA-256 is the image's app_elf_sha256 (400 naming both otherwise, and nothing recorded)"},
					},
				}},
			},
			responses: obj{
				"201": withLocation(jsonResponse("recorded: released (devices told) or stored, as released says; Location is the download URL of the released firmware", refTo[firmwareUploadDTO]())),
				"200": jsonResponse("the image changes nothing (the released one already, or stored again): its record", refTo[firmwareUploadDTO]()),
			},
			errorCodes: []int{400, 404, 409, 413, 415}},
		{method: "POST", path: "/api/device-models/{id}/firmware/{sha256}/release", id: "releaseFirmware", tag: "firmware", auth: "write",
			summary: "Release a stored upload, or an earlier one again (a rollback)",
			description: "Makes the model's upload with this SHA-256 its released firmware: the model's firmware_version follows it, " +
				"the release is audited (firmware_released) and the model's devices are told. The released one already changes nothing (200, no audit). " +
				"No chip or secure_version check is made: the upload passed them when it was recorded, and an older secure_version is the admin's choice " +
				"(anti-rollback devices refuse it; the audit entry says so). While the model has a running or paused campaign this is a 409: " +
				"its devices change firmware only through the campaign.",
			params: []obj{idParam, {"name": "sha256", "in": "path", "required": true, "description": "the upload's SHA-256, as in the firmware history",
				"schema": obj{"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
			responses: obj{"200": jsonResponse("the upload, now the released one", refTo[firmwareDTO]())}, errorCodes: []int{400, 404, 409}},
		{method: "GET", path: "/api/device-models/{id}/firmware", id: "downloadFirmware", tag: "firmware", auth: "read",
			summary: "Download the model's released firmware", params: append(append([]obj{}, withID...), firmwareDownloadParams...),
			responses: firmwareDownload("the whole firmware file"), errorCodes: []int{400, 404}},
		{method: "GET", path: "/api/device-models/{id}/firmware/versions", id: "listFirmwareVersions", tag: "firmware", auth: "read",
			summary: "Firmware upload history, newest first, with the released one marked", params: withID,
			responses: obj{"200": jsonResponse("upload history", refTo[firmwareListDTO]())}, errorCodes: []int{400, 404}},

		{method: "GET", path: "/api/devices", id: "listDevices", tag: "devices", auth: "read",
			summary: "List devices, paginated by cursor",
			params: []obj{
				{"name": "limit", "in": "query", "schema": obj{"type": "integer", "minimum": 1, "maximum": ports.MaxPageSize, "default": ports.DefaultPageSize}},
				{"name": "cursor", "in": "query", "schema": cursorSchema, "description": "next_cursor of the previous page"},
				{"name": "model_id", "in": "query", "schema": obj{"type": "integer", "format": "int64", "minimum": 1}},
				{"name": "rotation_state", "in": "query", "schema": caselessEnum(rotationStates...), "description": "case-insensitive"},
				{"name": "active", "in": "query", "schema": obj{"anyOf": []obj{{"type": "boolean"}, {"type": "string", "pattern": caseless("true", "false", "1", "0")}}},
					"description": "true or false (also 1 or 0, case-insensitive)"},
				{"name": "firmware_version", "in": "query",
					"schema":      obj{"type": "string", "minLength": 1, "maxLength": model.MaxReportVersionLen, "pattern": reportTextPattern},
					"description": "only devices whose latest state report names this firmware version (exactly)"},
				{"name": "seen_before", "in": "query", "schema": obj{"type": "string", "format": "date-time"},
					"description": "only devices not seen since this time (RFC 3339): last seen before it, or never seen"},
				{"name": "tag", "in": "query", "style": "form", "explode": true,
					"schema":      obj{"type": "array", "items": tagSchema, "maxItems": model.MaxTags},
					"description": "only devices carrying this tag; repeat it (tag=a&tag=b) for devices carrying all of them"},
			},
			responses: obj{"200": jsonResponse("one page", refTo[deviceListDTO]())}, errorCodes: []int{400}},
		{method: "POST", path: "/api/devices", id: "createDevice", tag: "devices", auth: "write",
			summary: "Create a device and its identity-provider client",
			description: "All or nothing: when any step fails nothing is left behind. A device_model_id that names no model, " +
				"and a config the model's config_schema refuses, are conflicts with the current state (409, field names the member).",
			body:       refTo[createDeviceDTO](),
			responses:  obj{"201": withLocation(jsonResponse("created; Location names it", refTo[deviceDTO]()))},
			errorCodes: []int{400, 409, 413, 415, 502}},
		{method: "GET", path: "/api/devices/{id}", id: "getDevice", tag: "devices", auth: "read",
			summary: "Get a device", params: withID,
			responses: obj{"200": jsonResponse("the device", refTo[deviceDTO]())}, errorCodes: []int{400, 404}},
		{method: "PUT", path: "/api/devices/{id}", id: "updateDevice", tag: "devices", auth: "write",
			summary: "Change a device's config, active flag and tags (absent members unchanged)", params: withID, body: refTo[updateDeviceDTO](),
			description: "A config the model's config_schema refuses is a conflict with the current state (409, field config). " +
				"tags, when present, replace the device's tags (an empty array removes them all).",
			responses: obj{"200": jsonResponse("the updated device", refTo[deviceDTO]())}, errorCodes: []int{400, 404, 409, 413, 415}},
		{method: "DELETE", path: "/api/devices/{id}", id: "deleteDevice", tag: "devices", auth: "write",
			summary: "Delete a device, then its identity-provider client", params: withID,
			responses: obj{"204": obj{"description": "deleted"}}, errorCodes: []int{400, 404}},
		{method: "GET", path: "/api/devices/{id}/provisioning", id: "getProvisioning", tag: "devices", auth: "write",
			summary:     "Provisioning data: an NVS partition image, or the plain fields",
			description: "Carries the device's client secret, so it needs the admin role even though it is a read.",
			params: []obj{idParam,
				{"name": "size", "in": "query", "schema": nvsSizeSchema,
					"description": "partition size, hex with 0x or decimal: a multiple of 0x1000 from 0x3000 to 0x100000"},
				{"name": "format", "in": "query", "schema": obj{"type": "string", "enum": []string{"nvs", "bin", "json"}, "default": "nvs"},
					"description": "nvs: the image as base64 in JSON; bin: the image itself (application/octet-stream, for esptool); json: the plain fields"},
			},
			responses: obj{"200": obj{"description": "the NVS image (default, or raw with format=bin) or, with format=json, the plain fields",
				"headers": obj{"Content-Disposition": obj{"schema": obj{"type": "string"}, "description": `format=bin: attachment; filename="device-<id>-nvs.bin"`}},
				"content": obj{
					"application/json":         obj{"schema": obj{"oneOf": []obj{refTo[provisioningNVSDTO](), refTo[provisioningDTO]()}}},
					"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary"}},
				}}},
			errorCodes: []int{400, 404, 502}},
		{method: "GET", path: "/api/devices/{id}/identity", id: "getIdentity", tag: "devices", auth: "read",
			summary: "The device's identity-provider client status", params: withID,
			responses: obj{"200": jsonResponse("status", refTo[identityDTO]())}, errorCodes: []int{400, 404, 502}},
		{method: "POST", path: "/api/devices/{id}/identity/sync", id: "syncIdentity", tag: "devices", auth: "write",
			summary: "Create or repair the device's identity-provider client (the secret is kept)", params: withID,
			responses: obj{"200": jsonResponse("status after the repair", refTo[identityDTO]())}, errorCodes: []int{400, 404, 502}},
		{method: "POST", path: "/api/devices/{id}/rotate", id: "rotateDevice", tag: "rotation", auth: "write",
			summary:     "Queue one device for credential rotation",
			description: "An OK, QUEUED or TIMEOUT device is queued (202, status queued) and starts as soon as a slot is free; a PENDING one is left as it is (200, status already_pending). An inactive device is 409.",
			params:      withID,
			responses: obj{
				"202": jsonResponse("queued", refTo[rotateDTO]()),
				"200": jsonResponse("already in rotation", refTo[rotateDTO]()),
			}, errorCodes: []int{400, 404, 409, 502}},
		{method: "POST", path: "/api/rotation/trigger", id: "triggerRotation", tag: "rotation", auth: "write",
			summary: "Queue every active OK device for rotation (of one device model with device_model_id)",
			params: []obj{{"name": "device_model_id", "in": "query", "schema": obj{"type": "integer", "format": "int64", "minimum": 1},
				"description": "only this model's devices; absent: the whole fleet"}},
			responses: obj{"202": jsonResponse("the number of devices queued", refTo[triggerDTO]())}, errorCodes: []int{400, 404, 502}},
		{method: "GET", path: "/api/rotation/status", id: "rotationStatus", tag: "rotation", auth: "read",
			summary:   "Rotation mode, devices by state, devices in flight, last completion, next scheduled run, lease holder",
			responses: obj{"200": jsonResponse("status", refTo[rotationStatusDTO]())}, errorCodes: []int{502}},
		{method: "GET", path: "/api/rotation/dashboard", id: "rotationDashboard", tag: "rotation", auth: "read",
			summary: "Devices grouped healthy / warning / critical / inactive by secret age and state, one group paged",
			description: "healthy: active, secret younger than ROTATION_WARNING_DAYS and not TIMEOUT. warning: older, or TIMEOUT. " +
				"critical: secret older than ROTATION_CRITICAL_DAYS, or a generated secret unconfirmed for longer than half of ROTATION_GRACE. inactive: inactive devices.",
			params: []obj{
				{"name": "group", "in": "query", "schema": withDefault(caselessEnum(dashboardGroups()...), "critical"), "description": "case-insensitive"},
				{"name": "limit", "in": "query", "schema": obj{"type": "integer", "minimum": 1, "maximum": ports.MaxPageSize, "default": ports.DefaultPageSize}},
				{"name": "cursor", "in": "query", "schema": cursorSchema, "description": "next_cursor of the previous page"},
			},
			responses: obj{"200": jsonResponse("the group counts and one page of the group", refTo[dashboardDTO]())}, errorCodes: []int{400, 502}},

		{method: "GET", path: "/api/audit", id: "listAudit", tag: "audit", auth: "read",
			summary: "The audit log: every credential-lifecycle event and admin change, oldest first, paged",
			description: "Append-only; an entry of a change is written in the change's transaction. Entries never hold a secret. " +
				"Page with cursor (next_cursor of the previous page) or after (the id of the last entry seen, for tailing).",
			params: []obj{
				{"name": "limit", "in": "query", "schema": obj{"type": "integer", "minimum": 1, "maximum": ports.MaxPageSize, "default": ports.DefaultPageSize}},
				{"name": "cursor", "in": "query", "schema": cursorSchema, "description": "next_cursor of the previous page"},
				{"name": "after", "in": "query", "schema": obj{"type": "integer", "format": "int64", "minimum": 0}, "description": "only entries with a larger id (with cursor too: the larger bound holds)"},
				{"name": "device_id", "in": "query", "schema": obj{"type": "integer", "format": "int64", "minimum": 1}},
				{"name": "kind", "in": "query", "schema": obj{"type": "string", "enum": auditKinds()}},
				{"name": "actor", "in": "query", "schema": obj{"type": "string", "minLength": 1, "maxLength": maxActorLen, "pattern": noNULPattern},
					"description": "an actor's subject, client id or username (at most 255 characters, no U+0000)"},
				{"name": "since", "in": "query", "schema": obj{"type": "string", "format": "date-time"}, "description": "only entries at or after this time (RFC 3339)"},
			},
			responses: obj{"200": jsonResponse("one page", refTo[auditListDTO]())}, errorCodes: []int{400, 503}},

		{method: "PUT", path: "/api/device-models/{id}/firmware/{sha256}/elf", id: "uploadFirmwareELF", tag: "core dumps", auth: "write",
			summary: "Store the application ELF of a firmware upload, for core dump analysis",
			description: "The raw ELF (application/octet-stream), at most ELF_MAX_BYTES. It is kept only when its SHA-256 equals the " +
				"app_elf_sha256 of the upload's app descriptor (400 naming both otherwise); every upload of the model built from it then " +
				"has it (has_elf), and the model's core dumps waiting for it (no_elf) are analysed again.",
			params: []obj{idParam, {"name": "sha256", "in": "path", "required": true, "description": "the upload's SHA-256, as in the firmware history",
				"schema": obj{"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
			body:      obj{"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary"}}},
			responses: obj{"200": jsonResponse("the upload, with has_elf", refTo[firmwareDTO]())}, errorCodes: []int{400, 404, 413, 415, 503}},
		{method: "GET", path: "/api/devices/{id}/coredumps", id: "listCoredumps", tag: "core dumps", auth: "read",
			summary: "The device's core dumps, newest first, paged (the newest COREDUMP_KEEP are kept)",
			params: []obj{idParam,
				{"name": "limit", "in": "query", "schema": obj{"type": "integer", "minimum": 1, "maximum": ports.MaxPageSize, "default": ports.DefaultPageSize}},
				{"name": "cursor", "in": "query", "schema": cursorSchema, "description": "next_cursor of the previous page"},
			},
			responses: obj{"200": jsonResponse("one page", refTo[coredumpListDTO]())}, errorCodes: []int{400, 404, 503}},
		{method: "GET", path: "/api/device-models/{id}/crashes", id: "modelCrashes", tag: "core dumps", auth: "read",
			summary:   "The model's recent crashes: its analysed core dumps of the last days, grouped by crashing function and firmware version",
			params:    []obj{idParam, {"name": "days", "in": "query", "schema": obj{"type": "integer", "minimum": 1, "maximum": 366, "default": 30}}},
			responses: obj{"200": jsonResponse("the groups, the largest first", refTo[crashListDTO]())}, errorCodes: []int{400, 404, 503}},
		{method: "GET", path: "/api/coredumps/{id}", id: "getCoredump", tag: "core dumps", auth: "read",
			summary: "A core dump and its analysis", params: withID,
			responses: obj{"200": jsonResponse("the dump", refTo[coredumpDTO]())}, errorCodes: []int{400, 404, 503}},
		{method: "GET", path: "/api/coredumps/{id}/download", id: "downloadCoredump", tag: "core dumps", auth: "read",
			summary: "The core dump's bytes as the device sent them", params: withID,
			responses: obj{"200": obj{"description": "the raw dump",
				"headers": obj{"ETag": obj{"description": "the quoted SHA-256 of the dump", "schema": obj{"type": "string"}},
					"Content-Disposition": obj{"schema": obj{"type": "string"}, "description": `attachment; filename="<client id>-<id>.core"`}},
				"content": obj{"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary"}}}}},
			errorCodes: []int{400, 404, 503}},
		{method: "DELETE", path: "/api/coredumps/{id}", id: "deleteCoredump", tag: "core dumps", auth: "write",
			summary: "Delete a core dump", params: withID,
			responses: obj{"204": obj{"description": "deleted"}}, errorCodes: []int{400, 404, 503}},

		{method: "POST", path: "/iot/coredump", id: "deviceCoredump", tag: "device API", auth: "device",
			summary: "Upload the core dump from the device's coredump partition",
			description: "The raw dump as esp_core_dump_image_get locates it (ELF or binary format), at most COREDUMP_MAX_BYTES. " +
				"It is analysed in the background; bytes that are not a core dump, or whose checksum does not match, are kept as failed. " +
				"Erase the partition after a 201. An empty body is a 400.",
			body:      obj{"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary", "minLength": 1}}},
			responses: obj{"201": jsonResponse("stored", refTo[coredumpCreatedDTO]())}, errorCodes: []int{400, 413, 415, 503}},
		{method: "GET", path: "/api/fleet/firmware", id: "fleetFirmware", tag: "devices", auth: "read",
			summary: "The fleet by reported firmware version: each model's active devices per version",
			description: "Counts the active devices of every model that has any, by the firmware_version of their latest state report " +
				"(POST /iot/state); the devices that have not reported are counted under null.",
			responses: obj{"200": jsonResponse("the counts", refTo[fleetFirmwareDTO]())}, errorCodes: []int{503}},

		{method: "GET", path: "/iot/config", id: "deviceConfig", tag: "device API", auth: "device",
			summary:   "The calling device's config (completes a pending credential rotation)",
			responses: obj{"200": jsonResponse("the config object", obj{"type": "object"})}, errorCodes: []int{502}},
		{method: "GET", path: "/iot/firmware", id: "deviceFirmware", tag: "device API", auth: "device",
			summary: "The calling device's effective firmware: the one a campaign assigned to it, else its model's released firmware", params: firmwareDownloadParams,
			responses: firmwareDownload("the whole firmware file"), errorCodes: []int{404, 502}},
		{method: "GET", path: "/iot/firmware-version", id: "deviceFirmwareVersion", tag: "device API", auth: "device",
			summary:   "The version and SHA-256 of the firmware GET /iot/firmware serves",
			responses: obj{"200": jsonResponse("the version and SHA-256 of the device's effective firmware, both null when it has none", refTo[firmwareVersionDTO]())}, errorCodes: []int{502}},
		{method: "GET", path: "/iot/provisioning", id: "deviceProvisioning", tag: "device API", auth: "device",
			summary: "Rotation fetch: the device's credentials, with the new secret while its rotation is PENDING",
			description: "The first call of a rotation generates the new secret; later calls return the same one. " +
				"Outside a rotation it returns the current credentials. Keep the current secret until the new one is confirmed.",
			responses: obj{"200": jsonResponse("the NVS fields as JSON members", refTo[provisioningDTO]())}, errorCodes: []int{409, 502}},
		{method: "POST", path: "/iot/provisioning/ack", id: "deviceProvisioningAck", tag: "device API", auth: "device",
			summary:     "Confirm the new secret by its SHA-256",
			description: "204 completes the rotation when the digest matches the secret generated in it, and again (idempotent) after it completed with that secret; 409 otherwise.",
			body:        refTo[ackDTO](),
			responses:   obj{"204": obj{"description": "confirmed"}}, errorCodes: []int{400, 409, 413, 415, 502}},
		{method: "POST", path: "/iot/state", id: "deviceState", tag: "device API", auth: "device",
			summary: "Report the device's state (SPEC §15): what it runs, its last OTA attempt, uptime, heap, RSSI",
			description: "The report replaces the device's previous one whole (members left out are gone) and moves its last_seen_at; " +
				"a report naming another firmware_version than the previous one (or the first report) is a device_firmware_changed " +
				"audit entry. A member left out is unknown; null, an empty string, an unknown member (also in ota) or a value outside " +
				"the listed words is a 400 naming the member, and nothing is stored.",
			body:      refTo[stateReportDTO](),
			responses: obj{"204": obj{"description": "stored"}}, errorCodes: []int{400, 415}},
	}
}

// jsonSchemaSchemas describe JSON values the database can store (Config,
// JSONValue) and a JSON Schema 2020-12 as espmdm compiles it for a model's
// config_schema (JSONSchema): every keyword with the shape its meta-schema
// gives it. What no schema can say is in JSONSchema's description: those
// keywords are left undeclared. No anyOf: a keyword applies to its own
// JSON type only, so one schema with several types says the same, and
// tools that negate schemas to make invalid data handle it.
func jsonSchemaSchemas() obj {
	keywords := jsonSchemaKeywords(ref("JSONSubschema"))
	return obj{
		"JSONValue": obj{
			"description": "any JSON value whose strings and member names hold no U+0000 (the database cannot store it)",
			"type":        []string{"string", "number", "boolean", "null", "array", "object"},
			"pattern":     noNULPattern, "items": ref("JSONValue"),
			"propertyNames": noNUL, "additionalProperties": ref("JSONValue"),
		},
		"Config": obj{
			"type": "object", "description": "a JSON object whose strings and member names hold no U+0000",
			"propertyNames": noNUL, "additionalProperties": ref("JSONValue"),
		},
		"JSONSchema":    jsonSchemaObject([]string{"object", "boolean"}, keywords),
		"ConfigSchema":  jsonSchemaObject([]string{"object", "boolean", "null"}, keywords),
		"JSONSubschema": obj{"type": []string{"object", "boolean"}, "propertyNames": noNUL, "additionalProperties": ref("JSONValue")},
	}
}

// jsonSchemaKeywords are the keywords of a JSON Schema whose subschemas
// are schema.
func jsonSchemaKeywords(schema obj) obj {
	schemaArray := obj{"type": "array", "minItems": 1, "items": schema}
	schemaMap := obj{"type": "object", "propertyNames": noNUL, "additionalProperties": schema}
	nonNegative := obj{"type": "integer", "minimum": 0}
	number := obj{"type": "number"}
	boolean := obj{"type": "boolean"}
	uniqueStrings := obj{"type": "array", "items": noNUL, "uniqueItems": true}
	simpleTypes := `^(array|boolean|integer|null|number|object|string)$`
	regex := obj{"type": "string", "format": "regex", "pattern": noNULPattern,
		"description": "an ECMA-262 regular expression (JSON Schema's format regex) that RE2 can run: no look-around or back-references"}
	keywords := obj{
		// core
		"$comment": noNUL,
		"$defs":    schemaMap, "definitions": schemaMap,
		// applicator
		"prefixItems": schemaArray, "items": schema, "contains": schema,
		"additionalProperties": schema, "properties": schemaMap,
		"patternProperties": obj{"type": "object", "propertyNames": regex, "additionalProperties": schema},
		"dependentSchemas":  schemaMap,
		"propertyNames":     schema,
		"if":                schema, "then": schema, "else": schema, "not": schema,
		"allOf": schemaArray, "anyOf": schemaArray, "oneOf": schemaArray,
		// unevaluated
		"unevaluatedItems": schema, "unevaluatedProperties": schema,
		// validation
		"type": obj{"type": []string{"string", "array"}, "pattern": simpleTypes,
			"items": obj{"type": "string", "pattern": simpleTypes}, "minItems": 1, "uniqueItems": true},
		"const": ref("JSONValue"), "enum": obj{"type": "array", "items": ref("JSONValue")},
		"multipleOf": obj{"type": "number", "exclusiveMinimum": 0},
		"maximum":    number, "exclusiveMaximum": number, "minimum": number, "exclusiveMinimum": number,
		"maxLength": nonNegative, "minLength": nonNegative,
		"pattern":  regex,
		"maxItems": nonNegative, "minItems": nonNegative, "uniqueItems": boolean,
		"maxContains": nonNegative, "minContains": nonNegative,
		"maxProperties": nonNegative, "minProperties": nonNegative,
		"required":          uniqueStrings,
		"dependentRequired": obj{"type": "object", "propertyNames": noNUL, "additionalProperties": uniqueStrings},
		// meta-data, format, content
		"title": noNUL, "description": noNUL, "default": ref("JSONValue"),
		"deprecated": boolean, "readOnly": boolean, "writeOnly": boolean,
		"examples": obj{"type": "array", "items": ref("JSONValue")},
		"format":   noNUL, "contentEncoding": noNUL, "contentMediaType": noNUL, "contentSchema": schema,
	}
	return keywords
}

// jsonSchemaObject is a JSON Schema of the given JSON types.
func jsonSchemaObject(types []string, keywords obj) obj {
	return obj{
		"type": types,
		"description": "A JSON Schema (draft 2020-12) that device configs of the model must satisfy. Each keyword is declared with " +
			"the shape the 2020-12 meta-schema gives it; other members are allowed (and ignored). What this schema cannot say, " +
			"and the server checks (400 when it fails): $ref and $dynamicRef must resolve within the schema itself (no other " +
			"document is loaded), $schema must name a draft's meta-schema, $id must not change the document, anchors must be " +
			"unique, and the keywords left undeclared here ($ref, $dynamicRef, $id, $schema, $anchor, $dynamicAnchor, " +
			"$vocabulary, dependencies) must have their meta-schema's shape. No string or member name may hold U+0000.",
		"properties": keywords, "propertyNames": noNUL, "additionalProperties": ref("JSONValue"),
	}
}

// wireTypes names every DTO the API reads or writes as a component
// schema, derived from the type (openapi_schema.go).
var wireTypes = []dtoSchema{
	output[Problem]("Problem"),
	output[statusDTO]("Status"),
	input[ackDTO]("ProvisioningAck"),
	output[rotateDTO]("RotateResult"),
	output[triggerDTO]("TriggerResult"),
	output[rotationStatusDTO]("RotationStatus"),
	output[dashboardDTO]("RotationDashboard"),
	output[auditListDTO]("AuditList"),
	output[auditEntryDTO]("AuditEntry"),
	output[deviceModelDTO]("DeviceModel"),
	output[deviceModelListDTO]("DeviceModelList"),
	input[createModelDTO]("NewDeviceModel"),
	input[updateModelDTO]("DeviceModelUpdate"),
	output[deviceDTO]("Device"),
	output[deviceListDTO]("DeviceList"),
	input[createDeviceDTO]("NewDevice"),
	input[updateDeviceDTO]("DeviceUpdate"),
	output[firmwareDTO]("Firmware"),
	output[firmwareUploadDTO]("FirmwareUpload"),
	output[firmwareListDTO]("FirmwareList"),
	output[firmwareVersionDTO]("FirmwareVersion"),
	output[identityDTO]("IdentityStatus"),
	output[provisioningNVSDTO]("ProvisioningNVS"),
	output[provisioningDTO]("Provisioning"),
	output[coredumpDTO]("Coredump"),
	output[coredumpListDTO]("CoredumpList"),
	output[coredumpCreatedDTO]("CoredumpCreated"),
	output[crashListDTO]("CrashList"),
	input[stateReportDTO]("StateReport"),
	input[otaAttemptDTO]("OTAAttempt"),
	output[fleetFirmwareDTO]("FleetFirmware"),
	input[createCampaignDTO]("NewCampaign"),
	input[campaignSelectorInDTO]("CampaignSelector"),
	output[campaignDTO]("Campaign"),
	output[campaignDetailDTO]("CampaignDetail"),
	output[campaignListDTO]("CampaignList"),
	output[campaignMemberDTO]("CampaignDevice"),
	output[campaignMemberListDTO]("CampaignDeviceList"),
}

// schemaFragments are the named schemas DTO members use (oas:"use=...").
func schemaFragments() map[string]obj {
	frags := map[string]obj{
		"dateTime":    {"format": "date-time", "description": "RFC 3339, UTC"},
		"optDateTime": {"format": "date-time", "description": "RFC 3339, UTC; null when never"},
		// nextCursor is the next_cursor member of a page (see encodeCursor).
		"nextCursor": {"pattern": cursorPattern, "description": "pass as ?cursor= for the next page; null on the last page"},
		"name":       nameSchema,
		"modelCode":  {"pattern": model.ModelCodePattern.String()},
		"deviceKey":  {"pattern": model.DeviceKeyPattern.String()},
		"checkedConfig": withDesc(ref("Config"),
			"checked against the model's config_schema: a config it refuses is a 409 naming this field"),
		"rotationState":  {"enum": rotationStates},
		"dashboardGroup": {"enum": dashboardGroups()},
		"auditKind":      {"enum": auditKinds()},
		"tags":           tagsSchema,
	}
	for k, v := range campaignFragments() {
		frags[k] = v
	}
	return frags
}

// tagSchema is one device tag; tagsSchema a device's tags (SPEC §16).
var (
	tagSchema  = obj{"type": "string", "pattern": model.TagPattern.String()}
	tagsSchema = obj{"type": "array", "items": tagSchema, "maxItems": model.MaxTags,
		"description": fmt.Sprintf("the device's tags: 0 to %d strings matching %s; kept sorted, a tag given twice kept once", model.MaxTags, model.TagPattern)}
)

// refTo is the $ref to the component schema of the wire type T.
func refTo[T any]() obj {
	t := reflect.TypeFor[T]()
	for _, c := range wireTypes {
		if c.typ == t {
			return ref(c.name)
		}
	}
	panic(fmt.Sprintf("openapi: %s is not in wireTypes", t))
}

func schemas() obj {
	s, _ := dtoSchemas(wireTypes, schemaFragments())
	for k, v := range jsonSchemaSchemas() {
		s[k] = v
	}
	return s
}

func withRetryAfter(resp obj) obj {
	resp["headers"] = obj{"Retry-After": obj{"description": "whole seconds until the next request can pass",
		"schema": obj{"type": "integer", "minimum": 1}}}
	return resp
}

func problemResponse(desc string) obj {
	return obj{"description": desc, "content": obj{ContentTypeProblem: obj{"schema": refTo[Problem]()}}}
}

// openAPIDocument builds the whole document. Role names come from cfg.
func openAPIDocument(cfg Config) obj {
	responses := obj{
		"BadRequest":   problemResponse("invalid input: malformed JSON, unknown member, bad id or query, or a validation failure"),
		"Unauthorized": problemResponse("missing, malformed or invalid bearer token"),
		"Forbidden":    problemResponse("the token lacks the required role, or the device is inactive"),
		"NotFound":     problemResponse("no such resource"),
		"Conflict": problemResponse("conflicts with the current state: a well-formed request that the state refuses, such as a body " +
			"that names a resource which does not exist (device_model_id), a device config the model's config_schema does not accept, " +
			"a code in use, or a model that devices still use; field names the input when one is at fault"),
		"TooLarge": problemResponse(fmt.Sprintf("the body exceeds the route's limit, checked before the token: %d bytes for firmware uploads, "+
			"%d for admin JSON bodies, %d for /iot/* and routes without a body", cfg.FirmwareMaxBytes, cfg.JSONMaxBytes, cfg.IoTMaxBytes)),
		"TooManyRequests": withRetryAfter(problemResponse("a device over its request rate (/iot/*), or an address over its budget of refused " +
			"(401) requests, which is refused before its token is checked")),
		"UnsupportedMediaType": problemResponse("wrong Content-Type or a compressed body"),
		"InternalError":        problemResponse("unexpected failure; details are only in the server log"),
		"BadGateway":           problemResponse("the identity provider or broker failed"),
		"NotReady": withRetryAfter(problemResponse("not ready: the database is unavailable (retry after Retry-After), " +
			"or, on /health/ready, failed_checks names the failing checks")),
		"Timeout": problemResponse("the request took longer than the server allows"),
	}
	authNote := fmt.Sprintf("Admin routes need a bearer token from the OIDC issuer: reads the role %q or %q, writes (and provisioning data) %q.",
		cfg.ViewerRole, cfg.AdminRole, cfg.AdminRole)
	if cfg.AuthDisabled {
		authNote = "Admin authentication is DISABLED on this server (AUTH_DISABLED=true)."
	}

	paths := obj{}
	for _, op := range allOperations() {
		o := obj{
			"operationId": op.id,
			"summary":     op.summary,
			"tags":        []string{op.tag},
		}
		if op.description != "" {
			o["description"] = op.description
		}
		if len(op.params) > 0 {
			o["parameters"] = op.params
		}
		if op.body != nil {
			content := op.body
			if _, isRef := op.body["$ref"]; isRef {
				content = jsonContent(op.body)
			}
			o["requestBody"] = obj{"required": true, "content": content}
		}
		rs := obj{}
		for k, v := range op.responses {
			rs[k] = v
		}
		codes := append([]int{500}, op.errorCodes...)
		switch op.auth {
		case "read", "write":
			codes = append(codes, 401, 403, 413, 429, 502, 503, 504)
			role := cfg.AdminRole
			if op.auth == "read" {
				role = cfg.ViewerRole + " or " + cfg.AdminRole
			}
			o["security"] = []obj{{"adminBearer": []string{}}}
			o["x-required-role"] = role
		case "pipeline":
			codes = append(codes, 401, 403, 413, 429, 502, 503, 504)
			o["security"] = []obj{{"adminBearer": []string{}}}
			o["x-required-role"] = cfg.PipelineRole
		case "device":
			codes = append(codes, 401, 403, 413, 429, 502, 503, 504)
			o["security"] = []obj{{"deviceBearer": []string{}}}
		default:
			o["security"] = []obj{}
		}
		for _, code := range codes {
			rs[fmt.Sprint(code)] = respRef(errorResponseNames[code])
		}
		o["responses"] = rs
		item, _ := paths[op.path].(obj)
		if item == nil {
			item = obj{}
			paths[op.path] = item
		}
		item[strings.ToLower(op.method)] = o
	}

	doc := obj{
		"openapi": "3.1.0",
		"info": obj{
			"title":   "espmdm",
			"version": "1",
			"description": "Device management for ESP32 fleets. Errors are application/problem+json; timestamps are RFC 3339 UTC. " +
				authNote,
		},
		"tags": []obj{
			{"name": "device models"}, {"name": "firmware"}, {"name": "devices"},
			{"name": "rotation", "description": "credential rotation: queue, status, dashboard"},
			{"name": "audit", "description": "who did what to which credential"},
			{"name": "campaigns", "description": "firmware campaigns: staged rollouts that advance on confirmed boots and abort themselves on failures"},
			{"name": "pipeline", "description": "for CI pipelines: firmware by model code, with a token holding the pipeline role only"},
			{"name": "device API", "description": "for devices, with client-credentials tokens"},
			{"name": "operations"},
		},
		"paths": paths,
		"components": obj{
			"securitySchemes": obj{
				"adminBearer":  obj{"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "an admin token from the OIDC issuer"},
				"deviceBearer": obj{"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "a device access token (client-credentials grant, azp iotdevice-<model>-<key>)"},
			},
			"schemas":   schemas(),
			"responses": responses,
		},
	}
	if cfg.BaseURL != "" {
		doc["servers"] = []obj{{"url": cfg.BaseURL, "description": "this espmdm"}}
	}
	return doc
}

// rotationStates lists the rotation states.
var rotationStates = []string{string(model.RotationOK), string(model.RotationQueued), string(model.RotationPending), string(model.RotationTimeout)}

// dashboardGroups lists the rotation dashboard's groups.
func dashboardGroups() []string {
	out := make([]string, len(model.DashboardGroups))
	for i, g := range model.DashboardGroups {
		out[i] = string(g)
	}
	return out
}

// auditKinds lists the audit event kinds.
func auditKinds() []string {
	out := make([]string, len(model.AuditKinds))
	for i, k := range model.AuditKinds {
		out[i] = string(k)
	}
	return out
}

// caseless is a pattern matching exactly the words, in any case.
func caseless(words ...string) string {
	alts := make([]string, len(words))
	for i, w := range words {
		var b strings.Builder
		for _, r := range w {
			lo, up := strings.ToLower(string(r)), strings.ToUpper(string(r))
			if lo == up {
				b.WriteString(regexp.QuoteMeta(lo))
				continue
			}
			b.WriteString("[" + up + lo + "]")
		}
		alts[i] = b.String()
	}
	return "^(?:" + strings.Join(alts, "|") + ")$"
}

// caselessEnum is a string parameter that is one of words in any case: the
// enum (for tools that offer a choice) or the caseless pattern.
func caselessEnum(words ...string) obj {
	return obj{"anyOf": []obj{
		{"type": "string", "enum": words},
		{"type": "string", "pattern": caseless(words...)},
	}}
}

// withDesc wraps a schema with a description (beside a $ref, in 3.1).
func withDesc(o obj, desc string) obj {
	c := obj{"description": desc}
	for k, v := range o {
		c[k] = v
	}
	return c
}

func withDefault(o obj, def any) obj {
	o["default"] = def
	return o
}

// withLocation declares the Location header of a 201.
func withLocation(resp obj) obj {
	resp["headers"] = obj{"Location": obj{"description": "the path of the created resource", "required": true,
		"schema": obj{"type": "string", "pattern": "^/api/"}}}
	return resp
}
