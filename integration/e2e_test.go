package integration_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/nvs"
)

// End-to-end tests: every admin endpoint of SPEC §2 (rotation aside) and the
// device API of §3 through a running espmdm against the real services.

type modelDTO struct {
	ID              int64           `json:"id"`
	Code            string          `json:"code"`
	Name            string          `json:"name"`
	FirmwareVersion *string         `json:"firmware_version"`
	ConfigSchema    json.RawMessage `json:"config_schema"`
	CreatedAt       string          `json:"created_at"`
	UpdatedAt       string          `json:"updated_at"`
}

type deviceDTO struct {
	ID            int64           `json:"id"`
	Key           string          `json:"key"`
	DeviceModelID int64           `json:"device_model_id"`
	ClientID      string          `json:"client_id"`
	Config        json.RawMessage `json:"config"`
	Active        bool            `json:"active"`
	RotationState string          `json:"rotation_state"`
	LastSeenAt    *string         `json:"last_seen_at"`
	CreatedAt     string          `json:"created_at"`
}

type firmwareDTO struct {
	ID      int64  `json:"id"`
	Version string `json:"version"`
	Chip    string `json:"chip"`
	ChipID  int    `json:"chip_id"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
	// Only in upload responses.
	SecureVersion uint32   `json:"secure_version"`
	Warnings      []string `json:"warnings"`
}

type identityDTO struct {
	ClientID       string   `json:"client_id"`
	Exists         bool     `json:"exists"`
	Enabled        bool     `json:"enabled"`
	ServiceAccount bool     `json:"service_account"`
	Problems       []string `json:"problems"`
}

type provisioningDTO struct {
	DeviceKey    string `json:"device_key"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	TokenURL     string `json:"token_url"`
	BaseURL      string `json:"base_url"`
	MQTTURL      string `json:"mqtt_url"`
	MQTTPassword string `json:"mqtt_password"`
	WiFiSSID     string `json:"wifi_ssid"`
	WiFiPassword string `json:"wifi_password"`
}

func newModel(t *testing.T, s *server, schema any) modelDTO {
	t.Helper()
	body := map[string]any{"code": "e2e_" + randHex(4), "name": "E2E sensor"}
	if schema != nil {
		body["config_schema"] = schema
	}
	var m modelDTO
	s.do(http.MethodPost, "/api/device-models", s.admin, body).want(t, http.StatusCreated, &m)
	return m
}

func newDevice(t *testing.T, s *server, modelID int64, config string) deviceDTO {
	t.Helper()
	var d deviceDTO
	s.do(http.MethodPost, "/api/devices", s.admin, fmt.Sprintf(`{"device_model_id":%d,"config":%s}`, modelID, config)).
		want(t, http.StatusCreated, &d)
	return d
}

func firmwareImage(chip esp32image.ChipID, version string) []byte {
	desc := esp32imagetest.SampleDesc(chip)
	desc.Version = version
	return esp32imagetest.New(chip, 4, true, &desc).Bytes()
}

