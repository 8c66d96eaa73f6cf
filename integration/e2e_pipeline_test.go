package integration_test

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
)

// pipelineFirmware is GET /api/pipeline/models/{code}/firmware.
type pipelineFirmware struct {
	ModelCode       string  `json:"model_code"`
	FirmwareVersion *string `json:"firmware_version"`
	SHA256          *string `json:"sha256"`
	SecureVersion   *uint32 `json:"secure_version"`
}

// imageWith is a valid image of chip with version and secure_version.
func imageWith(chip esp32image.ChipID, version string, secure uint32) []byte {
	desc := esp32imagetest.SampleDesc(chip)
	desc.Version, desc.SecureVersion = version, secure
	return esp32imagetest.New(chip, 4, true, &desc).Bytes()
}

// TestE2EPipeline: a token of the pipeline's client (realm role
// mdm-pipeline only) uploads firmware by model code with the admin upload's
// checks and audit, reads the current version, and is refused everywhere
// else; admin and viewer tokens are refused on the pipeline's routes.
func TestE2EPipeline(t *testing.T) {
	s := startServer(t, nil)
	pipe := s.token(s.st.PipelineClientID, s.st.PipelineClientSecret)
	m := newModel(t, s, nil)
	path := "/api/pipeline/models/" + m.Code + "/firmware"
	octet := func(tok, p string, img []byte) response {
		return s.request(http.MethodPost, p, tok, bytes.NewReader(img), "Content-Type", "application/octet-stream")
	}

	var cur pipelineFirmware
	s.do(http.MethodGet, path, pipe, nil).want(t, http.StatusOK, &cur)
	if cur.ModelCode != m.Code || cur.FirmwareVersion != nil || cur.SHA256 != nil {
		t.Errorf("current firmware before any upload = %+v, want the code and nulls", cur)
	}

	// An upload by code, then the same image again: unchanged.
	var up firmwareDTO
	r := octet(pipe, path, imageWith(esp32image.ChipESP32C3, "1.0.0", 3)).want(t, http.StatusCreated, &up)
	if up.Version != "1.0.0" || up.Chip != "esp32c3" || len(up.Warnings) != 0 {
		t.Errorf("upload = %+v, want 1.0.0 for esp32c3 without warnings", up)
	}
	if loc := r.header.Get("Location"); loc != path {
		t.Errorf("Location = %q, want %s", loc, path)
	}
	octet(pipe, path, imageWith(esp32image.ChipESP32C3, "1.0.0", 3)).want(t, http.StatusOK, nil)
	var model modelDTO
	s.do(http.MethodGet, "/api/device-models/"+strconv.FormatInt(m.ID, 10), s.admin, nil).want(t, http.StatusOK, &model)
	if model.FirmwareVersion == nil || *model.FirmwareVersion != "1.0.0" {
		t.Errorf("the model's firmware_version = %v after the pipeline's upload, want 1.0.0", model.FirmwareVersion)
	}

	// Multipart "file", as curl -F sends it.
	body, ct := multipartBody(t, imageWith(esp32image.ChipESP32C3, "1.1.0", 3))
	s.request(http.MethodPost, path, pipe, body, "Content-Type", ct).want(t, http.StatusCreated, &up)
	s.do(http.MethodGet, path, pipe, nil).want(t, http.StatusOK, &cur)
	if cur.FirmwareVersion == nil || *cur.FirmwareVersion != "1.1.0" || cur.SHA256 == nil || *cur.SHA256 != up.SHA256 ||
		cur.SecureVersion == nil || *cur.SecureVersion != 3 {
		t.Errorf("current firmware = %+v, want 1.1.0 with sha256 %s and secure_version 3", cur, up.SHA256)
	}

	// The admin upload's rules: a lower secure_version is a 409 unless
	// forced (then a warning), another chip and a broken image are
	// refused.
	if d := octet(pipe, path, imageWith(esp32image.ChipESP32C3, "1.2.0", 2)).wantProblem(t, http.StatusConflict); !strings.Contains(d, "secure_version") {
		t.Errorf("lower secure_version: detail %q does not name secure_version", d)
	}
	octet(pipe, path+"?force=true", imageWith(esp32image.ChipESP32C3, "1.2.0", 2)).want(t, http.StatusCreated, &up)
	if len(up.Warnings) == 0 {
		t.Error("a forced lower secure_version gave no warning")
	}
	if d := octet(pipe, path, imageWith(esp32image.ChipESP32S3, "1.3.0", 3)).wantProblem(t, http.StatusBadRequest); !strings.Contains(d, "esp32c3") {
		t.Errorf("another chip: detail %q does not name the model's chip", d)
	}
	octet(pipe, path, []byte("not an image")).wantProblem(t, http.StatusBadRequest)
	octet(pipe, "/api/pipeline/models/no_such_"+randHex(3)+"/firmware", imageWith(esp32image.ChipESP32C3, "1.0.0", 3)).
		wantProblem(t, http.StatusNotFound)
	octet(pipe, "/api/pipeline/models/Not-A-Code/firmware", imageWith(esp32image.ChipESP32C3, "1.0.0", 3)).
		wantProblem(t, http.StatusBadRequest)

	// An ELF beside the image that is not the one the image names: refused
	// naming both digests, nothing stored.
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for name, data := range map[string][]byte{"file": imageWith(esp32image.ChipESP32C3, "1.4.0", 3), "elf": []byte("\x7fELF...")} {
		w, _ := mw.CreateFormFile(name, name)
		_, _ = w.Write(data)
	}
	_ = mw.Close()
	if d := s.request(http.MethodPost, path, pipe, &buf, "Content-Type", mw.FormDataContentType()).
		wantProblem(t, http.StatusBadRequest); !strings.Contains(d, "app_elf_sha256") {
		t.Errorf("upload with another ELF: detail %q, want it to name the image's app_elf_sha256", d)
	}
	s.do(http.MethodGet, path, pipe, nil).want(t, http.StatusOK, &cur)
	if cur.FirmwareVersion == nil || *cur.FirmwareVersion != "1.2.0" {
		t.Errorf("current firmware after refused uploads = %v, want 1.2.0", cur.FirmwareVersion)
	}

	// The pipeline token everywhere else: 403 naming its role (401 on the
	// device API, which takes device tokens only).
	for _, c := range []struct{ method, path, body string }{
		{http.MethodGet, "/api/device-models", ""},
		{http.MethodGet, "/api/device-models/" + strconv.FormatInt(m.ID, 10), ""},
		{http.MethodPost, "/api/device-models", `{"code":"x_` + randHex(3) + `","name":"x"}`},
		{http.MethodGet, "/api/device-models/" + strconv.FormatInt(m.ID, 10) + "/firmware", ""},
		{http.MethodGet, "/api/devices", ""},
		{http.MethodPost, "/api/devices", `{"device_model_id":` + strconv.FormatInt(m.ID, 10) + `,"config":{}}`},
		{http.MethodPost, "/api/devices/batch", `{"device_model_id":` + strconv.FormatInt(m.ID, 10) + `,"count":1}`},
		{http.MethodGet, "/api/audit", ""},
		{http.MethodPost, "/api/rotation/trigger", ""},
	} {
		var in any
		if c.body != "" {
			in = c.body
		}
		if d := s.do(c.method, c.path, pipe, in).wantProblem(t, http.StatusForbidden); !strings.Contains(d, "mdm-pipeline") {
			t.Errorf("%s %s with the pipeline token: detail %q does not name mdm-pipeline", c.method, c.path, d)
		}
	}
	octet(pipe, "/api/device-models/"+strconv.FormatInt(m.ID, 10)+"/firmware", imageWith(esp32image.ChipESP32C3, "9.0.0", 3)).wantProblem(t, http.StatusForbidden)
	s.do(http.MethodGet, "/iot/config", pipe, nil).wantProblem(t, http.StatusUnauthorized)

	// Admin and viewer tokens do not hold the pipeline role.
	for name, tok := range map[string]string{"admin": s.admin, "viewer": s.viewer} {
		if d := s.do(http.MethodGet, path, tok, nil).wantProblem(t, http.StatusForbidden); !strings.Contains(d, "mdm-pipeline") {
			t.Errorf("GET %s with the %s token: detail %q does not name mdm-pipeline", path, name, d)
		}
		octet(tok, path, imageWith(esp32image.ChipESP32C3, "9.0.0", 3)).wantProblem(t, http.StatusForbidden)
	}
	s.do(http.MethodGet, path, "", nil).wantProblem(t, http.StatusUnauthorized)

	// The audit names the pipeline's client as the uploader.
	entries, _ := auditLog(t, s, "kind=firmware_uploaded", 100)
	n := 0
	for _, e := range entries {
		n++
		if e.Actor.Type != "admin" || e.Actor.ClientID != s.st.PipelineClientID || e.Actor.Name != "service-account-"+s.st.PipelineClientID {
			t.Errorf("firmware_uploaded actor = %+v, want the pipeline's client %s", e.Actor, s.st.PipelineClientID)
		}
	}
	if n != 3 {
		t.Errorf("%d firmware_uploaded entries, want 3 (1.0.0, 1.1.0, forced 1.2.0)", n)
	}
}
