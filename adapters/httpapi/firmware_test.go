package httpapi_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

// testImage is a fake image body; the fake catalog only checks the magic.
func testImage(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	b[0] = 0xE9
	return b
}

type firmwareJSON struct {
	ID            int64  `json:"id"`
	DeviceModelID int64  `json:"device_model_id"`
	Version       string `json:"version"`
	Chip          string `json:"chip"`
	SHA256        string `json:"sha256"`
	Size          int64  `json:"size"`
	UploadedAt    string `json:"uploaded_at"`
}

func multipartBody(t *testing.T, field string, data []byte) (*bytes.Buffer, string) {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	fw, err := w.CreateFormFile(field, "app.bin")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(data)
	w.Close()
	return &buf, w.FormDataContentType()
}

func TestFirmwareUploadRaw(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	img := testImage(3000)
	r := e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokAdmin,
		body: bytes.NewReader(img), contentType: "application/octet-stream"})
	wantStatus(t, r, http.StatusCreated)
	var fw firmwareJSON
	r.json(t, &fw)
	sum := sha256.Sum256(img)
	if fw.SHA256 != hex.EncodeToString(sum[:]) || fw.Size != 3000 || fw.Version != "1.0.0" || fw.DeviceModelID != 1 {
		t.Errorf("firmware = %+v", fw)
	}
	if got := r.header.Get("Location"); got != "/api/device-models/1/firmware" {
		t.Errorf("Location = %q", got)
	}
	if !bytes.Equal(e.cat.lastUpload, img) {
		t.Errorf("catalog got %d bytes, want the uploaded image", len(e.cat.lastUpload))
	}
}

func TestFirmwareUploadMultipart(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	img := testImage(5000)
	body, ct := multipartBody(t, "file", img)
	r := e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokAdmin, body: body, contentType: ct})
	wantStatus(t, r, http.StatusCreated)
	if !bytes.Equal(e.cat.lastUpload, img) {
		t.Errorf("catalog got %d bytes, want the uploaded image", len(e.cat.lastUpload))
	}

	body, ct = multipartBody(t, "firmware", img)
	p := wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokAdmin, body: body, contentType: ct}),
		http.StatusBadRequest)
	if p.Field != "file" {
		t.Errorf("field = %q, want file", p.Field)
	}
}

func TestFirmwareUploadErrors(t *testing.T) {
	const max = 4096
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.FirmwareMaxBytes = max }))
	e.cat.addModel("sensor", "")
	up := func(body []byte, ct string) response {
		return e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokAdmin,
			body: bytes.NewReader(body), contentType: ct})
	}

	t.Run("image refused by the core", func(t *testing.T) {
		p := wantProblem(t, up([]byte("not an image"), "application/octet-stream"), http.StatusBadRequest)
		if !strings.Contains(p.Detail, "bad magic byte 0x6e at offset 0") {
			t.Errorf("detail = %q, want the validation reason", p.Detail)
		}
	})
	t.Run("just over the limit, within the body limit", func(t *testing.T) {
		wantProblem(t, up(testImage(max+1), "application/octet-stream"), http.StatusRequestEntityTooLarge)
	})
	t.Run("multipart file over the limit", func(t *testing.T) {
		body, ct := multipartBody(t, "file", testImage(max+10))
		wantProblem(t, up(body.Bytes(), ct), http.StatusRequestEntityTooLarge)
	})
	t.Run("far over the server body limit", func(t *testing.T) {
		// The server answers from the declared length, before the token
		// and the body: fasthttp waits for the first 8 KiB of a streamed
		// body before the handler runs, so send the headers and a little
		// more than that, then read the answer while the rest is never
		// sent.
		conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /api/device-models/1/firmware HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
			"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", tokAdmin, max+200<<10)
		if _, err := conn.Write(make([]byte, 12<<10)); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		p := wantProblem(t, response{status: resp.StatusCode, header: resp.Header, body: body}, http.StatusRequestEntityTooLarge)
		if p.Type != "urn:espmdm:problem:too-large" {
			t.Errorf("type = %q", p.Type)
		}
	})
	t.Run("wrong content type", func(t *testing.T) {
		wantProblem(t, up(testImage(100), "application/x-www-form-urlencoded"), http.StatusUnsupportedMediaType)
	})
	t.Run("no content type", func(t *testing.T) {
		wantProblem(t, up(testImage(100), ""), http.StatusUnsupportedMediaType)
	})
	t.Run("unknown model", func(t *testing.T) {
		r := e.do(request{method: http.MethodPost, path: "/api/device-models/77/firmware", token: tokAdmin,
			body: bytes.NewReader(testImage(10)), contentType: "application/octet-stream"})
		wantProblem(t, r, http.StatusNotFound)
	})
	t.Run("bad id", func(t *testing.T) {
		r := e.do(request{method: http.MethodPost, path: "/api/device-models/one/firmware", token: tokAdmin,
			body: bytes.NewReader(testImage(10)), contentType: "application/octet-stream"})
		wantProblem(t, r, http.StatusBadRequest)
	})
}