func TestE2EOperationsEndpoints(t *testing.T) {
	s := startServer(t, nil)
	s.do(http.MethodGet, "/health/live", "", nil).want(t, http.StatusOK, nil)
	var ready struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	r := s.do(http.MethodGet, "/health/ready", "", nil).want(t, http.StatusOK, nil)
	_ = json.Unmarshal(r.body, &ready)
	t.Logf("ready: %s", r.body)

	var spec struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	s.do(http.MethodGet, "/api/openapi.json", "", nil).want(t, http.StatusOK, &spec)
	if !strings.HasPrefix(spec.OpenAPI, "3.") {
		t.Errorf("openapi = %q, want 3.x", spec.OpenAPI)
	}
	for _, p := range []string{"/api/device-models", "/api/devices/{id}/provisioning", "/iot/config"} {
		if spec.Paths[p] == nil {
			t.Errorf("OpenAPI document lacks %s", p)
		}
	}
	docs := s.do(http.MethodGet, "/api/docs", "", nil).want(t, http.StatusOK, nil)
	if ct := docs.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("/api/docs Content-Type %q, want text/html", ct)
	}

	// One admin request so its route shows in the metrics.
	s.do(http.MethodGet, "/api/device-models", s.viewer, nil).want(t, http.StatusOK, nil)
	m := s.do(http.MethodGet, "/metrics", "", nil).want(t, http.StatusOK, nil)
	for _, want := range []string{
		`espmdm_http_requests_total{`, `route="/api/device-models"`,
		`espmdm_http_request_duration_seconds_bucket{`, `espmdm_keycloak_operations_total{`,
		`go_goroutines `,
		// Known operations are there from the start, at 0.
		`espmdm_keycloak_operations_total{op="SetSecret",result="error"} 0`,
		`espmdm_mqtt_operations_total{op="firmware_released",result="error"} 0`,
		`espmdm_rotation_events_total{event="restored",mode="restore"} 0`,
	} {
		if !bytes.Contains(m.body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestE2EAdminAuthentication(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, nil)
	d := newDevice(t, s, m.ID, `{}`)
	var prov provisioningDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=json", d.ID), s.admin, nil).want(t, http.StatusOK, &prov)
	s.keep(prov.ClientSecret)
	deviceTok := s.token(prov.ClientID, prov.ClientSecret)
	backendTok := s.token(s.st.AdminClientID, s.st.AdminClientSecret) // no mdm role

	forged := []byte(s.admin)
	forged[len(forged)-5] ^= 0x01
	if forged[len(forged)-5] == '-' || forged[len(forged)-5] == '_' {
		forged[len(forged)-5] = 'A'
	}
	noSig := s.admin[:strings.LastIndex(s.admin, ".")+1]

	cases := []struct {
		name, method, path, tok string
		body                    any
		want                    int
	}{
		{"no token read", http.MethodGet, "/api/device-models", "", nil, http.StatusUnauthorized},
		{"garbage token", http.MethodGet, "/api/device-models", "not-a-jwt", nil, http.StatusUnauthorized},
		{"forged signature", http.MethodGet, "/api/device-models", string(forged), nil, http.StatusUnauthorized},
		{"signature stripped", http.MethodGet, "/api/device-models", noSig, nil, http.StatusUnauthorized},
		{"device token read", http.MethodGet, "/api/device-models", deviceTok, nil, http.StatusUnauthorized},
		{"device token own record", http.MethodGet, fmt.Sprintf("/api/devices/%d", d.ID), deviceTok, nil, http.StatusUnauthorized},
		{"no role", http.MethodGet, "/api/devices", backendTok, nil, http.StatusForbidden},
		{"viewer write", http.MethodPost, "/api/device-models", s.viewer, map[string]string{"code": "v_" + randHex(3), "name": "x"}, http.StatusForbidden},
		{"viewer provisioning", http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning", d.ID), s.viewer, nil, http.StatusForbidden},
		{"viewer delete", http.MethodDelete, fmt.Sprintf("/api/devices/%d", d.ID), s.viewer, nil, http.StatusForbidden},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.do(c.method, c.path, c.tok, c.body).wantProblem(t, c.want)
		})
	}
	// Readers read, admins write.
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", d.ID), s.viewer, nil).want(t, http.StatusOK, nil)
	s.do(http.MethodGet, "/api/devices", s.admin, nil).want(t, http.StatusOK, nil)
	// The device itself is still there after the refused delete.
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, nil).want(t, http.StatusOK, nil)
	// A device token works where it belongs.
	s.do(http.MethodGet, "/iot/config", deviceTok, nil).want(t, http.StatusOK, nil)
}

func TestE2EAuthDisabled(t *testing.T) {
	s := startServer(t, map[string]string{"AUTH_DISABLED": "true"})
	s.do(http.MethodPost, "/api/device-models", "", map[string]string{"code": "open_" + randHex(3), "name": "open"}).
		want(t, http.StatusCreated, nil)
	s.do(http.MethodGet, "/api/device-models", "", nil).want(t, http.StatusOK, nil)
	// The device API stays authenticated.
	s.do(http.MethodGet, "/iot/config", "", nil).wantProblem(t, http.StatusUnauthorized)
	warned := false
	for _, e := range s.logs.All() {
		if strings.Contains(e.Message, "AUTH_DISABLED") && e.Level.String() == "warn" {
			warned = true
		}
	}
	if !warned {
		t.Error("no warning logged for AUTH_DISABLED=true")
	}
}

