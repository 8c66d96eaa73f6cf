package httpapi_test

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/espmdm/espmdm/core/model"
)

// The blob store failing (down, or a recorded binary missing from it) is a
// 503 with Retry-After and a logged error, for uploads and for both
// downloads: never a 404 (a device would think there is no firmware), a
// 500, or a part of a body.
func TestBlobStoreFailuresAre503(t *testing.T) {
	e := newEnv(t)
	m := e.cat.addModel("sensor", "")
	e.cat.addFirmware(m.ID, "1.0.0", testImage(100))
	e.verifier.addDevice("tok-dev", e.cat.addDevice(m.ID, "aaaa1111", true))
	down := &model.UnavailableError{Service: model.ServiceBlobStore, Err: fmt.Errorf("s3store: get sensor/x.bin in bucket %q: connection refused", "b")}
	lost := fmt.Errorf("open firmware 1.0.0 of device model sensor: fsstore: sensor/x.bin: %w", model.ErrBlobNotFound)
	for _, c := range []struct {
		name, method string
		err          error
	}{
		{"store down", "OpenFirmware", down},
		{"recorded blob missing", "OpenFirmware", lost},
		{"store down", "UploadFirmware", fmt.Errorf("upload firmware: store binary: %w", down)},
	} {
		calls := map[string]func() response{
			"OpenFirmware": func() response { return e.get("/api/device-models/1/firmware", tokViewer) },
			"iot":          func() response { return e.get("/iot/firmware", "tok-dev") },
			"UploadFirmware": func() response {
				return e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokAdmin,
					body: bytes.NewReader(testImage(200)), contentType: "application/octet-stream"})
			},
		}
		paths := []string{c.method}
		if c.method == "OpenFirmware" {
			paths = append(paths, "iot")
		}
		for _, path := range paths {
			t.Run(c.name+" "+path, func(t *testing.T) {
				e.cat.setFail(c.method, c.err)
				defer e.cat.setFail(c.method, nil)
				before := e.logs.FilterLevelExact(zapcore.ErrorLevel).Len()
				r := calls[path]()
				p := wantProblem(t, r, http.StatusServiceUnavailable)
				if p.Type != "urn:espmdm:problem:blob-store-unavailable" || strings.Contains(p.Detail, "sensor/x.bin") {
					t.Errorf("problem %+v: want type blob-store-unavailable and nothing of the cause", p)
				}
				if r.header.Get("Retry-After") == "" || r.header.Get("ETag") != "" || r.header.Get("Content-Disposition") != "" {
					t.Errorf("headers %v: want Retry-After and no ETag or Content-Disposition", r.header)
				}
				logged := e.logs.FilterLevelExact(zapcore.ErrorLevel).All()[before:]
				if len(logged) != 1 || !strings.Contains(fmt.Sprint(logged[0].ContextMap()), "sensor/x.bin") {
					t.Errorf("logged %v, want one error line naming the blob", logged)
				}
			})
		}
	}
	// A firmware that does not exist stays a 404.
	e.cat.addModel("empty", "")
	wantProblem(t, e.get("/api/device-models/2/firmware", tokViewer), http.StatusNotFound)
}