func TestFirmwareDownload(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	img := testImage(1000)
	fw := e.cat.addFirmware(1, "2.1.0-rc1+g/abc", img)
	etag := `"` + fw.SHA256 + `"`
	path := "/api/device-models/1/firmware"
	dl := func(h map[string]string) response {
		return e.do(request{method: http.MethodGet, path: path, token: tokViewer, header: h})
	}

	r := dl(nil)
	wantStatus(t, r, http.StatusOK)
	if !bytes.Equal(r.body, img) {
		t.Fatalf("body differs from the firmware (%d bytes)", len(r.body))
	}
	for h, want := range map[string]string{
		"ETag":                etag,
		"Content-Type":        "application/octet-stream",
		"Content-Length":      "1000",
		"Accept-Ranges":       "bytes",
		"Content-Disposition": `attachment; filename="sensor-2.1.0-rc1_g_abc.bin"`,
		"Last-Modified":       fw.UploadedAt.UTC().Format(http.TimeFormat),
	} {
		if got := r.header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}

	tests := []struct {
		name       string
		header     map[string]string
		wantStatus int
		wantBody   []byte
		wantRange  string
	}{
		{"If-None-Match matches", map[string]string{"If-None-Match": etag}, 304, nil, ""},
		{"If-None-Match weak in a list", map[string]string{"If-None-Match": `"other", W/` + etag}, 304, nil, ""},
		{"If-None-Match star", map[string]string{"If-None-Match": `*`}, 304, nil, ""},
		{"If-None-Match differs", map[string]string{"If-None-Match": `"deadbeef"`}, 200, img, ""},
		{"first bytes", map[string]string{"Range": "bytes=0-99"}, 206, img[:100], "bytes 0-99/1000"},
		{"middle", map[string]string{"Range": "bytes=500-599"}, 206, img[500:600], "bytes 500-599/1000"},
		{"open end", map[string]string{"Range": "bytes=900-"}, 206, img[900:], "bytes 900-999/1000"},
		{"end past size is clamped", map[string]string{"Range": "bytes=990-5000"}, 206, img[990:], "bytes 990-999/1000"},
		{"suffix", map[string]string{"Range": "bytes=-10"}, 206, img[990:], "bytes 990-999/1000"},
		{"If-Range with the ETag", map[string]string{"Range": "bytes=0-9", "If-Range": etag}, 206, img[:10], "bytes 0-9/1000"},
		{"If-Range with the date", map[string]string{"Range": "bytes=0-9", "If-Range": fw.UploadedAt.UTC().Format(http.TimeFormat)}, 206, img[:10], "bytes 0-9/1000"},
		{"If-Range stale: whole file", map[string]string{"Range": "bytes=0-9", "If-Range": `"old"`}, 200, img, ""},
		{"If-Range weak: whole file", map[string]string{"Range": "bytes=0-9", "If-Range": "W/" + etag}, 200, img, ""},
		{"several ranges: whole file", map[string]string{"Range": "bytes=0-9,20-29"}, 200, img, ""},
		{"malformed range ignored", map[string]string{"Range": "bytes=abc"}, 200, img, ""},
		{"other unit ignored", map[string]string{"Range": "items=0-9"}, 200, img, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dl(tt.header)
			wantStatus(t, r, tt.wantStatus)
			if !bytes.Equal(r.body, tt.wantBody) {
				t.Errorf("body: got %d bytes, want %d", len(r.body), len(tt.wantBody))
			}
			if got := r.header.Get("Content-Range"); got != tt.wantRange {
				t.Errorf("Content-Range = %q, want %q", got, tt.wantRange)
			}
			if got := r.header.Get("ETag"); got != etag {
				t.Errorf("ETag = %q, want %q", got, etag)
			}
		})
	}

	// A range past the end is ignored (RFC 9110 §14.2): the whole file.
	for _, rng := range []string{"bytes=1000-", "bytes=5000-6000", "bytes=-0"} {
		t.Run("unsatisfiable "+rng, func(t *testing.T) {
			r := dl(map[string]string{"Range": rng})
			wantStatus(t, r, http.StatusOK)
			if !bytes.Equal(r.body, img) {
				t.Errorf("body: got %d bytes, want the whole %d", len(r.body), len(img))
			}
			if got := r.header.Get("Content-Range"); got != "" {
				t.Errorf("Content-Range = %q, want none", got)
			}
			if got := r.header.Get("ETag"); got != etag {
				t.Errorf("ETag = %q, want %q", got, etag)
			}
		})
	}

	t.Run("HEAD", func(t *testing.T) {
		r := e.do(request{method: http.MethodHead, path: path, token: tokViewer})
		wantStatus(t, r, http.StatusOK)
		if len(r.body) != 0 || r.header.Get("Content-Length") != "1000" || r.header.Get("ETag") != etag {
			t.Errorf("HEAD: %d body bytes, headers %v", len(r.body), r.header)
		}
	})

	// Every opened blob was closed, including on 304 and 416.
	deadline := time.Now().Add(2 * time.Second)
	for e.cat.openBlobs.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := e.cat.openBlobs.Load(); n != 0 {
		t.Errorf("%d firmware blobs left open", n)
	}
}

