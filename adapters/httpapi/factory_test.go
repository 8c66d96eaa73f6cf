package httpapi_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

const tokPipeline = "tok-pipeline-0p1p3"

// fakePipeline answers the pipeline's routes for the model "soil".
type fakePipeline struct{ uploads []ports.PipelineUpload }

func (f *fakePipeline) UploadFirmwareByCode(_ context.Context, code string, up ports.PipelineUpload) (model.FirmwareUpload, error) {
	if code != "soil" {
		return model.FirmwareUpload{}, model.ErrNotFound
	}
	f.uploads = append(f.uploads, up)
	return model.FirmwareUpload{Firmware: model.Firmware{Version: "1.0.0", SHA256: strings.Repeat("ab", 32)}}, nil
}

func (f *fakePipeline) CurrentFirmwareByCode(_ context.Context, code string) (model.DeviceModel, *model.Firmware, error) {
	if code != "soil" {
		return model.DeviceModel{}, nil, model.ErrNotFound
	}
	return model.DeviceModel{Code: code}, nil, nil
}

// fakeBatch makes every device but those at the indexes in fail.
type fakeBatch struct {
	fail  map[int]error
	check error
}

func (f *fakeBatch) CheckDeviceBatch(context.Context, ports.NewDeviceBatch) error { return f.check }

func (f *fakeBatch) CreateDeviceBatch(_ context.Context, in ports.NewDeviceBatch, each func(ports.BatchResult)) error {
	for i := len(in.Devices) - 1; i >= 0; i-- { // completion order is not request order
		if err := f.fail[i]; err != nil {
			each(ports.BatchResult{Index: i, Err: err})
			continue
		}
		key := string(rune('a'+i)) + "0000000"
		each(ports.BatchResult{Index: i, Device: model.Device{ID: int64(100 + i), Key: key, ModelCode: "soil"},
			NVS: bytes.Repeat([]byte{byte(i)}, in.Size)})
	}
	return nil
}

func factoryEnv(t *testing.T, b *fakeBatch) (*env, *fakePipeline) {
	p := &fakePipeline{}
	e := newEnv(t, func(_ *httpapi.Config, d *httpapi.Deps) { d.Pipeline, d.Batch = p, b })
	e.verifier.mu.Lock()
	e.verifier.admins[tokPipeline] = model.Principal{ClientID: "espmdm-pipeline", Roles: []string{httpapi.DefaultPipelineRole}}
	e.verifier.mu.Unlock()
	return e, p
}

// The pipeline's token reaches only its routes; admin and viewer tokens
// do not reach them; every refusal names the pipeline role.
func TestPipelineRoutesAndRole(t *testing.T) {
	e, p := factoryEnv(t, &fakeBatch{})
	wantStatus(t, e.get("/api/pipeline/models/soil/firmware", tokPipeline), http.StatusOK)
	r := e.do(request{method: http.MethodPost, path: "/api/pipeline/models/soil/firmware", token: tokPipeline,
		body: strings.NewReader("image"), contentType: "application/octet-stream"})
	wantStatus(t, r, http.StatusCreated)
	if len(p.uploads) != 1 || string(p.uploads[0].Image) != "image" || p.uploads[0].ELF != nil {
		t.Errorf("uploads %+v, want the raw image without an ELF", p.uploads)
	}
	wantProblem(t, e.get("/api/pipeline/models/nope/firmware", tokPipeline), http.StatusNotFound)
	wantProblem(t, e.get("/api/pipeline/models/Bad-Code/firmware", tokPipeline), http.StatusBadRequest)

	for _, path := range []string{"/api/device-models", "/api/devices", "/api/audit"} {
		if pr := wantProblem(t, e.get(path, tokPipeline), http.StatusForbidden); !strings.Contains(pr.Detail, httpapi.DefaultPipelineRole) {
			t.Errorf("GET %s with a pipeline token: %q does not name the role", path, pr.Detail)
		}
	}
	for _, tok := range []string{tokAdmin, tokViewer, tokNoRole} {
		if pr := wantProblem(t, e.get("/api/pipeline/models/soil/firmware", tok), http.StatusForbidden); !strings.Contains(pr.Detail, httpapi.DefaultPipelineRole) {
			t.Errorf("token %s on the pipeline route: %q does not name the role", tok, pr.Detail)
		}
	}
	// A viewer without the pipeline role is told about its own role, not
	// the pipeline's.
	if pr := wantProblem(t, e.sendJSON(http.MethodPost, "/api/devices", tokViewer, `{}`), http.StatusForbidden); strings.Contains(pr.Detail, "pipeline") {
		t.Errorf("a viewer's refusal mentions the pipeline: %q", pr.Detail)
	}
}