func TestE2EDeviceModels(t *testing.T) {
	s := startServer(t, nil)
	code := "e2e_" + randHex(4)
	schema := `{"type":"object","properties":{"interval":{"type":"integer","minimum":1}},"required":["interval"]}`
	var m modelDTO
	s.do(http.MethodPost, "/api/device-models", s.admin, fmt.Sprintf(`{"code":%q,"name":"Soil sensor","config_schema":%s}`, code, schema)).
		want(t, http.StatusCreated, &m)
	if m.Code != code || m.Name != "Soil sensor" || m.FirmwareVersion != nil || m.ID == 0 {
		t.Fatalf("created %+v", m)
	}
	if !strings.HasSuffix(m.CreatedAt, "Z") {
		t.Errorf("created_at %q is not RFC 3339 UTC", m.CreatedAt)
	}

	bad := []struct {
		name string
		body string
		want int
	}{
		{"duplicate code", fmt.Sprintf(`{"code":%q,"name":"again"}`, code), http.StatusConflict},
		{"code pattern", `{"code":"Bad-Code","name":"x"}`, http.StatusBadRequest},
		{"code too long", fmt.Sprintf(`{"code":%q,"name":"x"}`, strings.Repeat("a", 51)), http.StatusBadRequest},
		{"empty name", `{"code":"e2e_empty","name":""}`, http.StatusBadRequest},
		{"missing name", `{"code":"e2e_noname"}`, http.StatusBadRequest},
		{"malformed JSON", `{"code":`, http.StatusBadRequest},
		{"unknown member", `{"code":"e2e_x","name":"x","colour":"red"}`, http.StatusBadRequest},
		{"schema not a schema", `{"code":"e2e_bad_schema","name":"x","config_schema":{"type":12}}`, http.StatusBadRequest},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			s.do(http.MethodPost, "/api/device-models", s.admin, c.body).wantProblem(t, c.want)
		})
	}

	var got modelDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/device-models/%d", m.ID), s.viewer, nil).want(t, http.StatusOK, &got)
	if got.Code != code || !sameJSON(t, got.ConfigSchema, json.RawMessage(schema)) {
		t.Errorf("GET = %+v", got)
	}
	var list struct {
		DeviceModels []modelDTO `json:"device_models"`
	}
	s.do(http.MethodGet, "/api/device-models", s.viewer, nil).want(t, http.StatusOK, &list)
	if len(list.DeviceModels) != 1 || list.DeviceModels[0].ID != m.ID {
		t.Errorf("list = %+v, want just model %d", list.DeviceModels, m.ID)
	}
	s.do(http.MethodGet, "/api/device-models/999999", s.viewer, nil).wantProblem(t, http.StatusNotFound)
	s.do(http.MethodGet, "/api/device-models/abc", s.viewer, nil).wantProblem(t, http.StatusBadRequest)

	// PUT changes the name and the schema only; null clears the schema.
	s.do(http.MethodPut, fmt.Sprintf("/api/device-models/%d", m.ID), s.admin, `{"name":"Soil sensor v2"}`).want(t, http.StatusOK, &got)
	if got.Name != "Soil sensor v2" || got.Code != code || len(got.ConfigSchema) == 0 || string(got.ConfigSchema) == "null" {
		t.Errorf("after renaming: %+v", got)
	}
	s.do(http.MethodPut, fmt.Sprintf("/api/device-models/%d", m.ID), s.admin, `{"code":"other"}`).wantProblem(t, http.StatusBadRequest)
	s.do(http.MethodPut, fmt.Sprintf("/api/device-models/%d", m.ID), s.admin, `{"name":null}`).wantProblem(t, http.StatusBadRequest)
	s.do(http.MethodPut, "/api/device-models/999999", s.admin, `{"name":"x"}`).wantProblem(t, http.StatusNotFound)
	s.do(http.MethodPut, fmt.Sprintf("/api/device-models/%d", m.ID), s.admin, `{"config_schema":null}`).want(t, http.StatusOK, &got)
	if string(got.ConfigSchema) != "null" {
		t.Errorf("config_schema after null = %s", got.ConfigSchema)
	}

	// A model with devices cannot be deleted.
	d := newDevice(t, s, m.ID, `{"anything":true}`)
	// A schema its device's config does not match is refused, unless forced.
	strict := `{"config_schema":{"type":"object","required":["interval"]}}`
	path := fmt.Sprintf("/api/device-models/%d", m.ID)
	if detail := s.do(http.MethodPut, path, s.admin, strict).wantProblem(t, http.StatusConflict); !strings.Contains(detail, fmt.Sprintf("device ids %d", d.ID)) {
		t.Errorf("409 for a schema a device violates: %q, want the device named", detail)
	}
	s.do(http.MethodPut, path+"?force=true", s.admin, strict).want(t, http.StatusOK, nil)
	s.do(http.MethodPut, path, s.admin, `{"config_schema":null}`).want(t, http.StatusOK, nil)
	if detail := s.do(http.MethodDelete, fmt.Sprintf("/api/device-models/%d", m.ID), s.admin, nil).wantProblem(t, http.StatusConflict); !strings.Contains(detail, "still has a device") {
		t.Errorf("409 detail %q does not say the model still has a device", detail)
	}
	s.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, nil).want(t, http.StatusNoContent, nil)
	s.do(http.MethodDelete, fmt.Sprintf("/api/device-models/%d", m.ID), s.admin, nil).want(t, http.StatusNoContent, nil)
	s.do(http.MethodGet, fmt.Sprintf("/api/device-models/%d", m.ID), s.viewer, nil).wantProblem(t, http.StatusNotFound)
	s.do(http.MethodDelete, fmt.Sprintf("/api/device-models/%d", m.ID), s.admin, nil).wantProblem(t, http.StatusNotFound)
}

// sameJSON compares two JSON documents by value (PostgreSQL's jsonb does
// not keep member order).
func sameJSON(t *testing.T, a, b json.RawMessage) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("decode %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

func compact(t *testing.T, raw json.RawMessage) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatalf("compact %s: %v", raw, err)
	}
	return b.Bytes()
}