func TestFirmwareDownloadErrors(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("empty", "")
	wantProblem(t, e.get("/api/device-models/1/firmware", tokViewer), http.StatusNotFound)
	wantProblem(t, e.get("/api/device-models/2/firmware", tokViewer), http.StatusNotFound)
	wantProblem(t, e.get("/api/device-models/x/firmware", tokViewer), http.StatusBadRequest)
	wantProblem(t, e.get("/api/device-models/1/firmware", ""), http.StatusUnauthorized)
}

func TestFirmwareVersions(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	e.cat.addFirmware(1, "1.0.0", testImage(10))
	e.cat.addFirmware(1, "1.1.0", testImage(20))
	r := e.get("/api/device-models/1/firmware/versions", tokViewer)
	wantStatus(t, r, http.StatusOK)
	var list struct {
		Versions []firmwareJSON `json:"versions"`
	}
	r.json(t, &list)
	if len(list.Versions) != 2 || list.Versions[0].Version != "1.1.0" || list.Versions[1].Size != 10 ||
		list.Versions[0].Chip != "esp32s3" || list.Versions[0].UploadedAt != "2026-03-07T10:00:00Z" {
		t.Errorf("versions = %s", r.body)
	}
	wantProblem(t, e.get("/api/device-models/9/firmware/versions", tokViewer), http.StatusNotFound)
	wantProblem(t, e.get("/api/device-models/0/firmware/versions", tokViewer), http.StatusBadRequest)

	// A model with no uploads lists an empty array, not null.
	e.cat.addModel("fresh", "")
	r = e.get(fmt.Sprintf("/api/device-models/%d/firmware/versions", 4), tokViewer)
	wantStatus(t, r, http.StatusOK)
	if got := strings.TrimSpace(string(r.body)); got != `{"versions":[]}` {
		t.Errorf("body = %s", got)
	}
}

func TestFirmwareUploadForceAndWarnings(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	upload := func(query string) response {
		return e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware" + query, token: tokAdmin,
			body: bytes.NewReader(testImage(3000)), contentType: "application/octet-stream"})
	}
	r := upload("?force=true")
	wantStatus(t, r, http.StatusCreated)
	if !e.cat.lastUploadOpts.Force {
		t.Error("?force=true did not reach the catalog")
	}
	var body map[string]any
	r.json(t, &body)
	if w, ok := body["warnings"].([]any); !ok || len(w) != 0 {
		t.Errorf("warnings = %#v, want an empty array", body["warnings"])
	}
	if _, ok := body["secure_version"]; !ok {
		t.Error("response has no secure_version")
	}
	wantStatus(t, upload(""), http.StatusCreated)
	if e.cat.lastUploadOpts.Force {
		t.Error("force without ?force=true")
	}
	p := wantProblem(t, upload("?force=1"), http.StatusBadRequest)
	if p.Field != "force" {
		t.Errorf("field = %q, want force", p.Field)
	}
}