// The batch answers a ZIP: partitions, devices.csv in request order,
// errors.csv with the mapped status and reason (never the error's text).
func TestBatchZip(t *testing.T) {
	kc := &model.UnavailableError{Service: "keycloak", Err: errors.New("dial tcp 10.0.0.7:8443: connection refused")}
	e, _ := factoryEnv(t, &fakeBatch{fail: map[int]error{1: kc}})
	r := e.sendJSON(http.MethodPost, "/api/devices/batch", tokAdmin, `{"device_model_id":1,"count":3,"size":"0x3000"}`)
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != "application/zip" {
		t.Fatalf("Content-Type %q", ct)
	}
	zr, err := zip.NewReader(bytes.NewReader(r.body), int64(len(r.body)))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, f := range zr.File {
		rc, _ := f.Open()
		b, _ := io.ReadAll(rc)
		rc.Close()
		files[f.Name] = string(b)
	}
	if len(files["a0000000.bin"]) != 0x3000 || len(files["c0000000.bin"]) != 0x3000 || len(files) != 4 {
		t.Errorf("files %d: want two partitions of 0x3000, devices.csv, errors.csv", len(files))
	}
	recs, _ := csv.NewReader(strings.NewReader(files["devices.csv"])).ReadAll()
	if len(recs) != 3 || strings.Join(recs[0], ",") != "id,key,client_id,nvs_file" || recs[1][0] != "100" || recs[2][3] != "c0000000.bin" {
		t.Errorf("devices.csv = %q", recs)
	}
	errs, _ := csv.NewReader(strings.NewReader(files["errors.csv"])).ReadAll()
	if len(errs) != 2 || errs[1][0] != "1" || errs[1][1] != "502" || strings.Contains(errs[1][2], "10.0.0.7") {
		t.Errorf("errors.csv = %q, want index 1, 502 and the mapped reason only", errs)
	}

	// Refusals before anything: shape here, the rest from the check.
	for body, field := range map[string]string{
		`{"device_model_id":1}`:                                     "count",
		`{"device_model_id":1,"count":0}`:                           "count",
		`{"device_model_id":1,"count":2,"devices":[{"config":{}}]}`: "count",
		`{"device_model_id":1,"devices":[]}`:                        "devices",
		`{"device_model_id":1,"devices":[{}]}`:                      "devices[0].config",
		`{"device_model_id":1,"count":1,"size":"0x3001"}`:           "size",
		`{"count":1}`: "device_model_id",
	} {
		if pr := wantProblem(t, e.sendJSON(http.MethodPost, "/api/devices/batch", tokAdmin, body), http.StatusBadRequest); pr.Field != field {
			t.Errorf("%s: field %q, want %q", body, pr.Field, field)
		}
	}
	e2, _ := factoryEnv(t, &fakeBatch{check: model.Invalid("devices[0].config", "does not match the model's config_schema")})
	if pr := wantProblem(t, e2.sendJSON(http.MethodPost, "/api/devices/batch", tokAdmin, `{"device_model_id":1,"count":2}`), http.StatusBadRequest); pr.Field != "config" {
		t.Errorf("a count batch's config refusal names %q, want config", pr.Field)
	}
	wantProblem(t, e.sendJSON(http.MethodPost, "/api/devices/batch", tokViewer, `{"device_model_id":1,"count":1}`), http.StatusForbidden)
}