func TestE2EFirmware(t *testing.T) {
	const limit = 256 << 10
	s := startServer(t, map[string]string{"FIRMWARE_MAX_BYTES": strconv.Itoa(limit)})
	m := newModel(t, s, nil)
	msgs := subscribe(t, s.st, "iotsupport/"+m.Code+"/firmware")
	fwPath := fmt.Sprintf("/api/device-models/%d/firmware", m.ID)

	s.do(http.MethodGet, fwPath, s.viewer, nil).wantProblem(t, http.StatusNotFound)

	v1 := firmwareImage(esp32image.ChipESP32S3, "1.4.2")
	var fw firmwareDTO
	s.request(http.MethodPost, fwPath, s.admin, bytes.NewReader(v1), "Content-Type", "application/octet-stream").
		want(t, http.StatusCreated, &fw)
	sum := sha256.Sum256(v1)
	if fw.Version != "1.4.2" || fw.Chip != "esp32s3" || fw.SHA256 != hex.EncodeToString(sum[:]) || fw.Size != int64(len(v1)) {
		t.Fatalf("upload returned %+v", fw)
	}
	if p := nextMessage(t, msgs, "iotsupport/"+m.Code+"/firmware"); string(compact(t, p.Payload)) != `{"firmware_version":"1.4.2"}` || p.Retain {
		t.Errorf("firmware notification %q retain=%v", p.Payload, p.Retain)
	}
	var got modelDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/device-models/%d", m.ID), s.viewer, nil).want(t, http.StatusOK, &got)
	if got.FirmwareVersion == nil || *got.FirmwareVersion != "1.4.2" {
		t.Errorf("model firmware_version = %v, want 1.4.2", got.FirmwareVersion)
	}

	corruptSHA := bytes.Clone(v1)
	corruptSHA[len(corruptSHA)-40] ^= 0xFF // inside the last segment
	wrongChip := firmwareImage(esp32image.ChipESP32C3, "9.9.9")
	bad := []struct {
		name   string
		data   []byte
		status int
		detail string
	}{
		{"not an image", bytes.Repeat([]byte("hello, world"), 20), http.StatusBadRequest, "magic"},
		{"truncated", v1[:len(v1)/2], http.StatusBadRequest, ""},
		{"corrupt data", corruptSHA, http.StatusBadRequest, ""},
		{"wrong chip", wrongChip, http.StatusBadRequest, "esp32c3"},
		{"empty", nil, http.StatusBadRequest, ""},
		{"too large", bytes.Repeat([]byte{0xE9}, limit+1), http.StatusRequestEntityTooLarge, ""},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			detail := s.request(http.MethodPost, fwPath, s.admin, bytes.NewReader(c.data), "Content-Type", "application/octet-stream").
				wantProblem(t, c.status)
			if !strings.Contains(detail, c.detail) {
				t.Errorf("detail %q does not mention %q", detail, c.detail)
			}
		})
	}
	s.request(http.MethodPost, "/api/device-models/999999/firmware", s.admin, bytes.NewReader(v1), "Content-Type", "application/octet-stream").
		wantProblem(t, http.StatusNotFound)

	// A second version, as a multipart upload, becomes the current one.
	v2 := firmwareImage(esp32image.ChipESP32S3, "1.5.0")
	body, ct := multipartBody(t, v2)
	s.request(http.MethodPost, fwPath, s.admin, body, "Content-Type", ct).want(t, http.StatusCreated, &fw)
	if fw.Version != "1.5.0" {
		t.Fatalf("multipart upload returned %+v", fw)
	}
	var hist struct {
		Versions []firmwareDTO `json:"versions"`
	}
	s.do(http.MethodGet, fwPath+"/versions", s.viewer, nil).want(t, http.StatusOK, &hist)
	if len(hist.Versions) != 2 || hist.Versions[0].Version != "1.5.0" || hist.Versions[1].Version != "1.4.2" {
		t.Errorf("history = %+v, want 1.5.0 then 1.4.2 (the refused uploads not recorded)", hist.Versions)
	}
	s.do(http.MethodGet, "/api/device-models/999999/firmware/versions", s.viewer, nil).wantProblem(t, http.StatusNotFound)

	// Download: the current binary, its ETag, conditional and range requests.
	dl := s.request(http.MethodGet, fwPath, s.viewer, nil).want(t, http.StatusOK, nil)
	if !bytes.Equal(dl.body, v2) {
		t.Fatalf("download: %d bytes, not the uploaded %d", len(dl.body), len(v2))
	}
	etag := dl.header.Get("ETag")
	if !strings.Contains(etag, fw.SHA256) {
		t.Errorf("ETag %q does not carry the SHA-256 %s", etag, fw.SHA256)
	}
	s.request(http.MethodGet, fwPath, s.viewer, nil, "If-None-Match", etag).want(t, http.StatusNotModified, nil)
	part := s.request(http.MethodGet, fwPath, s.viewer, nil, "Range", "bytes=16-31").want(t, http.StatusPartialContent, nil)
	if !bytes.Equal(part.body, v2[16:32]) || part.header.Get("Content-Range") != fmt.Sprintf("bytes 16-31/%d", len(v2)) {
		t.Errorf("range: %x, Content-Range %q", part.body, part.header.Get("Content-Range"))
	}
	// A range past the end is ignored: the whole file (RFC 9110 §14.2).
	if whole := s.request(http.MethodGet, fwPath, s.viewer, nil, "Range", fmt.Sprintf("bytes=%d-", len(v2))).
		want(t, http.StatusOK, nil); !bytes.Equal(whole.body, v2) || whole.header.Get("Content-Range") != "" {
		t.Errorf("range past the end: %d bytes, Content-Range %q; want the whole file", len(whole.body), whole.header.Get("Content-Range"))
	}

	// Deleting the model deletes its binaries from FIRMWARE_DIR.
	dir := filepath.Join(s.cfg.FirmwareDir, m.Code)
	if files, err := os.ReadDir(dir); err != nil || len(files) != 2 {
		t.Fatalf("%s holds %d files (%v), want the 2 versions", dir, len(files), err)
	}
	s.do(http.MethodDelete, fmt.Sprintf("/api/device-models/%d", m.ID), s.admin, nil).want(t, http.StatusNoContent, nil)
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s after the model was deleted: %v, want it gone", dir, err)
	}
	s.do(http.MethodGet, fwPath, s.viewer, nil).wantProblem(t, http.StatusNotFound)
}

// TestE2EFirmwareSecureVersion: re-uploading the current image changes
// nothing; an image anti-rollback devices would refuse is refused unless
// forced, and the response says where an upload goes backwards.
func TestE2EFirmwareSecureVersion(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, nil)
	msgs := subscribe(t, s.st, "iotsupport/"+m.Code+"/firmware")
	fwPath := fmt.Sprintf("/api/device-models/%d/firmware", m.ID)
	image := func(version string, secure uint32) []byte {
		desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
		desc.Version, desc.SecureVersion = version, secure
		return esp32imagetest.New(esp32image.ChipESP32, 3, true, &desc).Bytes()
	}
	upload := func(query string, img []byte, status int) firmwareDTO {
		t.Helper()
		var fw firmwareDTO
		s.request(http.MethodPost, fwPath+query, s.admin, bytes.NewReader(img), "Content-Type", "application/octet-stream").
			want(t, status, &fw)
		return fw
	}
	v2 := image("2.0.0", 2)
	first := upload("", v2, http.StatusCreated)
	if first.SecureVersion != 2 || first.Warnings == nil || len(first.Warnings) != 0 {
		t.Fatalf("first upload = %+v, want secure_version 2 and no warnings", first)
	}
	nextMessage(t, msgs, "iotsupport/"+m.Code+"/firmware")
	if again := upload("", v2, http.StatusOK); again.ID != first.ID {
		t.Errorf("re-upload = %+v, want the existing record %d", again, first.ID)
	}

	older := image("2.1.0", 1)
	detail := s.request(http.MethodPost, fwPath, s.admin, bytes.NewReader(older), "Content-Type", "application/octet-stream").
		wantProblem(t, http.StatusConflict)
	if !strings.Contains(detail, "secure_version 1 is lower than 2") || !strings.Contains(detail, "force") {
		t.Errorf("409 detail %q does not name both secure versions and force", detail)
	}
	forced := upload("?force=true", older, http.StatusCreated)
	if forced.SecureVersion != 1 || len(forced.Warnings) != 1 || !strings.Contains(forced.Warnings[0], "secure_version goes backwards from 2") {
		t.Errorf("forced upload = %+v, want one secure_version warning", forced)
	}
	if p := nextMessage(t, msgs, "iotsupport/"+m.Code+"/firmware"); !strings.Contains(string(p.Payload), "2.1.0") {
		t.Errorf("forced release notified %q, want 2.1.0", p.Payload)
	}
	select {
	case p := <-msgs:
		t.Errorf("unexpected notification %q (the identical re-upload must not notify)", p.Payload)
	default:
	}
	var hist struct {
		Versions []firmwareDTO `json:"versions"`
	}
	s.do(http.MethodGet, fwPath+"/versions", s.viewer, nil).want(t, http.StatusOK, &hist)
	if len(hist.Versions) != 2 || hist.Versions[0].SecureVersion != 1 || hist.Versions[1].SecureVersion != 2 {
		t.Errorf("history = %+v, want the forced 2.1.0 (secure 1) over 2.0.0 (secure 2)", hist.Versions)
	}
}

func TestE2EDevices(t *testing.T) {
	s := startServer(t, nil)
	schema := map[string]any{
		"type":       "object",
		"properties": map[string]any{"interval": map[string]any{"type": "integer", "minimum": 1}},
		"required":   []string{"interval"},
	}
	m := newModel(t, s, schema)
	other := newModel(t, s, nil)
	keyRE := regexp.MustCompile(`^[a-z0-9]{8}$`)

	var devs []deviceDTO
	for i := range 5 {
		d := newDevice(t, s, m.ID, fmt.Sprintf(`{"interval":%d}`, i+1))
		if !keyRE.MatchString(d.Key) || d.ClientID != "iotdevice-"+m.Code+"-"+d.Key || !d.Active || d.RotationState != "OK" {
			t.Fatalf("created %+v", d)
		}
		// Its Keycloak client exists, confidential, with a service account.
		found := keycloakClients(t, s.st, d.ClientID)
		if len(found) != 1 || found[0]["serviceAccountsEnabled"] != true || found[0]["publicClient"] != false ||
			found[0]["standardFlowEnabled"] != false || found[0]["directAccessGrantsEnabled"] != false {
			t.Fatalf("Keycloak client of %s: %v", d.ClientID, found)
		}
		devs = append(devs, d)
	}
	var inactive deviceDTO
	s.do(http.MethodPost, "/api/devices", s.admin, fmt.Sprintf(`{"device_model_id":%d,"config":{},"active":false}`, other.ID)).
		want(t, http.StatusCreated, &inactive)

	bad := []struct{ name, body string }{
		{"config not an object", fmt.Sprintf(`{"device_model_id":%d,"config":[1,2]}`, m.ID)},
		{"config missing", fmt.Sprintf(`{"device_model_id":%d}`, m.ID)},
		{"model missing", `{"config":{}}`},
		{"active not a bool", fmt.Sprintf(`{"device_model_id":%d,"config":{},"active":"yes"}`, other.ID)},
		{"malformed", `{"device_model_id":`},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			s.do(http.MethodPost, "/api/devices", s.admin, c.body).wantProblem(t, http.StatusBadRequest)
		})
	}
	// Well formed, but refused by the current state: 409 naming the field.
	conflicts := []struct{ name, body, field string }{
		{"config against schema", fmt.Sprintf(`{"device_model_id":%d,"config":{"interval":"often"}}`, m.ID), "config"},
		{"config missing required", fmt.Sprintf(`{"device_model_id":%d,"config":{}}`, m.ID), "config"},
		{"unknown model", `{"device_model_id":999999,"config":{}}`, "device_model_id"},
	}
	for _, c := range conflicts {
		t.Run(c.name, func(t *testing.T) {
			r := s.do(http.MethodPost, "/api/devices", s.admin, c.body)
			r.wantProblem(t, http.StatusConflict)
			var p struct {
				Field string `json:"field"`
			}
			if err := json.Unmarshal(r.body, &p); err != nil || p.Field != c.field {
				t.Errorf("problem field %q (%v), want %q", p.Field, err, c.field)
			}
		})
	}

	// Pages of two walk all devices in id order.
	var seen []int64
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		var page struct {
			Devices    []deviceDTO `json:"devices"`
			NextCursor *string     `json:"next_cursor"`
		}
		path := "/api/devices?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		s.do(http.MethodGet, path, s.viewer, nil).want(t, http.StatusOK, &page)
		if len(page.Devices) > 2 {
			t.Fatalf("page of %d devices with limit=2", len(page.Devices))
		}
		for _, d := range page.Devices {
			seen = append(seen, d.ID)
		}
		if page.NextCursor == nil {
			break
		}
		cursor = *page.NextCursor
	}
	want := []int64{devs[0].ID, devs[1].ID, devs[2].ID, devs[3].ID, devs[4].ID, inactive.ID}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("paged ids %v, want %v", seen, want)
	}
	count := func(query string) int {
		t.Helper()
		var page struct {
			Devices []deviceDTO `json:"devices"`
		}
		s.do(http.MethodGet, "/api/devices?"+query, s.viewer, nil).want(t, http.StatusOK, &page)
		return len(page.Devices)
	}
	for q, n := range map[string]int{
		fmt.Sprintf("model_id=%d", m.ID):              5,
		fmt.Sprintf("model_id=%d", other.ID):          1,
		"active=false":                                1,
		"active=true":                                 5,
		"rotation_state=OK":                           6,
		"rotation_state=PENDING":                      0,
		fmt.Sprintf("model_id=%d&active=false", m.ID): 0,
	} {
		if got := count(q); got != n {
			t.Errorf("?%s: %d devices, want %d", q, got, n)
		}
	}
	for _, q := range []string{"limit=0", "limit=abc", "limit=100000", "cursor=%%%", "rotation_state=BOGUS", "active=maybe", "model_id=x"} {
		t.Run("list "+q, func(t *testing.T) {
			s.do(http.MethodGet, "/api/devices?"+q, s.viewer, nil).wantProblem(t, http.StatusBadRequest)
		})
	}

	// GET and PUT; a config change nudges the device over MQTT.
	d := devs[0]
	msgs := subscribe(t, s.st, "iotsupport/"+d.ClientID+"/config")
	var got deviceDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", d.ID), s.viewer, nil).want(t, http.StatusOK, &got)
	if got.Key != d.Key || string(compact(t, got.Config)) != `{"interval":1}` {
		t.Errorf("GET = %+v", got)
	}
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, `{"config":{"interval":60},"active":true}`).want(t, http.StatusOK, &got)
	if string(compact(t, got.Config)) != `{"interval":60}` {
		t.Errorf("after PUT config = %s", got.Config)
	}
	if p := nextMessage(t, msgs, "iotsupport/"+d.ClientID+"/config"); len(p.Payload) != 0 && p.Retain {
		t.Errorf("config notification retained")
	}
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, `{"config":{"interval":0}}`).wantProblem(t, http.StatusConflict)
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, `{"active":null}`).wantProblem(t, http.StatusBadRequest)
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, `{"key":"aaaaaaaa"}`).wantProblem(t, http.StatusBadRequest)
	s.do(http.MethodPut, "/api/devices/999999", s.admin, `{"active":false}`).wantProblem(t, http.StatusNotFound)
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", d.ID), s.viewer, nil).want(t, http.StatusOK, &got)
	if string(compact(t, got.Config)) != `{"interval":60}` {
		t.Errorf("a refused PUT changed the config to %s", got.Config)
	}
	s.do(http.MethodGet, "/api/devices/999999", s.viewer, nil).wantProblem(t, http.StatusNotFound)

	// Delete removes the row, then the client.
	gone := devs[4]
	s.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", gone.ID), s.admin, nil).want(t, http.StatusNoContent, nil)
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", gone.ID), s.viewer, nil).wantProblem(t, http.StatusNotFound)
	s.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", gone.ID), s.admin, nil).wantProblem(t, http.StatusNotFound)
	if found := keycloakClients(t, s.st, gone.ClientID); len(found) != 0 {
		t.Errorf("client %s still in Keycloak after the device was deleted", gone.ClientID)
	}
}

// TestE2EProvisioningAndDeviceAPI follows one device from creation to its
// first authenticated calls: the NVS partition it is flashed with holds
// credentials Keycloak accepts, and its token opens /iot.
func TestE2EProvisioningAndDeviceAPI(t *testing.T) {
	// espmdm's own broker account (in the stack's MQTT_URL) must not
	// reach the devices.
	brokerPassword := integration.Shared(t).MQTTAdminPassword
	s := startServer(t, map[string]string{"MQTT_URL": integration.Shared(t).MQTTAdminURL()})
	s.keep(brokerPassword)
	m := newModel(t, s, nil)
	d := newDevice(t, s, m.ID, `{"led":"blue","interval":30}`)
	provPath := fmt.Sprintf("/api/devices/%d/provisioning", d.ID)

	var img struct {
		Partition string `json:"partition"`
		Size      int    `json:"size"`
		Data      []byte `json:"data"`
	}
	s.do(http.MethodGet, provPath, s.admin, nil).want(t, http.StatusOK, &img)
	if img.Partition != "nvs" || img.Size != 0x6000 || len(img.Data) != 0x6000 {
		t.Fatalf("provisioning: partition %q size %#x with %d bytes, want nvs 0x6000", img.Partition, img.Size, len(img.Data))
	}
	entries, err := nvs.Decode(img.Data)
	if err != nil {
		t.Fatalf("the partition does not decode: %v", err)
	}
	fields := map[string]string{}
	var order []string
	for _, e := range entries {
		if e.Type == nvs.TypeNamespace {
			continue
		}
		if e.Namespace != "prov" || e.Type != nvs.TypeString {
			t.Errorf("entry %s: want a string in namespace prov", e)
			continue
		}
		order = append(order, e.Key)
		fields[e.Key] = e.Value.(string)
	}
	s.keep(fields["client_secret"], fields["mqtt_password"])
	// mqtt_password right after mqtt_url (SPEC §19; §5's order otherwise).
	wantOrder := "device_key client_id client_secret token_url base_url mqtt_url mqtt_password wifi_ssid wifi_password"
	if strings.Join(order, " ") != wantOrder {
		t.Errorf("NVS keys %v, want %s", order, wantOrder)
	}
	if fields["device_key"] != d.Key || fields["client_id"] != d.ClientID || fields["token_url"] != s.cfg.OIDCTokenURL ||
		fields["base_url"] != s.base || fields["mqtt_url"] != s.st.MQTTURL || fields["wifi_ssid"] != "lab-net" {
		t.Errorf("NVS fields wrong (device %s)", d.ClientID)
	}

	// The same partition as a file for esptool.
	bin := s.request(http.MethodGet, provPath+"?format=bin", s.admin, nil).want(t, http.StatusOK, nil)
	if !bytes.Equal(bin.body, img.Data) || bin.header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("format=bin: %d bytes (%s), want the %d bytes of the base64 image", len(bin.body), bin.header.Get("Content-Type"), len(img.Data))
	}

	var small struct {
		Size int    `json:"size"`
		Data []byte `json:"data"`
	}
	s.do(http.MethodGet, provPath+"?size=0x3000", s.admin, nil).want(t, http.StatusOK, &small)
	if small.Size != 0x3000 || len(small.Data) != 0x3000 {
		t.Errorf("?size=0x3000 gave %#x / %d bytes", small.Size, len(small.Data))
	}
	for _, q := range []string{"?size=0x2000", "?size=0x3001", "?size=0x200000", "?size=lots", "?format=xml", "?format=json&size=0x2000", "?size=", "?size=%2B12288"} {
		t.Run("provisioning "+q, func(t *testing.T) {
			s.do(http.MethodGet, provPath+q, s.admin, nil).wantProblem(t, http.StatusBadRequest)
		})
	}
	// A valid size has no use with format=json, and is accepted.
	s.do(http.MethodGet, provPath+"?format=json&size=0x3000", s.admin, nil).want(t, http.StatusOK, nil)
	s.do(http.MethodGet, "/api/devices/999999/provisioning", s.admin, nil).wantProblem(t, http.StatusNotFound)

	var prov provisioningDTO
	s.do(http.MethodGet, provPath+"?format=json", s.admin, nil).want(t, http.StatusOK, &prov)
	if prov.MQTTURL != s.st.MQTTURL {
		t.Errorf("format=json mqtt_url is not the broker URL without credentials")
	}
	if prov.ClientSecret != fields["client_secret"] || prov.MQTTPassword != fields["mqtt_password"] || len(prov.MQTTPassword) < 22 ||
		prov.ClientID != d.ClientID || prov.DeviceKey != d.Key ||
		prov.WiFiPassword != s.cfg.WiFiPassword || prov.TokenURL != s.cfg.OIDCTokenURL {
		t.Errorf("format=json disagrees with the NVS image for %s", d.ClientID)
	}

	// The device authenticates with what it was flashed with.
	devTok := s.token(fields["client_id"], fields["client_secret"])
	c := claims(t, devTok)
	if !contains(realmRoles(c), "iotdevice") {
		t.Errorf("device token realm roles %v lack iotdevice", realmRoles(c))
	}
	if !audienceHas(c["aud"], s.st.DeviceAudience) {
		t.Errorf("device token aud %v lacks %s", c["aud"], s.st.DeviceAudience)
	}

	cfg := s.do(http.MethodGet, "/iot/config", devTok, nil).want(t, http.StatusOK, nil)
	if !sameJSON(t, cfg.body, json.RawMessage(`{"led":"blue","interval":30}`)) {
		t.Errorf("/iot/config = %s", cfg.body)
	}
	var dev deviceDTO
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d", d.ID), s.viewer, nil).want(t, http.StatusOK, &dev)
	if dev.LastSeenAt == nil {
		t.Error("last_seen_at not set by an authenticated /iot call")
	}

	var ver struct {
		FirmwareVersion *string `json:"firmware_version"`
	}
	s.do(http.MethodGet, "/iot/firmware-version", devTok, nil).want(t, http.StatusOK, &ver)
	if ver.FirmwareVersion != nil {
		t.Errorf("firmware_version before any upload = %q, want null", *ver.FirmwareVersion)
	}
	s.do(http.MethodGet, "/iot/firmware", devTok, nil).wantProblem(t, http.StatusNotFound)
	image := firmwareImage(esp32image.ChipESP32C6, "2.0.1")
	s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin, bytes.NewReader(image),
		"Content-Type", "application/octet-stream").want(t, http.StatusCreated, nil)
	s.do(http.MethodGet, "/iot/firmware-version", devTok, nil).want(t, http.StatusOK, &ver)
	if ver.FirmwareVersion == nil || *ver.FirmwareVersion != "2.0.1" {
		t.Errorf("firmware_version = %v, want 2.0.1", ver.FirmwareVersion)
	}
	fw := s.do(http.MethodGet, "/iot/firmware", devTok, nil).want(t, http.StatusOK, nil)
	if !bytes.Equal(fw.body, image) {
		t.Errorf("/iot/firmware: %d bytes, not the uploaded %d", len(fw.body), len(image))
	}
	s.request(http.MethodGet, "/iot/firmware", devTok, nil, "If-None-Match", fw.header.Get("ETag")).want(t, http.StatusNotModified, nil)
	part := s.request(http.MethodGet, "/iot/firmware", devTok, nil, "Range", "bytes=0-7").want(t, http.StatusPartialContent, nil)
	if !bytes.Equal(part.body, image[:8]) {
		t.Errorf("/iot/firmware range = %x", part.body)
	}

	// Tokens that are not this device's are refused with 401, never 500.
	forged := []byte(devTok)
	forged[len(forged)-3] ^= 0x02
	for name, tok := range map[string]string{
		"no token": "", "garbage": "abc.def.ghi", "operator token": s.admin, "forged": string(forged),
		"admin service account": s.token(s.st.AdminClientID, s.st.AdminClientSecret),
	} {
		t.Run("iot "+name, func(t *testing.T) {
			s.do(http.MethodGet, "/iot/config", tok, nil).wantProblem(t, http.StatusUnauthorized)
		})
	}

	// Identity: status, repair after the client vanished from Keycloak.
	idPath := fmt.Sprintf("/api/devices/%d/identity", d.ID)
	var id identityDTO
	s.do(http.MethodGet, idPath, s.viewer, nil).want(t, http.StatusOK, &id)
	if !id.Exists || !id.Enabled || !id.ServiceAccount || len(id.Problems) != 0 || id.ClientID != d.ClientID {
		t.Errorf("identity = %+v, want a healthy client", id)
	}
	deleteKeycloakClient(t, s.st, d.ClientID)
	s.do(http.MethodGet, idPath, s.viewer, nil).want(t, http.StatusOK, &id)
	if id.Exists {
		t.Errorf("identity = %+v after the client was deleted, want exists=false", id)
	}
	s.do(http.MethodPost, idPath+"/sync", s.viewer, nil).wantProblem(t, http.StatusForbidden)
	s.do(http.MethodPost, idPath+"/sync", s.admin, nil).want(t, http.StatusOK, &id)
	if !id.Exists || !id.ServiceAccount || len(id.Problems) != 0 {
		t.Errorf("identity after sync = %+v", id)
	}
	s.do(http.MethodGet, "/api/devices/999999/identity", s.viewer, nil).wantProblem(t, http.StatusNotFound)
	// The recreated client works with the secret provisioning now hands out.
	s.do(http.MethodGet, provPath+"?format=json", s.admin, nil).want(t, http.StatusOK, &prov)
	s.keep(prov.ClientSecret)
	devTok = s.token(prov.ClientID, prov.ClientSecret)
	s.do(http.MethodGet, "/iot/config", devTok, nil).want(t, http.StatusOK, nil)

	// An inactive device is refused with 403.
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, `{"active":false}`).want(t, http.StatusOK, nil)
	s.do(http.MethodGet, "/iot/config", devTok, nil).wantProblem(t, http.StatusForbidden)
	s.do(http.MethodGet, "/iot/firmware", devTok, nil).wantProblem(t, http.StatusForbidden)
	// A deleted device's token is refused with 401.
	s.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, nil).want(t, http.StatusNoContent, nil)
	s.do(http.MethodGet, "/iot/config", devTok, nil).wantProblem(t, http.StatusUnauthorized)
}

func audienceHas(aud any, want string) bool {
	switch v := aud.(type) {
	case string:
		return v == want
	case []any:
		for _, a := range v {
			if a == want {
				return true
			}
		}
	}
	return false
}
